"""Colour paths: RGB uint8 pixels -> the pixels the model is fed.

The reference is plain RGB; each alternative is one registry entry: the
RGB/BGR slip, and YUV round trips as camera and video pipelines do them
(BT.601 limited range with the SysNoise study's equations, back to RGB with
the float or the integer form, chroma kept at 4:4:4 or subsampled to NV12
4:2:0 and replicated back).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

ColourPath = Callable[[np.ndarray], np.ndarray]


def rgb_to_yuv(img: np.ndarray) -> np.ndarray:
    """BT.601 limited range: Y = round(0.256788R + 0.504129G + 0.097906B) + 16, U and V likewise (+128)."""
    rgb = img.astype(np.float64)
    matrix = np.array(
        [[0.256788, 0.504129, 0.097906], [-0.148223, -0.290993, 0.439216], [0.439216, -0.367788, -0.071427]],
    )
    return (np.round(rgb @ matrix.T) + np.array([16, 128, 128])).astype(np.int32)


def yuv_to_rgb_float(yuv: np.ndarray) -> np.ndarray:
    c, d, e = yuv[..., 0] - 16.0, yuv[..., 1] - 128.0, yuv[..., 2] - 128.0
    rgb = np.stack([1.164383 * c + 1.596027 * e, 1.164383 * c - 0.391762 * d - 0.812968 * e, 1.164383 * c + 2.017232 * d], axis=-1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def yuv_to_rgb_int(yuv: np.ndarray) -> np.ndarray:
    """Integer form: R = (298C + 409E + 128) >> 8, G = (298C - 100D - 208E + 128) >> 8, B = (298C + 516D + 128) >> 8."""
    c, d, e = yuv[..., 0] - 16, yuv[..., 1] - 128, yuv[..., 2] - 128
    rgb = np.stack([(298 * c + 409 * e + 128) >> 8, (298 * c - 100 * d - 208 * e + 128) >> 8, (298 * c + 516 * d + 128) >> 8], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def subsample_nv12(yuv: np.ndarray) -> np.ndarray:
    """4:2:0 as NV12 stores it: chroma averaged over 2x2 blocks (edge-padded), then replicated back."""
    height, width = yuv.shape[:2]
    chroma = np.pad(yuv[..., 1:], ((0, height % 2), (0, width % 2), (0, 0)), mode="edge").astype(np.float64)
    blocks = chroma.reshape(chroma.shape[0] // 2, 2, chroma.shape[1] // 2, 2, 2).mean(axis=(1, 3))
    upsampled = np.round(blocks).astype(np.int32).repeat(2, axis=0).repeat(2, axis=1)[:height, :width]
    return np.concatenate([yuv[..., :1], upsampled], axis=-1)


def yuv_round_trip(img: np.ndarray, back: Callable[[np.ndarray], np.ndarray], nv12: bool) -> np.ndarray:
    yuv = rgb_to_yuv(img)
    return back(subsample_nv12(yuv) if nv12 else yuv)


COLOUR_PATHS: dict[str, ColourPath] = {
    "rgb": lambda img: img,
    "bgr": lambda img: np.ascontiguousarray(img[..., ::-1]),
    "yuv444-float": partial(yuv_round_trip, back=yuv_to_rgb_float, nv12=False),
    "yuv444-int": partial(yuv_round_trip, back=yuv_to_rgb_int, nv12=False),
    "nv12-float": partial(yuv_round_trip, back=yuv_to_rgb_float, nv12=True),
    "nv12-int": partial(yuv_round_trip, back=yuv_to_rgb_int, nv12=True),
}
