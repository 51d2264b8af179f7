"""Executes work units in one process and keeps their results.

`Worker.execute` decodes a unit's samples (unless they are handed in), infers each of its runtimes and returns
what it measured in the one result format (`harness.run.outputs.RunOutputs`); a suite's prepared run (dataset,
artifacts) and its open sessions are kept from one unit to the next.  A `ResultStore` keeps each result under
its unit's key: files shared by the processes of a machine or a cluster, or memory.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from exporters.cache import ArtifactCache
from harness.core.errors import HarnessError
from harness.core.files import atomic_write
from harness.data.dataset import Sample
from harness.data.feed import InputSet, build_inputs
from harness.run.outputs import Inference, RunOutputs, determinism
from harness.run.plan import RunPlan, WorkUnit, run_identity
from harness.run.prepared import SuiteRun
from harness.run.sessions import Sessions
from harness.spec.suite import suite_from_definition

UNITS_DIR = "units"  # in the report folder: the results of an unfinished run's units, and its plan

PLAN_FILE = "plan.json"


class ResultStore:
    """Unit results by key: files under `root` (shared by the processes of one machine, or a cluster's
    shared folder), or in memory when `root` is None."""

    def __init__(self, root: Path | None = None, plan: RunPlan | None = None) -> None:
        self.root = root
        self.plan = plan  # written beside the first result, so a run that fails before any has nothing on disk
        self._memory: dict[str, RunOutputs] = {}

    def has(self, unit: WorkUnit) -> bool:
        return unit.key in self._memory or (self.root is not None and (self.root / f"{unit.key}.npz").is_file())

    def put(self, unit: WorkUnit, result: RunOutputs | bytes) -> None:
        if self.root is None:
            self._memory[unit.key] = RunOutputs.from_bytes(result, f"unit {unit.key}") if isinstance(result, bytes) else result
            return
        if not self.root.is_dir() and self.plan is not None:
            self.root.mkdir(parents=True)
            atomic_write(self.root / PLAN_FILE, (json.dumps(self.plan.describe(), indent=1) + "\n").encode())
        atomic_write(self.root / f"{unit.key}.npz", result if isinstance(result, bytes) else result.to_bytes())

    def get(self, unit: WorkUnit) -> RunOutputs:
        if unit.key in self._memory:
            return self._memory[unit.key]
        assert self.root is not None
        return RunOutputs.load(self.root / f"{unit.key}.npz")

    def clear(self) -> None:
        """Forget every stored result: a run that does not resume starts from nothing, and a reduced run's
        results live on in its `outputs.npz`."""
        self._memory.clear()
        if self.root is not None and self.root.is_dir():
            shutil.rmtree(self.root)


class Worker:
    """Executes units in one process; a suite's prepared run (dataset, artifacts) and its open sessions are kept
    from one unit to the next."""

    def __init__(
        self, cache: ArtifactCache, advance: Callable[[str], Callable[[], None]] | None = None, prepared: SuiteRun | None = None
    ) -> None:
        self.cache = cache
        self.advance = advance or (lambda _label: lambda: None)
        self.prepared = prepared  # a run the caller already has (the one it planned with): used for its units
        self._runs: dict[str, SuiteRun] = {}
        self._sessions = Sessions()

    @staticmethod
    def _run_key(unit: WorkUnit) -> str:
        return json.dumps([unit.suite, unit.identity, unit.stack], sort_keys=True)

    def run_for(self, unit: WorkUnit) -> SuiteRun:
        key = self._run_key(unit)
        if key not in self._runs:
            prepared = self.prepared
            if prepared and (prepared.suite.definition(), prepared.stack.describe()) == (unit.suite, unit.stack):
                run = prepared
            else:
                run = SuiteRun(suite_from_definition(unit.suite), self.cache, stack=unit.stack_spec())
            suite = run.suite
            found = run_identity(suite, run.dataset, run.artifacts.weights_sha256)
            changed = [k for k, v in unit.identity.items() if found.get(k) != v]
            if changed:
                raise HarnessError(
                    f"work unit {unit.key} was planned for other inputs of {suite.path} ({', '.join(changed)} differ here)",
                    "plan the run again (run without --resume), or give every worker the same suite, weights and data",
                )
            self._runs[key] = run
        return self._runs[key]

    def samples(self, unit: WorkUnit) -> list[Sample]:
        return self.run_for(unit).dataset.samples[unit.start : unit.stop]

    def _infer(self, unit: WorkUnit, runtime: str, inputs: InputSet) -> Inference:
        run = self.run_for(unit)
        key = (self._run_key(unit), runtime)
        advance = self.advance(f"infer {runtime}")
        return self._sessions.infer(key, runtime, run.artifacts, inputs, unit.batch_size, run.task, advance, run.check_outputs)

    def execute(self, unit: WorkUnit, inputs: InputSet | None = None) -> RunOutputs:
        """Measure one unit: its samples through its stack (unless `inputs` are given), then every runtime."""
        run = self.run_for(unit)
        if inputs is None:
            inputs = build_inputs(self.samples(unit), run.stack, self.advance("decode"), run.suite.data.intake)
        inferences, det = {}, {}
        for name in unit.runtimes:
            runs = [self._infer(unit, name, inputs) for _ in range(unit.repeat)]
            inferences[name] = runs[0]
            if unit.repeat > 1:
                det[name] = determinism(runs)
        return RunOutputs(
            suite=run.suite.name,
            ids=inputs.ids,
            labels=inputs.labels,
            stages=inputs.stages,
            intake=inputs.intake,
            inferences=inferences,
            context=run.context() | {"artifacts": dict(run.artifacts.provenance), "batch_size": unit.batch_size},
            requested=unit.runtimes,
            determinism=det,
        )

    def close(self) -> None:
        self._sessions.close()
