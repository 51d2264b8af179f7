"""`[export] exporter`: torch.export, TorchScript tracing, or torch.export falling back to tracing.

The model torch.export cannot take is a real one: torchvision's SSDlite with its post-processing (NMS keeps a
data-dependent number of boxes), built without downloaded weights; its batch norms are calibrated on random images
so the features, and so the scores, differ box by box (with the initial statistics every score ties)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from exporters.artifacts import ModelArtifacts
from exporters.cache import ArtifactCache
from exporters.onnx_export import EXPORT_CALLS, export_onnx
from exporters.spec import ExportSpec
from harness.core.errors import HarnessError
from harness.spec.schema import validate_suite
from harness.spec.suite import ModelSpec, Suite, suite_names
from tests.conftest import CliResult

SIDE = 320
DETECTOR_OUTPUTS = ("boxes", "scores", "labels")


class OneImageDetector(torch.nn.Module):
    """A torchvision detector fed a batch tensor of one image: that image's boxes (relative to its side), scores and
    labels as tensors."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        found = self.detector(list(images))[0]
        return found["boxes"] / SIDE, found["scores"], found["labels"]


def build_ssdlite_detector(num_classes: int) -> OneImageDetector:
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    return OneImageDetector(ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes))


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    torch.manual_seed(0)
    model = build_ssdlite_detector(num_classes=3)
    for norm in model.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.momentum = None  # the statistics of the calibration batch itself
            norm.reset_running_stats()
    ssd = model.detector
    with torch.no_grad():
        images, _ = ssd.transform(list(torch.rand(4, 3, SIDE, SIDE)))
        ssd.train()
        ssd.head(list(ssd.backbone(images.tensors).values()))
    folder = tmp_path_factory.mktemp("ssdlite")
    torch.save(model.state_dict(), folder / "ssdlite.pt")
    builder = f"{__name__}:build_ssdlite_detector"
    return ModelSpec(builder, folder / "ssdlite.pt", {"num_classes": 3}, "images", DETECTOR_OUTPUTS, folder)


def one_image() -> np.ndarray:
    return np.random.default_rng(1).random((1, 3, SIDE, SIDE), dtype=np.float32)


def detector_artifacts(cache: ArtifactCache, detector: ModelSpec, exporter: str) -> ModelArtifacts:
    export = ExportSpec(exporter=exporter, atol=1e-4)
    return ModelArtifacts(cache, model=detector, export=export, input_hw=(SIDE, SIDE), parity_inputs=one_image)


def test_dynamo_refuses_the_detector_in_one_line_naming_the_key(tmp_path: Path, detector: ModelSpec) -> None:
    with pytest.raises(HarnessError) as info:
        detector_artifacts(ArtifactCache(tmp_path), detector, "dynamo").export_fp32()
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message
    assert message.startswith(f"ONNX export by {EXPORT_CALLS['dynamo']} failed: ")
    assert '[export] exporter = "auto"' in message


def test_auto_falls_back_to_torchscript_and_says_so(tmp_path: Path, detector: ModelSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ArtifactCache(tmp_path)
    artifacts = detector_artifacts(cache, detector, "auto")
    path = artifacts.export_fp32()
    info = artifacts.provenance["onnx:fp32"]
    assert info["exporter"] == EXPORT_CALLS["torchscript"] and info["fallback_from"] == EXPORT_CALLS["dynamo"]
    assert info["dynamo_error"] and "\n" not in info["dynamo_error"]
    key = json.loads((path.parent / "key.json").read_text())
    assert key["exporter"] == EXPORT_CALLS["torchscript"] and key["fallback_from"] == EXPORT_CALLS["dynamo"]
    said = f"exporter: {EXPORT_CALLS['torchscript']} ([export] exporter = auto; torch.export failed: {info['dynamo_error']})"
    assert said in artifacts.log
    assert [p.name for p in artifacts.parity] == list(DETECTOR_OUTPUTS) and all(p.ok for p in artifacts.parity)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"images": one_image()})
    assert boxes.shape == (len(scores), 4) and len(scores) == len(labels) > 0

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached fallback is not exported again")

    monkeypatch.setattr("exporters.onnx_export.export_onnx", no_export)
    again = detector_artifacts(cache, detector, "auto")
    assert again.export_fp32() == path and again.log[0].startswith("cached")
    assert again.provenance["onnx:fp32"] == info
    monkeypatch.undo()
    plain = detector_artifacts(cache, detector, "torchscript")  # keyed apart: it does not say torch.export failed
    assert plain.export_fp32().parent != path.parent and "fallback_from" not in plain.provenance["onnx:fp32"]


