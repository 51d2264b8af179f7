"""Where NMS runs, per runtime: the task's Python NMS (a run of `detect`) against NMS inside the exported graph
(a run of `detect-nms`: each runtime's own NonMaxSuppression, torchvision's `batched_nms` for PyTorch), on the
same samples.  Prints a Markdown table: each side's mAP and delta against its own reference, and how far one
runtime's two sets of detections agree (images unchanged, mean matched IoU).

    harness run --suite detect --runtime all --no-golden --report-dir reports/python
    harness run --suite detect-nms --runtime all --no-golden --report-dir reports/graph
    python scripts/nms_placement.py reports/python reports/graph
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from harness.run.outputs import RunOutputs
from harness.spec.suite import load_suite
from harness.tasks import make_task


def changed(a: np.ndarray, b: np.ndarray, atol: float = 1e-3) -> int:
    """Images whose detections differ at all (any score): another count, or a row (sorted) further than `atol`."""
    count = 0
    for x, y in zip(a, b, strict=True):
        x, y = x[~np.isnan(x[:, 0])], y[~np.isnan(y[:, 0])]
        if len(x) != len(y):
            count += 1
            continue
        x, y = (rows[np.lexsort(np.round(rows, 2).T[::-1])] for rows in (x, y))
        count += bool(len(x) and np.abs(x - y).max() > atol)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("python", type=Path, help="report folder of a `detect` run (Python NMS)")
    parser.add_argument("graph", type=Path, help="report folder of a `detect-nms` run on the same samples (NMS in the graph)")
    args = parser.parse_args()
    python, graph = RunOutputs.load(args.python), RunOutputs.load(args.graph)
    if python.ids != graph.ids:
        raise SystemExit("the two runs hold other samples: run both suites with the same --limit / --shard")
    task = make_task(load_suite("detect").task)
    targets = python.labels
    reference = next(iter(python.inferences))
    base = {side: task.metric(run.inferences[reference].predictions, targets) for side, run in (("python", python), ("graph", graph))}
    print(f"{len(python.ids)} images; reference {reference}; mAP in points\n")
    columns = ["mAP, Python NMS", "delta vs reference", "mAP, NMS in graph", "delta vs reference", "graph - Python"]
    columns += ["confident detections unchanged", "matched IoU", "images with any detection changed"]
    print(f"| runtime | {' | '.join(columns)} |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for runtime in python.inferences:
        if runtime not in graph.inferences:
            continue
        mine, theirs = python.inferences[runtime], graph.inferences[runtime]
        agreement = task.agree(python.ids, targets, theirs, mine)
        a, b = agreement.metric_baseline * 100, agreement.metric * 100
        print(
            f"| {runtime} | {a:.2f} | {a - base['python'] * 100:+.2f} | {b:.2f} | {b - base['graph'] * 100:+.2f} | {b - a:+.4f} "
            f"| {agreement.agreement:.1%} | {agreement.details['mean_matched_iou']:.5f} | {changed(mine.predictions, theirs.predictions)} |"
        )


if __name__ == "__main__":
    main()
