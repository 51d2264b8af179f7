"""`harness init`: an own suite from an image folder of real photos and a torchvision model, in three commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import matplotlib
import pytest
import torch
import torchvision
from PIL import Image

from harness.data.dataset import load_dataset
from harness.spec.suite import load_suite
from tests.conftest import CliResult

PHOTOS = Path(matplotlib.get_data_path()) / "sample_data"


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """An ImageFolder of real photos shipped with matplotlib: two classes, three images each (the photo and two crops)."""
    root = tmp_path / "photos"
    for label, source in (("hopper", "grace_hopper.jpg"), ("pack", "Minduka_Present_Blue_Pack.png")):
        folder = root / label
        folder.mkdir(parents=True)
        image = Image.open(PHOTOS / source).convert("RGB")
        image.save(folder / "whole.jpg", quality=92)
        width, height = image.size
        image.crop((0, 0, width * 3 // 4, height * 3 // 4)).save(folder / "top-left.png")
        image.crop((width // 4, height // 4, width, height)).save(folder / "bottom-right.jpg", quality=85)
    return root


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "resnet18-2.pt"
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), path)
    return path


def test_an_own_suite_from_an_image_folder_in_three_commands(
    harness_cli: Callable[..., CliResult], photos: Path, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    made = harness_cli(
        "init", "--images", photos, "--builder", "torchvision.models:resnet18", "--weights", weights, "--kwargs", '{"num_classes": 2}'
    )
    assert made.code == 0, made.err
    suite = load_suite("photos.toml")
    assert suite.model.kwargs == {"num_classes": 2} and suite.stack.input_hw == (224, 224)
    manifest = json.loads((tmp_path / "photos.manifest.json").read_text())
    assert manifest["classes"] == ["hopper", "pack"] and len(manifest["splits"]["eval"]) == 6
    assert all(len(entry["sha256"]) == 64 for entry in manifest["splits"]["eval"])
    runtimes = ("--runtime", "torch-fp32", "--runtime", "ort-fp32")
    recorded = harness_cli("golden", "update", "--suite", "photos.toml", *runtimes)
    assert recorded.code == 0, recorded.err
    ran = harness_cli("run", "--suite", "photos.toml", *runtimes)
    assert ran.code == 0, ran.out + ran.err
    assert (tmp_path / "reports" / "photos" / "run" / "report.json").is_file()
    again = harness_cli("init", "--images", photos, "--builder", "torchvision.models:resnet18", "--weights", weights)
    assert again.code == 2 and "photos.toml exists" in again.err  # nothing is written over a suite


def test_an_image_folder_is_a_dataset_without_a_manifest(photos: Path) -> None:
    dataset = load_dataset(photos, "eval")
    assert dataset.classes == ("hopper", "pack") and [s.label for s in dataset.samples] == [0, 0, 0, 1, 1, 1]
    assert dataset.samples[0].id == "hopper/bottom-right.jpg"
    assert load_dataset(photos, "eval").manifest_sha256 == dataset.manifest_sha256
    (photos / "pack" / "whole.jpg").write_bytes((photos / "hopper" / "whole.jpg").read_bytes())
    assert load_dataset(photos, "eval").manifest_sha256 != dataset.manifest_sha256  # a replaced photo changes the identity


def test_an_image_folder_without_the_split_is_one_line(photos: Path, harness_cli: Callable[..., CliResult]) -> None:
    from harness.core.errors import HarnessError

    with pytest.raises(HarnessError, match=r"no folder 'calib' with one sub-folder per class"):
        load_dataset(photos, "calib")
    bad = harness_cli("init", "--images", photos / "nowhere", "--builder", "x:y", "--weights", photos / "hopper" / "whole.jpg")
    assert bad.code == 2 and bad.err.strip().startswith("error: image folder not found:")


def test_an_own_suite_for_a_ready_onnx_file_takes_its_input_size(
    harness_cli: Callable[..., CliResult], photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=2).eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 160, 160),), tmp_path / "mobile.onnx", input_names=["x"], output_names=["y"], dynamo=True)
    wrong = harness_cli("init", "--images", photos, "--onnx", tmp_path / "mobile.onnx", "--input-size", "224")
    assert wrong.code == 2 and "mobile.onnx takes 160x160 (pass --input-size 160)" in wrong.err and not (tmp_path / "photos.toml").exists()
    both = harness_cli("init", "--images", photos, "--onnx", tmp_path / "mobile.onnx", "--builder", "torchvision.models:resnet18")
    assert both.code == 2 and "--builder and --weights, or --onnx" in both.err
    made = harness_cli("init", "--images", photos, "--onnx", tmp_path / "mobile.onnx")
    assert made.code == 0, made.err
    suite = load_suite("photos.toml")
    assert suite.model.onnx is not None and suite.stack.input_hw == (160, 160) and suite.run.reference == "ort-fp32"
    assert suite.model.fixed_batch == 1 and not any(r.startswith("torch") for r in suite.run.runtimes)
    ran = harness_cli("run", "--suite", "photos.toml", "--no-golden", "--runtime", "ort-fp32", "--runtime", "ov-fp32")
    assert ran.code in (0, 1) and "fixed to batch 1" in ran.out, ran.err
