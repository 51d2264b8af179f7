"""The local executor: units in plan order in this process, decoded by worker processes one range ahead."""

from __future__ import annotations

from exporters.cache import ArtifactCache
from harness.core.environment import compute_threads
from harness.data.parallel import Pending, Preparer, default_workers
from harness.run.executors.base import Execution, Progress, register_executor
from harness.run.plan import RunPlan, WorkUnit
from harness.run.prepared import SuiteRun
from harness.run.worker import ResultStore, Worker

POOL_FROM = 1000  # below this many samples decoding stays in this process (spawning workers costs more than it saves)


@register_executor("local")
class LocalExecutor:
    """Units in plan order in this process, decoded and pre-processed by worker processes (`harness.data.parallel`).

    Cores are shared, never oversubscribed: inference runs on `compute_threads()` threads (all cores unless
    HARNESS_THREADS says otherwise).  When cores are left over, that many workers prepare the next range while
    this one infers; when inference takes every core, every core decodes a range and then inference runs on it
    (spinning thread pools of ONNX Runtime and PyTorch lose more to a busy core than the overlap gains)."""

    def __init__(self, cache: ArtifactCache, execution: Execution, prepared: SuiteRun | None = None) -> None:
        self.cache = cache
        self.workers = execution.workers
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
            return preparer.submit(worker.samples(units[0]), run.stack, run.suite.data.intake)

        upcoming = submit(ranges[0]) if ranges and overlap else None
        for i, units in enumerate(ranges):
            current = upcoming or submit(units)
            upcoming = submit(ranges[i + 1]) if overlap and i + 1 < len(ranges) else None
            inputs = current.result(progress("decode"))
            for unit in units:
                store.put(unit, worker.execute(unit, inputs))
