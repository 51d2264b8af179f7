"""Decode and pre-processing on every core: parts of a sample list prepared in worker processes while the
caller infers what is already prepared.

Workers are spawned, not forked: the parent may already run ONNX Runtime or OpenVINO thread pools, and a forked
child would inherit their held locks.  They ignore Ctrl-C (the parent handles it and drops their work) and run
one OpenCV thread each, so N workers use N cores.  Results come back in sample order, so tensors, stage hashes
and errors are those of a serial run.  A worker normalises each part's tensors straight into a memory-mapped
`.npy` file of its own in shared memory (`/dev/shm` where there is one), and only the rest of the part (ids,
hashes, geometry) is pickled back; the caller copies the tensors out of the files into the one input set and
deletes them.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from types import TracebackType

import numpy as np

from harness.core.plugins import load_from_environment
from harness.data.dataset import Sample
from harness.data.feed import DecoderNotApplicable, InputSet, concat_inputs, decode_part, refuse_unreadable, tensors_from
from harness.data.intake import IntakePolicy
from harness.data.stack import StackSpec

PART_SIZE = 32  # the fewest samples per task sent to a worker: enough to hide the pickling
PARTS_PER_WORKER = 4  # larger lists go in about this many parts per worker: each part costs a task, a file and a copy
MAX_PART_SIZE = 256  # (2,000 ImageNet-sized files on 2 workers: 32 a part gave 663 images/s, 256 a part 708)


def default_workers() -> int:
    """Every CPU this process may run on."""
    return len(os.sched_getaffinity(0))


def _init_worker() -> None:
    import cv2

    load_from_environment()  # the parent's plugins: their decoders, resizers and colour paths
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)


SHARED_DIR = Path("/dev/shm")  # memory-backed files where the system has them, else the temp folder


def prepare_part(
    samples: Sequence[Sample], stack: StackSpec, policy: IntakePolicy, shared: Path | None = None
) -> tuple[InputSet | None, list[DecoderNotApplicable]]:
    """One part through the stack, or the samples its decoder cannot read (the caller counts them over every part).
    With `shared`, the tensors are written into that memory-mapped `.npy` file and the returned set holds none
    (`attach` reads them back)."""
    decoded, unreadable = decode_part(samples, stack, None, policy)
    if unreadable:
        return None, unreadable
    if shared is None or not decoded.pixels:
        return tensors_from(samples, decoded, stack), []
    inputs = tensors_from(samples, decoded, stack, lambda shape: np.lib.format.open_memmap(shared, "w+", np.float32, shape))
    shape = inputs.tensors.shape
    inputs.tensors.flush()
    return dataclasses.replace(inputs, tensors=np.empty((0, *shape[1:]), dtype=np.float32)), []


def attach(inputs: InputSet, shared: Path | None) -> InputSet:
    """A part's input set with its tensors read from the shared file its worker wrote (mapped, not copied)."""
    if shared is None or len(inputs.tensors) == len(inputs):
        return inputs
    return dataclasses.replace(inputs, tensors=np.load(shared, mmap_mode="r"))


class Pending:
    """Inputs being prepared: `result()` waits for them, in sample order."""

    def __init__(
        self,
        parts: list[Future[tuple[InputSet | None, list[DecoderNotApplicable]]]],
        stack: StackSpec,
        total: int,
        shared: Sequence[Path | None] = (),
    ) -> None:
        self.parts, self.stack, self.total = parts, stack, total
        self.shared = list(shared) or [None] * len(parts)

    def result(self, advance: Callable[[], None] | None = None) -> InputSet:
        done, unreadable = [], []
        try:
            for part, shared in zip(self.parts, self.shared, strict=True):
                inputs, failed = part.result()
                unreadable += failed
                if inputs is not None:
                    done.append(attach(inputs, shared))
                    for _ in range(len(inputs) if advance else 0):
                        advance()  # type: ignore[misc]
            refuse_unreadable(unreadable, self.total, self.stack.decoder)
            whole = concat_inputs(done)  # the one copy out of the shared files
            if isinstance(whole.tensors, np.memmap):  # one part (still its file's mapping), or a concatenation typed as one
                whole = dataclasses.replace(whole, tensors=np.array(whole.tensors) if len(done) == 1 else np.asarray(whole.tensors))
            return whole
        finally:
            for path in self.shared:
                if path is not None:
                    path.unlink(missing_ok=True)


class _Inline(Future[tuple[InputSet | None, list[DecoderNotApplicable]]]):
    """No workers: prepared in this process when asked for."""

    def __init__(self, samples: Sequence[Sample], stack: StackSpec, policy: IntakePolicy) -> None:
        super().__init__()
        self.call = (samples, stack, policy)

    def result(self, timeout: float | None = None) -> tuple[InputSet | None, list[DecoderNotApplicable]]:
        return prepare_part(*self.call)


class Preparer:
    """Prepares sample lists on `workers` processes (0: in this process, when the result is asked for)."""

    def __init__(self, workers: int | None = None, part_size: int | None = None, shared: bool = True) -> None:
        self.workers = default_workers() if workers is None else workers
        self.part_size = part_size
        self._pool: ProcessPoolExecutor | None = None
        self._folder: Path | None = None  # the workers' tensor files (shared: True), removed on close
        self._serial = 0
        if self.workers > 0:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker)
            if shared:
                base = SHARED_DIR if SHARED_DIR.is_dir() and os.access(SHARED_DIR, os.W_OK) else None
                self._folder = Path(tempfile.mkdtemp(prefix="harness-tensors-", dir=base))

    def submit(self, samples: Sequence[Sample], stack: StackSpec, policy: IntakePolicy) -> Pending:
        # by default, parts as large as still balance the workers
        size = self.part_size or min(max(PART_SIZE, -(-len(samples) // (max(self.workers, 1) * PARTS_PER_WORKER))), MAX_PART_SIZE)
        parts = [samples[i : i + size] for i in range(0, len(samples), size)]
        if self._pool is None:
            return Pending([_Inline(part, stack, policy) for part in parts], stack, len(samples))
        shared = [self._next_file() for _ in parts]
        futures = [self._pool.submit(prepare_part, part, stack, policy, path) for part, path in zip(parts, shared, strict=True)]
        return Pending(futures, stack, len(samples), shared)

    def _next_file(self) -> Path | None:
        if self._folder is None:
            return None
        self._serial += 1
        return self._folder / f"part-{self._serial}.npy"

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> Preparer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
