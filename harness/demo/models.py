"""The bundled demos' models: a small ResNet classifier, an FCOS-style detector with a feature pyramid, the same
pyramid with a YOLOv8-style head, and a U-Net-style segmenter.

They reach suites the way a user's model does, by builder name (`demo-resnet`, `demo-detector`, `demo-yolo`, `demo-segmenter` are aliases
of import paths in `harness.spec.models`); nothing of the harness imports this room.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv + BN, identity or 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class DemoResNet(nn.Module):
    """Small ResNet for the bundled demo: conv stem, stride-2 3x3 max-pool with
    padding (the op whose ceil mode runtimes disagree on), four residual stages."""

    def __init__(self, num_classes: int = 12, widths: tuple[int, ...] = (24, 48, 96, 160)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = []
        cin = widths[0]
        for i, cout in enumerate(widths):
            stages.append(BasicBlock(cin, cout, stride=1 if i == 0 else 2))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.pool(self.stem(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build_demo_resnet(num_classes: int = 12) -> nn.Module:
    return DemoResNet(num_classes=num_classes)


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TopDown(nn.Module):
    """A feature pyramid's top-down path, without weights: from the coarsest level down, each level is upsampled
    (functional nearest `F.interpolate`, x2) and added to the next finer lateral.  A module of its own, so the
    matrix's upsample variants find the call in a `forward` whichever head the pyramid feeds."""

    def forward(self, laterals: list[torch.Tensor]) -> list[torch.Tensor]:
        pyramid = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            pyramid.insert(0, lateral + nn.functional.interpolate(pyramid[0], scale_factor=2.0, mode="nearest"))
        return pyramid


class DemoDetector(nn.Module):
    """Small anchor-free detector with a feature pyramid (strides 8, 16, 32).

    The top-down path (`TopDown`) upsamples with the functional `F.interpolate(mode="nearest")`, as most real
    detectors do.  Per location of every level it predicts class logits and four log-distances to the
    box edges (left, top, right, bottom, in units of the level's stride); `harness.tasks.detection`
    decodes them (exp, times the stride, around the location's centre) and runs NMS.  Outputs:
    `scores` (N, locations, classes) logits and `boxes` (N, locations, 4) log-distances.
    """

    STRIDES = (8, 16, 32)

    def __init__(self, num_classes: int = 6, width: int = 48) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 2), conv_bn(16, 24, 2))  # stride 4
        self.c3 = nn.Sequential(conv_bn(24, 48, 2), conv_bn(48, 48))  # stride 8
        self.c4 = nn.Sequential(conv_bn(48, 72, 2), conv_bn(72, 72))  # stride 16
        self.c5 = nn.Sequential(conv_bn(72, 96, 2), conv_bn(96, 96))  # stride 32
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in (48, 72, 96))
        self.top_down = TopDown()
        self.smooth = nn.ModuleList(nn.Conv2d(width, width, 3, 1, 1) for _ in range(3))
        self.tower = nn.Sequential(
            nn.Conv2d(width, width, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, 1, 1), nn.ReLU(inplace=True)
        )
        self.cls = nn.Conv2d(width, num_classes, 3, 1, 1)
        self.reg = nn.Conv2d(width, 4, 3, 1, 1)
        nn.init.constant_(self.cls.bias, -4.0)  # prior of 2% foreground: focal-loss training starts stable

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The head tower's features of each pyramid level (strides 8, 16, 32)."""
        c3 = self.c3(self.stem(x))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        pyramid = self.top_down([lateral(c) for lateral, c in zip(self.lateral, (c3, c4, c5), strict=True)])
        return [self.tower(self.smooth[level](feature)) for level, feature in enumerate(pyramid)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.levels(x)
        scores = torch.cat([self.cls(t).flatten(2).transpose(1, 2) for t in features], 1)
        return scores, torch.cat([self.reg(t).flatten(2).transpose(1, 2) for t in features], 1)


def build_demo_detector(num_classes: int = 6) -> nn.Module:
    return DemoDetector(num_classes=num_classes)


class DemoYolo(DemoDetector):
    """The same backbone and pyramid with a YOLOv8-style head: per location a distribution over `REG_MAX` bins
    for each distance to a box edge (distribution focal loss's integral: softmax, then the expected bin, in
    strides), decoded inside the graph to centre and size in input pixels around the location's centre
    (`(col + 0.5) * stride`), and sigmoid class scores.  Output: `output0` (N, 4 + classes, locations): cx, cy, w,
    h, then the class probabilities, which is what an ultralytics YOLOv8 ONNX file emits.

    `dense` gives the training view: class logits (N, locations, classes) and x1, y1, x2, y2 boxes (N, locations, 4).
    """

    REG_MAX = 8

    def __init__(self, num_classes: int = 6, width: int = 48) -> None:
        super().__init__(num_classes=num_classes, width=width)
        self.reg = nn.Conv2d(width, 4 * self.REG_MAX, 3, 1, 1)
        self.register_buffer("bins", torch.arange(self.REG_MAX, dtype=torch.float32), persistent=False)

    def dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, boxes = [], []
        for stride, t in zip(self.STRIDES, self.levels(x), strict=True):
            rows, cols = t.shape[-2:]
            ys = (torch.arange(rows, dtype=t.dtype, device=t.device) + 0.5) * stride
            xs = (torch.arange(cols, dtype=t.dtype, device=t.device) + 0.5) * stride
            centre = torch.stack([xs.repeat(rows), ys.repeat_interleave(cols)], dim=1)  # (L, 2) row-major
            bins = self.reg(t).flatten(2).transpose(1, 2).unflatten(2, (4, self.REG_MAX))
            distances = (bins.softmax(-1) * self.bins).sum(-1) * stride  # (N, L, 4): left, top, right, bottom
            boxes.append(torch.cat([centre - distances[..., :2], centre + distances[..., 2:]], dim=-1))
            logits.append(self.cls(t).flatten(2).transpose(1, 2))
        return torch.cat(logits, 1), torch.cat(boxes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        logits, boxes = self.dense(x)
        centre_size = torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], dim=-1)
        return torch.cat([centre_size, logits.sigmoid()], dim=-1).transpose(1, 2)


