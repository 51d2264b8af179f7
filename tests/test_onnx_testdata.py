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


# -- a small conv net on every precision -------------------------------------------------------------------------------

CONV_W = (RNG.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
HEAD_W = (RNG.standard_normal((2, 8, 1, 1)) * 0.3).astype(np.float32)


def _conv_net(path: Path, shape: tuple[int, ...] = (1, 3, 8, 8)) -> Path:
    """x [1,3,8,8] static -> conv 3x3 -> relu -> conv 1x1 -> y [1,2,8,8]: one input, as int8 calibration needs."""
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Conv", ["r", "w2"], ["y"]),
        ],
        "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], 2, shape[2], shape[3]])],
        [numpy_helper.from_array(CONV_W, "w1"), numpy_helper.from_array(HEAD_W, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _images(folder: Path, count: int, shape: tuple[int, ...] = (1, 3, 8, 8), dtype: type = np.float32) -> Path:
    for n in range(count):
        _write_pb(folder / f"test_data_set_{n}", "input", {"x": RNG.uniform(-1, 1, shape).astype(dtype)})
    return folder


def _profile_verdicts_hold(report: dict[str, object]) -> None:
    """Every check's verdict is its runtime's judged profile applied to the numbers measured here (no cosine limit where
    the reference is flat: a note says so)."""
    from harness.spec.tolerance import DEFAULT_PROFILES
    from runtimes import get_runtime
    from runtimes.precision import judged_precision

    executed = {r["runtime"]: r["executed"] for r in report["runtimes"]}  # type: ignore[attr-defined]
    for check in report["checks"]:  # type: ignore[attr-defined]
        profile = judged_precision(get_runtime(check["runtime"]).precision, executed[check["runtime"]])
        limits = DEFAULT_PROFILES[profile]
        flat = any(n.startswith(f"{check['test_set']}: ") and "cosine not judged" in n for n in report["notes"])  # type: ignore[attr-defined]
        assert check["passed"] == (check["max_abs"] <= limits.max_abs and (flat or check["cosine"] >= limits.min_cosine)), check
        assert check["passed"] or f"({profile} profile)" in check["failure"]


def test_all_runtimes_every_precision_with_calibration(tmp_path: Path, harness_cli: Callable[..., object]) -> None:
    import json

    from harness.run.outputs import RunOutputs
    from runtimes.precision import judged_precision

    model = _conv_net(tmp_path / "conv.onnx")
    data, calibration = _images(tmp_path / "data", 2), _images(tmp_path / "cal", 4)
    report_dir = tmp_path / "r"
    args = ("run", "--onnx", model, "--inputs", data, "--runtime", "all", "--report-dir", report_dir)
    result = harness_cli(*args, "--calibration", calibration)
    report = json.loads((report_dir / "report.json").read_text())
    assert result.code == (0 if report["passed"] else 1), result.out + result.err
    ran = {r["runtime"]: r for r in report["runtimes"]}
    assert {"ort-fp32", "ort-fp16", "ort-int8", "ov-fp32", "ov-fp16", "ov-int8"} <= set(ran)
    assert ran["ort-fp32"]["judged"] == "baseline" and next(iter(ran)) == "ort-fp32"
    assert "int8" in ran["ort-int8"]["executed"] and "int8" in ran["ov-int8"]["executed"]
    for name, row in ran.items():
        assert row["executed"] in result.out
        if name != "ort-fp32":
            assert row["judged"] == f"{judged_precision(name.rsplit('-', 1)[1], row['executed'])} profile"
    _profile_verdicts_hold(report)
    assert "the int8 profile bounds tensors loosely" in result.out
    skipped = {s["runtime"]: s["reason"] for s in report["skipped"]}
    assert "torch runtimes need the PyTorch model" in skipped["torch-fp32"] and not any(s["failed"] for s in report["skipped"])
    assert re.search(r"skipped torch-fp32, .*torch-fp16.*: torch runtimes need the PyTorch model", result.out)
    assert "## Skipped" in (report_dir / "report.md").read_text()

    measured = RunOutputs.load(report_dir)
    assert measured.ids == ("test_data_set_0", "test_data_set_1") and tuple(measured.inferences) == tuple(ran)
    assert measured.inferences["ov-fp16"].outputs["y"].shape == (2, 1, 2, 8, 8)
    assert measured.inferences["ov-int8"].session["executed"] == ran["ov-int8"]["executed"]
    assert measured.context["calibration"]["samples"] == 4
    truth = _reference_conv(numpy_helper.to_array(_load_pb(data / "test_data_set_1" / "input_0.pb")))
    assert np.allclose(measured.inferences["ort-fp32"].outputs["y"][1], truth, atol=1e-4)

    without = harness_cli(*args)  # no calibration: int8 is skipped with the reason, the rest runs
    assert without.code in (0, 1) and re.search(r"skipped .*ort-int8.*: int8 needs calibration data: pass --calibration DIR", without.out)


def _load_pb(path: Path) -> TensorProto:
    proto = TensorProto()
    proto.ParseFromString(path.read_bytes())
    return proto


def _reference_conv(x: np.ndarray) -> np.ndarray:
    """The conv net in numpy, for one [1,3,8,8] input."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # [1,3,8,8,3,3]
    hidden = np.maximum(np.einsum("bchwij,ocij->bohw", windows, CONV_W), 0)
    return np.einsum("bchw,oc->bohw", hidden, HEAD_W[:, :, 0, 0])


def test_each_runtime_is_judged_by_its_precision_unless_rtol_atol_are_given(tmp_path: Path, harness_cli: Callable[..., object]) -> None:
    """Expected outputs 2e-2 off: beyond the fp32 profile (max abs 1e-3), within the fp16 one (5e-2) when fp16's own error
    here is small enough; --atol judges both runtimes alike."""
    import json

    model = _conv_net(tmp_path / "conv.onnx")
    data = _images(tmp_path / "data", 1)
    x = numpy_helper.to_array(_load_pb(data / "test_data_set_0" / "input_0.pb"))
    _write_pb(data / "test_data_set_0", "output", {"y": _reference_conv(x) + 2e-2})
    args = ("run", "--onnx", model, "--inputs", data, "--runtime", "ort-fp32", "--runtime", "ov-fp16", "--report-dir", tmp_path / "r")
    result = harness_cli(*args)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    _profile_verdicts_hold(report)
    checks = {c["runtime"]: c for c in report["checks"]}
    assert not checks["ort-fp32"]["passed"] and "(fp32 profile)" in checks["ort-fp32"]["failure"]
    ov_judged = next(r["judged"] for r in report["runtimes"] if r["runtime"] == "ov-fp16")
    assert ov_judged in ("fp16 profile", "bf16 profile")  # bf16 where OpenVINO runs an fp16 request in bf16
    assert result.code == 1 and "judging" in report and "profiles" in report["judging"]
    loose = harness_cli(*args, "--atol", "0.5")
    assert loose.code == 0 and loose.out.count("rtol 0, atol 0.5") >= 3  # title and both runtimes' rows
    strict = harness_cli(*args, "--rtol", "1e-9")
    assert strict.code == 1 and re.search(r"ov-fp16 .* FAIL: \d+/128 elements outside rtol 1e-09, atol 0", strict.out)


def test_a_runtime_that_cannot_open_the_model_is_listed_not_fatal(tmp_path: Path, harness_cli: Callable[..., object]) -> None:
    """OpenVINO has no Det: under `all` its runtimes are listed with the reason and ONNX Runtime's run; named, one fails the run."""
    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["y"])],
        "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "det.onnx"))
    x = RNG.standard_normal((2, 3, 3)).astype(np.float32)
    _write_pb(tmp_path / "data", "input", {"x": x})
    _write_pb(tmp_path / "data", "output", {"y": np.linalg.det(x).astype(np.float32)})
    base = ("run", "--onnx", tmp_path / "det.onnx", "--inputs", tmp_path / "data", "--report-dir", tmp_path / "r")
    result = harness_cli(*base, "--runtime", "all")
    assert re.search(r"skipped ov-fp32, ov-fp16: could not open the model: .*Det", result.out), result.out
    assert re.search(r"ort-fp32 .* y .* expected .* PASS", result.out) and "Traceback" not in result.out + result.err
    assert result.code in (0, 1)  # ort-fp16 may differ; nothing named failed
    named = harness_cli(*base, "--runtime", "ort-fp32", "--runtime", "ov-fp32")
    assert named.code == 1 and re.search(r"failed ov-fp32: could not open the model: .*Det", named.out)
    alone = harness_cli(*base, "--runtime", "ov-fp32")
    assert alone.code == 2 and "no runtime can run det.onnx (failed ov-fp32: could not open the model" in alone.err
    assert len(alone.err.strip().splitlines()) == 1


