"""Runs as plans of work units: plan -> execute -> reduce.

A run (suite, stack, runtimes, samples) becomes a `RunPlan` of `WorkUnit`s: a
range of the split's samples x the stack x the suite's model recipe x the
runtimes that need one kind of hardware x the repeat count.  A unit is plain
JSON and names what it reads by hash (suite file, weights, dataset manifest),
so any process that can read the suite can execute it (`harness.run.worker`),
with any executor (`harness.run.executors`); `harness.run.execute` joins the
results.

Memory: a unit's tensors live while it runs (and the next unit's while they
are prepared, `harness.data.parallel`); only outputs outlive a unit.  Units start
on multiples of the batch size, so every batch of the split's fixed grid
(`feed.batch_layout`) lies in one unit and outputs equal an unsplit run's.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from harness import __version__
from harness.core.errors import HarnessError
from harness.core.hashing import sha256_file
from harness.data.dataset import Dataset
from harness.data.stack import StackSpec
from harness.run.prepared import SuiteRun
from harness.run.sessions import validate_runtimes
from harness.spec.suite import Suite
from harness.tasks import make_task
from harness.tasks.base import target_parser
from runtimes import get_runtime

DEFAULT_CHUNK = 1024  # samples per unit: a resume loses at most one unit's work; tensors held <= 2 units


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
        "split": suite.data.split,
        "harness": __version__,
    }


def plan_run(suite: Suite, request: RunRequest, run: SuiteRun | None = None) -> RunPlan:
    """The units of one run: the reference first; ranges of `chunk` samples (rounded up to whole batches).
    `run`: the suite already prepared in this process (its dataset is not loaded again)."""
    order = tuple(dict.fromkeys([suite.run.reference, *request.runtimes] if request.reference else request.runtimes))
    validate_runtimes(list(order))
    if run is None:
        task = make_task(suite.task)
        dataset = suite.data.load(suite.data.split, target_parser(task, suite.data.root))
    else:
        dataset = run.dataset
    total = min(request.limit, len(dataset.samples)) if request.limit else len(dataset.samples)
    index, count = request.shard
    if not 1 <= index <= count:
        raise HarnessError(f"--shard {index}/{count}: index must be between 1 and {count}", "e.g. --shard 2/4")
    bounds = np.linspace(0, total, count + 1).round().astype(int)
    start, stop = int(bounds[index - 1]), int(bounds[index])
    if not suite.model.weights.is_file():
        raise HarnessError(f"weights file not found: {suite.model.weights}", "fix [model] weights (or onnx) in the suite")
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
