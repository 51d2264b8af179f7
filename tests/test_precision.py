"""FP16 / INT8 variants on real ONNX Runtime and OpenVINO sessions, and the
calibration data they were quantized with."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from exporters.cache import ArtifactCache
from exporters.int8 import CalibrationReader, quantize_int8
from exporters.spec import ExportSpec
from harness.data.dataset import load_dataset
from harness.judge.verdict import RunReport, run_suite
from harness.run.plan import RunRequest
from harness.run.prepared import SuiteRun
from harness.spec.suite import Suite, load_suite
from runtimes.precision import judged_precision

VARIANTS = ["ort-fp16", "ort-int8", "ov-fp32", "ov-fp16", "ov-int8"]


@pytest.fixture(scope="module")
def variants_report(demo_suite: Suite, cache: ArtifactCache) -> RunReport:
    return run_suite(demo_suite, RunRequest(tuple(VARIANTS), 50), cache)[0]


def _comparison(report: RunReport, runtime: str):
    return next(r for r in report.results if r.runtime == runtime).comparisons[0]


@pytest.mark.parametrize("runtime", ["ort-fp16", "ov-fp16"])
def test_fp16_close_to_torch(variants_report: RunReport, demo_suite: Suite, runtime: str) -> None:
    """Within the limit of the profile it is judged by: fp16's, or bf16's where OpenVINO ran an fp16 request in bf16."""
    result = next(r for r in variants_report.results if r.runtime == runtime)
    comparison = _comparison(variants_report, runtime)
    profile = judged_precision("fp16", result.session["executed"])
    assert profile in ("fp16", "bf16")
    assert 1e-5 < comparison.worst.max_abs < demo_suite.tolerances.for_precision(profile).max_abs  # really reduced precision, still close
    assert comparison.top1_agreement >= 0.99 and comparison.passed


@pytest.mark.parametrize("runtime", ["ort-int8", "ov-int8"])
def test_int8_judged_on_top1_and_flips(variants_report: RunReport, runtime: str) -> None:
    comparison = _comparison(variants_report, runtime)
    assert comparison.worst.max_abs > 0.1  # quantization really happened
    assert comparison.top1_agreement >= 0.98 and abs(comparison.metric_delta) <= 0.02
    assert comparison.passed


def test_openvino_reports_effective_precision(variants_report: RunReport) -> None:
    sessions = {r.runtime: r.session for r in variants_report.results}
    assert sessions["ov-fp32"]["executed"] == "fp32"
    assert sessions["ov-int8"]["executed"] == "int8"
    assert sessions["ov-fp16"]["precision"] == "fp16"
    assert sessions["ov-fp16"]["executed"] in ("fp16", "bf16", "fp32")  # what the CPU accepted, not what was asked
    if sessions["ov-fp16"]["executed"] != "fp16":
        assert any(n.startswith(f"ov-fp16: fp16 requested, {sessions['ov-fp16']['executed']} executed") for n in variants_report.notes)


def test_fp16_file_has_fp16_weights_and_fp32_io(demo_suite: Suite, cache: ArtifactCache) -> None:
    run = SuiteRun(demo_suite, cache, limit=8)
    model = onnx.load(str(run.artifacts.onnx_path("fp16")))
    assert {i.data_type for i in model.graph.initializer if len(i.dims) == 4} == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_fp16_block_list_keeps_ops_in_fp32(make_suite: Callable[..., Path], cache: ArtifactCache) -> None:
    suite = load_suite(str(make_suite({"fp16_op_block_list = []": 'fp16_op_block_list = ["Gemm"]'})))
    run = SuiteRun(suite, cache, limit=8)
    model = onnx.load(str(run.artifacts.onnx_path("fp16")))
    info = run.artifacts.provenance["onnx:fp16"]
    assert info["op_block_list"] == ["Gemm"] and len(info["kept_fp32_nodes"]) == 1
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    producers = {out: n for n in model.graph.node for out in n.output}
    for name in gemm.input:  # every Gemm input is cast up to FP32 first: the op computes in FP32
        cast = producers[name]
        assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT


def test_int8_is_calibrated_on_the_calibration_split(demo_suite: Suite, cache: ArtifactCache) -> None:
    run = SuiteRun(demo_suite, cache, limit=8)
    model = onnx.load(str(run.artifacts.onnx_path("int8")))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    info = run.artifacts.provenance["onnx:int8"]
    calib_ids = [s.id for s in load_dataset(demo_suite.data.manifest, "calib").samples]
    assert info["calibration_samples"] == len(calib_ids) == 100
    assert info["calibration_ids_sha256"] == hashlib.sha256("\n".join(calib_ids).encode()).hexdigest()
    assert info["calibration_method"] == "minmax" and info["per_channel"] is True
    assert all(i.startswith("calib/") for i in run.calibration.ids)


def test_calibration_reader_feeds_every_calibration_sample_once(demo_suite: Suite, cache: ArtifactCache, tmp_path: Path) -> None:
    run = SuiteRun(demo_suite, cache, limit=8)
    reader = CalibrationReader(run.calibration, "images")
    export = ExportSpec(int8_calibration="percentile", int8_per_channel=False)
    info = quantize_int8(run.artifacts.onnx_path("fp32"), tmp_path / "q.onnx", reader, export)
    assert reader.fed_ids == list(run.calibration.ids)
    assert not set(reader.fed_ids) & {s.id for s in load_dataset(demo_suite.data.manifest, "eval").samples}
    assert info["calibration_method"] == "percentile"


def _weight_extremes(path: Path) -> tuple[int, int]:
    """The smallest and largest quantized value over the int8 weight initializers of a Q/DQ file."""
    model = onnx.load(str(path))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert weights, "no int8 convolution weights in the Q/DQ file"
    return min(int(w.min()) for w in weights), max(int(w.max()) for w in weights)


def test_int8_weights_use_7_bits_unless_the_suite_asks_for_8(demo_suite: Suite, cache: ArtifactCache, tmp_path: Path) -> None:
    """7-bit weights keep VPMADDUBSW's 16-bit pair sums (255 * 64 * 2 < 2^15) from saturating on CPUs without VNNI."""
    run = SuiteRun(demo_suite, cache, limit=8)
    low, high = _weight_extremes(run.artifacts.onnx_path("int8"))
    assert run.artifacts.provenance["onnx:int8"]["reduce_range"] is True
    assert low >= -64 and high <= 64 and high - low > 64
    reader = CalibrationReader(run.calibration, "images")
    info = quantize_int8(run.artifacts.onnx_path("fp32"), tmp_path / "q8.onnx", reader, ExportSpec(int8_reduce_range=False))
    low, high = _weight_extremes(tmp_path / "q8.onnx")
    assert info["reduce_range"] is False and max(-low, high) == 127


