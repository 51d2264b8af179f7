"""Mix training on the bundled demo: measure -> mitigate -> verify.

Trains the demo classifier twice with one recipe (`training.fit_classifier`) on the same generated training
split (`demo_images.encode`, seeded, never the committed eval/calib images): once through the suite's reference
stack, once with mix training (`harness.data.mix`: decoder and resize method drawn per sample and epoch from the
suite's matrix axes).  Then runs the SysNoise matrix on the suite's reference runtime for both models and reports
per axis the mean, largest drop and std of the top-1 delta side by side, with the clean top-1: a terminal table,
mitigate.json, mitigate.md and mitigate.png under --report-dir (with both models' weights).

    python scripts/mitigate.py                                   # a few minutes on one thread
    python scripts/mitigate.py --train 64 --epochs 1 --limit 16  # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from demo_images import CLASSES, encode
from rich.console import Console
from safetensors.torch import save_file
from training import fit_classifier

from exporters.cache import ArtifactCache, default_cache_dir
from harness.analysis.mitigate import MIX_AXES, mix_axes, run_mitigation
from harness.core.errors import HarnessError
from harness.data.mix import MixDataset, MixTransform
from harness.demo.models import build_demo_resnet
from harness.report.tables import render_table
from harness.spec.suite import load_suite

TRAIN_SEED = 20261202  # not the seeds of the committed splits
MATRIX_AXES = "decoder,resize,colour"


def training_split(count: int) -> list[tuple[bytes, int]]:
    """`count` generated JPEGs with their labels, sample i from the generator seeded (TRAIN_SEED, i)."""
    split = []
    for i in range(count):
        rng = np.random.default_rng([TRAIN_SEED, i])
        sample = encode(rng, int(rng.integers(len(CLASSES))))
        split.append((sample.data, sample.label))
    return split


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=4800, help="generated training images (default 4800)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=None, help="stop each training after this many steps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="matrix on the first N eval samples (default: all)")
    parser.add_argument("--mix", default=",".join(MIX_AXES), help="axes drawn per sample (decoder, resize, colour)")
    parser.add_argument("--axes", default=MATRIX_AXES, help=f"matrix axes (default {MATRIX_AXES})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--report-dir", type=Path, default=Path("reports/demo/mitigate"))
    parser.add_argument("--cache-dir", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    suite = load_suite("demo")
    mix = MixTransform(suite.stack, mix_axes(suite, tuple(a.strip() for a in args.mix.split(",") if a.strip())))
    for note in mix.notes:
        print(f"note: {note}")
    start = time.perf_counter()
    split = training_split(args.train)
    print(f"generated {len(split)} training images in {time.perf_counter() - start:.0f} s")
    args.report_dir.mkdir(parents=True, exist_ok=True)
    weights, seconds = {}, {}
    for label, transform in (("reference", MixTransform(suite.stack)), ("mix", mix)):
        began = time.perf_counter()
        print(f"training the {label} model")
        model = build_demo_resnet(num_classes=len(CLASSES))
        fit_classifier(model, MixDataset(split, transform), args.epochs, args.batch, steps=args.steps, workers=args.workers)
        weights[label] = args.report_dir / f"{label}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights[label]))
        seconds[label] = round(time.perf_counter() - began, 1)
    recipe = {"train": args.train, "epochs": args.epochs, "steps": args.steps, "batch": args.batch, "threads": args.threads}
    context = {"training": recipe | {"seconds": seconds}, "mix": mix.describe(), "notes": mix.notes}
    axes = [a.strip() for a in args.axes.split(",") if a.strip()]
    report = run_mitigation(suite, weights, axes, ArtifactCache(args.cache_dir or default_cache_dir()), args.limit, context=context)
    console = Console(width=None if sys.stdout.isatty() else 200)
    title = f"demo: {report.metric_name} delta per axis in points ({report.samples} samples), reference-stack vs mix training"
    render_table(console, title, report.headers, report.rows())
    print(f"training: {seconds['reference']} s (reference), {seconds['mix']} s (mix)")
    for path in report.write(args.report_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