def build_demo_yolo(num_classes: int = 6) -> nn.Module:
    return DemoYolo(num_classes=num_classes)


class DemoSegmenter(nn.Module):
    """Small U-Net-style segmenter: a stride-2 stem, a stride-2 3x3 max-pool with padding (its ceil mode changes
    every later size), encoder stages at strides 8, 16 and 32, and a decoder that upsamples bilinearly
    (`F.interpolate(mode="bilinear")`, PyTorch's half-pixel centres) onto each skip's size and adds it.

    Output: `logits` (N, classes, H/4, W/4): the class scores on a grid a quarter of the input's side, as
    DeepLab-style nets leave them; `harness.tasks.segmentation` resizes them back to each source image.  The last
    resize targets H/4 x W/4 exactly, so a ceil-mode pool moves the features but not the output's shape.
    """

    def __init__(self, num_classes: int = 7, widths: tuple[int, ...] = (16, 32, 48, 64)) -> None:
        super().__init__()
        self.stem = conv_bn(3, widths[0], 2)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)  # stride 4
        self.down = nn.ModuleList(
            nn.Sequential(conv_bn(cin, cout, 2), conv_bn(cout, cout)) for cin, cout in itertools.pairwise(widths)
        )  # strides 8, 16, 32
        self.lateral = nn.ModuleList(nn.Conv2d(c, widths[1], 1) for c in widths[1:])
        self.fuse = nn.ModuleList(conv_bn(widths[1], widths[1]) for _ in widths[1:-1])
        self.classifier = nn.Conv2d(widths[1], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2] // 4, x.shape[-1] // 4
        feature = self.pool(self.stem(x))
        skips = []
        for stage in self.down:
            feature = stage(feature)
            skips.append(feature)
        top = self.lateral[-1](skips[-1])
        for level in range(len(skips) - 2, -1, -1):
            skip = self.lateral[level](skips[level])
            top = self.fuse[level](skip + nn.functional.interpolate(top, size=skip.shape[-2:], mode="bilinear", align_corners=False))
        return self.classifier(nn.functional.interpolate(top, size=(height, width), mode="bilinear", align_corners=False))


def build_demo_segmenter(num_classes: int = 7) -> nn.Module:
    return DemoSegmenter(num_classes=num_classes)
