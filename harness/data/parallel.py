"""Decode and pre-processing on every core: parts of a sample list prepared in worker processes while the
caller infers what is already prepared.

Workers are spawned, not forked: the parent may already run ONNX Runtime or OpenVINO thread pools, and a forked
child would inherit their held locks.  They ignore Ctrl-C (the parent handles it and drops their work) and run
one OpenCV thread each, so N workers use N cores.  Results come back in sample order, so tensors, stage hashes
and errors are those of a serial run.  Workers normalise tensors straight into a memory-mapped `.npy` file in
shared memory (`/dev/shm` where there is one), and only the rest of each part (ids, hashes, geometry) is pickled
back.  Where the stack fixes the tensors' shape, the caller creates one file for the whole list and each worker
writes its part's rows: the input set's tensors are that file's mapping, never copied.  Otherwise each part has
a file of its own, copied out once into the input set.  Files are deleted once read (a mapping outlives its
file).  Without workers, the list is prepared in this process as one part.
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
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from harness.core.plugins import load_from_environment
from harness.data.dataset import Sample
from harness.data.feed import DecoderNotApplicable, InputSet, concat_inputs, prepare_samples, refuse_unreadable
from harness.data.intake import IntakePolicy
from harness.data.stack import StackSpec, prepare

PART_SIZE = 32  # the fewest samples per task sent to a worker: enough to hide the pickling
PARTS_PER_WORKER = 4  # larger lists go in about this many parts per worker: each part costs a task (some stacks a file)
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


@dataclass(frozen=True)
class SharedRows:
    """Where a worker writes a part's tensors: rows `start`.. of the caller's `.npy` file for the whole list, or
    (start None) a file of the part's own."""

    path: Path
    start: int | None = None

    def allocate(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.start is None:
            return np.lib.format.open_memmap(self.path, "w+", np.float32, shape)
        rows = np.load(self.path, mmap_mode="r+")[self.start : self.start + shape[0]]
        if rows.shape != shape:
            raise ValueError(f"tensor rows {rows.shape} of {self.path} do not fit {shape}")
        return rows


def prepare_part(
    samples: Sequence[Sample], stack: StackSpec, policy: IntakePolicy, shared: SharedRows | None = None
) -> tuple[InputSet | None, list[DecoderNotApplicable]]:
    """One part through the stack, or the samples its decoder cannot read (the caller counts them over every part).
    With `shared`, the tensors are written there and the returned set holds none (the caller maps them)."""
    if shared is None or not samples:
        return prepare_samples(samples, stack, None, policy)
    inputs, unreadable = prepare_samples(samples, stack, None, policy, shared.allocate)
    if inputs is None:
        return None, unreadable
    shape = inputs.tensors.shape
    inputs.tensors.flush()
    return dataclasses.replace(inputs, tensors=np.empty((0, *shape[1:]), dtype=np.float32)), []


def tensor_shape(stack: StackSpec) -> tuple[int, ...] | None:
    """The shape of each tensor the stack gives (a per-image stack's: its bound), or None when it depends on the
    image; from a small grey image through the stack's pre-processing."""
    if stack.bound_hw is None:
        return None
    probe = prepare(np.full((16, 16, 3), 128, dtype=np.uint8), stack).tensor.shape
    if not stack.per_image:
        return probe
    channels = probe[0 if stack.layout == "nchw" else 2]
    return (channels, *stack.bound_hw) if stack.layout == "nchw" else (*stack.bound_hw, channels)


class Pending:
    """Inputs being prepared: `result()` waits for them, in sample order."""

    def __init__(
        self,
        parts: list[Future[tuple[InputSet | None, list[DecoderNotApplicable]]]],
        stack: StackSpec,
        total: int,
        files: Sequence[Path] = (),
        whole: bool = False,
    ) -> None:
        self.parts, self.stack, self.total = parts, stack, total
        self.files, self.whole = list(files), whole  # whole: one file for the list, else one a part (or none)

    def result(self, advance: Callable[[], None] | None = None) -> InputSet:
        done, unreadable = [], []
        try:
            for k, part in enumerate(self.parts):
                inputs, failed = part.result()
                unreadable += failed
                if inputs is not None:
                    mapped = self.files and not self.whole and len(inputs.tensors) < len(inputs)
                    done.append(dataclasses.replace(inputs, tensors=np.load(self.files[k], mmap_mode="r")) if mapped else inputs)
                    for _ in range(len(inputs) if advance else 0):
                        advance()  # type: ignore[misc]
            refuse_unreadable(unreadable, self.total, self.stack.decoder)
            whole = concat_inputs(done)
            if self.whole and len(whole.tensors) < len(whole):  # the list's one file, mapped: its tensors
                return dataclasses.replace(whole, tensors=np.asarray(np.load(self.files[0], mmap_mode="r+")))
            if isinstance(whole.tensors, np.memmap):  # one part (its file's mapping: copied out), or a concatenation typed as one
                whole = dataclasses.replace(whole, tensors=np.array(whole.tensors) if len(done) == 1 else np.asarray(whole.tensors))
            return whole
        finally:
            for path in self.files:
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
        if self._pool is None:
            return Pending([_Inline(samples, stack, policy)], stack, len(samples))
        # by default, parts as large as still balance the workers
        size = self.part_size or min(max(PART_SIZE, -(-len(samples) // (self.workers * PARTS_PER_WORKER))), MAX_PART_SIZE)
        starts = range(0, len(samples), size)
        shape = tensor_shape(stack) if self._folder is not None and samples else None
        if self._folder is None:
            shared: list[SharedRows | None] = [None] * len(starts)
        elif shape is None:
            shared = [SharedRows(self._next_file()) for _ in starts]
        else:
            whole = self._next_file()
            np.lib.format.open_memmap(whole, "w+", np.float32, (len(samples), *shape)).flush()
            shared = [SharedRows(whole, start) for start in starts]
        futures = [
            self._pool.submit(prepare_part, samples[start : start + size], stack, policy, rows)
            for start, rows in zip(starts, shared, strict=True)
        ]
        files = list(dict.fromkeys(rows.path for rows in shared if rows is not None))
        return Pending(futures, stack, len(samples), files, whole=shape is not None)

    def _next_file(self) -> Path:
        assert self._folder is not None
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
