"""Resizers: HxWx3 pixels -> hxwx3 pixels, one registry entry per method.

Input is uint8 (the reference: every library rounds its result to uint8) or
float32 (a stack with `rounding = "float"` keeps the fractions); the output
keeps the input's dtype.  Pillow's filters antialias when downscaling;
OpenCV's (except `area`) sample the source at the destination grid;
torchvision's tensor resize does either, depending on `antialias` (GPU
pipelines often run without).  Those differences are SysNoise sources.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
from PIL import Image

from harness.core.lazy import lazy_import

cv2 = lazy_import("cv2")  # OpenCV loads when an image is first decoded or resized with it

Resizer = Callable[[np.ndarray, tuple[int, int]], np.ndarray]
RESIZERS: dict[str, Resizer] = {}


def _pillow(img: np.ndarray | Image.Image, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    height, width = size
    if isinstance(img, Image.Image):  # decoded by Pillow: resized where it is, no copy to numpy and back
        return np.asarray(img.resize((width, height), resample=resample))
    if img.dtype == np.uint8:
        return np.asarray(Image.fromarray(img).resize((width, height), resample=resample))
    # Pillow keeps float precision only in single-channel 'F' images.
    planes = [Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32), mode="F") for c in range(img.shape[2])]
    return np.stack([np.asarray(p.resize((width, height), resample=resample)) for p in planes], axis=-1)


def _opencv(img: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    height, width = size
    return cv2.resize(img, (width, height), interpolation=getattr(cv2, interpolation))


def _torchvision(img: np.ndarray, size: tuple[int, int], interpolation: str, antialias: bool) -> np.ndarray:
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    tensor = torch.from_numpy(np.array(img)).permute(2, 0, 1)  # a copy: decoded pixels may be read-only
    resized = F.resize(tensor, list(size), interpolation=InterpolationMode(interpolation), antialias=antialias)
    return resized.permute(1, 2, 0).numpy()


for _name, _resample in {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}.items():
    RESIZERS[f"pillow-{_name}"] = partial(_pillow, resample=_resample)
TAKE_PILLOW_IMAGES = frozenset(name for name in RESIZERS if name.startswith("pillow-"))  # resize a Pillow image as it is

for _name, _flag in {
    "nearest": "INTER_NEAREST",
    "linear": "INTER_LINEAR",
    "area": "INTER_AREA",
    "cubic": "INTER_CUBIC",
    "lanczos4": "INTER_LANCZOS4",
}.items():
    RESIZERS[f"opencv-{_name}"] = partial(_opencv, interpolation=_flag)

for _mode in ("bilinear", "bicubic"):
    RESIZERS[f"torchvision-{_mode}"] = partial(_torchvision, interpolation=_mode, antialias=True)
    RESIZERS[f"torchvision-{_mode}-noaa"] = partial(_torchvision, interpolation=_mode, antialias=False)
