"""Plan -> execute -> reduce: a run's units executed by the chosen executor, their results joined into one
`RunOutputs` in plan order, so what was measured does not depend on which executor ran the units, in which
order, or in how many sittings (`--resume`)."""

from __future__ import annotations

from exporters.cache import ArtifactCache
from harness.core.errors import HarnessError
from harness.run.executors import Execution, Progress, get_executor
from harness.run.outputs import RunOutputs, concat, side_by_side
from harness.run.plan import RunPlan, RunRequest, WorkUnit, plan_run
from harness.run.prepared import SuiteRun
from harness.run.sessions import Tracker, no_tracking
from harness.run.worker import ResultStore
from harness.spec.suite import Suite


def pending_units(plan: RunPlan, store: ResultStore, execution: Execution) -> list[WorkUnit]:
    """The units still to execute: all of them, or (resuming) those without a stored result."""
    if not execution.resume:
        store.clear()
        return list(plan.units)
    todo = [u for u in plan.units if not store.has(u)]
    execution.record["resumed_units"] = len(plan.units) - len(todo)
    execution.log.append(f"resumed: {len(plan.units) - len(todo)} of {len(plan.units)} units already done in {store.root}")
    return todo


def execute(
    plan: RunPlan, cache: ArtifactCache, execution: Execution, track: Tracker = no_tracking, prepared: SuiteRun | None = None
) -> ResultStore:
    """Execute the plan's pending units with the chosen executor; every unit's result is in the returned store
    (`prepared`: the planned run, reused by the local executor)."""
    store = ResultStore(execution.store, plan)
    todo = pending_units(plan, store, execution)
    largest = max(map(len, plan.units), default=0)
    execution.record.update({"executor": execution.executor, "units": len(plan.units), "samples_per_unit": largest})
    stack = plan.units[0].stack["name"] if plan.units else ""
    progress = Progress(plan, todo, track, stack)
    get_executor(execution.executor)(cache, execution, prepared).run(plan, todo, store, progress, execution)
    return store


def reduce(plan: RunPlan, store: ResultStore) -> RunOutputs:
    """The plan's results as one run: ranges side by side per hardware kind, then concatenated in order."""
    if not plan.units:
        raise HarnessError(f"{plan.suite}: no samples to run", "check --limit and --shard")
    parts = [side_by_side([store.get(u) for u in units], plan.runtimes) for units in plan.ranges()]
    measured = concat(parts, plan.shard)
    measured.requested = plan.requested
    return measured


def measure(
    suite: Suite, request: RunRequest, cache: ArtifactCache, execution: Execution | None = None, track: Tracker = no_tracking
) -> RunOutputs:
    """Plan, execute and reduce: every runtime's outputs on the requested samples."""
    execution = execution or Execution()
    run = SuiteRun(suite, cache, stack=request.stack)  # the dataset, loaded once for the plan and this process's units
    plan = plan_run(suite, request, run)
    store = execute(plan, cache, execution, track, run)
    measured = reduce(plan, store)
    store.clear()
    return measured