def test_calibration_method_changes_the_artifact(make_suite: Callable[..., Path], demo_suite: Suite, cache: ArtifactCache) -> None:
    minmax = SuiteRun(demo_suite, cache, limit=8).artifacts.onnx_path("int8")
    suite = load_suite(str(make_suite({'int8_calibration = "minmax"': 'int8_calibration = "percentile"'})))
    percentile = SuiteRun(suite, cache, limit=8).artifacts.onnx_path("int8")
    assert minmax != percentile
    scales = [
        {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(p)).graph.initializer if i.name.endswith("_scale")}
        for p in (minmax, percentile)
    ]
    assert any(not np.allclose(scales[0][k], scales[1][k]) for k in scales[0] if k in scales[1])


@pytest.mark.parametrize(("isa", "noted"), [(["FMA", "AVX2"], True), (["FMA", "AVX2", "AVX-512", "AVX512-VNNI"], False)])
def test_8_bit_weights_on_a_cpu_without_vnni_are_noted(
    make_suite: Callable[..., Path], cache: ArtifactCache, monkeypatch: pytest.MonkeyPatch, isa: list[str], noted: bool
) -> None:
    suite = load_suite(str(make_suite({"int8_per_channel = true": "int8_per_channel = true\nint8_reduce_range = false"})))
    monkeypatch.setattr("harness.core.environment.isa_features", lambda: isa)
    report = run_suite(suite, RunRequest(("ort-int8",), 16), cache)[0]
    saturating = [n for n in report.notes if "saturating 16-bit lanes" in n]
    assert len(saturating) == noted
    assert all(n.startswith("ort-int8: 8-bit weights on a CPU without VNNI") and "int8_reduce_range = true" in n for n in saturating)
