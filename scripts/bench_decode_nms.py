"""Decode + NMS for a YOLOv8-sized head (8400 candidates x 80 classes) on one core: the detection task's
vectorised numpy path (`decoder = "yolov8"`, the torchvision rules of `harness.tasks.nms`) against a plain
torchvision loop (threshold, top-k, `batched_nms` per image), images per second and their ratio.

Scenes are synthetic but shaped like a trained detector's output: 20 objects, each seen by about 40 anchors
of jittered boxes scoring high in one class; every other score is low (sigmoid of N(-7, 1.5)).

Each side runs `--repeats` times, alternating; the best of each is printed, by wall clock and by the process's CPU
time (a single-threaded process: on a loaded machine the CPU time is what one core of its own would take).

    OMP_NUM_THREADS=1 python scripts/bench_decode_nms.py [--images 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

ANCHORS, CLASSES, SIDE = 8400, 80, 640
TARGET = 200.0  # images/s on one core (the target)


def scenes(images: int, seed: int = 0) -> np.ndarray:
    """[N, 4 + 80, 8400] float32 heads."""
    rng = np.random.default_rng(seed)
    head = np.empty((images, 4 + CLASSES, ANCHORS), np.float32)
    for i in range(images):
        centres = rng.uniform(0, SIDE, (ANCHORS, 2))
        sizes = rng.uniform(8, 64, (ANCHORS, 2))
        scores = 1 / (1 + np.exp(-rng.normal(-7, 1.5, (CLASSES, ANCHORS))))
        for _ in range(20):
            seen = rng.choice(ANCHORS, 40, replace=False)
            centre, size = rng.uniform(50, SIDE - 50, 2), rng.uniform(20, 200, 2)
            centres[seen] = centre + rng.normal(0, 0.05, (40, 2)) * size
            sizes[seen] = size * rng.uniform(0.85, 1.15, (40, 2))
            scores[rng.integers(CLASSES), seen] = rng.uniform(0.3, 0.95, 40)
        head[i] = np.r_[centres.T, sizes.T, scores]
    return head


def torchvision_loop(head: np.ndarray, threshold: float, top_k: int, iou: float, max_detections: int) -> list[np.ndarray]:
    import torch
    from torchvision.ops import batched_nms

    out = []
    for image in torch.from_numpy(head):
        boxes_cxcywh, scores = image[:4].T, image[4:].T
        boxes = torch.cat([boxes_cxcywh[:, :2] - boxes_cxcywh[:, 2:] / 2, boxes_cxcywh[:, :2] + boxes_cxcywh[:, 2:] / 2], dim=1)
        location, label = torch.nonzero(scores > threshold, as_tuple=True)
        confidence = scores[location, label]
        order = torch.argsort(-confidence, stable=True)[:top_k]
        location, label, confidence = location[order], label[order], confidence[order]
        keep = batched_nms(boxes[location], confidence, label, iou)[:max_detections]
        kept = boxes[location][keep].clamp(0, SIDE)  # in the image, as the harness maps boxes back
        out.append(torch.cat([kept, confidence[keep, None], label[keep, None].float()], dim=1).numpy())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from harness.data.stack import Geometry
    from harness.tasks import TaskSpec, make_task

    torch.set_num_threads(1)
    head = scenes(args.images)
    task = make_task(TaskSpec("detection", ("out",), {"decoder": "yolov8"}))
    geometry = [Geometry((SIDE, SIDE), (SIDE, SIDE))] * args.images
    flags = (task.score_threshold, task.pre_nms_top_k, task.nms_iou, task.max_detections)
    task.predictions({"out": head[:2]}, geometry[:2])  # warm up both
    torchvision_loop(head[:2], *flags)

    sides: dict[str, Callable[[], Any]] = {
        "harness": lambda: task.predictions({"out": head}, geometry),
        "torchvision": lambda: torchvision_loop(head, *flags),
    }
    wall = {name: 0.0 for name in sides}
    cpu = {name: 0.0 for name in sides}
    results: dict[str, Any] = {}
    for _ in range(args.repeats):
        for name, side in sides.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            results[name] = side()
            wall[name] = max(wall[name], args.images / (time.perf_counter() - start))
            cpu[name] = max(cpu[name], args.images / max(time.process_time() - start_cpu, 1e-9))
    mine, theirs = results["harness"], results["torchvision"]

    same = all(np.allclose(mine[i][: len(t)], t, atol=1e-4) and np.isnan(mine[i][len(t) :, 0]).all() for i, t in enumerate(theirs))
    kept = np.mean([len(t) for t in theirs])
    print(f"{args.images} images, {ANCHORS} candidates x {CLASSES} classes, {kept:.0f} detections per image, one thread")
    print(f"best of {args.repeats}, images/s:                      wall clock   CPU time")
    print(f"harness decode + NMS (numpy, torchvision rules): {wall['harness']:10.1f} {cpu['harness']:10.1f}")
    print(f"torchvision batched_nms loop:                    {wall['torchvision']:10.1f} {cpu['torchvision']:10.1f}")
    ratios = f"{wall['harness'] / wall['torchvision']:.2f}x wall clock, {cpu['harness'] / cpu['torchvision']:.2f}x CPU time"
    print(f"ratio: {ratios}; same detections: {same}")
    verdict = "met" if cpu["harness"] >= TARGET else "NOT met"
    print(f"target >= {TARGET:.0f} images/s on one core (CPU time): {verdict}")


if __name__ == "__main__":
    main()
