"""Train the demo model on CPU and write harness/suites/demo/weights.safetensors.

The training split is generated on the fly (fresh seeds, never the committed
eval/calib images), JPEG-encoded with the same randomised settings, and fed
through the suite's reference stack, so training and evaluation see exactly
the same pre-processing.  About 6-8 minutes on 2 cores.

    python scripts/train_demo_model.py [--train 14400] [--epochs 8]
"""

from __future__ import annotations

import argparse
import time
from multiprocessing import Pool

import numpy as np
import torch
from demo_images import CLASSES, encode
from safetensors.torch import save_file

from harness.data.dataset import load_dataset, read_sample
from harness.data.stack import decode_and_preprocess
from harness.demo.models import build_demo_resnet
from harness.spec.suite import load_suite

TRAIN_SEED = 20261103
CHUNK = 600


def _make_chunk(chunk: int) -> tuple[np.ndarray, np.ndarray]:
    stack = load_suite("demo").stack
    rng = np.random.default_rng([TRAIN_SEED, chunk])
    labels = rng.integers(0, len(CLASSES), CHUNK)
    tensors = [decode_and_preprocess(encode(rng, int(label)).data, stack) for label in labels]
    return np.stack(tensors), labels


def make_training_set(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    with Pool(2) as pool:
        parts = pool.map(_make_chunk, range(count // CHUNK))
    return torch.from_numpy(np.concatenate([p[0] for p in parts])), torch.from_numpy(np.concatenate([p[1] for p in parts]))


def evaluate(model: torch.nn.Module) -> float:
    suite = load_suite("demo")
    dataset = load_dataset(suite.data.manifest, suite.data.split)
    x = torch.from_numpy(np.stack([decode_and_preprocess(read_sample(s), suite.stack) for s in dataset.samples]))
    labels = torch.tensor([s.label for s in dataset.samples])
    with torch.no_grad():
        return float((model(x).argmax(1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=14400)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.time()
    x, y = make_training_set(args.train)
    print(f"generated {len(x)} training samples in {time.time() - start:.0f}s")
    model = build_demo_resnet(num_classes=len(CLASSES))
    steps = args.epochs * (len(x) // args.batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for i in range(len(x) // args.batch):
            idx = order[i * args.batch : (i + 1) * args.batch]
            batch = x[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5
            batch[flip] = batch[flip].flip(-1)
            loss = torch.nn.functional.cross_entropy(model(batch), y[idx], label_smoothing=0.05)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        model.eval()
        print(
            f"epoch {epoch + 1}: loss {total / (len(x) // args.batch):.3f}  eval top-1 {evaluate(model):.3f}  ({time.time() - start:.0f}s)"
        )
    out = load_suite("demo").model.weights
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
