"""Feed: dataset samples -> one stack -> the input tensors every runtime gets.

Decoding and pre-processing happen once per run; runtimes then see the very
same array, batch by batch.  Batches are laid out on a fixed grid over the
split (`batch_layout`): sample i always sits in slot i % B of a batch of
exactly B rows, padded where a run holds only part of that batch, so its
outputs do not depend on `--limit`, `--shard` or where the last batch ends
(kernels are chosen per batch shape).  Each sample's encoded bytes, decoded pixels and
tensor are hashed on the way (`harness.judge.attribution`), so a golden comparison can
name the first stage that changed.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from harness.core.errors import HarnessError
from harness.core.hashing import array_digest, digest
from harness.data.dataset import Sample, read_sample_hashed
from harness.data.decoders import DECODER_FORMATS, FROM_OPENED, DecodeError, decoder_unavailable
from harness.data.intake import IntakePolicy, check, conversion, convert, open_header
from harness.data.stack import Geometry, Pixels, StackSpec, decode, prepare


@dataclass(frozen=True)
class Decoded:
    """Decoded pixels of some samples, with the per-sample hashes of the first two stages."""

    pixels: list[Pixels]
    stages: dict[str, tuple[str, ...]]  # "encoded", "decoded"
    intake: dict[str, int] = field(default_factory=dict)  # samples converted by an intake rule, per rule


class DecoderNotApplicable(HarnessError):
    """The stack's decoder cannot read the format of some samples (a PNG for a JPEG-only decoder)."""

    def __init__(self, what: str, fix: str | None = None, image_format: str = "") -> None:
        super().__init__(what, fix)
        self.format = image_format


@dataclass(frozen=True)
class InputSet:
    """Pre-processed tensors of some samples through one stack."""

    ids: tuple[str, ...]
    labels: np.ndarray
    tensors: np.ndarray
    stack: StackSpec
    stages: dict[str, tuple[str, ...]]  # per-sample hashes: "encoded", "decoded", "tensor"
    positions: np.ndarray  # each sample's index in its split: where it sits on the batch grid
    geometry: tuple[Geometry, ...] = ()  # per sample: source pixels -> tensor pixels (boxes map back through it)
    intake: dict[str, int] = field(default_factory=dict)  # samples converted by an intake rule, per rule

    def __len__(self) -> int:
        return len(self.ids)

    def sample(self, row: int) -> np.ndarray:
        """One sample's tensor (no batch axis): its own size, cut from the bound-sized row, with a per-image stack."""
        tensor = self.tensors[row]
        if not self.stack.per_image:
            return tensor
        height, width = self.geometry[row].tensor_hw
        return tensor[:, :height, :width] if self.stack.layout == "nchw" else tensor[:height, :width]

    def first_batch(self, count: int) -> np.ndarray:
        """The first `count` samples as one batch; a per-image stack's first sample alone, at its own size."""
        return self.sample(0)[None] if self.stack.per_image else self.tensors[:count]


def decode_sample(sample: Sample, stack: StackSpec, data: bytes, policy: IntakePolicy) -> tuple[Pixels, str | None]:
    """RGB uint8 pixels of one sample through the intake policy (`harness.data.intake`), and the rule applied if any."""
    try:
        header, opened = open_header(data)
        refused = check(header, policy)
        if refused:
            raise HarnessError(f"{sample.path}: image refused: {refused}", "shrink or remove the file, or raise [data] max_pixels")
        kind = conversion(header)
        if kind:
            return convert(data, kind, stack.exif), kind
        formats = DECODER_FORMATS.get(stack.decoder)
        if formats and header.format not in formats:
            raise DecoderNotApplicable(
                f"{sample.path}: decoder '{stack.decoder}' cannot read {header.format} images (it reads {', '.join(sorted(formats))})",
                "choose a decoder that reads every format of the dataset",
                header.format,
            )
        if opened is not None and stack.decoder in FROM_OPENED:  # the header's image goes on to its pixels
            return FROM_OPENED[stack.decoder](opened, stack.exif, stack.resize_size), None
        return decode(data, stack), None
    except DecodeError as exc:
        raise HarnessError(
            f"{sample.path}: cannot decode image with '{stack.decoder}': {exc}",
            "replace the file with a valid image or remove it from the manifest",
        ) from exc


DEFAULT_POLICY = IntakePolicy()


def decode_key(stack: StackSpec) -> tuple[str, bool, int]:
    """Stacks with the same key decode every image to the same pixels (min side matters for DCT-domain scaling only)."""
    return (stack.decoder, stack.exif, stack.resize_size if stack.decoder == "pillow-draft" else 0)


Allocate = Callable[[tuple[int, ...]], np.ndarray]  # the batch buffer of a shape, float32 (`np.empty`, shared memory)


def _empty(shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, dtype=np.float32)


