"""The FP16 range audit (`exporters.fp16_audit`) on a CPU that executes fp32: a planted out-of-range weight and a
planted overflowing activation are found by name and kept in FP32 (or fail the build), a PyTorch model's overflow is
named by its module and reaches `harness export` and the run report, and the real PP-OCR text detector's 9.79e7
BatchNorm variance is found and fixed. Real FP16 arithmetic comes from ONNX's reference evaluator (numpy float16):
ONNX Runtime's CPU provider runs an FP16 model in fp32 behind casts, so an activation overflow passes there."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from exporters.artifacts import ModelArtifacts
from exporters.cache import ArtifactCache
from exporters.fp16_audit import FP16_MAX
from exporters.spec import ExportSpec
from harness.core.errors import HarnessError
from harness.judge.verdict import run_suite
from harness.run.plan import RunRequest
from harness.run.prepared import SuiteRun
from harness.spec.suite import load_suite
from tests.conftest import CliResult
from tests.planted import planted_suite


@dataclass(frozen=True)
class Calibration:
    ids: tuple[str, ...]
    tensors: np.ndarray


def write_model(path: Path, nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray]) -> Path:
    graph = helper.make_graph(
        nodes,
        "planted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture
def big_weight(tmp_path: Path) -> Path:
    """y = x / scale, with a divisor of 1e6 (beyond FP16) and small ones: every activation stays in range."""
    scale = np.array([1e6, 2.0, 4.0, 8.0], dtype=np.float32)
    return write_model(tmp_path / "big-weight.onnx", [helper.make_node("Div", ["x", "scale"], ["y"], name="divide")], {"scale": scale})


@pytest.fixture
def amplifier(tmp_path: Path) -> Path:
    """y = (x @ 1000 I) * 1e-3: in-range weights, but the product of inputs in the hundreds reaches 1e6."""
    nodes = [
        helper.make_node("MatMul", ["x", "gain"], ["loud"], name="amplify"),
        helper.make_node("Mul", ["loud", "quiet"], ["y"], name="attenuate"),
    ]
    weights = {"gain": 1000 * np.eye(4, dtype=np.float32), "quiet": np.full(4, 1e-3, dtype=np.float32)}
    return write_model(tmp_path / "amplifier.onnx", nodes, weights)


def loud_inputs(count: int = 10, high: float = 900.0) -> np.ndarray:
    return np.random.default_rng(0).uniform(100.0, high, (count, 4)).astype(np.float32)


def test_an_out_of_range_weight_is_found_by_name_and_kept_in_fp32(cache: ArtifactCache, big_weight: Path) -> None:
    x = loud_inputs(4)
    kept = ModelArtifacts(cache, onnx_file=big_weight)
    path = kept.onnx_path("fp16")
    audit = kept.provenance["onnx:fp16"]["fp16_audit"]
    assert [(f["kind"], f["tensor"], f["layer"], f["value"], f["count"]) for f in audit["findings"]] == [
        ("initializer", "scale", "divide", 1e6, 1)
    ]
    assert audit["kept_fp32_nodes"] == ["divide"] and audit["samples"] == 0
    assert any(line.startswith("fp16 audit: layer `divide` holds 1e+06") and line.endswith("kept in FP32") for line in kept.log)
    assert any("activations not audited" in line for line in kept.log)
    reported = ModelArtifacts(cache, onnx_file=big_weight, export=ExportSpec(fp16_out_of_range="report"))
    clamped = ort_run(reported.onnx_path("fp16"), x)
    expected = x / np.array([1e6, 2, 4, 8], dtype=np.float32)
    np.testing.assert_allclose(ort_run(path, x), expected, rtol=1e-6)
    assert np.all(clamped[:, 0] > 10 * expected[:, 0])  # the converter stored 65504 for 1e6
    assert any("would overflow" in line for line in reported.log)


@pytest.mark.parametrize("source", ["calibration", "parity"])
def test_an_overflowing_activation_is_found_by_layer_and_kept_in_fp32(cache: ArtifactCache, amplifier: Path, source: str) -> None:
    x = loud_inputs()
    given = {"calibration_inputs": lambda: Calibration(tuple(map(str, range(len(x)))), x)} if source == "calibration" else {}
    artifacts = ModelArtifacts(cache, onnx_file=amplifier, parity_inputs=lambda: x, **given)
    path = artifacts.onnx_path("fp16")
    audit = artifacts.provenance["onnx:fp16"]["fp16_audit"]
    (finding,) = audit["findings"]
    expected = ort_run(amplifier, x)
    assert finding["kind"] == "activation" and finding["layer"] == "amplify" and finding["tensor"] == "loud"
    assert finding["value"] == pytest.approx(1000 * float(np.abs(x).max()), rel=1e-6) and finding["count"] > 0
    assert audit["inputs"] == f"{source} {'split' if source == 'calibration' else 'inputs'}" and audit["samples"] == len(x)
    assert audit["kept_fp32_nodes"] == ["amplify", "attenuate"]
    np.testing.assert_allclose(ort_run(path, x), expected, rtol=1e-5)
    np.testing.assert_allclose(ReferenceEvaluator(str(path)).run(None, {"x": x})[0], expected, rtol=1e-5)  # really FP16 elsewhere
    unkept = ModelArtifacts(cache, onnx_file=amplifier, parity_inputs=lambda: x, export=ExportSpec(fp16_out_of_range="report"), **given)
    with np.errstate(over="ignore"):
        assert not np.isfinite(ReferenceEvaluator(str(unkept.onnx_path("fp16"))).run(None, {"x": x})[0]).all()


def test_the_fail_policy_refuses_the_fp16_file_naming_the_layer_and_the_key(cache: ArtifactCache, amplifier: Path) -> None:
    x = loud_inputs()
    artifacts = ModelArtifacts(cache, onnx_file=amplifier, parity_inputs=lambda: x, export=ExportSpec(fp16_out_of_range="fail"))
    loudest = f"{1000 * float(np.abs(x).max()):.3g}"
    with pytest.raises(HarnessError, match=re.escape(f"layer `amplify` computes {loudest}")) as error:
        artifacts.onnx_path("fp16")
    assert "fp16_out_of_range" in error.value.fix
    quiet = ModelArtifacts(cache, onnx_file=amplifier, parity_inputs=lambda: x / 100, export=ExportSpec(fp16_out_of_range="fail"))
    quiet.onnx_path("fp16")  # the audit inputs are part of the key: in-range inputs build the file
    assert quiet.provenance["onnx:fp16"]["fp16_audit"]["findings"] == []


def test_a_suite_value_outside_the_policies_is_one_line(make_suite: Callable[..., Path]) -> None:
    suite = make_suite({"int8_per_channel = true": 'int8_per_channel = true\nfp16_out_of_range = "ignore"'})
    with pytest.raises(HarnessError, match=r"\[export\] fp16_out_of_range = 'ignore'"):
        load_suite(str(suite))


def test_a_pytorch_models_overflow_is_named_by_its_module_in_export_and_the_report(
    make_suite: Callable[..., Path], tmp_path: Path, cache: ArtifactCache, harness_cli: Callable[..., CliResult]
) -> None:
    """The planted model whose RMS norm squares activations around 1,000, at the default policy."""
    images = SuiteRun(load_suite("demo"), cache, limit=64).inputs.tensors
    planted = planted_suite(make_suite, tmp_path, "fp16", images)
    suite = load_suite(str(planted))
    run = SuiteRun(suite, cache, limit=16)
    run.artifacts.onnx_path("fp16")
    audit = run.artifacts.provenance["onnx:fp16"]["fp16_audit"]
    layers = {f["layer"] for f in audit["findings"]}
    assert layers and all(layer.startswith("bad/") for layer in layers), layers  # the squares, their mean: inside `bad`
    assert audit["inputs"] == "calibration split" and audit["samples"] > 0
    assert all(f["value"] > FP16_MAX for f in audit["findings"])
    exported = harness_cli("export", "--suite", planted, "--precision", "fp16")
    assert exported.code == 0, exported.err
    assert "fp16 audit: layer `bad/" in exported.out and "kept in FP32" in exported.out
    report, _ = run_suite(suite, RunRequest(("ort-fp16",), 16, limit=16), cache)
    notes = [n for n in report.notes if n.startswith("ort-fp16: fp16 audit: layer `bad/")]
    assert notes and all(n.endswith("beyond FP16; kept in FP32") for n in notes), report.notes
    assert next(r for r in report.results if r.runtime == "ort-fp16").passed


def share_differing(a: np.ndarray, b: np.ndarray, threshold: float = 0.3) -> float:
    """Share of output pixels on opposite sides of the text threshold."""
    return float(np.mean((a > threshold) != (b > threshold)))


def test_the_pp_ocr_text_detectors_batchnorm_variance_is_found_and_keeping_it_fixes_the_fp16_file(cache: ArtifactCache) -> None:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        pytest.skip("rapidocr-onnxruntime is not installed")
    detector = Path(spec.origin).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"
    from skimage import data, transform

    page = transform.resize(data.text(), (352, 896), preserve_range=True)  # a multiple of 32, as DBNet needs
    x = np.repeat(((page / 255.0 - 0.5) / 0.5)[None, None], 3, axis=1).astype(np.float32)
    kept = ModelArtifacts(cache, onnx_file=detector)
    unkept = ModelArtifacts(cache, onnx_file=detector, export=ExportSpec(fp16_out_of_range="report"))
    outputs = {name: ort_run(a.onnx_path("fp16"), x) for name, a in (("kept", kept), ("unkept", unkept))}
    audit = kept.provenance["onnx:fp16"]["fp16_audit"]
    variance = next(f for f in audit["findings"] if f["tensor"] == "batch_norm_0.w_2")
    assert variance["layer"] == "batch_norm_0" and variance["value"] > 9e7
    reference = ort_run(detector, x)
    before, after = share_differing(reference, outputs["unkept"]), share_differing(reference, outputs["kept"])
    print(f"text pixels > 0.3: fp32 {np.mean(reference > 0.3):.4f}; differing from fp32: unkept {before:.4f}, kept {after:.4f}")
    print(*kept.log, sep="\n")
    assert after < before
