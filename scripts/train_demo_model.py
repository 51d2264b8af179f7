"""Train the demo model on CPU and write harness/suites/demo/weights.safetensors.

The training split is generated on the fly (fresh seeds, never the committed
eval/calib images), JPEG-encoded with the same randomised settings, and fed
through the suite's reference stack, so training and evaluation see exactly
the same pre-processing.  Trained by `training.fit_classifier` (the recipe
`scripts/mitigate.py` uses too).

    python scripts/train_demo_model.py [--train 9600] [--epochs 6] [--threads 1] [--workers 2]
"""

from __future__ import annotations

import argparse
import time
from multiprocessing import Pool

import numpy as np
import torch
from demo_images import CLASSES, encode
from torch.utils.data import TensorDataset
from training import fit_classifier, save_weights

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


def make_training_set(count: int, workers: int) -> TensorDataset:
    with Pool(workers) as pool:
        parts = pool.map(_make_chunk, range(-(-count // CHUNK)))
    x = torch.from_numpy(np.concatenate([p[0] for p in parts])[:count])
    return TensorDataset(x, torch.from_numpy(np.concatenate([p[1] for p in parts])[:count]))


def evaluate(model: torch.nn.Module) -> float:
    suite = load_suite("demo")
    dataset = load_dataset(suite.data.manifest, suite.data.split)
    x = torch.from_numpy(np.stack([decode_and_preprocess(read_sample(s), suite.stack) for s in dataset.samples]))
    labels = torch.tensor([s.label for s in dataset.samples])
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=9600)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: how the bundled weights were trained)")
    parser.add_argument("--workers", type=int, default=2, help="processes generating the training split (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = make_training_set(args.train, args.workers)
    print(f"generated {len(data)} training samples in {time.perf_counter() - start:.0f} s", flush=True)
    model = build_demo_resnet(num_classes=len(CLASSES))
    fit_classifier(model, data, args.epochs, args.batch)
    print(f"eval top-1 {evaluate(model):.3f} ({time.perf_counter() - start:.0f} s)")
    save_weights(model, "demo", start)


if __name__ == "__main__":
    main()
