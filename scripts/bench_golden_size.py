"""Size of a bounded golden of a YOLOv8-sized detector on a COCO-sized split, next to the golden that keeps every raw output.

A synthetic run of `--samples` images (default 5,000, COCO val), one output [84, 8400] float32 per image (a YOLOv8
head at 640 px: 4 box coordinates and 80 class scores for 8400 anchors, 2.8 MB), predictions as the detection
task's padded arrays ([max_detections, 6] float64, NaN rows after each image's detections), targets as its padded
ground truth and the five stage hashes, goes through the real golden code (`raw_subset`, `magnitudes`,
`GoldenStore.write` and `load`) into a temp folder under the default [golden] bounds.  The raw outputs are
generated in chunks (the whole run would be 14 GB in memory); the unbounded size is that of a golden of the first
`--full-samples` images with every raw output, scaled to the split.

    python scripts/bench_golden_size.py [--samples 5000] [--max-detections 100] [--full-samples 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from harness.core.hashing import digest, sample_digests
from harness.judge.golden import MB, Golden, GoldenStore, magnitudes, raw_subset
from harness.spec.suite import GoldenSpec

SHAPE = (84, 8400)
CHUNK = 100
IMAGE = 640.0


def head_outputs(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` YOLOv8 head outputs: box centre and size in pixels, class probabilities skewed towards 0."""
    values = np.empty((count, *SHAPE), dtype=np.float32)
    values[:, :4] = rng.random((count, 4, SHAPE[1]), dtype=np.float32) * np.float32(IMAGE)
    values[:, 4:] = rng.random((count, SHAPE[0] - 4, SHAPE[1]), dtype=np.float32) ** 8
    return values


def padded(rng: np.random.Generator, count: int, rows: int, columns: int, mean: float) -> np.ndarray:
    """Padded box arrays: a Poisson number of rows per image (at most `rows`), NaN after them."""
    boxes = np.full((count, rows, columns), np.nan)
    for i, found in enumerate(np.minimum(rng.poisson(mean, count), rows)):
        corner = rng.random((found, 2)) * IMAGE * 0.8
        boxes[i, :found, :4] = np.c_[corner, corner + rng.random((found, 2)) * IMAGE * 0.2]
        boxes[i, :found, 4:] = rng.random((found, columns - 4))  # the score, for predictions
        boxes[i, :found, -1] = rng.integers(0, 80, found)  # the class
    return boxes


def synthetic_golden(samples: int, max_detections: int, spec: GoldenSpec, seed: int = 0) -> Golden:
    """The golden `harness golden update` would write of the synthetic run, built chunk by chunk."""
    rng = np.random.default_rng(seed)
    ids = tuple(f"val2017/{i:012d}.jpg" for i in range(samples))
    raw_ids = raw_subset(ids, {"output0": np.empty((1, *SHAPE), dtype=np.float32)}, spec)
    kept, raw, sizes, hashes = set(raw_ids), [], [], []
    for start in range(0, samples, CHUNK):
        chunk = head_outputs(rng, min(CHUNK, samples - start))
        rows = [i for i in range(len(chunk)) if ids[start + i] in kept]
        raw.append(chunk[rows])
        sizes.append(magnitudes({"output0": chunk})["output0"])
        hashes += sample_digests({"output0": chunk})
    predictions = padded(rng, samples, max_detections, 6, mean=max_detections / 3)
    stages = {name: tuple(digest(rng.bytes(16)) for _ in ids) for name in ("encoded", "decoded", "tensor")}
    return Golden(
        runtime="ort-fp32",
        ids=ids,
        labels=padded(rng, samples, 128, 5, mean=7.3),  # COCO val: 7.3 objects per image
        outputs={"output0": np.concatenate(raw)},
        predictions=predictions,
        metrics={"mAP": 0.5},
        metadata={},
        stages=stages | {"outputs": tuple(hashes), "predictions": tuple(digest(p) for p in predictions)},
        raw_ids=raw_ids,
        recorded_magnitudes={"output0": np.concatenate(sizes)},
    )


def golden_bytes(golden: Golden, root: Path) -> int:
    """Bytes of the golden as written (and read back: what `harness run` would load)."""
    store = GoldenStore(root, "bench")
    folder = store.write(golden)
    assert store.load(golden.runtime).raw == golden.raw
    return sum(path.stat().st_size for path in folder.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--max-detections", type=int, default=100, help="[postprocess] max_detections: rows of each prediction")
    parser.add_argument("--full-samples", type=int, default=16, help="images of the every-raw-output golden the unbounded size scales")
    args = parser.parse_args()
    spec = GoldenSpec()
    start = time.perf_counter()
    bounded = synthetic_golden(args.samples, args.max_detections, spec)
    full = synthetic_golden(args.full_samples, args.max_detections, GoldenSpec(max_raw_mb=1e9))
    with tempfile.TemporaryDirectory() as tmp:
        size = golden_bytes(bounded, Path(tmp) / "bounded")
        unbounded = golden_bytes(full, Path(tmp) / "full") * args.samples / args.full_samples
    seconds = time.perf_counter() - start
    print(f"{args.samples} samples, one output {SHAPE[0]} x {SHAPE[1]} float32 ({np.prod(SHAPE) * 4 / MB:.2f} MB) each, {seconds:.0f} s")
    print(f"bounded golden (max_raw_mb {spec.max_raw_mb:g}): {bounded.coverage()}, {size / MB:.1f} MB on disk")
    print(f"every raw output (scaled from {args.full_samples} samples): {unbounded / MB:,.0f} MB ({unbounded / max(size, 1):.0f}x)")


if __name__ == "__main__":
    main()
