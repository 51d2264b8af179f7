"""What the demo training scripts share: the epoch line and writing the trained weights beside a bundled suite."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors.torch import save_file

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
