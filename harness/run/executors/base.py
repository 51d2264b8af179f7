"""How a plan's units are executed: the `Execution` settings, the progress bars over a plan, and the registry
of executors (`local`, `ray`, or another registered by name).  An executor runs the units it is given and puts
each result in the store; the run machinery looks executors up here and imports none of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from exporters.cache import ArtifactCache
from harness.core.errors import HarnessError
from harness.run.plan import RunPlan, WorkUnit
from harness.run.prepared import SuiteRun
from harness.run.sessions import Tracker
from harness.run.worker import ResultStore


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


class Executor(Protocol):
    """Runs `todo` (units of `plan`), putting each result in `store` and recording what it did in `execution`."""

    def run(self, plan: RunPlan, todo: list[WorkUnit], store: ResultStore, progress: Progress, execution: Execution) -> None: ...


# name -> factory(cache, execution, prepared run or None): the executors `--executor` may name
ExecutorFactory = Callable[[ArtifactCache, Execution, SuiteRun | None], Executor]
EXECUTORS: dict[str, ExecutorFactory] = {}


def register_executor(name: str) -> Callable[[ExecutorFactory], ExecutorFactory]:
    def add(factory: ExecutorFactory) -> ExecutorFactory:
        EXECUTORS[name] = factory
        return factory

    return add


def get_executor(name: str) -> ExecutorFactory:
    if name not in EXECUTORS:
        raise HarnessError(f"unknown executor '{name}'", f"use --executor {' or --executor '.join(sorted(EXECUTORS))}")
    return EXECUTORS[name]
