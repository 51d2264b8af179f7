"""Box arithmetic shared by the detection task and the detector's training: the location grid of a
feature pyramid, decoding log-distances into boxes, IoU.  Boxes are (N, 4) x1, y1, x2, y2 arrays in
continuous pixel coordinates."""

from __future__ import annotations

import numpy as np


def locations(input_hw: tuple[int, int], strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Centres (L, 2: x, y) of every location of every level, level by level in row-major order, and each one's stride."""
    centres, location_strides = [], []
    for stride in strides:
        rows, cols = -(-input_hw[0] // stride), -(-input_hw[1] // stride)
        ys, xs = np.mgrid[0:rows, 0:cols]
        centres.append(np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], axis=1))
        location_strides.append(np.full(rows * cols, stride, dtype=np.float64))
    return np.concatenate(centres).astype(np.float64), np.concatenate(location_strides)


def decode(deltas: np.ndarray, centres: np.ndarray, strides: np.ndarray, clamp: float | None = None) -> np.ndarray:
    """(..., L, 4) log-distances (left, top, right, bottom, in strides) -> (..., L, 4) boxes.  `clamp` bounds the
    log-distances before `exp` (the clamped decoding some deployments use); None decodes them as they are."""
    deltas = deltas.astype(np.float64)
    if clamp is not None:
        deltas = np.minimum(deltas, clamp)
    distances = np.exp(deltas) * strides[:, None]
    x, y = centres[:, 0], centres[:, 1]
    return np.stack([x - distances[..., 0], y - distances[..., 1], x + distances[..., 2], y + distances[..., 3]], axis=-1)


def area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of every box of `a` with every box of `b`."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
