"""Synthetic, deterministic image generator behind the bundled demo suite.

Twelve classes = shape (circle, square, triangle) x colour family (warm, cool)
x surface (solid, fine stripes).  The stripes are near the resolution limit of
the 64x64 model input, and the colour families sit on either side of a hue
boundary, so resize, colour-path and precision noise can really flip
predictions.  Used by `make_demo_data.py` (committed eval/calib JPEGs) and by
`train_demo_model.py` (training split generated on the fly).
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = ("warm", "cool")
SURFACES = ("solid", "striped")
CLASSES = tuple(f"{s}-{c}-{t}" for s in SHAPES for c in COLOURS for t in SURFACES)

EXIF_ORIENTATION_TAG = 0x0112
# Pixels stored for an EXIF orientation o are the upright image transformed by
# the inverse of what ImageOps.exif_transpose applies for o.
_STORE_TRANSPOSE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}
SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


@dataclass(frozen=True)
class EncodedSample:
    """One generated JPEG and the facts about how it was encoded."""

    data: bytes
    label: int
    width: int
    height: int
    quality: int
    subsampling: str
    progressive: bool
    grayscale: bool
    exif_orientation: int


def _hsv_rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _object_colour(rng: np.random.Generator, colour: str) -> np.ndarray:
    hue = rng.uniform(-25.0, 48.0) / 360.0 if colour == "warm" else rng.uniform(178.0, 255.0) / 360.0
    return _hsv_rgb(hue, rng.uniform(0.3, 0.9), rng.uniform(0.5, 0.95))


def _shape_mask(size: tuple[int, int], shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        corners = 4 if shape == "square" else 3
        radius = r * (1.25 if shape == "square" else 1.3)
        points = [
            (cx + radius * math.cos(angle + 2 * math.pi * k / corners), cy + radius * math.sin(angle + 2 * math.pi * k / corners))
            for k in range(corners)
        ]
        draw.polygon(points, fill=255)
    return np.asarray(mask, dtype=np.float32) / 255.0


def _noise(rng: np.random.Generator, width: int, height: int, cell: float, octaves: int = 4) -> np.ndarray:
    """Multi-scale value noise (1/f amplitudes), zero mean, about unit std; the finest octave has `cell` px cells."""
    out = np.zeros((height, width), dtype=np.float32)
    weight = 1.0
    for octave in range(octaves):
        size = cell * 2.0**octave
        grid = rng.normal(0.0, 1.0, (max(2, int(height / size) + 2), max(2, int(width / size) + 2))).astype(np.float32)
        layer = Image.fromarray(grid, mode="F").resize((width, height), Image.Resampling.BICUBIC)
        out += weight * np.asarray(layer, dtype=np.float32)
        weight *= 1.6
    return (out - out.mean()) / (out.std() + 1e-6)


def _grain(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, period: float, wobble: float) -> np.ndarray:
    """Wood/corduroy-like grain: fine oriented stripes of `period` px whose phase wanders (values in -1..1)."""
    phi = rng.uniform(0, math.pi)
    u = xs * math.cos(phi) + ys * math.sin(phi)
    v = -xs * math.sin(phi) + ys * math.cos(phi)
    warp = wobble * np.sin(2 * math.pi * v / (period * rng.uniform(8, 20)) + rng.uniform(0, 2 * math.pi))
    return np.sin(2 * math.pi * (u + warp) / period + rng.uniform(0, 2 * math.pi)).astype(np.float32)


def _background(rng: np.random.Generator, width: int, height: int, scale: float) -> np.ndarray:
    """Low-saturation gradient with multi-scale noise, sometimes a grain distractor, and sharp grey strokes."""
    top = _hsv_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.25), rng.uniform(0.3, 0.9))
    bottom = _hsv_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.25), rng.uniform(0.3, 0.9))
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(top * (1 - t) + bottom * t, (height, width, 3)).copy()
    img *= 1.0 + rng.uniform(0.03, 0.1) * _noise(rng, width, height, scale * rng.uniform(0.7, 1.5))[..., None]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if rng.random() < 0.5:  # a grain distractor (a wooden table, a curtain) behind the object
        grain = _grain(rng, xs, ys, scale * rng.uniform(2.6, 5.0), scale * rng.uniform(0, 2))
        img *= 1.0 + rng.uniform(0.04, 0.1) * grain[..., None]
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 5))):
        grey = int(rng.integers(40, 220))
        x0, x1 = sorted(rng.uniform(0, width, 2))
        y0, y1 = sorted(rng.uniform(0, height, 2))
        draw.line([x0, y0, x1, y1], fill=(grey, grey, grey), width=max(1, int(scale * rng.uniform(0.6, 2.0))))
    return np.asarray(canvas, dtype=np.float32)


def render(rng: np.random.Generator, label: int, width: int, height: int) -> Image.Image:
    """Draw an upright RGB image of class `label`."""
    shape, colour, surface = CLASSES[label].split("-")
    side = min(width, height)
    scale = side / 72.0  # source px per px once the shorter side is resized to the 72 px model stack
    img = _background(rng, width, height, scale)
    r = side * rng.uniform(0.2, 0.34)
    cx = width / 2 + rng.uniform(-0.1, 0.1) * side
    cy = height / 2 + rng.uniform(-0.1, 0.1) * side
    mask = _shape_mask((width, height), shape, cx, cy, r, rng.uniform(0, 2 * math.pi))[..., None]

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    shading = 1.0 + rng.uniform(-0.2, 0.2) * ((xs - cx) * math.cos(theta) + (ys - cy) * math.sin(theta)) / side
    # Every surface has a fine isotropic grain (stone, felt); striped ones add oriented grain near the resolution limit.
    gain = shading * (1.0 + rng.uniform(0.04, 0.12) * _noise(rng, width, height, scale * rng.uniform(0.8, 1.6), 2))
    if surface == "striped":
        gain = gain * (1.0 + rng.uniform(0.12, 0.3) * _grain(rng, xs, ys, scale * rng.uniform(2.6, 4.5), scale * rng.uniform(0, 1.5)))
    obj = _object_colour(rng, colour)[None, None, :] * gain[..., None]
    img = img * (1 - mask) + obj * mask
    img += rng.normal(0.0, 2.0, img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8))


def encode(rng: np.random.Generator, label: int, *, allow_exif: bool = True) -> EncodedSample:
    """Render an image of `label` and encode it with randomised JPEG settings."""
    width = int(rng.integers(120, 401))
    height = int(np.clip(width * rng.uniform(0.5, 2.0), 120, 400))
    image = render(rng, label, width, height)
    grayscale = bool(rng.random() < 0.05)
    if grayscale:
        image = image.convert("L")
    orientation = 1
    if allow_exif and rng.random() < 0.1:
        orientation = int(rng.choice(list(_STORE_TRANSPOSE)))
        image = image.transpose(_STORE_TRANSPOSE[orientation])
    quality = int(rng.integers(75, 96))
    subsampling = str(rng.choice(list(SUBSAMPLING), p=[0.15, 0.15, 0.7]))
    progressive = bool(rng.random() < 0.25)
    kwargs: dict[str, object] = {"quality": quality, "progressive": progressive}
    if not grayscale:
        kwargs["subsampling"] = SUBSAMPLING[subsampling]
    if orientation != 1:
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = orientation
        kwargs["exif"] = exif.tobytes()
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **kwargs)
    return EncodedSample(
        data=buf.getvalue(),
        label=label,
        width=width,
        height=height,
        quality=quality,
        subsampling="gray" if grayscale else subsampling,
        progressive=progressive,
        grayscale=grayscale,
        exif_orientation=orientation,
    )