class _Decoding:
    """Samples decoded one at a time through the intake policy, with the hashes of their first two stages, the
    intake rules applied and one error per sample the stack's decoder cannot read."""

    def __init__(self, stack: StackSpec, policy: IntakePolicy, advance: Callable[[], None] | None) -> None:
        reason = decoder_unavailable(stack.decoder)
        if reason:
            raise HarnessError(f"stack '{stack.name}': decoder '{stack.decoder}' cannot run here: {reason}", "choose another decoder")
        self.stack, self.policy, self.advance = stack, policy, advance
        self.encoded: list[str] = []
        self.decoded: list[str] = []
        self.intake = Counter[str]()
        self.unreadable: list[DecoderNotApplicable] = []

    def __call__(self, sample: Sample) -> Pixels | None:
        """The sample's pixels, or None when the decoder cannot read it."""
        data, encoded_hash = read_sample_hashed(sample)
        self.encoded.append(encoded_hash)
        try:
            image, kind = decode_sample(sample, self.stack, data, self.policy)
        except DecoderNotApplicable as exc:
            self.unreadable.append(exc)
            return None
        self.decoded.append(pixels_digest(image))  # while the pixels are in cache
        if kind:
            self.intake[kind] += 1
        if self.advance:
            self.advance()
        return image

    def stages(self) -> dict[str, tuple[str, ...]]:
        return {"encoded": tuple(self.encoded), "decoded": tuple(self.decoded)}


def decode_part(
    samples: Sequence[Sample], stack: StackSpec, advance: Callable[[], None] | None = None, policy: IntakePolicy = DEFAULT_POLICY
) -> tuple[Decoded, list[DecoderNotApplicable]]:
    """Decoded pixels of the samples the stack's decoder can read, and one error per sample it cannot
    (counted by the caller over all the parts it decodes, then reported once: `refuse_unreadable`)."""
    decoding = _Decoding(stack, policy, advance)
    pixels = [image for image in map(decoding, samples) if image is not None]
    return Decoded(pixels, decoding.stages(), dict(decoding.intake)), decoding.unreadable


def prepare_samples(
    samples: Sequence[Sample],
    stack: StackSpec,
    advance: Callable[[], None] | None = None,
    policy: IntakePolicy = DEFAULT_POLICY,
    allocate: Allocate | None = None,
) -> tuple[InputSet | None, list[DecoderNotApplicable]]:
    """Decode and pre-process the samples one at a time, each decoded image dropped once its tensor is written
    (decoding every image first would hold them all, in memory that is fresh on every run); or None and one
    error per sample the stack's decoder cannot read, as `decode_part`."""
    decoding = _Decoding(stack, policy, advance)
    rows = _Rows(len(samples), stack, allocate or _empty)
    for sample in samples:
        image = decoding(sample)
        if image is not None and not decoding.unreadable:
            rows.add(image)
    if decoding.unreadable:
        return None, decoding.unreadable
    return rows.input_set(samples, decoding.stages(), dict(decoding.intake)), []


def pixels_digest(pixels: Pixels) -> str:
    """`digest` of decoded pixels, a Pillow image's as of the array it would give (one copy of its bytes)."""
    if isinstance(pixels, np.ndarray):
        return digest(pixels)
    return array_digest("|u1", (pixels.height, pixels.width, 3), _packed(pixels))


def _packed(image: Image.Image) -> bytes:
    """An RGB image's pixels as packed bytes, what `tobytes()` gives, from one call of the raw encoder it uses
    with room for the whole image: `tobytes()` encodes 64 KB pieces and joins them into a further buffer
    (500 x 375 images: 0.11 against 0.6-0.8 ms each, where this VM's memory is fresh)."""
    encoder = Image._getencoder(image.mode, "raw", (image.mode,))
    encoder.setimage(image.im, (0, 0, *image.size))
    _, status, data = encoder.encode(image.width * image.height * len(image.getbands()))
    return data if status == 1 else image.tobytes()  # 1: every row encoded (the size was enough)


def refuse_unreadable(unreadable: Sequence[DecoderNotApplicable], total: int, decoder: str) -> None:
    """One error for every sample of `total` the decoder cannot read, with their formats and the first file."""
    if not unreadable:
        return
    formats = Counter(exc.format for exc in unreadable)
    raise DecoderNotApplicable(
        f"decoder '{decoder}' cannot read {len(unreadable)}/{total} samples "
        f"({', '.join(f'{f} {n}' for f, n in sorted(formats.items()))}; first: {unreadable[0].what.split(': ')[0]})",
        unreadable[0].fix,
    )


def decode_all(
    samples: Sequence[Sample], stack: StackSpec, advance: Callable[[], None] | None = None, policy: IntakePolicy = DEFAULT_POLICY
) -> Decoded:
    """Decoded pixels of every sample with the stack's decoder settings, through the intake policy."""
    decoded, unreadable = decode_part(samples, stack, advance, policy)
    refuse_unreadable(unreadable, len(samples), stack.decoder)
    return decoded


def tensors_from(samples: Sequence[Sample], decoded: Decoded, stack: StackSpec, allocate: Allocate = _empty) -> InputSet:
    """Pre-process decoded pixels through the rest of the stack (`_Rows`)."""
    rows = _Rows(len(decoded.pixels), stack, allocate)
    for pixels in decoded.pixels:
        rows.add(pixels)
    return rows.input_set(samples, decoded.stages, decoded.intake)


