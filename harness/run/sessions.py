"""Sessions of runtimes on model artifacts, fed the input tensors in the split's fixed batch grid.

A session is opened once per (runtime, artifacts) and kept while a run streams through it (work units,
matrix chunks); every runtime gets the same arrays.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from exporters.artifacts import ModelArtifacts
from harness.core.errors import HarnessError
from harness.data.feed import InputSet, batch_layout, padded_batch
from harness.data.stack import Geometry
from harness.run.outputs import Inference, pad_ragged, pad_sized, unpadded_groups
from harness.tasks import Task
from runtimes import RuntimeSpec, Session, get_runtime

Tracker = Callable[[str, int], Callable[[], None]]


def no_tracking(_description: str, _total: int) -> Callable[[], None]:
    return lambda: None


OutputCheck = Callable[[dict[str, np.ndarray]], None]
Ragged = tuple[tuple[str, ...], int]


def output_bounds(session: Session, input_name: str, inputs: InputSet, ragged: Ragged) -> dict[str, tuple[int, ...]]:
    """A per-image stack's outputs whose shape follows the input size, and their shape at its largest input: two
    probes of zeros, at the bound and at about half of it (the same for every part of a run: shards, units)."""
    sizes = inputs.stack.image_sizes
    assert sizes is not None
    (step, _), bound = sizes
    axes = (1, 2) if inputs.stack.layout == "nchw" else (0, 1)
    shape = list(inputs.tensors.shape[1:])
    probes = []
    for hw in (bound, tuple(max(step, side // 2 // step * step) for side in bound)):
        for axis, side in zip(axes, hw, strict=True):
            shape[axis] = side
        out = session.run({input_name: np.zeros((1, *shape), dtype=np.float32)})
        probes.append(pad_ragged(out, *ragged) if ragged[0] else out)
    largest, smaller = probes
    return {name: value.shape for name, value in largest.items() if value.shape != smaller[name].shape}


def feed_session(
    session: Session,
    input_name: str,
    inputs: InputSet,
    batch_size: int,
    advance: Callable[[], None],
    check: OutputCheck | None = None,
    ragged: Ragged = ((), 0),
    bounds: dict[str, tuple[int, ...]] | None = None,
) -> tuple[dict[str, np.ndarray], float]:
    """Feed `inputs` in full batches of the split's fixed grid (`feed.batch_layout`); returns each sample's
    outputs (padding rows dropped) and the inference seconds.  `check` sees the first batch's outputs (the task's
    output contract), before any more is run.  `ragged`: outputs without a batch axis (a batch-1 model's
    data-dependent detections) and the rows each is padded to (`outputs.pad_ragged`).  A per-image stack's
    samples are fed alone at their own sizes, the outputs that follow the size padded to `bounds`
    (`output_bounds` when None; `outputs.pad_sized`)."""
    per_image = inputs.stack.per_image
    if per_image and bounds is None and len(inputs):
        bounds = output_bounds(session, input_name, inputs, ragged)
    outputs: dict[str, np.ndarray] = {}
    seconds = 0.0
    fed = 1 if per_image else batch_size  # rows a feed holds
    for rows, slots in batch_layout(inputs.positions, fed):
        if per_image:  # batches of one: rows holds one sample, in slot 0
            feed = {input_name: inputs.sample(int(rows[0]))[None]}
        else:
            feed = {input_name: padded_batch(inputs.tensors, rows, slots, batch_size)}
        start = time.perf_counter()
        out = session.run(feed)
        seconds += time.perf_counter() - start
        if ragged[0]:
            out = pad_ragged(out, *ragged)
        if bounds:
            out = pad_sized(out, bounds)
        if check is not None and not outputs:
            check(out)
        for name, value in out.items():
            value = _batched(name, np.asarray(value), fed)
            if name not in outputs:
                outputs[name] = np.empty((len(inputs), *value.shape[1:]), dtype=value.dtype)
            elif outputs[name].shape[1:] != value.shape[1:]:
                raise HarnessError(
                    f"output '{name}' is {list(value.shape[1:])} for sample {inputs.ids[rows[0]]}, "
                    f"{list(outputs[name].shape[1:])} for the first: its rows depend on the image",
                    "list it in [model] ragged_outputs with ragged_rows (one image's rows, NaN-padded)",
                )
            outputs[name][rows] = value[slots]
        advance()
    return outputs, seconds


def _batched(name: str, value: np.ndarray, batch: int) -> np.ndarray:
    """An output with its batch axis: a batch-1 feed's output without one (a tensor of one image: a reduction over
    the batch, a detection list, an exposed intermediate of a batch-1 model) gets one, whole; a larger batch's
    output must have it."""
    if value.ndim and value.shape[0] == batch:
        return value
    if batch == 1:
        return value[None]
    raise HarnessError(
        f"output '{name}' is {list(value.shape)} for a batch of {batch}: it has no batch axis",
        "export the model with the batch as every output's first axis, or feed it batches of 1 ([model] ragged_outputs)",
    )


def predict(task: Task, outputs: dict[str, np.ndarray], geometry: tuple[Geometry, ...]) -> np.ndarray:
    """The task's predictions on every sample's outputs, per group of samples whose inputs and per-image outputs
    share one size (`outputs.unpadded_groups`: each decoded at its own size)."""
    groups = unpadded_groups(outputs, np.array([g.tensor_hw for g in geometry], dtype=np.int64).reshape(-1, 2))
    if len(groups) == 1:  # every sample at once (the task's own path for fixed sizes)
        return task.predictions(groups[0][1], geometry)
    predicted: np.ndarray | None = None
    for rows, cut in groups:
        got = task.predictions(cut, tuple(geometry[r] for r in rows))
        if predicted is None:
            predicted = np.empty((sum(len(r) for r, _ in groups), *got.shape[1:]), dtype=got.dtype)
        predicted[rows] = got
    assert predicted is not None
    return predicted


@dataclass
class OpenSession:
    session: Session
    input_name: str
    describe: dict[str, str]
    used: dict[str, Any]  # provenance of the artifacts the session consumed
    bounds: dict[str, tuple[int, ...]] | None = None  # a per-image stack's size-following outputs (`output_bounds`)


def open_session(spec: RuntimeSpec, artifacts: ModelArtifacts) -> OpenSession:
    """A session of `spec` on `artifacts`, with what it runs and the provenance of the files it consumed."""
    artifacts.accessed.clear()
    session = spec.open(artifacts)
    used = {label: artifacts.provenance[label] for label in dict.fromkeys(artifacts.accessed)}
    return OpenSession(session, artifacts.input_names[0], session.describe(), used)


def run_session(
    spec: RuntimeSpec, artifacts: ModelArtifacts, inputs: InputSet, batch_size: int, advance: Callable[[], None]
) -> tuple[dict[str, np.ndarray], float, dict[str, str]]:
    """Open a session, feed it `inputs` (`feed_session`) and close it; returns the outputs, inference seconds
    and what the session ran."""
    opened = open_session(spec, artifacts)
    try:
        outputs, seconds = feed_session(
            opened.session, opened.input_name, inputs, artifacts.fixed_batch or batch_size, advance, ragged=artifacts.ragged
        )
        return outputs, seconds, opened.describe
    finally:
        opened.session.close()


def batches(inputs: InputSet, batch_size: int) -> int:
    """Batches of the fixed grid that `inputs` touch (a per-image stack's samples: one each)."""
    return len(inputs) if inputs.stack.per_image else len(np.unique(inputs.positions // batch_size))


class Sessions:
    """Sessions kept open across the parts of a run that stream through them (work units, matrix chunks)."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, ...], OpenSession] = {}

    def infer(
        self,
        key: tuple[str, ...],
        runtime: str,
        artifacts: ModelArtifacts,
        inputs: InputSet,
        batch_size: int,
        task: Task,
        advance: Callable[[], None],
        check: OutputCheck | None = None,
    ) -> Inference:
        """`runtime` on `inputs` through the session opened for `key` (opened on first use); `check`: the output
        contract, on the first batch a session runs."""
        if key not in self._open:
            self._open[key] = open_session(get_runtime(runtime), artifacts)
        else:
            check = None
        opened = self._open[key]
        if inputs.stack.per_image and opened.bounds is None and len(inputs):
            opened.bounds = output_bounds(opened.session, opened.input_name, inputs, artifacts.ragged)
        batch = artifacts.fixed_batch or batch_size
        outputs, seconds = feed_session(opened.session, opened.input_name, inputs, batch, advance, check, artifacts.ragged, opened.bounds)
        return Inference(runtime, outputs, predict(task, outputs, inputs.geometry), seconds, opened.describe, opened.used)

    def close(self) -> None:
        for opened in self._open.values():
            opened.session.close()
        self._open.clear()


def validate_runtimes(names: list[str]) -> None:
    """Unknown or unavailable runtimes fail before any work is done."""
    for name in names:
        get_runtime(name).require_available()
