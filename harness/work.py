"""Runs as plans of work units: plan -> execute -> reduce.

A run (suite, stack, runtimes, samples) becomes a `RunPlan` of `WorkUnit`s: a
range of the split's samples x the stack x the suite's model recipe x the
runtimes that need one kind of hardware x the repeat count.  A unit is plain
JSON and names what it reads by hash (suite file, weights, dataset manifest),
so any process that can read the suite can execute it: `Worker.execute`
decodes its samples, infers each of its runtimes and returns what it measured
in the one result format (`harness.measured.RunOutputs`); a `ResultStore`
keeps each result under its unit's key.  `reduce` joins a plan's results in
plan order and the pipeline judges them, so the report does not depend on
which executor ran the units (`LocalExecutor` here, `harness.ray_executor` on
a cluster), in which order, or in how many sittings (`--resume`).

Memory: a unit's tensors live while it runs (and the next unit's while they
are prepared, `harness.parallel`); only outputs outlive a unit.  Units start
on multiples of the batch size, so every batch of the split's fixed grid
(`feed.batch_layout`) lies in one unit and outputs equal an unsplit run's.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters.cache import ArtifactCache
from harness import __version__
from harness.dataset import Dataset, Sample, load_dataset, sha256_file
from harness.environment import compute_threads
from harness.errors import HarnessError
from harness.feed import InputSet, build_inputs
from harness.files import atomic_write
from harness.golden import GoldenStore
from harness.measured import Inference, RunOutputs, concat, determinism, side_by_side
from harness.parallel import Pending, Preparer, default_workers
from harness.pipeline import Sessions, SuiteRun, Tracker, judge_run, no_tracking, validate_runtimes
from harness.report import RunReport
from harness.stack import StackSpec
from harness.suite import Suite, suite_from_definition
from harness.tasks import make_task
from runtimes import get_runtime

DEFAULT_CHUNK = 1024  # samples per unit: a resume loses at most one unit's work; tensors held <= 2 units
POOL_FROM = 1000  # below this many samples decoding stays in this process (spawning workers costs more than it saves)
UNITS_DIR = "units"  # in the report folder: the results of an unfinished run's units, and its plan
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class WorkUnit:
    """Samples [start, stop) of a suite's split through one stack, inferred by runtimes on one kind of hardware."""

    suite: str  # the suite file, or a suite's mapping as JSON (`Suite.definition`)
    identity: dict[str, str]  # sha256 of the suite file, weights and manifest, and the harness version
    stack: dict[str, Any]  # StackSpec fields
    start: int
    stop: int
    runtimes: tuple[str, ...]
    batch_size: int
    repeat: int = 1
    device: str = "cpu"  # what an executor must give it: "cpu" or "gpu"

    def describe(self) -> dict[str, Any]:
        return asdict(self) | {"runtimes": list(self.runtimes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkUnit:
        return cls(**(data | {"runtimes": tuple(data["runtimes"])}))

    @property
    def key(self) -> str:
        """Content address of the unit's result: changes with anything the result depends on."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:32]

    def stack_spec(self) -> StackSpec:
        return StackSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.stack.items()})

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def batches(self) -> int:
        """Batches of the split's fixed grid that the unit's samples touch."""
        return -(-self.stop // self.batch_size) - self.start // self.batch_size


@dataclass(frozen=True)
class RunRequest:
    """What to measure: runtimes (the suite's reference is added), batch size and which samples."""

    runtimes: tuple[str, ...]
    batch_size: int
    limit: int | None = None
    shard: tuple[int, int] = (1, 1)
    repeat: int = 1
    stack: StackSpec | None = None  # default: the suite's reference stack
    chunk: int = DEFAULT_CHUNK
    reference: bool = True  # also measure the suite's reference runtime (judging needs it; recording goldens does not)


@dataclass(frozen=True)
class RunPlan:
    suite: str
    runtimes: tuple[str, ...]  # measured: the reference first
    requested: tuple[str, ...]  # judged against their goldens
    shard: tuple[int, int]
    units: tuple[WorkUnit, ...]

    @property
    def samples(self) -> int:
        return sum(len(units[0]) for units in self.ranges())

    def ranges(self) -> list[list[WorkUnit]]:
        """Units grouped by sample range (one per hardware kind), ranges in sample order."""
        groups: dict[tuple[int, int], list[WorkUnit]] = {}
        for unit in self.units:
            groups.setdefault((unit.start, unit.stop), []).append(unit)
        return [groups[k] for k in sorted(groups)]

    def describe(self) -> dict[str, Any]:
        return {
            "harness": __version__,
            "suite": self.suite,
            "runtimes": list(self.runtimes),
            "requested": list(self.requested),
            "shard": list(self.shard),
            "units": [u.describe() | {"key": u.key} for u in self.units],
        }


def _device(runtime: str) -> str:
    return "cpu" if get_runtime(runtime).device == "cpu" else "gpu"


def _cuts(start: int, stop: int, step: int) -> list[tuple[int, int]]:
    """[start, stop) cut at multiples of `step`."""
    bounds = [start, *range((start // step + 1) * step, stop, step), stop]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def run_identity(suite: Suite, dataset: Dataset, weights_sha256: str) -> dict[str, str]:
    """What a unit's result depends on besides its own fields: planned and checked again where it executes."""
    return {
        "suite_sha256": suite.sha256(),
        "weights_sha256": weights_sha256,
        "manifest_sha256": dataset.manifest_sha256,
        "split": suite.split,
        "harness": __version__,
    }


def plan_run(suite: Suite, request: RunRequest, run: SuiteRun | None = None) -> RunPlan:
    """The units of one run: the reference first; ranges of `chunk` samples (rounded up to whole batches).
    `run`: the suite already prepared in this process (its dataset is not loaded again)."""
    order = tuple(dict.fromkeys([suite.reference_runtime, *request.runtimes] if request.reference else request.runtimes))
    validate_runtimes(list(order))
    if run is None:
        task = make_task(suite.task, suite.model.output_names, suite.postprocess)
        dataset = load_dataset(suite.manifest, suite.split, task.target)
    else:
        dataset = run.dataset
    total = min(request.limit, len(dataset.samples)) if request.limit else len(dataset.samples)
    index, count = request.shard
    if not 1 <= index <= count:
        raise HarnessError(f"--shard {index}/{count}: index must be between 1 and {count}", "e.g. --shard 2/4")
    bounds = np.linspace(0, total, count + 1).round().astype(int)
    start, stop = int(bounds[index - 1]), int(bounds[index])
    if not suite.model.weights.is_file():
        raise HarnessError(f"weights file not found: {suite.model.weights}", "fix [model] weights in the suite")
    identity = run_identity(suite, dataset, run.artifacts.weights_sha256 if run else sha256_file(suite.model.weights))
    groups: dict[str, list[str]] = {}
    for name in order:
        groups.setdefault(_device(name), []).append(name)
    step = -(-max(request.chunk, 1) // request.batch_size) * request.batch_size
    stack = (request.stack or suite.stack).describe()
    units = tuple(
        WorkUnit(suite.definition(), identity, stack, a, b, tuple(names), request.batch_size, request.repeat, device)
        for a, b in _cuts(start, stop, step)
        for device, names in groups.items()
    )
    return RunPlan(str(suite.path), order, request.runtimes, request.shard, units)


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
        return self._sessions.infer(key, runtime, run.artifacts, inputs, unit.batch_size, run.task, self.advance(f"infer {runtime}"))

    def execute(self, unit: WorkUnit, inputs: InputSet | None = None) -> RunOutputs:
        """Measure one unit: its samples through its stack (unless `inputs` are given), then every runtime."""
        run = self.run_for(unit)
        if inputs is None:
            inputs = build_inputs(self.samples(unit), run.stack, self.advance("decode"), run.suite.intake)
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


@dataclass(frozen=True)
class Execution:
    """How a plan's units are executed: where (local or on Ray), with how many processes, kept where."""

    executor: str = "local"  # or "ray"
    workers: int | None = None  # local: decode processes, 0 = in this process (default: `LocalExecutor`); ray: actors
    address: str | None = None  # ray: the cluster to join (default: a local instance)
    store: Path | None = None  # unit results (default: in memory)
    resume: bool = False  # reuse the results already in the store
    log: list[str] = field(default_factory=list, compare=False, hash=False)  # what the executor did, in words
    record: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)  # the same as data, for the report


class Progress:
    """Progress bars over a whole plan, one per stage label (`decode`, `infer <runtime>`)."""

    def __init__(self, plan: RunPlan, todo: list[WorkUnit], track: Tracker, stack: str) -> None:
        totals: dict[str, int] = {"decode": sum(len(r[0]) for r in plan.ranges() if any(u in todo for u in r))}
        for unit in todo:
            for name in unit.runtimes:
                totals[f"infer {name}"] = totals.get(f"infer {name}", 0) + unit.batches * unit.repeat
        titles = {"decode": f"decode + {stack} stack"}
        self._advance = {label: track(titles.get(label, label), total) for label, total in totals.items() if total}

    def __call__(self, label: str) -> Callable[[], None]:
        return self._advance.get(label, lambda: None)


def pending_units(plan: RunPlan, store: ResultStore, execution: Execution) -> list[WorkUnit]:
    """The units still to execute: all of them, or (resuming) those without a stored result."""
    if not execution.resume:
        store.clear()
        return list(plan.units)
    todo = [u for u in plan.units if not store.has(u)]
    execution.record["resumed_units"] = len(plan.units) - len(todo)
    execution.log.append(f"resumed: {len(plan.units) - len(todo)} of {len(plan.units)} units already done in {store.root}")
    return todo


class LocalExecutor:
    """Units in plan order in this process, decoded and pre-processed by worker processes (`harness.parallel`).

    Cores are shared, never oversubscribed: inference runs on `compute_threads()` threads (all cores unless
    HARNESS_THREADS says otherwise).  When cores are left over, that many workers prepare the next range while
    this one infers; when inference takes every core, every core decodes a range and then inference runs on it
    (spinning thread pools of ONNX Runtime and PyTorch lose more to a busy core than the overlap gains)."""

    def __init__(self, cache: ArtifactCache, workers: int | None = None, prepared: SuiteRun | None = None) -> None:
        self.cache = cache
        self.workers = workers
        self.prepared = prepared

    def run(self, plan: RunPlan, todo: list[WorkUnit], store: ResultStore, progress: Progress, execution: Execution) -> None:
        cpus, threads = default_workers(), compute_threads()
        if self.workers is not None:
            workers = self.workers
        elif plan.samples < POOL_FROM:
            workers = 0
        else:
            workers = cpus - threads if cpus > threads else cpus
        overlap = workers > 0 and workers + threads <= cpus
        decode = f"{workers} decode process(es)" if workers else "decode in this process"
        execution.record.update({"decode_processes": workers, "decode_ahead": overlap, "inference_threads": threads, "cpus": cpus})
        ahead = ", one range ahead" if overlap else ""
        execution.log.append(f"local executor: {len(todo)} units; {decode}{ahead}; inference on {threads} thread(s)")
        worker = Worker(self.cache, progress, self.prepared)
        try:
            with Preparer(workers) as preparer:
                self._run(todo, worker, preparer, store, progress, overlap)
        finally:
            worker.close()

    @staticmethod
    def _run(todo: list[WorkUnit], worker: Worker, preparer: Preparer, store: ResultStore, progress: Progress, overlap: bool) -> None:
        """Prepare each range once (its CPU and GPU units share the tensors), one range ahead of inference with `overlap`."""
        ranges: list[list[WorkUnit]] = []
        for unit in todo:
            if ranges and (ranges[-1][0].start, ranges[-1][0].stop) == (unit.start, unit.stop):
                ranges[-1].append(unit)
            else:
                ranges.append([unit])

        def submit(units: list[WorkUnit]) -> Pending:
            run = worker.run_for(units[0])
            return preparer.submit(worker.samples(units[0]), run.stack, run.suite.intake)

        upcoming = submit(ranges[0]) if ranges and overlap else None
        for i, units in enumerate(ranges):
            current = upcoming or submit(units)
            upcoming = submit(ranges[i + 1]) if overlap and i + 1 < len(ranges) else None
            inputs = current.result(progress("decode"))
            for unit in units:
                store.put(unit, worker.execute(unit, inputs))


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
    if execution.executor == "ray":
        from harness.ray_executor import RayExecutor

        RayExecutor(cache, execution.workers, execution.address).run(plan, todo, store, progress, execution)
    elif execution.executor == "local":
        LocalExecutor(cache, execution.workers, prepared).run(plan, todo, store, progress, execution)
    else:
        raise HarnessError(f"unknown executor '{execution.executor}'", "use --executor local or --executor ray")
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


def run_suite(
    suite: Suite,
    request: RunRequest,
    cache: ArtifactCache,
    golden_store: GoldenStore | None = None,
    execution: Execution | None = None,
    track: Tracker = no_tracking,
    golden_runtimes: Sequence[str] | None = None,
) -> tuple[RunReport, RunOutputs]:
    """Measure every runtime of `request` (the reference first), then judge against the reference and (with a store)
    the goldens of `golden_runtimes` (default: every runtime); returns the report and what was measured."""
    runtimes = list(request.runtimes)
    validate_runtimes([suite.reference_runtime, *runtimes])
    compared = runtimes if golden_runtimes is None else [r for r in runtimes if r in golden_runtimes]
    goldens = {name: golden_store.load(name) for name in compared} if golden_store else {}  # missing or corrupt: fail before inference
    execution = execution or Execution()
    measured = measure(suite, request, cache, execution, track)
    report = judge_run(suite, measured, golden_store, goldens)
    report.context = report.context | {"execution": execution.record}  # the report's, not the goldens': how, not what
    return report, measured
