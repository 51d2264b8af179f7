"""Feed: dataset samples -> one stack -> the input tensors every runtime gets.

Decoding and pre-processing happen once per run; runtimes then see the very
same array, batch by batch.  Batches are laid out on a fixed grid over the
split (`batch_layout`): sample i always sits in slot i % B of a batch of
exactly B rows, padded where a run holds only part of that batch, so its
outputs do not depend on `--limit`, `--shard` or where the last batch ends
(kernels are chosen per batch shape).  Each sample's encoded bytes, decoded pixels and
tensor are hashed on the way (`harness.stages`), so a golden comparison can
name the first stage that changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from harness.dataset import Sample, read_sample
from harness.decoders import DecodeError, decoder_unavailable
from harness.errors import HarnessError
from harness.stack import StackSpec, decode, preprocess
from harness.stages import digest


@dataclass(frozen=True)
class Decoded:
    """Decoded pixels of some samples, with the per-sample hashes of the first two stages."""

    pixels: list[np.ndarray]
    stages: dict[str, tuple[str, ...]]  # "encoded", "decoded"


@dataclass(frozen=True)
class InputSet:
    """Pre-processed tensors of some samples through one stack."""

    ids: tuple[str, ...]
    labels: np.ndarray
    tensors: np.ndarray
    stack: StackSpec
    stages: dict[str, tuple[str, ...]]  # per-sample hashes: "encoded", "decoded", "tensor"
    positions: np.ndarray  # each sample's index in its split: where it sits on the batch grid

    def __len__(self) -> int:
        return len(self.ids)


def decode_sample(sample: Sample, stack: StackSpec, data: bytes | None = None) -> np.ndarray:
    try:
        return decode(read_sample(sample) if data is None else data, stack)
    except DecodeError as exc:
        raise HarnessError(
            f"{sample.path}: cannot decode image with '{stack.decoder}': {exc}",
            "replace the file with a valid image or remove it from the manifest",
        ) from exc


def decode_key(stack: StackSpec) -> tuple[str, bool, int]:
    """Stacks with the same key decode every image to the same pixels (min side matters for DCT-domain scaling only)."""
    return (stack.decoder, stack.exif, stack.resize_size if stack.decoder == "pillow-draft" else 0)


def decode_all(samples: Sequence[Sample], stack: StackSpec, advance: Callable[[], None] | None = None) -> Decoded:
    """Decoded pixels of every sample with the stack's decoder settings."""
    reason = decoder_unavailable(stack.decoder)
    if reason:
        raise HarnessError(f"stack '{stack.name}': decoder '{stack.decoder}' cannot run here: {reason}", "choose another decoder")
    pixels, encoded = [], []
    for sample in samples:
        data = read_sample(sample)
        encoded.append(digest(data))
        pixels.append(decode_sample(sample, stack, data))
        if advance:
            advance()
    return Decoded(pixels, {"encoded": tuple(encoded), "decoded": tuple(digest(p) for p in pixels)})


def tensors_from(samples: Sequence[Sample], decoded: Decoded, stack: StackSpec) -> InputSet:
    """Pre-process decoded pixels through the rest of the stack; all tensors must share one shape."""
    tensors = [preprocess(p, stack) for p in decoded.pixels]
    shapes = {t.shape for t in tensors}
    if len(shapes) > 1:
        raise HarnessError(
            f"stack '{stack.name}' gives tensors of different shapes {sorted(shapes)}", "add a crop or use resize_mode = 'direct'"
        )
    return InputSet(
        ids=tuple(s.id for s in samples),
        labels=np.array([s.label for s in samples], dtype=np.int64),
        tensors=np.stack(tensors),
        stack=stack,
        stages={**decoded.stages, "tensor": tuple(digest(t) for t in tensors)},
        positions=np.array([s.index for s in samples], dtype=np.int64),
    )


def build_inputs(samples: Sequence[Sample], stack: StackSpec, advance: Callable[[], None] | None = None) -> InputSet:
    """Decode and pre-process every sample."""
    return tensors_from(samples, decode_all(samples, stack, advance), stack)


def batch_slices(count: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


def batch_layout(positions: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows of the input set, their slots) per batch of the split's fixed grid: position p goes to
    batch p // batch_size, slot p % batch_size; batches in grid order."""
    grid = positions // batch_size
    order = np.argsort(grid, kind="stable")
    starts = np.flatnonzero(np.diff(grid[order])) + 1
    for rows in np.split(order, starts) if len(order) else []:
        yield rows, positions[rows] % batch_size


def padded_batch(tensors: np.ndarray, rows: np.ndarray, slots: np.ndarray, batch_size: int) -> np.ndarray:
    """A batch of exactly `batch_size` rows: the given rows in their slots, zeros in the others."""
    batch = np.zeros((batch_size, *tensors.shape[1:]), dtype=tensors.dtype)
    batch[slots] = tensors[rows]
    return batch
