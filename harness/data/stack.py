"""Pre-processing stack: decoded pixels -> one model input tensor.

A stack is declared by name and parameters in a suite file (decoder, colour
path, resize method, target and order with the crop, rounding,
normalisation, layout); every name refers to an entry of the decoder, colour
or resizer registries, so users add stacks without code.  Named stacks
(`[stacks.<name>]`) override keys of the suite's reference `[stack]`.

The stack returns the tensor with its `Geometry`: the scale and offset that
map source pixels to tensor pixels, so boxes and masks predicted on
the tensor map back to the original image.  Resize modes: `shorter` (shorter
side to `resize_size`, then the crop), `direct` (both sides, aspect
distorted), `letterbox` (keep the ratio, fit in `resize_size` square, pad the
rest with `pad_value`: YOLO-style services) and `keep-ratio` (shorter side to
`resize_size` unless the longer would pass `max_size`, padded bottom-right
to a `max_size` square canvas: the FPN detectors' setting).

Per-image sizes (`size_divisor`): a padded mode pads each image only up to the next multiple of the divisor
(keep-ratio: bottom-right, as Faster R-CNN-style services batch one image; letterbox: centred, Ultralytics'
minimal rectangle; a divisor of 1 is keep-ratio without padding), or, with `size_fit = "resize"`, each side
is resized to the nearest multiple (DBNet-style services); the tensors then differ from image to image and
every sample is fed alone (`bound_hw`: the largest a stack can give).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from harness.core.errors import HarnessError
from harness.data.colour import COLOUR_PATHS
from harness.data.decoders import DECODERS
from harness.data.resizers import RESIZERS, TAKE_PILLOW_IMAGES

Pixels = np.ndarray | Image.Image  # decoded RGB uint8 pixels: an H x W x 3 array, or the Pillow image a Pillow decoder made

LAYOUTS = ("nchw", "nhwc")
RESIZE_MODES = ("shorter", "direct", "letterbox", "keep-ratio")
PADDED_MODES = ("letterbox", "keep-ratio")
ORDERS = ("resize-crop", "crop-resize")
ROUNDINGS = ("uint8", "float")


@dataclass(frozen=True)
class StackSpec:
    """Everything that turns encoded bytes into the tensor a runtime sees."""

    name: str = "reference"
    decoder: str = "pillow"
    exif: bool = True
    colour: str = "rgb"
    resize: str = "pillow-bilinear"
    resize_size: int = 72
    resize_mode: str = "shorter"
    crop: int | None = 64
    order: str = "resize-crop"  # or crop-resize: cut the same field of view first, then resize to the crop size
    rounding: str = "uint8"  # or float: resize in float32, no rounding to uint8 before normalisation
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    layout: str = "nchw"
    max_size: int = 1333  # keep-ratio: the longer side's limit and the canvas
    pad_value: int = 114  # letterbox / keep-ratio: the padding's pixel value, before normalisation
    size_divisor: int = 0  # letterbox / keep-ratio: 0, one canvas for all; N, each image's own size, a multiple of N
    size_fit: str = "pad"  # how a side reaches the multiple: padded up, or resized to the nearest (keep-ratio)

    def describe(self) -> dict[str, Any]:
        """Plain-data form recorded in reports and goldens."""
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        if not self.per_image:  # the per-image keys only where they act: goldens recorded before them stay current
            del data["size_divisor"], data["size_fit"]
        return data

    @property
    def per_image(self) -> bool:
        """Does each image get a tensor of its own size (fed alone, batch 1)?"""
        return self.size_divisor > 0

    @property
    def bound_hw(self) -> tuple[int, int] | None:
        """The largest (height, width) of a per-image stack's tensors (its batch buffer's rows), else `input_hw`."""
        sizes = self.image_sizes
        return sizes[1] if sizes else self.input_hw

    def row_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The batch-buffer row a tensor of `shape` goes to: that shape, or a per-image stack's bound with the
        tensor's channels, in the stack's layout."""
        if not self.per_image:
            return shape
        assert self.bound_hw is not None
        return (shape[0], *self.bound_hw) if self.layout == "nchw" else (*self.bound_hw, shape[2])

    @property
    def image_sizes(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """A per-image stack's smallest and largest tensor (H, W): a divisor's square up to the longest side it
        allows (keep-ratio's max_size, letterbox's resize_size), rounded up to the divisor."""
        if not self.per_image:
            return None
        side = self.max_size if self.resize_mode == "keep-ratio" else self.resize_size
        return (self.size_divisor, self.size_divisor), _multiple((side, side), self.size_divisor)

    @property
    def input_hw(self) -> tuple[int, int] | None:
        """Fixed (height, width) of the tensor, or None when it depends on the image."""
        if self.per_image:
            return None
        if self.resize_mode == "keep-ratio":
            return (self.max_size, self.max_size)
        if self.resize_mode == "letterbox":
            return (self.resize_size, self.resize_size)
        if self.crop:
            return (self.crop, self.crop)
        if self.resize_mode == "direct":
            return (self.resize_size, self.resize_size)
        return None


@dataclass(frozen=True)
class Geometry:
    """Where source pixels land in the tensor, per axis (y, x): tensor = source * scale + offset, in continuous
    pixel coordinates (the top-left corner of the top-left pixel is 0; a box edge at x = width is the right edge)."""

    source_hw: tuple[int, int]
    tensor_hw: tuple[int, int]
    scale: tuple[float, float] = (1.0, 1.0)
    offset: tuple[float, float] = (0.0, 0.0)

    def resized(self, target_hw: tuple[int, int], from_hw: tuple[int, int]) -> Geometry:
        """Followed by a resize of the `from_hw` image to `target_hw`."""
        sy, sx = target_hw[0] / from_hw[0], target_hw[1] / from_hw[1]
        return replace(
            self, tensor_hw=target_hw, scale=(self.scale[0] * sy, self.scale[1] * sx), offset=(self.offset[0] * sy, self.offset[1] * sx)
        )

    def shifted(self, top: float, left: float, tensor_hw: tuple[int, int]) -> Geometry:
        """Followed by a crop (negative shift) or padding (positive shift) of `tensor_hw` result."""
        return replace(self, tensor_hw=tensor_hw, offset=(self.offset[0] + top, self.offset[1] + left))

    def _xyxy(self) -> tuple[np.ndarray, np.ndarray]:
        """Scale and offset laid out like a box row: x1, y1, x2, y2."""
        return np.array([self.scale[1], self.scale[0]] * 2), np.array([self.offset[1], self.offset[0]] * 2)

    def to_tensor(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) boxes x1, y1, x2, y2 in source pixels -> tensor pixels."""
        scale, offset = self._xyxy()
        return np.asarray(boxes, dtype=np.float64) * scale + offset

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) boxes in tensor pixels -> source pixels, clipped to the source image."""
        scale, offset = self._xyxy()
        source = (np.asarray(boxes, dtype=np.float64) - offset) / scale
        height, width = self.source_hw
        return np.clip(source, 0, [width, height, width, height])

    def tensor_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Where the centre of each source row and column lands in the tensor (continuous tensor pixels, may fall
        outside it where a crop cut the source): a dense map on the tensor is sampled there to come back to the
        source image (segmentation masks)."""
        return tuple(  # type: ignore[return-value]
            (np.arange(self.source_hw[axis]) + 0.5) * self.scale[axis] + self.offset[axis] for axis in (0, 1)
        )

    def source_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Where the centre of each tensor row and column lies in the source image (continuous source pixels, outside
        it on padding): a source mask is sampled there to be laid on the tensor."""
        return tuple(  # type: ignore[return-value]
            (np.arange(self.tensor_hw[axis]) + 0.5 - self.offset[axis]) / self.scale[axis] for axis in (0, 1)
        )


def stack_from(name: str, keys: dict[str, Any], origin: str, base: StackSpec | None = None) -> StackSpec:
    """A stack from the keys a suite set (typed by `harness.spec.schema`) over `base`, with the checks that
    need several keys: the crop must fit in the resized image, padded modes take no crop."""
    spec = replace(base or StackSpec(), name=name, **keys)
    if spec.crop and spec.resize_mode in PADDED_MODES:
        raise HarnessError(
            f"{origin}: stack '{name}' crops a {spec.resize_mode} image", f"set crop = 0 with resize_mode = '{spec.resize_mode}'"
        )
    if spec.crop and spec.crop > spec.resize_size:
        raise HarnessError(
            f"{origin}: stack '{name}' crops {spec.crop} px out of an image resized to {spec.resize_size} px",
            "set crop <= resize_size (crop = 0: no crop)",
        )
    if spec.resize_mode == "keep-ratio" and spec.max_size < spec.resize_size:
        raise HarnessError(f"{origin}: stack '{name}' has max_size {spec.max_size} < resize_size {spec.resize_size}", "raise max_size")
    if spec.size_divisor and spec.resize_mode not in PADDED_MODES:
        raise HarnessError(
            f"{origin}: stack '{name}' sets size_divisor with resize_mode = '{spec.resize_mode}'",
            "per-image sizes come from resize_mode = 'keep-ratio' or 'letterbox' (size_divisor = 0: one size)",
        )
    if spec.size_fit == "resize" and not (spec.size_divisor and spec.resize_mode == "keep-ratio"):
        raise HarnessError(
            f"{origin}: stack '{name}' sets size_fit = 'resize' without a keep-ratio size_divisor",
            "set resize_mode = 'keep-ratio' and size_divisor (e.g. 32), or size_fit = 'pad'",
        )
    return spec


def _resize_target(height: int, width: int, spec: StackSpec) -> tuple[int, int]:
    if spec.resize_mode == "direct":
        return spec.resize_size, spec.resize_size
    if spec.resize_mode in PADDED_MODES:
        if spec.resize_mode == "letterbox":
            scale = spec.resize_size / max(height, width)
        else:
            scale = min(spec.resize_size / min(height, width), spec.max_size / max(height, width))
        if spec.size_fit == "resize":  # each side to the nearest multiple of the divisor (at least one)
            step = spec.size_divisor
            return max(step, round(height * scale / step) * step), max(step, round(width * scale / step) * step)
        return max(1, round(height * scale)), max(1, round(width * scale))
    if height <= width:
        return spec.resize_size, int(spec.resize_size * width / height)
    return int(spec.resize_size * height / width), spec.resize_size


def _multiple(hw: tuple[int, int], divisor: int) -> tuple[int, int]:
    """Each side rounded up to a multiple of `divisor`."""
    return -(-hw[0] // divisor) * divisor, -(-hw[1] // divisor) * divisor


def _source_crop(height: int, width: int, spec: StackSpec) -> tuple[int, int]:
    """The region of the decoded image that resize-then-crop keeps, in source pixels."""
    assert spec.crop
    if spec.resize_mode == "direct":
        return round(height * spec.crop / spec.resize_size), round(width * spec.crop / spec.resize_size)
    side = round(min(height, width) * spec.crop / spec.resize_size)
    return side, side


def _crop_origin(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    return round((height - size[0]) / 2.0), round((width - size[1]) / 2.0)


def center_crop(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    top, left = _crop_origin(*img.shape[:2], size)
    return img[top : top + size[0], left : left + size[1]]


def _pad(img: np.ndarray, canvas: tuple[int, int], centred: bool, value: int) -> tuple[np.ndarray, tuple[int, int]]:
    """`img` on a `canvas`-sized background of `value`, centred (letterbox) or top-left (keep-ratio); its (top, left)."""
    height, width = img.shape[:2]
    top, left = ((canvas[0] - height) // 2, (canvas[1] - width) // 2) if centred else (0, 0)
    out = np.full((*canvas, *img.shape[2:]), value, dtype=img.dtype)
    out[top : top + height, left : left + width] = img
    return out, (top, left)


@dataclass(frozen=True)
class Prepared:
    tensor: np.ndarray
    geometry: Geometry


def normalise_into(img: np.ndarray, spec: StackSpec, out: np.ndarray | None = None) -> np.ndarray:
    """(pixel - mean * 255) * (1 / (std * 255)) in float32, written straight in the stack's layout into `out`
    (a row of a batch buffer; allocated when None): one pass per channel, the same float32 operations (so the
    same bits) as converting, subtracting, scaling and transposing in turn."""
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    scale = 1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)
    height, width, channels = img.shape
    shape = (channels, height, width) if spec.layout == "nchw" else (height, width, channels)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"tensor buffer {out.shape} {out.dtype} does not fit {shape} float32")
    for c in range(channels):
        plane = out[c] if spec.layout == "nchw" else out[..., c]
        np.subtract(img[..., c], mean[c], out=plane, dtype=np.float32)
        np.multiply(plane, scale[c], out=plane)
    return out


def _in_pillow(spec: StackSpec) -> bool:
    """Does the stack's first step take a Pillow image as it is (a Pillow resize of the RGB pixels, unrounded)?"""
    return (
        spec.colour == "rgb"
        and spec.rounding == "uint8"
        and spec.resize in TAKE_PILLOW_IMAGES
        and not (spec.crop and spec.order == "crop-resize")
    )


def prepare(pixels: Pixels, spec: StackSpec, out: np.ndarray | None = None) -> Prepared:
    """Decoded RGB uint8 pixels -> float32 tensor in the stack's layout (no batch axis), with its geometry;
    written into `out` when given (a row of a preallocated batch, `normalise_into`).  A Pillow image goes
    straight to a Pillow resize when that comes first (the same pixels: the same bits as through numpy)."""
    if isinstance(pixels, Image.Image):
        if _in_pillow(spec):
            return _prepared(pixels, (pixels.height, pixels.width), spec, out)
        pixels = np.asarray(pixels)
    img = COLOUR_PATHS[spec.colour](pixels)
    if spec.rounding == "float":
        img = img.astype(np.float32)
    return _prepared(img, (img.shape[0], img.shape[1]), spec, out)


def _prepared(img: Pixels, source_hw: tuple[int, int], spec: StackSpec, out: np.ndarray | None) -> Prepared:
    resize = RESIZERS[spec.resize]
    geometry = Geometry(source_hw, source_hw)
    if spec.crop and spec.order == "crop-resize":
        region = _source_crop(*source_hw, spec)
        top, left = _crop_origin(*source_hw, region)
        geometry = geometry.shifted(-top, -left, region).resized((spec.crop, spec.crop), region)
        img = resize(center_crop(img, region), (spec.crop, spec.crop))
    else:
        target = _resize_target(*source_hw, spec)
        img = resize(img, target)
        geometry = geometry.resized(target, source_hw)
        if spec.resize_mode in PADDED_MODES:
            canvas = spec.input_hw or _multiple(target, spec.size_divisor)
            img, (top, left) = _pad(img, canvas, spec.resize_mode == "letterbox", spec.pad_value)
            geometry = geometry.shifted(top, left, canvas)
        elif spec.crop:
            top, left = _crop_origin(*target, (spec.crop, spec.crop))
            geometry = geometry.shifted(-top, -left, (spec.crop, spec.crop))
            img = center_crop(img, (spec.crop, spec.crop))
    return Prepared(normalise_into(img, spec, out), geometry)


def preprocess(pixels: np.ndarray, spec: StackSpec) -> np.ndarray:
    """Decoded RGB uint8 pixels -> float32 tensor in the stack's layout (no batch axis)."""
    return prepare(pixels, spec).tensor


def decode(data: bytes, spec: StackSpec) -> np.ndarray:
    """Encoded bytes -> RGB uint8 pixels with the stack's decoder settings."""
    return DECODERS[spec.decoder](data, spec.exif, spec.resize_size)


def decode_and_preprocess(data: bytes, spec: StackSpec) -> np.ndarray:
    """Encoded bytes -> model input tensor, the whole stack in one call."""
    return preprocess(decode(data, spec), spec)