class _Rows:
    """Tensors of `count` samples, pre-processed one at a time, each normalised straight into its row of one batch
    buffer (`allocate`d once the first tensor's shape is known).  All tensors must share one shape, except a
    per-image stack's (`StackSpec.per_image`), each written top-left into a zeroed row of the stack's bound."""

    def __init__(self, count: int, stack: StackSpec, allocate: Allocate) -> None:
        self.count, self.stack, self.allocate = count, stack, allocate
        self.tensors: np.ndarray | None = None
        self.geometry: list[Geometry] = []
        self.shapes: set[tuple[int, ...]] = set()  # every shape given, once a tensor did not fit the first's

    def add(self, pixels: Pixels) -> None:
        row = len(self.geometry)
        if self.tensors is None or self.stack.per_image or self.shapes:
            one = prepare(pixels, self.stack)
            if self.tensors is None:
                self.tensors = self.allocate((self.count, *self.stack.row_shape(one.tensor.shape)))
            if self.shapes:
                self.shapes.add(one.tensor.shape)
            else:
                self._write(row, one.tensor)
        else:
            try:
                one = prepare(pixels, self.stack, self.tensors[row])
            except ValueError:  # a tensor of another shape: every shape the samples give is named at the end
                one = prepare(pixels, self.stack)
                if one.tensor.shape == self.tensors.shape[1:]:
                    raise
                self.shapes = {self.tensors.shape[1:], one.tensor.shape}
        self.geometry.append(one.geometry)

    def _write(self, row: int, tensor: np.ndarray) -> None:
        assert self.tensors is not None
        if self.stack.per_image:
            self.tensors[row] = 0.0
            self.tensors[row][tuple(slice(0, side) for side in tensor.shape)] = tensor
        else:
            self.tensors[row] = tensor

    def input_set(self, samples: Sequence[Sample], stages: dict[str, tuple[str, ...]], intake: dict[str, int]) -> InputSet:
        _one_shape(self.stack, self.shapes)
        tensors = self.tensors
        if tensors is None:  # no samples: no row (of a per-image stack's bound, 3 channels; else of no shape)
            none = (3, 0, 0) if self.stack.layout == "nchw" else (0, 0, 3)
            tensors = _empty((0, *(self.stack.row_shape(none) if self.stack.per_image else (0,))))
        inputs = InputSet(
            ids=tuple(s.id for s in samples),
            labels=np.stack([s.target for s in samples]) if samples else np.zeros(0, dtype=np.int64),
            tensors=tensors,
            stack=self.stack,
            stages=stages,
            positions=np.array([s.index for s in samples], dtype=np.int64),
            geometry=tuple(self.geometry),
            intake=intake,
        )
        hashes = tuple(digest(inputs.sample(row)) for row in range(len(tensors)))
        return dataclasses.replace(inputs, stages={**stages, "tensor": hashes})


class RaggedStack(HarnessError):
    """A stack whose tensors differ in shape from image to image (no batch can hold them)."""


def _one_shape(stack: StackSpec, shapes: set[tuple[int, ...]]) -> None:
    if len(shapes) > 1:
        raise RaggedStack(
            f"stack '{stack.name}' gives tensors of different shapes {sorted(shapes)}",
            "add a crop or use resize_mode = 'direct', 'letterbox' or 'keep-ratio'",
        )


def build_inputs(
    samples: Sequence[Sample], stack: StackSpec, advance: Callable[[], None] | None = None, policy: IntakePolicy = DEFAULT_POLICY
) -> InputSet:
    """Decode and pre-process every sample (`prepare_samples`)."""
    inputs, unreadable = prepare_samples(samples, stack, advance, policy)
    refuse_unreadable(unreadable, len(samples), stack.decoder)
    assert inputs is not None
    return inputs


def concat_inputs(parts: Sequence[InputSet]) -> InputSet:
    """Input sets of consecutive parts of one sample list, through one stack, as one set."""
    first = parts[0]
    if len(parts) == 1:
        return first
    _one_shape(first.stack, {p.tensors.shape[1:] for p in parts})
    return InputSet(
        ids=tuple(i for p in parts for i in p.ids),
        labels=np.concatenate([p.labels for p in parts]),
        tensors=np.concatenate([p.tensors for p in parts]),
        stack=first.stack,
        stages={k: tuple(h for p in parts for h in p.stages[k]) for k in first.stages},
        positions=np.concatenate([p.positions for p in parts]),
        geometry=tuple(g for p in parts for g in p.geometry),
        intake=dict(sum((Counter(p.intake) for p in parts), Counter())),
    )


def first_samples(inputs: InputSet, count: int) -> InputSet:
    """The first `count` samples of an input set (their batch-grid positions kept)."""
    count = min(count, len(inputs))
    return dataclasses.replace(
        inputs,
        ids=inputs.ids[:count],
        labels=inputs.labels[:count],
        tensors=inputs.tensors[:count],
        stages={k: v[:count] for k, v in inputs.stages.items()},
        positions=inputs.positions[:count],
        geometry=inputs.geometry[:count],
    )


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
