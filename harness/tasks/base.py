"""What every task plugin owns, and the registry.

A task turns raw outputs (and each tensor's geometry) into predictions, scores them against the
targets (the task metric), and says how far one side's predictions agree with another's: the
generalised flip (classification: another top-1; detection: an image whose matched detections
changed), with negative flips (right before, wrong now) and positive flips, and per-class deltas.
Predictions and targets are numpy arrays with one row per sample (ragged box lists are padded with
NaN rows), so goldens, shards and stage hashes treat every task alike.  Adding a task is one module
that calls `register_task`.  Two optional attributes are read where present: `agreement_from_predictions`
(True: `agree` reads predictions only, so a bounded golden compares it on every sample, `harness.judge.golden`)
and `evaluator` (a string naming the metric's implementation and version, kept in goldens' metadata).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from harness.core.errors import HarnessError
from harness.data.stack import Geometry

Shapes = Mapping[str, tuple[int | None, ...] | None]  # output name -> dims (batch first; None: not declared)


class Observed(Protocol):
    """Raw outputs and predictions of one side (an inference or a golden)."""

    @property
    def outputs(self) -> dict[str, np.ndarray]: ...

    @property
    def predictions(self) -> np.ndarray: ...


@dataclass(frozen=True)
class ClassDelta:
    """One class's score (accuracy, AP) on the candidate and on the baseline."""

    label: int
    samples: int
    accuracy: float
    baseline_accuracy: float

    @property
    def delta(self) -> float:
        return self.accuracy - self.baseline_accuracy


@dataclass(frozen=True)
class Agreement:
    """How a candidate's predictions agree with a baseline's on the same samples."""

    agreement: float  # share of samples whose prediction is unchanged
    flips: list[str]
    negative_flips: list[str]  # right before, wrong now
    positive_flips: list[str]
    per_class: list[ClassDelta]
    metric: float
    metric_baseline: float
    details: dict[str, float | None] = field(default_factory=dict)  # task-specific: top-5, KL, matched IoU, ...


class Task(Protocol):
    name: ClassVar[str]
    metric_name: str
    postprocess_keys: ClassVar[dict[str, type]]  # the [postprocess] flags it takes, with their types
    postprocess_variants: ClassVar[dict[str, dict[str, Any]]]  # deployment differences in post-processing, for the matrix

    def target(self, entry: dict[str, Any], classes: int) -> np.ndarray:
        """One manifest entry's target, a fixed-shape array (a split's targets stack); ValueError names what is wrong."""
        ...

    def check_outputs(self, shapes: Shapes, classes: int) -> None:
        """Refuse outputs that do not fit what the task reads (one `OutputContractError` line naming the output, its
        shape and the key to set): checked on the model's declared outputs, then on the first batch."""
        ...

    def predictions(self, outputs: dict[str, np.ndarray], geometry: Sequence[Geometry]) -> np.ndarray: ...

    def metric(self, predictions: np.ndarray, targets: np.ndarray) -> float: ...

    def agree(self, ids: Sequence[str], targets: np.ndarray, candidate: Observed, baseline: Observed) -> Agreement: ...


class OutputContractError(HarnessError):
    """The model's outputs do not fit the task."""


def shape_text(dims: tuple[int | None, ...] | None) -> str:
    if dims is None:
        return "[?]"
    return "[" + ", ".join("N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(dims)) + "]"


def listed(shapes: Shapes) -> str:
    """'boxes [N, 4], prob [N, 2]'."""
    return ", ".join(f"{name} {shape_text(dims)}" for name, dims in shapes.items())


def require_output(shapes: Shapes, name: str, key: str) -> tuple[int | None, ...] | None:
    """The dims of output `name`, which the task reads as `key` says; a missing one is an OutputContractError."""
    if name not in shapes:
        raise OutputContractError(f"the model has no output '{name}' ({key}); its outputs: {listed(shapes)}", f"set {key} to one of them")
    return shapes[name]


def shapes_of(outputs: Mapping[str, np.ndarray]) -> dict[str, tuple[int | None, ...]]:
    return {name: tuple(int(d) for d in value.shape) for name, value in outputs.items()}


TASKS: dict[str, type] = {}  # task name -> its class (a `Task`)
POSTPROCESS_KEYS: dict[str, dict[str, type]] = {}


def register_task(factory: type, name: str | None = None) -> type:
    """Register a task class under its `name` (and under `name` too: a suite's `task = "module:Class"`)."""
    for key in dict.fromkeys([factory.name, name or factory.name]):
        TASKS[key] = factory
        POSTPROCESS_KEYS[key] = getattr(factory, "postprocess_keys", {})
    return factory


@dataclass(frozen=True)
class TaskSpec:
    """What a suite says of its task: the task's name, the model's outputs it reads, its post-processing flags, and
    how many classes its manifest lists (0: unknown; a task with `takes_classes` is built with the count)."""

    name: str
    output_names: tuple[str, ...]
    postprocess: dict[str, Any] = field(default_factory=dict)
    classes: int = 0

    def with_postprocess(self, flags: dict[str, Any]) -> TaskSpec:
        """The same task with `flags` over the suite's post-processing (a matrix variant)."""
        return replace(self, postprocess=self.postprocess | flags)


def make_task(spec: TaskSpec) -> Task:
    if spec.name not in TASKS:
        raise ValueError(f"unknown task {spec.name}")
    factory = TASKS[spec.name]
    counted = {"classes": spec.classes} if getattr(factory, "takes_classes", False) and spec.classes else {}
    return factory(spec.output_names, **spec.postprocess, **counted)


def target_parser(task: Task, manifest: Path) -> Callable[[dict[str, Any], int], np.ndarray]:
    """The parser of `task`'s targets in `manifest`'s entries: a task whose targets are files beside the images
    (segmentation masks) reads them from the manifest's folder (its `target_parser(root)`), the others parse the
    entry alone (`target`)."""
    bound = getattr(task, "target_parser", None)
    return bound((manifest if manifest.is_dir() else manifest.parent).resolve()) if bound else task.target
