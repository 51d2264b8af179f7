"""Decode and pre-processing on every core: parts of a sample list prepared in worker processes while the
caller infers what is already prepared.

Workers are spawned, not forked: the parent may already run ONNX Runtime or OpenVINO thread pools, and a forked
child would inherit their held locks.  They ignore Ctrl-C (the parent handles it and drops their work) and run
one OpenCV thread each, so N workers use N cores.  Results come back in sample order, so tensors, stage hashes
and errors are those of a serial run.  Workers normalise tensors straight into memory-mapped files in shared
memory (`/dev/shm` where there is one), and only the rest of each part (ids, hashes, geometry) is pickled back.
Where the stack fixes the tensors' shape, the list has one file and each worker writes its part's rows: the
input set's tensors are that file's mapping, never copied, and once they are gone the file serves a later list
(`TensorFiles`).  Otherwise each part has a file of its own, copied out once and deleted.  Without workers, the
list is prepared in this process as one part, into such a file where the folder is memory-backed.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import weakref
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
KEEP_FILES = 2  # finished lists' files kept for later lists: the range being inferred and the one prepared ahead


class TensorFiles:
    """The tensor files of a preparer's folder, one per list of fixed-shape tensors.  A list's file comes back once
    nothing maps it any more (its input set and every view of its tensors gone) and is handed to a later list:
    that list's tensors are written into pages already allocated instead of fresh ones (on this VM, whose host
    reclaims freed memory, fresh pages cost about 1 ms per MB).  Files are never handed out while mapped, so no
    caller's array can change under it; at most `KEEP_FILES` are kept, and `close` deletes them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._free: list[tuple[int, Path]] = []  # (bytes, file), of lists whose tensors are gone
        self._lock = threading.RLock()  # files come back from the collector: any thread, even inside take()
        self._serial = 0
        self._closed = False

    def new_path(self) -> Path:
        with self._lock:
            self._serial += 1
            return self.folder / f"tensors-{self._serial}"

    def take(self, nbytes: int) -> Path | None:
        """A file of at least `nbytes` for a list's tensors (a kept one where one is that large), or None when the
        folder's file system has no room for a new one."""
        with self._lock:
            fits = [kept for kept in self._free if kept[0] >= nbytes]
            if fits:
                smallest = min(fits)
                self._free.remove(smallest)
                return smallest[1]
        if shutil.disk_usage(self.folder).free < nbytes:
            return None
        path = self.new_path()
        with path.open("wb") as fh:
            fh.truncate(nbytes)  # pages are allocated as the workers write them
        return path

    def mapped(self, path: Path, shape: tuple[int, ...]) -> np.ndarray:
        """The tensors of `shape` at the start of the file; the file comes back when the mapping is gone."""
        tensors = _mapped(path, 0, math.prod(shape) * np.dtype(np.float32).itemsize).reshape(shape)
        memory = tensors
        while isinstance(memory, np.ndarray):  # the mapping itself: every array of these bytes holds it
            memory = memory.base
        weakref.finalize(memory, self.give, path)
        return tensors

    def give(self, path: Path) -> None:
        """A file nothing maps any more: kept for a later list, or deleted."""
        with self._lock:
            if not self._closed and len(self._free) < KEEP_FILES and path.exists():
                self._free.append((path.stat().st_size, path))
                return
        path.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._free.clear()


