"""What the demo training scripts share: the epoch line, writing the trained weights beside a bundled suite, and a
classifier training loop (`fit_classifier`)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parent.parent


def epoch_line(epoch: int, epochs: int, loss: float, start: float) -> None:
    print(f"epoch {epoch + 1}/{epochs}: loss {loss:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)


def save_weights(model: torch.nn.Module, suite: str, start: float) -> Path:
    """The eval-mode model's state dict as `harness/suites/<suite>/weights.safetensors`."""
    model.eval()
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    out = ROOT / "harness" / "suites" / suite / "weights.safetensors"
    save_file(weights, str(out))
    print(f"wrote {out} ({sum(v.numel() for v in weights.values())} values) in {time.perf_counter() - start:.0f} s")
    return out


def fit_classifier(
    model: torch.nn.Module,
    data: Dataset[tuple[torch.Tensor, int]],
    epochs: int,
    batch: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.05,
    flip: bool = True,
    seed: int = 0,
    workers: int = 0,
    steps: int | None = None,
) -> list[float]:
    """AdamW with a one-cycle schedule, cross-entropy with label smoothing, random horizontal flips: the demo's
    classifier recipe, on any dataset of (tensor, label).  A dataset with `set_epoch` (e.g. `harness.data.mix.MixDataset`)
    is told the epoch before each pass.  `steps` stops early (a quick check).  Returns the mean loss per epoch."""
    torch.manual_seed(seed)
    per_epoch = len(data) // batch
    if per_epoch == 0:
        raise ValueError(f"{len(data)} training samples make no batch of {batch}")
    total = min(epochs * per_epoch, steps) if steps else epochs * per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    done, start = 0, time.perf_counter()
    for epoch in range(epochs):
        if done >= total:
            break
        if hasattr(data, "set_epoch"):
            data.set_epoch(epoch)
        loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True, generator=generator, num_workers=workers)
        model.train()
        running, seen = 0.0, 0
        for x, y in loader:
            if flip:
                flipped = torch.rand(len(x), generator=generator) < 0.5
                x[flipped] = x[flipped].flip(-1)
            loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            running, seen, done = running + loss.item(), seen + 1, done + 1
            if done >= total:
                break
        losses.append(running / seen)
        epoch_line(epoch, epochs, losses[-1], start)
    model.eval()
    return losses
