"""Work units on a Ray cluster: `harness run --executor ray [--address HOST:PORT]` (extra `sysnoise-harness[ray]`).

Each Ray worker is an actor holding one `harness.run.worker.Worker`, so a suite's prepared run and open sessions stay
between the units it executes; units that need a GPU go to actors that asked Ray for one GPU each.  An actor
returns a unit's result as the bytes of its `outputs.npz` and the driver puts them in its store: nodes need
the suite, its data and an artifact cache at the same paths (a shared folder, or one image for every node),
not the driver's report folder.  Actors run with the driver's thread count, so their numbers are the local
executor's.  `reduce` then builds the same report as a local run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from exporters.cache import ArtifactCache
from harness.core.environment import THREADS_ENV, compute_threads
from harness.core.errors import HarnessError
from harness.core.plugins import load_from_environment, plugin_environment
from harness.run.executors.base import Execution, Progress, register_executor
from harness.run.plan import RunPlan, WorkUnit
from harness.run.prepared import SuiteRun
from harness.run.worker import ResultStore, Worker


class UnitActor:
    """One Ray worker process: executes the units it is given, one at a time."""

    def __init__(self, cache_root: str) -> None:
        load_from_environment()  # the driver's plugins (its runtime_env carries them)
        self.worker = Worker(ArtifactCache(Path(cache_root)))

    def execute(self, unit: dict[str, Any]) -> bytes:
        return self.worker.execute(WorkUnit.from_dict(unit)).to_bytes()


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise HarnessError("--executor ray needs Ray, which is not installed", "pip install 'sysnoise-harness[ray]'") from exc
    return ray


@register_executor("ray")
class RayExecutor:
    def __init__(self, cache: ArtifactCache, execution: Execution, _prepared: SuiteRun | None = None) -> None:
        self.cache, self.workers, self.address = cache, execution.workers, execution.address

    def run(self, plan: RunPlan, todo: list[WorkUnit], store: ResultStore, progress: Progress, execution: Execution) -> None:
        ray = _ray()
        started = not ray.is_initialized()
        if started:
            options: dict[str, Any] = {"address": self.address} if self.address else {"num_cpus": self.workers}
            try:
                ray.init(**options, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "(local)"
                raise HarnessError(f"cannot reach the Ray cluster {where}: {exc}", "check --address and that Ray runs") from exc
        try:
            self._run(ray, todo, store, progress, execution)
        finally:
            if started:
                ray.shutdown()

    def _actors(self, ray: Any, device: str, units: int) -> list[Any]:
        resources = ray.cluster_resources()
        if device == "gpu":
            count, needs = int(resources.get("GPU", 0)), {"num_gpus": 1, "num_cpus": 1}
            if count == 0:
                raise HarnessError("work units of GPU runtimes, but the Ray cluster has no GPU", "join a cluster with GPU nodes")
        else:
            count, needs = self.workers or int(resources.get("CPU", 1)), {"num_cpus": 1}
        actor = ray.remote(**needs)(UnitActor).options(
            runtime_env={"env_vars": {THREADS_ENV: str(compute_threads()), **plugin_environment()}}
        )
        return [actor.remote(str(self.cache.root)) for _ in range(max(1, min(count, units)))]

    def _run(self, ray: Any, todo: list[WorkUnit], store: ResultStore, progress: Progress, execution: Execution) -> None:
        queues = {device: [u for u in todo if u.device == device] for device in ("cpu", "gpu")}
        idle = {device: self._actors(ray, device, len(units)) for device, units in queues.items() if units}
        actors = {device: len(a) for device, a in idle.items()}
        execution.record.update({"actors": actors, "inference_threads": compute_threads(), "address": self.address})
        execution.log.append(f"ray executor: {len(todo)} units on " + ", ".join(f"{len(a)} {d} actor(s)" for d, a in idle.items()))
        running: dict[Any, tuple[WorkUnit, Any]] = {}

        def dispatch() -> None:
            for device, actors in idle.items():
                while actors and queues[device]:
                    actor, unit = actors.pop(), queues[device].pop(0)
                    running[actor.execute.remote(unit.describe())] = (unit, actor)

        dispatch()
        try:
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                unit, actor = running.pop(ready[0])
                try:
                    store.put(unit, ray.get(ready[0]))
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, HarnessError):
                        raise exc.cause from None
                    raise
                idle[unit.device].append(actor)
                _advance(progress, unit)
                dispatch()
        finally:
            for actors in idle.values():
                for actor in actors:
                    ray.kill(actor)
            for _unit, actor in running.values():
                ray.kill(actor)


def _advance(progress: Progress, unit: WorkUnit) -> None:
    """Bars move per finished unit (actors do not report per batch)."""
    for label, steps in [("decode", len(unit)), *((f"infer {name}", unit.batches * unit.repeat) for name in unit.runtimes)]:
        step = progress(label)
        for _ in range(steps):
            step()
