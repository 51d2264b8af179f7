"""`harness run --onnx` on a real trained model: PP-OCRv4's DBNet text detector as rapidocr ships it (opset 12,
input 'x' [N,3,H,W] dynamic), on skimage's text photo; skipped where rapidocr-onnxruntime is not installed."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

from harness.run.outputs import RunOutputs
from harness.spec.tolerance import DEFAULT_PROFILES
from runtimes import get_runtime
from runtimes.precision import judged_precision

HW = (352, 896)  # skimage's text photo (172 x 448) at about 2x, sides a multiple of 32 as DBNet needs
LARGER = (416, 1088)  # a third set of another size: outputs.npz pads it


def _dbnet() -> Path | None:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")  # found, not imported: the package's own imports are not installed
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "models" / "ch_PP-OCRv4_det_infer.onnx"
    return path if path.is_file() else None


DBNET = _dbnet()
pytestmark = pytest.mark.skipif(DBNET is None, reason="rapidocr-onnxruntime (its DBNet ONNX) is not installed")


def _tensor(image: np.ndarray, hw: tuple[int, int] = HW) -> np.ndarray:
    """rapidocr's preprocessing: RGB in [0, 1], (x - 0.5) / 0.5, NCHW."""
    from skimage.transform import resize

    rgb = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image
    x = (resize(rgb, hw, anti_aliasing=True).astype(np.float32) - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _write_sets(folder: Path, tensors: list[np.ndarray]) -> Path:
    for n, tensor in enumerate(tensors):
        (folder / f"test_data_set_{n}").mkdir(parents=True)
        (folder / f"test_data_set_{n}" / "input_0.pb").write_bytes(numpy_helper.from_array(tensor, "x").SerializeToString())
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from skimage import data

    root = tmp_path_factory.mktemp("dbnet")
    text = data.text()
    inputs = _write_sets(root / "data", [_tensor(text), _tensor(255 - text), _tensor(text, LARGER)])
    calibration = _write_sets(root / "cal", [_tensor(data.coffee()), _tensor(text[::-1]), _tensor(255 - text[:, ::-1])])
    return inputs, calibration


def test_dbnet_every_cpu_runtime_and_precision(folders: tuple[Path, Path], tmp_path: Path, harness_cli: Callable[..., object]) -> None:
    inputs, calibration = folders
    report_dir = tmp_path / "r"
    result = harness_cli(
        "run", "--onnx", DBNET, "--inputs", inputs, "--calibration", calibration, "--runtime", "all", "--report-dir", report_dir
    )
    print(result.out)  # the measured table (pytest -s)
    report = json.loads((report_dir / "report.json").read_text())
    assert result.code == (0 if report["passed"] else 1), result.err
    ran = {r["runtime"]: r for r in report["runtimes"]}
    assert {"ort-fp32", "ort-fp16", "ort-int8", "ov-fp32", "ov-fp16", "ov-int8"} <= set(ran), report["skipped"]
    assert "int8" in ran["ort-int8"]["executed"] and "int8" in ran["ov-int8"]["executed"]
    for check in report["checks"]:
        profile = judged_precision(get_runtime(check["runtime"]).precision, ran[check["runtime"]]["executed"])
        limits = DEFAULT_PROFILES[profile]
        assert ran[check["runtime"]]["judged"] == f"{profile} profile"
        assert check["passed"] == (check["max_abs"] <= limits.max_abs and check["cosine"] >= limits.min_cosine), check
    assert len(report["checks"]) == 3 * (len(ran) - 1)  # every set, every runtime but the baseline

    measured = RunOutputs.load(report_dir)
    assert measured.ids == ("test_data_set_0", "test_data_set_1", "test_data_set_2")
    probability = measured.inferences["ort-fp32"].outputs["sigmoid_0.tmp_0"]
    assert probability.shape == (3, 1, 1, *LARGER) and np.nanmax(probability[:2]) > 0.5  # the detector finds the text
    assert np.isnan(probability[0, 0, 0, HW[0] :]).all() and not np.isnan(probability[2]).any()
    assert measured.context["output_shapes"]["test_data_set_0"] == {"sigmoid_0.tmp_0": [1, 1, *HW]}
    assert measured.inferences["ort-int8"].artifacts["onnx:int8"]["opset_upgraded"] == "12 -> 13"
    assert measured.context["calibration"]["samples"] == 3


def test_dbnet_sides_not_a_multiple_of_32_are_one_line(tmp_path: Path, harness_cli: Callable[..., object]) -> None:
    from skimage import data

    inputs = _write_sets(tmp_path / "odd", [_tensor(data.text(), (100, 100))])
    result = harness_cli("run", "--onnx", DBNET, "--inputs", inputs, "--runtime", "ort-fp32", "--runtime", "ov-fp32")
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2 and len(lines) == 1 and "Traceback" not in result.err, result.err
    assert re.search(r"ort-fp32 failed on test_data_set_0 \(inputs 'x' \[1, 3, 100, 100\] float32\): .*multiple of 32", lines[0])


def test_dbnet_calibration_sets_of_different_sizes_are_one_line(
    folders: tuple[Path, Path], tmp_path: Path, harness_cli: Callable[..., object]
) -> None:
    from skimage import data

    inputs, _ = folders
    calibration = _write_sets(tmp_path / "cal", [_tensor(data.text()), _tensor(data.text(), LARGER)])
    result = harness_cli("run", "--onnx", DBNET, "--inputs", inputs, "--calibration", calibration, "--runtime", "ort-int8")
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2 and len(lines) == 1, result.err
    assert "calibration inputs 'x' differ in shape beyond the batch axis [(3, 352, 896), (3, 416, 1088)]" in lines[0]
