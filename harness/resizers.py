"""Resizers: HxWx3 uint8 -> hxwx3 uint8, one registry entry per method.

Pillow's filters antialias when downscaling; OpenCV's (except `area`) sample
the source at the destination grid.  That difference is one of the SysNoise
sources this harness measures.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import cv2
import numpy as np
from PIL import Image

Resizer = Callable[[np.ndarray, tuple[int, int]], np.ndarray]
RESIZERS: dict[str, Resizer] = {}


def _pillow(img: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    height, width = size
    return np.asarray(Image.fromarray(img).resize((width, height), resample=resample))


def _opencv(img: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    height, width = size
    return cv2.resize(img, (width, height), interpolation=interpolation)


for _name, _resample in {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}.items():
    RESIZERS[f"pillow-{_name}"] = partial(_pillow, resample=_resample)

for _name, _flag in {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
    "lanczos4": cv2.INTER_LANCZOS4,
}.items():
    RESIZERS[f"opencv-{_name}"] = partial(_opencv, interpolation=_flag)
