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
from harness.data.feed import InputSet, batch_layout, padded_batch
from harness.run.outputs import Inference, pad_ragged
from harness.tasks import Task
from runtimes import RuntimeSpec, Session, get_runtime

Tracker = Callable[[str, int], Callable[[], None]]


def no_tracking(_description: str, _total: int) -> Callable[[], None]:
    return lambda: None


OutputCheck = Callable[[dict[str, np.ndarray]], None]


def feed_session(
    session: Session,
    input_name: str,
    inputs: InputSet,
    batch_size: int,
    advance: Callable[[], None],
    check: OutputCheck | None = None,
    ragged: tuple[tuple[str, ...], int] = ((), 0),
) -> tuple[dict[str, np.ndarray], float]:
    """Feed `inputs` in full batches of the split's fixed grid (`feed.batch_layout`); returns each sample's
    outputs (padding rows dropped) and the inference seconds.  `check` sees the first batch's outputs (the task's
    output contract), before any more is run.  `ragged`: outputs without a batch axis (a batch-1 model's
    data-dependent detections) and the rows each is padded to (`outputs.pad_ragged`)."""
    outputs: dict[str, np.ndarray] = {}
    seconds = 0.0
    for rows, slots in batch_layout(inputs.positions, batch_size):
        feed = {input_name: padded_batch(inputs.tensors, rows, slots, batch_size)}
        start = time.perf_counter()
        out = session.run(feed)
        seconds += time.perf_counter() - start
        if ragged[0]:
            out = pad_ragged(out, *ragged)
        if check is not None and not outputs:
            check(out)
        for name, value in out.items():
            if name not in outputs:
                outputs[name] = np.empty((len(inputs), *value.shape[1:]), dtype=value.dtype)
            outputs[name][rows] = value[slots]
        advance()
    return outputs, seconds


@dataclass
class OpenSession:
    session: Session
    input_name: str
    describe: dict[str, str]
    used: dict[str, Any]  # provenance of the artifacts the session consumed


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
    """Batches of the fixed grid that `inputs` touch."""
    return len(np.unique(inputs.positions // batch_size))


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
        batch = artifacts.fixed_batch or batch_size
        outputs, seconds = feed_session(opened.session, opened.input_name, inputs, batch, advance, check, artifacts.ragged)
        return Inference(runtime, outputs, task.predictions(outputs, inputs.geometry), seconds, opened.describe, opened.used)

    def close(self) -> None:
        for opened in self._open.values():
            opened.session.close()
        self._open.clear()


def validate_runtimes(names: list[str]) -> None:
    """Unknown or unavailable runtimes fail before any work is done."""
    for name in names:
        get_runtime(name).require_available()
