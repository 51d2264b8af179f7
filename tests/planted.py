"""A small classifier with one planted bad layer, for `harness localize`, `sensitivity` and precision fallback.

- fault "int8": layer `bad` (a 1x1 conv) copies its input and adds, in channel 0, a sparse input feature
  multiplied by 600. The next conv ignores channel 0, so the FP32 model is unharmed; but the few spikes
  set the per-tensor INT8 scale of `bad`'s output, and every other value of that tensor rounds to a few
  levels. Keeping `bad` in float (its output unquantized) is the fix; keeping `conv3` is not.
- fault "fp16": layer `bad` is an RMS normalisation of activations around 1,000, whose squares overflow
  FP16 (65,504), so its output becomes 0 or NaN where FP16 really executes. Keeping `bad` in FP32 is the fix,
  and the FP16 range audit makes it by default: a suite that studies the overflow adds `REPORT_FP16_OVERFLOW`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

SPARSE_CHANNEL = 5
# An untrained model's features differ little from image to image, so even a sound INT8 model (7-bit weights,
# the default) flips about one in ten of its near-tied predictions: the planted suites allow that much, and no more.
PLANTED_TOLERANCE = """[tolerance.int8]
min_top1_agreement = 0.85
max_flips = 50
max_negative_flip_rate = 0.05
max_metric_delta = 0.05
min_cosine = 0.0
"""

REPORT_FP16_OVERFLOW = 'fp16_out_of_range = "report"'  # [export]: the overflow reaches the FP16 file, only noted


class RmsNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-6)


class Planted(nn.Module):
    def __init__(self, fault: str = "int8", num_classes: int = 12) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 2, 1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 16, 3, 1, 1)
        self.relu2 = nn.ReLU()
        self.bad: nn.Module = nn.Conv2d(16, 16, 1) if fault == "int8" else RmsNorm()
        self.conv3 = nn.Conv2d(16, 32, 3, 2, 1)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(32, 32, 3, 1, 1)
        self.relu4 = nn.ReLU()
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        x = self.relu4(self.conv4(self.relu3(self.conv3(self.bad(x)))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def planted_model(fault: str = "int8", num_classes: int = 12) -> nn.Module:
    """The builder a suite names (`tests.planted:planted_model`)."""
    return Planted(fault, num_classes)


def planted_weights(fault: str, path: Path, images: np.ndarray) -> Path:
    """Random weights (fixed seed) with the fault planted, as safetensors; the head is centred on the features
    of `images` (pre-processed demo samples), so predictions vary from image to image."""
    torch.manual_seed(0)
    model = Planted(fault)
    with torch.no_grad():
        if fault == "int8":
            # channel 5 of relu2 is mostly 0 on these images, whatever their texture
            pre = model.conv2(model.relu1(model.conv1(torch.from_numpy(images))))[:, SPARSE_CHANNEL]
            model.conv2.bias[SPARSE_CHANNEL] -= torch.quantile(pre.flatten(), 0.999)  # 1 spot in 1,000 fires
            eye = torch.eye(16).reshape(16, 16, 1, 1)
            eye[0, 0] = 0
            eye[0, SPARSE_CHANNEL] = 600.0  # the spikes
            model.bad.weight.copy_(eye)
            model.bad.bias.zero_()
            model.conv3.weight[:, 0] = 0  # the FP32 model never reads them
        else:
            model.conv2.weight.mul_(1000.0)
            model.conv2.bias.mul_(1000.0)
        model.head.weight.mul_(100.0)  # logits that depend on the image: a damaged layer flips predictions
        model.head.bias.zero_()
        model.eval()
        model.head.bias.copy_(-model(torch.from_numpy(images)).mean(0))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def planted_suite(make_suite, tmp_path: Path, fault: str, images: np.ndarray, extra: str = "") -> Path:
    """A copy of the demo suite (its data and stack) running the planted model."""
    weights = planted_weights(fault, tmp_path / f"planted-{fault}.safetensors", images)
    return make_suite(
        {
            'builder = "demo-resnet"': 'builder = "tests.planted:planted_model"',
            "kwargs = { num_classes = 12 }": f'kwargs = {{ num_classes = 12, fault = "{fault}" }}',
            'weights = "': f'weights = "{weights}"\n# demo weights were: "',
            "int8_per_channel = true": f"int8_per_channel = true\n{extra}",
            "[tolerance.fp32]": PLANTED_TOLERANCE + "\n[tolerance.fp32]",
        },
        name=f"planted-{fault}.toml",
    )


class CeilPools(nn.Module):
    """Two ceil-mode max pools on odd-sized maps, as in MTCNN's nets: 64x64 -> 62 -> pool 31 -> 29 -> pool 15 (floor
    mode: 30 -> 28 -> 14). head "map" (MTCNN's PNet, fully convolutional): the class scores of every map position,
    output `map`, and their mean, output `logits`. head "linear" (MTCNN's RNet): a Linear on the flattened last map,
    which floor mode leaves too small for it."""

    def __init__(self, head: str = "map", num_classes: int = 12) -> None:
        super().__init__()
        self.head_kind = head
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.prelu1 = nn.PReLU(8)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.pool2 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.head: nn.Module = nn.Conv2d(16, num_classes, 1) if head == "map" else nn.Linear(16 * 15 * 15, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.pool2(self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x))))))
        if self.head_kind == "linear":
            return self.head(torch.flatten(x, 1))
        scores = self.head(x)
        return scores.mean(dim=(2, 3)), scores


def ceil_pools_model(head: str = "map", num_classes: int = 12) -> nn.Module:
    """The builder a suite names (`tests.planted:ceil_pools_model`)."""
    return CeilPools(head, num_classes)


def ceil_pools_suite(make_suite, tmp_path: Path, head: str) -> Path:
    """A copy of the demo suite (its data and 64x64 stack) running a `CeilPools` net with random weights (fixed seed)."""
    torch.manual_seed(0)
    weights = tmp_path / f"ceil-pools-{head}.safetensors"
    save_file({k: v.contiguous() for k, v in CeilPools(head).state_dict().items()}, str(weights))
    outputs = '["logits", "map"]' if head == "map" else '["logits"]'
    return make_suite(
        {
            'builder = "demo-resnet"': 'builder = "tests.planted:ceil_pools_model"',
            "kwargs = { num_classes = 12 }": f'kwargs = {{ num_classes = 12, head = "{head}" }}',
            'weights = "': f'weights = "{weights}"\n# demo weights were: "',
            'output_names = ["logits"]': f"output_names = {outputs}",
        },
        name=f"ceil-pools-{head}.toml",
    )
