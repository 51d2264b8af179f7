"""Synthetic scenes for the bundled detection and segmentation demos: real JPEGs with several objects each.

Six shape classes drawn at scales from small (8 px) to large (60% of the shorter side), overlapping
at most a little, on textured backgrounds (gradients, fine stripes that make resizing matter, noise)
with unannotated clutter (lines, dots).  Boxes are exact: computed from the drawn geometry.  The
mask (a grey PNG, class index + 1 per pixel, 0 background) is drawn with the same shapes in the same
order, so it is the image's exact rasterisation, later objects over earlier ones.
Shared by `make_detection_data.py`, `make_segmentation_data.py` (committed eval/calib splits),
`train_detector.py` and `train_segmenter.py` (fresh training scenes, other seeds).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "ring", "cross", "star")
MIN_OBJECT, MAX_OBJECT_SHARE = 8, 0.6


@dataclass(frozen=True)
class Scene:
    data: bytes  # JPEG
    width: int
    height: int
    boxes: list[list[float]]  # x1, y1, x2, y2 in pixels
    labels: list[int]
    mask: np.ndarray  # (height, width) uint8: 0 background, label + 1 where an object is drawn


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.uniform(40, 215, 3)
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 0:  # gradient
        direction = rng.uniform(0, 2 * math.pi)
        ramp = (np.cos(direction) * xx + np.sin(direction) * yy) / max(height, width)
        img = base + ramp[..., None] * rng.uniform(-60, 60, 3)
    elif kind == 1:  # fine stripes: aliasing differs per resize method
        period = rng.uniform(2.5, 6.0)
        angle = rng.uniform(0, math.pi)
        stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * math.pi / period)
        img = base + stripes[..., None] * rng.uniform(10, 30)
    else:  # noise
        img = base + rng.normal(0, rng.uniform(6, 18), (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _star(cx: float, cy: float, r: float, rotation: float) -> list[tuple[float, float]]:
    return [
        (
            cx + (r if i % 2 == 0 else r * 0.45) * math.cos(rotation + i * math.pi / 5),
            cy + (r if i % 2 == 0 else r * 0.45) * math.sin(rotation + i * math.pi / 5),
        )
        for i in range(10)
    ]


def _draw(
    targets: list[tuple[ImageDraw.ImageDraw, Any]], label: int, x: float, y: float, size: float, rng: np.random.Generator
) -> list[float]:
    """Draw one object whose bounding square is (x, y, size) on each (canvas, fill) of `targets` (the image, its
    mask); return its exact box."""
    cx, cy, r = x + size / 2, y + size / 2, size / 2
    points = None
    if label in (2, 5):
        points = _star(cx, cy, r, rng.uniform(0, 2 * math.pi)) if label == 5 else [(cx, y), (x + size, y + size), (x, y + size)]
    for draw, colour in targets:
        if label == 0:
            draw.ellipse([x, y, x + size, y + size], fill=colour)
        elif label == 1:
            draw.rectangle([x, y, x + size, y + size], fill=colour)
        elif label == 3:
            draw.ellipse([x, y, x + size, y + size], outline=colour, width=max(2, int(size * 0.18)))
        elif label == 4:
            bar = max(2.0, size * 0.28)
            draw.rectangle([x, cy - bar / 2, x + size, cy + bar / 2], fill=colour)
            draw.rectangle([cx - bar / 2, y, cx + bar / 2, y + size], fill=colour)
        else:
            draw.polygon(points, fill=colour)
    if points is not None:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        return [min(xs), min(ys), max(xs), max(ys)]
    return [x, y, x + size, y + size]


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def scene(rng: np.random.Generator, widths: tuple[int, int] = (160, 257), heights: tuple[int, int] = (120, 201)) -> Scene:
    """One scene of a width in `widths` and a height in `heights` (half-open ranges, pixels)."""
    width, height = int(rng.integers(*widths)), int(rng.integers(*heights))
    image = Image.fromarray(_background(rng, height, width))
    draw = ImageDraw.Draw(image)
    mask = Image.new("L", (width, height), 0)
    mask_draw = ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(3, 9))):  # clutter: thin lines and dots, not annotated
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        tone = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.line([x0, y0, x0 + rng.uniform(-40, 40), y0 + rng.uniform(-40, 40)], fill=tone, width=1)
        else:
            draw.ellipse([x0, y0, x0 + 3, y0 + 3], fill=tone)
    boxes: list[list[float]] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(2, 7))):
        largest = MAX_OBJECT_SHARE * min(width, height)
        size = float(np.exp(rng.uniform(np.log(MIN_OBJECT), np.log(largest))))
        for _attempt in range(10):
            x, y = rng.uniform(0, width - size), rng.uniform(0, height - size)
            square = [x, y, x + size, y + size]
            if all(_iou(square, b) < 0.3 for b in boxes):
                break
        else:
            continue
        label = int(rng.integers(len(CLASSES)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        boxes.append(_draw([(draw, colour), (mask_draw, label + 1)], label, x, y, size, rng))
        labels.append(label)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(rng.integers(85, 96)), subsampling=int(rng.choice([0, 2])))
    return Scene(buf.getvalue(), width, height, [[round(v, 2) for v in b] for b in boxes], labels, np.asarray(mask))