def _one_line(result: object) -> str:
    assert result.code == 2, result.out + result.err  # type: ignore[attr-defined]
    lines = [line for line in result.err.splitlines() if line.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1 and "Traceback" not in result.err, result.err  # type: ignore[attr-defined]
    return lines[0]


def test_inputs_that_do_not_fit_the_model_are_one_line(tmp_path: Path, harness_cli: Callable[..., object]) -> None:
    model = _conv_net(tmp_path / "conv.onnx")
    run = ("run", "--onnx", model, "--runtime", "ort-fp32", "--runtime", "ov-fp32", "--inputs")
    wide = _one_line(harness_cli(*run, _images(tmp_path / "wide", 1, (1, 3, 8, 6))))
    assert "input 'x' has shape [1, 3, 8, 6] but the model expects [1, 3, 8, 8] (axis 3: 6 vs 8)" in wide
    assert "test_data_set_0" in wide and "write the test data in the model's input shape [1, 3, 8, 8]" in wide
    flat = _one_line(harness_cli(*run, _images(tmp_path / "flat", 1, (3, 8, 8))))
    assert "has shape [3, 8, 8] but the model expects [1, 3, 8, 8] (rank 3)" in flat
    double = _one_line(harness_cli(*run, _images(tmp_path / "f64", 1, dtype=np.float64)))
    assert "input 'x' is float64 but the model expects float32 (write the tensor as float32)" in double
    bad_cal = ("--runtime", "ort-int8", "--calibration", _images(tmp_path / "cal", 2, (1, 3, 4, 4)))
    calibration = _one_line(harness_cli(*run, _images(tmp_path / "ok", 1), *bad_cal))
    assert "cal/test_data_set_0: input 'x' has shape [1, 3, 4, 4] but the model expects [1, 3, 8, 8]" in calibration


def test_int8_named_without_calibration_is_one_line(tmp_path: Path, harness_cli: Callable[..., object]) -> None:
    model = _conv_net(tmp_path / "conv.onnx")
    line = _one_line(harness_cli("run", "--onnx", model, "--inputs", _images(tmp_path / "d", 1), "--runtime", "ort-int8"))
    assert "runtime 'ort-int8' cannot run this ONNX model: int8 needs calibration data: pass --calibration DIR" in line
    torch_line = _one_line(harness_cli("run", "--onnx", model, "--inputs", tmp_path / "d", "--runtime", "torch-fp32"))
    assert "torch runtimes need the PyTorch model" in torch_line
    suite_line = _one_line(harness_cli("run", "--suite", "demo", "--calibration", tmp_path / "d"))
    assert "--calibration is for --onnx runs" in suite_line


def test_missing_or_corrupt_onnx_is_one_line(tmp_path: Path, harness_cli: Callable[..., object]) -> None:
    good = _conv_net(tmp_path / "conv.onnx")
    data = _images(tmp_path / "d", 1)
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\xffnot a model at all" * 10)
    (tmp_path / "truncated.onnx").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "empty.onnx").write_bytes(b"")
    missing = _one_line(harness_cli("run", "--onnx", tmp_path / "absent.onnx", "--inputs", data))
    assert "ONNX model not found" in missing and "absent.onnx" in missing
    for name in ("garbage.onnx", "truncated.onnx", "empty.onnx"):
        line = _one_line(harness_cli("run", "--onnx", tmp_path / name, "--inputs", data))
        assert f"{name}: not a valid ONNX model" in line and "re-export the model" in line


def test_a_flat_reference_is_judged_by_max_abs_alone_and_noted(tmp_path: Path, harness_cli: Callable[..., object]) -> None:
    """Outputs within the fp32 max abs of zero (a detector's map of an empty scene): their cosine is noise."""
    import json

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "tiny"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
        [numpy_helper.from_array(np.array(1e-7, dtype=np.float32), "tiny")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "flat.onnx"))
    _write_pb(tmp_path / "data", "input", {"x": RNG.standard_normal((4, 16)).astype(np.float32)})
    args = ("--inputs", tmp_path / "data", "--runtime", "ort-fp32", "--runtime", "ort-fp16", "--report-dir", tmp_path / "r")
    result = harness_cli("run", "--onnx", tmp_path / "flat.onnx", *args)
    assert result.code == 0 and re.search(
        r"note: data: ort-fp32 y is at most \S+, within max abs 0.001 of zero: cosine not judged", result.out
    )
    _profile_verdicts_hold(json.loads((tmp_path / "r" / "report.json").read_text()))