class Neither(torch.nn.Module):
    """A model no exporter takes: its output is no tensor."""

    def forward(self, x: torch.Tensor) -> dict[str, str]:
        return {"shape": str(tuple(x.shape))}


def build_neither() -> Neither:
    return Neither()


def test_auto_names_both_refusals_in_one_line(tmp_path: Path) -> None:
    torch.save(Neither().state_dict(), tmp_path / "none.pt")
    model = ModelSpec(f"{__name__}:build_neither", tmp_path / "none.pt", {}, "x", ("y",), tmp_path)
    inputs = np.zeros((1, 3), np.float32)
    artifacts = ModelArtifacts(
        ArtifactCache(tmp_path / "cache"), model=model, export=ExportSpec(exporter="auto"), parity_inputs=lambda: inputs
    )
    with pytest.raises(
        HarnessError, match=r"^ONNX export failed with both exporters: torch\.export: .+; TorchScript: .+ \(the model"
    ) as info:
        artifacts.export_fp32()
    assert "\n" not in str(info.value)


def test_torchscript_exports_the_demo_model_with_a_dynamic_batch(tmp_path: Path, demo_suite: Suite) -> None:
    hw = demo_suite.stack.input_hw
    inputs = np.random.default_rng(0).standard_normal((8, 3, *hw)).astype(np.float32)
    export = dataclasses.replace(demo_suite.export, exporter="torchscript")
    artifacts = ModelArtifacts(ArtifactCache(tmp_path), model=demo_suite.model, export=export, input_hw=hw, parity_inputs=lambda: inputs)
    path = artifacts.export_fp32()  # exported from 2 samples, parity on 8
    assert artifacts.parity and all(p.ok for p in artifacts.parity)
    assert artifacts.provenance["onnx:fp32"]["exporter"] == EXPORT_CALLS["torchscript"]
    (logits,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": inputs[:5]})
    assert logits.shape[0] == 5


def test_export_cli_prints_the_exporter(make_suite: Callable[..., Path], harness_cli: Callable[..., CliResult]) -> None:
    suite = make_suite({"opset = 18 ": 'exporter = "torchscript"\nopset = 18 '})
    result = harness_cli("export", "--suite", suite)
    assert result.code == 0, result.err
    assert f"exporter: {EXPORT_CALLS['torchscript']}\n" in result.out and "[✓] logits" in result.out


def test_an_unknown_exporter_names_the_closest() -> None:
    data = {
        "model": {"builder": "demo-resnet", "weights": "w.safetensors", "output_names": ["logits"]},
        "data": {"manifest": "m.json"},
        "stack": {},
        "export": {"exporter": "torchscipt"},
    }
    hint = r"\[export\] exporter = 'torchscipt': unknown exporter 'torchscipt' \(did you mean 'torchscript'\?\)"
    with pytest.raises(HarnessError, match=hint):
        validate_suite(data, "suite.toml", suite_names())


class Interrupted(torch.nn.Module):
    """A Ctrl-C wrapped in a library's error, as torch.onnx may wrap one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("export interrupted") from KeyboardInterrupt()


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_a_wrapped_ctrl_c_stays_an_interrupt(tmp_path: Path, exporter: str) -> None:
    """Not an ExportFailed that `auto` would fall back from."""
    with pytest.raises(KeyboardInterrupt):
        export_onnx(Interrupted(), np.zeros((1, 3), np.float32), tmp_path / "model.onnx", "x", ("y",), 18, {}, exporter)
