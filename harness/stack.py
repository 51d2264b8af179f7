"""Pre-processing stack: decoded pixels -> one model input tensor.

A stack is declared by name and parameters in a suite file (decoder, colour
path, resize method, target and order with the crop, rounding,
normalisation, layout); every name refers to an entry of the decoder, colour
or resizer registries, so users add stacks without code.  Named stacks
(`[stacks.<name>]`) override keys of the suite's reference `[stack]`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from harness.colour import COLOUR_PATHS
from harness.decoders import DECODERS
from harness.errors import HarnessError
from harness.resizers import RESIZERS

LAYOUTS = ("nchw", "nhwc")
RESIZE_MODES = ("shorter", "direct")
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

    def describe(self) -> dict[str, Any]:
        """Plain-data form recorded in reports and goldens."""
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @property
    def input_hw(self) -> tuple[int, int] | None:
        """Fixed (height, width) of the tensor, or None when it depends on the image."""
        if self.crop:
            return (self.crop, self.crop)
        if self.resize_mode == "direct":
            return (self.resize_size, self.resize_size)
        return None


def stack_from(name: str, keys: dict[str, Any], origin: str, base: StackSpec | None = None) -> StackSpec:
    """A stack from the keys a suite set (typed by `harness.schema`) over `base`, with the checks that
    need several keys: the crop must fit in the resized image."""
    spec = replace(base or StackSpec(), name=name, **keys)
    if spec.crop and spec.crop > spec.resize_size:
        raise HarnessError(
            f"{origin}: stack '{name}' crops {spec.crop} px out of an image resized to {spec.resize_size} px",
            "set crop <= resize_size (crop = 0: no crop)",
        )
    return spec


def _resize_target(height: int, width: int, spec: StackSpec) -> tuple[int, int]:
    if spec.resize_mode == "direct":
        return spec.resize_size, spec.resize_size
    if height <= width:
        return spec.resize_size, int(spec.resize_size * width / height)
    return int(spec.resize_size * height / width), spec.resize_size


def _source_crop(height: int, width: int, spec: StackSpec) -> tuple[int, int]:
    """The region of the decoded image that resize-then-crop keeps, in source pixels."""
    assert spec.crop
    if spec.resize_mode == "direct":
        return round(height * spec.crop / spec.resize_size), round(width * spec.crop / spec.resize_size)
    side = round(min(height, width) * spec.crop / spec.resize_size)
    return side, side


def center_crop(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = img.shape[:2]
    top = round((height - size[0]) / 2.0)
    left = round((width - size[1]) / 2.0)
    return img[top : top + size[0], left : left + size[1]]


def preprocess(pixels: np.ndarray, spec: StackSpec) -> np.ndarray:
    """Decoded RGB uint8 pixels -> float32 tensor in the stack's layout (no batch axis)."""
    img = COLOUR_PATHS[spec.colour](pixels)
    if spec.rounding == "float":
        img = img.astype(np.float32)
    resize = RESIZERS[spec.resize]
    if spec.crop and spec.order == "crop-resize":
        img = resize(center_crop(img, _source_crop(*img.shape[:2], spec)), (spec.crop, spec.crop))
    else:
        img = resize(img, _resize_target(*img.shape[:2], spec))
        if spec.crop:
            img = center_crop(img, (spec.crop, spec.crop))
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    scale = 1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)
    tensor = (img.astype(np.float32) - mean) * scale
    if spec.layout == "nchw":
        tensor = tensor.transpose(2, 0, 1)
    return np.ascontiguousarray(tensor)


def decode(data: bytes, spec: StackSpec) -> np.ndarray:
    """Encoded bytes -> RGB uint8 pixels with the stack's decoder settings."""
    return DECODERS[spec.decoder](data, spec.exif, spec.resize_size)


def decode_and_preprocess(data: bytes, spec: StackSpec) -> np.ndarray:
    """Encoded bytes -> model input tensor, the whole stack in one call."""
    return preprocess(decode(data, spec), spec)
