"""Train the segmentation demo's segmenter on CPU and write harness/suites/segment/weights.safetensors.

Training scenes are generated with fresh seeds (never the committed eval/calib scenes), JPEG-encoded and fed
through the suite's reference stack; each mask is laid on the tensor through the tensor's geometry (nearest
source pixel; padding is ignored).  The logits are upsampled bilinearly to the tensor's size and scored by
cross-entropy.  About 10 minutes on 2 busy threads.

    python scripts/train_segmenter.py [--train 2500] [--epochs 45] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from detection_scenes import scene
from make_segmentation_data import SEGMENT_CLASSES, SIZES
from training import epoch_line, save_weights

from harness.data.stack import Geometry, decode, prepare, stack_from
from harness.demo.models import DemoSegmenter

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "harness" / "suites" / "segment.toml"
TRAIN_SEED = 20261213
IGNORE = 255


def mask_on_tensor(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The source mask at each tensor pixel's centre (nearest source pixel), IGNORE where the tensor shows no source."""
    ys, xs = geometry.source_centres()
    rows, cols = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    inside = ((rows >= 0) & (rows < mask.shape[0]))[:, None] & ((cols >= 0) & (cols < mask.shape[1]))[None, :]
    out = mask[np.clip(rows, 0, mask.shape[0] - 1)][:, np.clip(cols, 0, mask.shape[1] - 1)]
    return np.where(inside, out, IGNORE).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2500)
    parser.add_argument("--epochs", type=int, default=45)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    table = tomllib.loads(SUITE.read_text())
    stack = stack_from("reference", {k: tuple(v) if isinstance(v, list) else v for k, v in table["stack"].items()}, str(SUITE))
    rng = np.random.default_rng(TRAIN_SEED)
    start = time.perf_counter()
    tensors, masks = [], []
    for _ in range(args.train):
        made = scene(rng, **SIZES)
        prepared = prepare(decode(made.data, stack), stack)
        tensors.append(prepared.tensor)
        masks.append(mask_on_tensor(made.mask, prepared.geometry))
    x_all, y_all = torch.from_numpy(np.stack(tensors)), torch.from_numpy(np.stack(masks))
    print(f"{args.train} training scenes in {time.perf_counter() - start:.0f} s", flush=True)
    model = DemoSegmenter(num_classes=len(SEGMENT_CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-4)
    steps = args.epochs * (args.train // args.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=4e-3, total_steps=steps, pct_start=0.1)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(args.train)
        total = 0.0
        for step in range(args.train // args.batch):
            rows = order[step * args.batch : (step + 1) * args.batch]
            logits = model(x_all[rows])
            logits = torch.nn.functional.interpolate(logits, size=x_all.shape[-2:], mode="bilinear", align_corners=False)
            loss = torch.nn.functional.cross_entropy(logits, y_all[rows], ignore_index=IGNORE)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
        epoch_line(epoch, args.epochs, total / (args.train // args.batch), start)
    save_weights(model, "segment", start)


if __name__ == "__main__":
    main()
