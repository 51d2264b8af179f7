"""Decode and pre-processing on every core: parts of a sample list prepared in worker processes while the
caller infers what is already prepared.

Workers are spawned, not forked: the parent may already run ONNX Runtime or OpenVINO thread pools, and a forked
child would inherit their held locks.  They ignore Ctrl-C (the parent handles it and drops their work) and run
one OpenCV thread each, so N workers use N cores.  Results come back in sample order, so tensors, stage hashes
and errors are those of a serial run.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType

from harness.core.plugins import load_from_environment
from harness.data.dataset import Sample
from harness.data.feed import DecoderNotApplicable, InputSet, concat_inputs, decode_part, refuse_unreadable, tensors_from
from harness.data.intake import IntakePolicy
from harness.data.stack import StackSpec

PART_SIZE = 32  # samples per task sent to a worker: large enough to hide the pickling, small enough to balance


def default_workers() -> int:
    """Every CPU this process may run on."""
    return len(os.sched_getaffinity(0))


def _init_worker() -> None:
    import cv2

    load_from_environment()  # the parent's plugins: their decoders, resizers and colour paths
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)


def prepare_part(samples: Sequence[Sample], stack: StackSpec, policy: IntakePolicy) -> tuple[InputSet | None, list[DecoderNotApplicable]]:
    """One part through the stack, or the samples its decoder cannot read (the caller counts them over every part)."""
    decoded, unreadable = decode_part(samples, stack, None, policy)
    return (None, unreadable) if unreadable else (tensors_from(samples, decoded, stack), [])


class Pending:
    """Inputs being prepared: `result()` waits for them, in sample order."""

    def __init__(self, parts: list[Future[tuple[InputSet | None, list[DecoderNotApplicable]]]], stack: StackSpec, total: int) -> None:
        self.parts, self.stack, self.total = parts, stack, total

    def result(self, advance: Callable[[], None] | None = None) -> InputSet:
        done, unreadable = [], []
        for part in self.parts:
            inputs, failed = part.result()
            unreadable += failed
            if inputs is not None:
                done.append(inputs)
                for _ in range(len(inputs) if advance else 0):
                    advance()  # type: ignore[misc]
        refuse_unreadable(unreadable, self.total, self.stack.decoder)
        return concat_inputs(done)


class _Inline(Future[tuple[InputSet | None, list[DecoderNotApplicable]]]):
    """No workers: prepared in this process when asked for."""

    def __init__(self, samples: Sequence[Sample], stack: StackSpec, policy: IntakePolicy) -> None:
        super().__init__()
        self.call = (samples, stack, policy)

    def result(self, timeout: float | None = None) -> tuple[InputSet | None, list[DecoderNotApplicable]]:
        return prepare_part(*self.call)


class Preparer:
    """Prepares sample lists on `workers` processes (0: in this process, when the result is asked for)."""

    def __init__(self, workers: int | None = None, part_size: int = PART_SIZE) -> None:
        self.workers = default_workers() if workers is None else workers
        self.part_size = part_size
        self._pool: ProcessPoolExecutor | None = None
        if self.workers > 0:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker)

    def submit(self, samples: Sequence[Sample], stack: StackSpec, policy: IntakePolicy) -> Pending:
        parts = [samples[i : i + self.part_size] for i in range(0, len(samples), self.part_size)]
        if self._pool is None:
            return Pending([_Inline(part, stack, policy) for part in parts], stack, len(samples))
        return Pending([self._pool.submit(prepare_part, part, stack, policy) for part in parts], stack, len(samples))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Preparer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
