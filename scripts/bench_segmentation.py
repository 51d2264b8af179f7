"""Benchmark: mask post-processing (resize back + argmax + confusion matrix) against a plain numpy reference loop.

Score maps of `--classes` classes at a quarter of a `--size` x `--size` source image, resized back bilinearly
(half-pixel centres), argmaxed and counted into a confusion matrix with the truth, on one thread.  Two kinds of
score maps: `scene` (logits of a label map of blobs, as a trained segmenter's: coherent regions, boundaries
between them) and `noise` (independent random logits: every pixel is a boundary, the worst case).  The reference
interpolates every class plane with the same four-tap formula, argmaxes with np.argmax and counts the confusion
matrix class by class.  Prints images/s of both and their ratio, and checks that the labels agree.

    OMP_NUM_THREADS=1 python scripts/bench_segmentation.py [--images 20] [--size 512] [--classes 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from harness.data.stack import Geometry
from harness.tasks.segmentation import SegmentationTask, confusion


def scene_logits(rng: np.random.Generator, classes: int, size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """A label map of random discs on a background, and logits of it on the 1/stride grid (cell means of the one-hot
    map, scaled, plus noise)."""
    labels = np.zeros((size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(24):
        (cy, cx), r = rng.uniform(0, size, 2), rng.uniform(size / 40, size / 6)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(classes)
    one_hot = (labels[None] == np.arange(classes)[:, None, None]).astype(np.float32)
    grid = one_hot.reshape(classes, size // stride, stride, size // stride, stride).mean(axis=(2, 4))
    return 8.0 * grid + rng.normal(0, 0.3, grid.shape).astype(np.float32), labels


def reference(scores: np.ndarray, truth: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy: each class plane interpolated at every pixel (four taps, half-pixel), np.argmax, and the
    confusion matrix counted class by class."""
    size = truth.shape[0]
    grid = scores.shape[1]
    coords = np.clip((np.arange(size) + 0.5) * grid / size - 0.5, 0, grid - 1)
    low = np.floor(coords).astype(int)
    high = np.minimum(low + 1, grid - 1)
    t = coords - low
    planes = np.empty((classes, size, size), dtype=np.float32)
    for c in range(classes):
        plane = scores[c]
        top = plane[low][:, low] * (1 - t)[None, :] + plane[low][:, high] * t[None, :]
        bottom = plane[high][:, low] * (1 - t)[None, :] + plane[high][:, high] * t[None, :]
        planes[c] = top * (1 - t)[:, None] + bottom * t[:, None]
    labels = np.argmax(planes, axis=0)
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for a in range(classes):
        row = labels[truth == a]
        for b in range(classes):
            matrix[a, b] = np.count_nonzero(row == b)
    return labels, matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    task = SegmentationTask(("logits",), mask_canvas=args.size, classes=args.classes)
    geometry = [Geometry((args.size, args.size), (args.size, args.size))] * args.images
    for kind in ("scene", "noise"):
        made = [scene_logits(rng, args.classes, args.size, 4) for _ in range(args.images)]
        scores = np.stack([m[0] for m in made])
        if kind == "noise":
            scores = rng.normal(0, 1, scores.shape).astype(np.float32)
        truth = np.stack([m[1] for m in made])
        start = time.perf_counter()
        predicted = task.predictions({"logits": scores}, geometry)
        matrix = confusion(truth, predicted, args.classes)
        ours = time.perf_counter() - start
        start = time.perf_counter()
        expected = [reference(scores[i], truth[i], args.classes) for i in range(args.images)]
        plain = time.perf_counter() - start
        agree = float(np.mean([np.mean(predicted[i] == expected[i][0]) for i in range(args.images)]))
        same_matrix = sum(e[1] for e in expected).sum() == matrix[:, : args.classes].sum()
        print(
            f"{kind:5s}: {args.images / ours:7.1f} images/s vectorised, {args.images / plain:6.1f} images/s numpy reference loop, "
            f"ratio {plain / ours:5.1f}x; labels agree on {agree:.6f} of pixels, pixel counts equal: {same_matrix}"
        )


if __name__ == "__main__":
    main()