@dataclass(frozen=True)
class SharedRows:
    """Where a worker writes a part's tensors: rows `start`.. of the caller's file for the whole list (raw
    float32), or (start None) a `.npy` file of the part's own."""

    path: Path
    start: int | None = None

    def allocate(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.start is None:
            return np.lib.format.open_memmap(self.path, "w+", np.float32, shape)
        row = math.prod(shape[1:]) * np.dtype(np.float32).itemsize
        return _mapped(self.path, self.start * row, shape[0] * row).reshape(shape)  # a file too short: ValueError


POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux only; elsewhere pages are mapped as they are touched


def _mapped(path: Path, start: int, size: int) -> np.ndarray:
    """Bytes `start`.. `start + size` of a file as float32, writable, through a shared mapping whose pages are
    mapped at once (MAP_POPULATE: one call, not a page fault for each page)."""
    skip = start % mmap.ALLOCATIONGRANULARITY  # a mapping starts on a page
    with path.open("r+b") as fh:
        memory = mmap.mmap(fh.fileno(), skip + size, flags=mmap.MAP_SHARED | POPULATE, offset=start - skip)
    return np.frombuffer(memory, np.float32, size // 4, skip)


def prepare_part(
    samples: Sequence[Sample], stack: StackSpec, policy: IntakePolicy, shared: SharedRows | None = None
) -> tuple[InputSet | None, list[DecoderNotApplicable]]:
    """One part through the stack, or the samples its decoder cannot read (the caller counts them over every part).
    With `shared`, the tensors are written there and the returned set holds none (the caller maps them)."""
    inputs, unreadable = prepare_samples(samples, stack, None, policy, shared.allocate if shared else None)
    if inputs is None or shared is None or not samples:  # no samples: no row was allocated there
        return inputs, unreadable
    shape = inputs.tensors.shape  # written through a shared mapping: the caller's mapping sees them, no flush
    return dataclasses.replace(inputs, tensors=np.empty((0, *shape[1:]), dtype=np.float32)), []


def tensor_shape(stack: StackSpec) -> tuple[int, ...] | None:
    """The shape of each tensor the stack gives (a per-image stack's: its bound), or None when it depends on the
    image; from a small grey image through the stack's pre-processing."""
    if stack.bound_hw is None:
        return None
    return stack.row_shape(prepare(np.full((16, 16, 3), 128, dtype=np.uint8), stack).tensor.shape)


@dataclass(frozen=True)
class WholeFile:
    """The one file a list's tensors are written to, as rows, and their shape."""

    files: TensorFiles
    path: Path
    shape: tuple[int, ...]


class Pending:
    """Inputs being prepared: `result()` waits for them, in sample order."""

    def __init__(
        self,
        parts: list[Future[tuple[InputSet | None, list[DecoderNotApplicable]]]],
        stack: StackSpec,
        total: int,
        files: Sequence[Path] = (),
        whole: WholeFile | None = None,
    ) -> None:
        self.parts, self.stack, self.total = parts, stack, total
        self.files, self.whole = list(files), whole  # a file a part (or none), or the list's one file

    def result(self, advance: Callable[[], None] | None = None) -> InputSet:
        done, unreadable = [], []
        try:
            for k, part in enumerate(self.parts):
                inputs, failed = part.result()
                unreadable += failed
                if inputs is not None:
                    mapped = self.files and len(inputs.tensors) < len(inputs)
                    done.append(dataclasses.replace(inputs, tensors=np.load(self.files[k], mmap_mode="r")) if mapped else inputs)
                    for _ in range(len(inputs) if advance else 0):
                        advance()  # type: ignore[misc]
            refuse_unreadable(unreadable, self.total, self.stack.decoder)
            whole = concat_inputs(done)
            if self.whole and len(whole.tensors) < len(whole):  # the list's one file, mapped: its tensors
                tensors, self.whole = self.whole.files.mapped(self.whole.path, (self.total, *self.whole.shape)), None
                return dataclasses.replace(whole, tensors=tensors)
            if isinstance(whole.tensors, np.memmap):  # one part (its file's mapping: copied out), or a concatenation typed as one
                whole = dataclasses.replace(whole, tensors=np.array(whole.tensors) if len(done) == 1 else np.asarray(whole.tensors))
            return whole
        finally:
            for path in self.files:
                path.unlink(missing_ok=True)
            if self.whole:  # not mapped (an error, or no samples): deleted, as workers may still write to it
                self.whole.path.unlink(missing_ok=True)


class _Inline(Future[tuple[InputSet | None, list[DecoderNotApplicable]]]):
    """No workers: prepared in this process when asked for."""

    def __init__(self, samples: Sequence[Sample], stack: StackSpec, policy: IntakePolicy, rows: SharedRows | None) -> None:
        super().__init__()
        self.call = (samples, stack, policy, rows)

    def result(self, timeout: float | None = None) -> tuple[InputSet | None, list[DecoderNotApplicable]]:
        return prepare_part(*self.call)


class Preparer:
    """Prepares sample lists on `workers` processes (0: in this process, when the result is asked for).  Lists of
    fixed-shape tensors go to files of a folder in shared memory (`TensorFiles`), so later lists reuse their pages;
    without workers only where the folder is memory-backed (else into a fresh array)."""

    def __init__(self, workers: int | None = None, part_size: int | None = None, shared: bool = True) -> None:
        self.workers = default_workers() if workers is None else workers
        self.part_size = part_size
        self._pool: ProcessPoolExecutor | None = None
        self._files: TensorFiles | None = None  # the tensor files (shared: True), removed on close
        if self.workers > 0:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker)
        memory = SHARED_DIR.is_dir() and os.access(SHARED_DIR, os.W_OK)
        if shared and (memory or self._pool is not None):
            self._files = TensorFiles(Path(tempfile.mkdtemp(prefix="harness-tensors-", dir=SHARED_DIR if memory else None)))

    def submit(self, samples: Sequence[Sample], stack: StackSpec, policy: IntakePolicy) -> Pending:
        shape = tensor_shape(stack) if self._files is not None and samples else None
        whole = self._whole_file(len(samples), shape) if shape is not None else None
        if self._pool is None:
            rows = SharedRows(whole.path, 0) if whole else None
            return Pending([_Inline(samples, stack, policy, rows)], stack, len(samples), whole=whole)
        # by default, parts as large as still balance the workers
        size = self.part_size or min(max(PART_SIZE, -(-len(samples) // (self.workers * PARTS_PER_WORKER))), MAX_PART_SIZE)
        starts = range(0, len(samples), size)
        if whole is not None:
            shared: list[SharedRows | None] = [SharedRows(whole.path, start) for start in starts]
        elif self._files is not None and shape is None:
            shared = [SharedRows(self._files.new_path()) for _ in starts]
        else:  # no files, or no room for the list's: tensors pickled back
            shared = [None] * len(starts)
        futures = [
            self._pool.submit(prepare_part, samples[start : start + size], stack, policy, rows)
            for start, rows in zip(starts, shared, strict=True)
        ]
        files = [rows.path for rows in shared if rows is not None] if whole is None else []
        return Pending(futures, stack, len(samples), files, whole)

    def _whole_file(self, count: int, shape: tuple[int, ...]) -> WholeFile | None:
        assert self._files is not None
        path = self._files.take(count * math.prod(shape) * np.dtype(np.float32).itemsize)
        return WholeFile(self._files, path, shape) if path is not None else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._files is not None:
            self._files.close()
            shutil.rmtree(self._files.folder, ignore_errors=True)  # a file still mapped lives on until unmapped
            self._files = None

    def __enter__(self) -> Preparer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
