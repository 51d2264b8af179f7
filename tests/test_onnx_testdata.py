"""`harness run --onnx MODEL --inputs DIR` on ONNX's test-data layout (and npy/npz)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(7)
W = RNG.standard_normal((6, 4)).astype(np.float32)


def _model(path: Path) -> Path:
    """y = relu(x @ W + b), z = x * 2 : two inputs, two outputs."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["y"]),
            helper.make_node("Mul", ["x", "two"], ["z"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6]), helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4]), helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 6])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _case() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    return {"x": x, "b": b}, {"y": np.maximum(x @ W + b, 0), "z": x * 2}


def _write_pb(folder: Path, kind: str, tensors: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, array) in enumerate(tensors.items()):
        (folder / f"{kind}_{index}.pb").write_bytes(numpy_helper.from_array(array, name).SerializeToString())


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return _model(tmp_path / "tiny.onnx")


def test_pb_layout_passes_on_ort_and_openvino(model: Path, tmp_path: Path, harness_cli: Callable[..., object]) -> None:
    for n in range(2):
        inputs, outputs = _case()
        _write_pb(tmp_path / "data" / f"test_data_set_{n}", "input", inputs)
        _write_pb(tmp_path / "data" / f"test_data_set_{n}", "output", outputs)
    result = harness_cli(
        "run",
        "--onnx",
        model,
        "--inputs",
        tmp_path / "data",
        "--runtime",
        "ort-fp32",
        "--runtime",
        "ov-fp32",
        "--report-dir",
        tmp_path / "r",
    )
    assert result.code == 0, result.out + result.err
    assert result.out.count("PASS") == 8  # 2 sets x 2 runtimes x 2 outputs
    assert "test_data_set_1" in (tmp_path / "r" / "report.md").read_text()


def test_wrong_expected_output_fails_by_the_fp32_profile_and_rtol_atol_override(
    model: Path, tmp_path: Path, harness_cli: Callable[..., object]
) -> None:
    inputs, outputs = _case()
    outputs["y"] = outputs["y"] + 1e-2  # 10x the fp32 profile's max abs
    _write_pb(tmp_path / "data" / "test_data_set_0", "input", inputs)
    _write_pb(tmp_path / "data" / "test_data_set_0", "output", outputs)
    data = tmp_path / "data"
    result = harness_cli("run", "--onnx", model, "--inputs", data, "--report-dir", tmp_path / "r")
    assert result.code == 1
    assert re.search(r"test_data_set_0 .* ort-fp32 .* fp32 .* y .* expected .* FAIL: max abs \S+ > 0.001.* \(fp32 profile\)", result.out)
    assert re.search(r"test_data_set_0 .* z .* expected .* PASS", result.out)
    strict = harness_cli("run", "--onnx", model, "--inputs", data, "--atol", "5e-3", "--report-dir", tmp_path / "r")
    assert strict.code == 1 and re.search(r"FAIL: \d+/12 elements outside rtol 0, atol 0.005", strict.out)
    loose = harness_cli("run", "--onnx", model, "--inputs", data, "--atol", "2e-2", "--report-dir", tmp_path / "r")
    assert loose.code == 0 and "rtol 0, atol 0.02" in loose.out


def test_npy_and_npz_inputs(model: Path, tmp_path: Path, harness_cli: Callable[..., object]) -> None:
    inputs, outputs = _case()
    one = tmp_path / "npy" / "test_data_set_0"
    one.mkdir(parents=True)
    for index, array in enumerate(inputs.values()):
        np.save(one / f"input_{index}.npy", array)
    np.savez(one / "outputs.npz", **outputs)
    flat = tmp_path / "flat"  # DIR itself is one test-data set, inputs by name
    flat.mkdir()
    np.savez(flat / "inputs.npz", **inputs)
    for folder in (tmp_path / "npy", flat):
        runtimes = ("--runtime", "ort-fp32") if folder.name == "npy" else ("--runtime", "ort-fp32", "--runtime", "ov-fp32")
        result = harness_cli("run", "--onnx", model, "--inputs", folder, *runtimes, "--report-dir", tmp_path / "r")
        assert result.code == 0, result.out + result.err


def test_no_expected_outputs_and_one_runtime_is_a_usage_error(model: Path, tmp_path: Path, harness_cli: Callable[..., object]) -> None:
    inputs, _ = _case()
    _write_pb(tmp_path / "data" / "test_data_set_0", "input", inputs)
    result = harness_cli("run", "--onnx", model, "--inputs", tmp_path / "data")
    assert result.code == 2 and "a second --runtime" in result.err


def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path, harness_cli: Callable[..., object]) -> None:
    """A weight whose external-data location climbs out of the model's folder is never read."""
    weight = numpy_helper.from_array(W, "W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../etc/hostname"
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "escape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    _write_pb(tmp_path / "data", "input", {"x": RNG.standard_normal((2, 6)).astype(np.float32)})
    result = harness_cli(
        "run", "--onnx", tmp_path / "m.onnx", "--inputs", tmp_path / "data", "--runtime", "ort-fp32", "--runtime", "ov-fp32"
    )
    assert result.code == 2 and "points outside the directory" in result.err and "Traceback" not in result.err
    assert len([line for line in result.err.splitlines() if line.strip()]) == 1
