"""Ragged outputs: a batch-1 ONNX model whose detections (boxes [K, 4], scores [K], labels [K]) vary per image,
exported from PyTorch with torchvision's nms, run through ONNX Runtime and OpenVINO; the result format pads them
with NaN to `[model] ragged_rows` with a count, so shards, merges, --limit, stage hashes and goldens stay
bit-identical."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from exporters.cache import ArtifactCache
from harness.core.errors import HarnessError
from harness.run.outputs import ROWS_SUFFIX, RunOutputs
from harness.run.prepared import SuiteRun
from harness.run.sessions import feed_session
from harness.spec.suite import BUNDLED_DIR, Suite
from tests.conftest import CliResult

Cli = Callable[..., CliResult]
RUNTIMES = ("--runtime", "ort-fp32", "--runtime", "ov-fp32")


class CellDetector(nn.Module):
    """A 10 x 10 grid of 16-pixel cells (boxes 24 pixels wide, so neighbours overlap): a cell's score is a sigmoid of
    its mean brightness, its class its brightest channel; cells over 0.5 go through torchvision's nms."""

    def __init__(self) -> None:
        super().__init__()
        ys, xs = torch.meshgrid(torch.arange(10.0), torch.arange(10.0), indexing="ij")
        self.register_buffer("cells", torch.stack([xs, ys, xs + 1.5, ys + 1.5], -1).reshape(-1, 4) * 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat = nn.functional.avg_pool2d(x, 16)[0].flatten(1)  # [3, 100]
        scores, labels = (feat.mean(0) * 4).sigmoid(), feat.argmax(0)
        keep = torch.nonzero(scores > 0.5).flatten()
        boxes, scores, labels = self.cells[keep], scores[keep], labels[keep]
        kept = torchvision.ops.nms(boxes, scores, 0.3)
        return boxes[kept], scores[kept], labels[kept]


@pytest.fixture(scope="module")
def ragged_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ragged")
    torch.onnx.export(
        CellDetector().eval(),
        (torch.zeros(1, 3, 160, 160),),
        str(folder / "cells.onnx"),
        input_names=["images"],
        output_names=["boxes", "scores", "labels"],
        opset_version=18,
        dynamo=False,  # TorchScript: torchvision's nms exports as NonMaxSuppression, its data-dependent K as a dim_param
    )
    detect = (BUNDLED_DIR / "detect.toml").read_text()
    stack = detect[detect.index("[stack]") : detect.index("[stacks.")]
    (folder / "ragged.toml").write_text(
        f"""name = "ragged"
task = "detection"
[model]
onnx = "cells.onnx"
output_names = ["boxes", "scores", "labels"]
ragged_outputs = ["boxes", "scores", "labels"]
ragged_rows = 100
[data]
manifest = "{BUNDLED_DIR / "detect" / "data" / "manifest.json"}"
split = "eval"
{stack}
[golden]
dir = "golden"
[run]
runtimes = ["ort-fp32", "ov-fp32"]
[postprocess]
decoder = "final"
score_threshold = 0.5
"""
    )
    return folder / "ragged.toml"


def _run(harness_cli: Cli, suite: Path, folder: Path, *extra: str) -> RunOutputs:
    result = harness_cli("run", "--suite", suite, *RUNTIMES, "--limit", "6", "--report-dir", folder, "--no-golden", *extra)
    assert result.code in (0, 1), result.err  # 1: a check failed (OpenVINO against ONNX Runtime), not an error
    return RunOutputs.load(folder)


def test_ragged_outputs_are_padded_with_counts_and_bit_identical_across_shards(
    harness_cli: Cli, ragged_suite: Path, tmp_path: Path
) -> None:
    full = _run(harness_cli, ragged_suite, tmp_path / "full")
    outputs = full.inferences["ort-fp32"].outputs
    counts = outputs["boxes" + ROWS_SUFFIX]
    assert outputs["boxes"].shape == (6, 100, 4) and outputs["scores"].shape == (6, 100) and counts.shape == (6,)
    assert len(set(counts.tolist())) > 1, "the images should give other numbers of detections"
    for i, count in enumerate(counts):
        assert not np.isnan(outputs["boxes"][i, :count]).any() and np.isnan(outputs["boxes"][i, count:]).all()
    predictions = full.inferences["ort-fp32"].predictions
    np.testing.assert_array_equal(np.sum(~np.isnan(predictions[:, :, 0]), axis=1), counts)  # every row over 0.5 kept

    for i in (1, 2):
        _run(harness_cli, ragged_suite, tmp_path / f"shard{i}", "--shard", f"{i}/2")
    merged = harness_cli(
        "merge", tmp_path / "shard1", tmp_path / "shard2", "--suite", ragged_suite, "--no-golden", "--report-dir", tmp_path / "m"
    )
    assert merged.code in (0, 1), merged.err
    first = _run(harness_cli, ragged_suite, tmp_path / "limit", "--limit", "3")
    for part, rows in ((RunOutputs.load(tmp_path / "m"), slice(None)), (first, slice(0, 3))):
        assert part.stages == {k: v[rows] for k, v in full.stages.items()}
        for runtime, inference in full.inferences.items():
            for name, value in inference.outputs.items():
                assert np.array_equal(part.inferences[runtime].outputs[name], value[rows], equal_nan=True), (runtime, name)
            assert np.array_equal(part.inferences[runtime].predictions, inference.predictions[rows], equal_nan=True)


def test_ragged_goldens_round_trip(harness_cli: Cli, ragged_suite: Path, tmp_path: Path) -> None:
    golden = tmp_path / "golden"
    assert harness_cli("golden", "update", "--suite", ragged_suite, *RUNTIMES, "--golden-dir", golden).code == 0
    again = harness_cli("run", "--suite", ragged_suite, *RUNTIMES, "--golden-dir", golden, "--report-dir", tmp_path / "r")
    assert "golden" in again.out and again.code in (0, 1), again.err
    report = (tmp_path / "r" / "report.md").read_text()
    assert report.count("| golden") >= 2 and "nan" not in report.lower()


class _NoBatchAxis:
    """A session whose outputs lack the batch axis: the first 3 input values ([3]) and, with `varying`, a list whose
    length follows the image."""

    def __init__(self, varying: bool = False) -> None:
        self.varying = varying

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["images"]
        out = {"vector": x.reshape(-1)[:3].copy()}
        if self.varying:
            out["list"] = np.zeros(1 + int(abs(x.sum())) % 5, dtype=np.float32)
        return out


def test_outputs_without_a_batch_axis_are_one_images_whole_or_a_clear_error(demo_suite: Suite, cache: ArtifactCache) -> None:
    """A batch-1 feed's output without a batch axis (an exposed intermediate of a batch-1 model: localize) is that
    image's tensor, whole; rows that vary per image, or a missing batch axis on larger batches, are one line."""
    inputs = SuiteRun(demo_suite, cache, limit=6).inputs
    outputs, _ = feed_session(_NoBatchAxis(), "images", inputs, 1, lambda: None)  # type: ignore[arg-type]
    assert outputs["vector"].shape == (6, 3)
    np.testing.assert_array_equal(outputs["vector"], inputs.tensors.reshape(6, -1)[:, :3])
    with pytest.raises(HarnessError, match=r"output 'list' is \[\d\] for sample .*ragged_outputs"):
        feed_session(_NoBatchAxis(varying=True), "images", inputs, 1, lambda: None)  # type: ignore[arg-type]
    with pytest.raises(HarnessError, match=r"output 'vector' is \[3\] for a batch of 4: it has no batch axis"):
        feed_session(_NoBatchAxis(), "images", inputs, 4, lambda: None)  # type: ignore[arg-type]
