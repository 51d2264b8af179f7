"""Layer localization, sensitivity and precision fallback on real ONNX Runtime and OpenVINO sessions, with a
model whose bad layer is planted (`tests.planted`), and the marked-output artifacts they rely on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from exporters.cache import ArtifactCache
from harness.analysis.localize import PROBED, first_samples, localizer, tensor_error
from harness.analysis.sensitivity import Trials
from harness.run.prepared import SuiteRun
from harness.run.sessions import run_session
from harness.spec.suite import Suite, load_suite
from runtimes import get_runtime
from tests.planted import REPORT_FP16_OVERFLOW, planted_suite


@pytest.fixture(scope="module")
def demo_images(cache: ArtifactCache) -> np.ndarray:
    return SuiteRun(load_suite("demo"), cache, limit=64).inputs.tensors


@pytest.fixture(scope="module")
def demo_run(demo_suite: Suite, cache: ArtifactCache) -> SuiteRun:
    return SuiteRun(demo_suite, cache, limit=16)


@pytest.fixture
def planted(make_suite: Callable[..., Path], tmp_path: Path, demo_images: np.ndarray) -> Callable[[str], Suite]:
    extra = {"fp16": REPORT_FP16_OVERFLOW}  # the overflow that localize must find stays in the FP16 file
    return lambda fault: load_suite(str(planted_suite(make_suite, tmp_path, fault, demo_images, extra.get(fault, ""))))


@pytest.mark.parametrize("runtime", ["ort-int8", "ov-int8"])
def test_localize_names_the_layer_whose_activation_range_ruins_int8(
    planted: Callable[[str], Suite], cache: ArtifactCache, runtime: str
) -> None:
    run = SuiteRun(planted("int8"), cache, limit=16)
    result = localizer(run, runtime, "ort-fp32", samples=16, per_round=3, batch_size=32).localize()
    assert result.first_divergent is not None and result.first_divergent.probe.layer == "bad"
    assert result.worst is not None and result.worst.probe.layer == "bad"
    before = [e for e in result.ordered() if e.probe.index < result.first_divergent.probe.index]
    assert before and all(e.rel_l2 <= result.tolerance for e in before)  # the tensors feeding it are fine
    assert len(result.measured) < result.total_probes or result.total_probes <= 3  # bisection, not every tensor
    assert all(len(r) <= 3 for r in result.rounds)


@pytest.mark.parametrize("runtime", ["ort-fp16", "ov-fp16"])
def test_localize_finds_the_fp16_overflow_where_fp16_really_executes(
    planted: Callable[[str], Suite], cache: ArtifactCache, runtime: str
) -> None:
    """ONNX Runtime's FP16 graph stores the squares in float16 (inf); OpenVINO runs an f16 request in f16, bf16 or
    f32 depending on the CPU: only in f16 does the square overflow there."""
    run = SuiteRun(planted("fp16"), cache, limit=16)
    result = localizer(run, runtime, "ort-fp32", samples=16, per_round=4, batch_size=32).localize()
    overflowed = [e for e in result.ordered() if not e.finite]
    if runtime == "ort-fp16" or result.session["executed"] == "fp16":
        assert result.first_divergent is not None and result.first_divergent.probe.layer.startswith("bad")
        assert overflowed and overflowed[0].probe.layer.startswith("bad")
    else:
        assert not overflowed  # bf16 and f32 have the range: no overflow to find


def test_marked_outputs_leave_the_models_own_outputs_unchanged(demo_run: SuiteRun) -> None:
    """Exposing tensors adds outputs and nothing else: final outputs bit-identical on ONNX Runtime int8 and OpenVINO
    fp32, and within fp32 rounding on ONNX Runtime fp32 (an exposed tensor can stop a fusion: on an AVX2 CPU one
    logit moved by an ulp); where OpenVINO int8 fuses around an exposed tensor the localizer reports the change
    it measured."""
    inputs = first_samples(demo_run.inputs, 16)
    tensors = ("relu_2", "getitem_6", "add_167")
    marked = demo_run.artifacts.derive(mark=tensors)
    for name in ("ort-fp32", "ort-int8", "ov-fp32", "ov-int8"):
        spec = get_runtime(name)
        plain = run_session(spec, demo_run.artifacts, inputs, 32, lambda: None)[0]
        exposed = run_session(spec, marked, inputs, 32, lambda: None)[0]
        assert set(exposed) == {"logits", *marked.marked_outputs(spec.precision).values()}
        if name == "ort-fp32":
            np.testing.assert_allclose(exposed["logits"], plain["logits"], rtol=1e-6, atol=1e-6, err_msg=name)
        elif name != "ov-int8":
            np.testing.assert_array_equal(exposed["logits"], plain["logits"], err_msg=name)
    bisection = localizer(demo_run, "ov-int8", "ort-fp32", samples=16, per_round=3, batch_size=32)
    result = bisection.localize()
    for indices, change in zip(result.rounds, result.disturbance, strict=True):
        again = bisection._values(bisection.spec, tuple(bisection.probes[i].tensor for i in indices))[1]
        assert change == pytest.approx(float(np.max(np.abs(again["logits"] - bisection._unmarked["logits"]))))


def test_int8_tensors_are_exposed_after_their_dequantize(demo_run: SuiteRun) -> None:
    marked = demo_run.artifacts.derive(mark=("relu_2", "logits"))
    exposed = marked.marked_outputs("int8")
    assert exposed == {"relu_2": "relu_2_DequantizeLinear_Output", "logits": "logits"}
    graph = onnx.load(str(marked.onnx_path("int8"))).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) == sum(
        n.op_type == "QuantizeLinear" for n in onnx.load(str(demo_run.artifacts.onnx_path("int8"))).graph.node
    )  # still quantized everywhere
    assert marked.recipe("int8", "openvino")[-2:] == ["mark(2 tensors)", "openvino"]


def test_fallback_keeps_exactly_the_planted_layer(planted: Callable[[str], Suite], cache: ArtifactCache) -> None:
    run = SuiteRun(planted("int8"), cache, limit=200)
    trials = Trials(run, "ort-int8", 50)
    sensitivity = trials.sensitivity()
    assert not sensitivity.baseline.passed
    assert sensitivity.ranking()[0] == "bad"
    steps = trials.fallback(sensitivity.ranking())
    assert [t.kept for t in steps] == [("bad",)] and steps[0].passed
    keeping_next = next(t for t in sensitivity.layers if t.kept == ("conv3",))
    assert not keeping_next.passed  # the consumer of the ruined tensor is not the fix


def test_keep_fp32_in_the_suite_reaches_runs_and_goldens(
    make_suite: Callable[..., Path], tmp_path: Path, demo_images: np.ndarray, cache: ArtifactCache, harness_cli: Callable
) -> None:
    suite = planted_suite(make_suite, tmp_path, "int8", demo_images, extra='int8_keep_fp32 = ["bad"]')
    done = harness_cli("run", "--suite", suite, "--runtime", "ort-int8", "--limit", "100", "--no-golden", "--report-dir", tmp_path / "r")
    assert done.code == 0, done.out
    recorded = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "keep_fp32" in json.dumps(recorded)
    assert harness_cli("golden", "update", "--suite", suite, "--runtime", "ort-int8").code == 0
    metadata = next((tmp_path / "golden").rglob("*.json")).read_text()
    assert '"bad"' in metadata and "kept_float_nodes" in metadata


def test_export_keep_fp32_auto_through_the_cli(
    make_suite: Callable[..., Path], tmp_path: Path, demo_images: np.ndarray, harness_cli: Callable
) -> None:
    suite = planted_suite(make_suite, tmp_path, "int8", demo_images)
    done = harness_cli("export", "--suite", suite, "--precision", "int8", "--keep-fp32", "auto", "--limit", "200",
                       "--report-dir", tmp_path / "fb")  # fmt: skip
    assert done.code == 0, done.err
    assert "kept 1 layer(s) in FP32: bad" in done.out and 'int8_keep_fp32 = ["bad"]' in done.out
    assert json.loads((tmp_path / "fb" / "sensitivity.json").read_text())["fallback"][0]["kept"] == ["bad"]
    wrong = harness_cli("export", "--suite", suite, "--precision", "int8", "--keep-fp32", "nosuchlayer")
    assert wrong.code == 2 and "no layer named nosuchlayer" in wrong.err and "layers: conv1" in wrong.err


def test_localize_cli_writes_table_json_and_plot(planted: Callable[[str], Suite], harness_cli: Callable, tmp_path: Path) -> None:
    suite = planted("int8")
    done = harness_cli("localize", "--suite", suite.path, "--runtime", "ort-int8", "--runtime", "ov-int8", "--report-dir", tmp_path)
    assert done.code == 0, done.err
    assert "first beyond rel L2 0.25: bad" in done.out
    data = json.loads((tmp_path / "localize.json").read_text())
    assert [r["first_divergent"]["layer"] for r in data["runtimes"]] == ["bad", "bad"]
    assert (tmp_path / "localize.png").read_bytes()[:4] == b"\x89PNG"
    torch_ref = harness_cli("localize", "--suite", suite.path, "--runtime", "ort-int8", "--against", "torch-fp32")
    assert torch_ref.code == 2 and "runs no ONNX graph" in torch_ref.err
    onnx_ref = harness_cli("localize", "--suite", suite.path, "--runtime", "torch-fp16", "--against", "ort-fp32")
    assert onnx_ref.code == 2 and "--against 'ort-fp32' is no PyTorch runtime" in onnx_ref.err


def test_torch_fp16_localize_names_the_planted_layer(planted: Callable[[str], Suite], harness_cli: Callable, tmp_path: Path) -> None:
    """PyTorch on the CPU stores float16 results (the squares of `bad`'s RMS norm overflow to inf, so its output is 0):
    module outputs read by forward hooks, against torch-fp32's, name `bad` first."""
    suite = planted("fp16")
    done = harness_cli("localize", "--suite", suite.path, "--runtime", "torch-fp16", "--per-round", "3", "--report-dir", tmp_path)
    assert done.code == 0, done.err
    tolerance = suite.tolerances.for_precision("fp16").max_layer_rel_l2
    assert f"torch-fp16 vs torch-fp32 [fp16]: first beyond rel L2 {tolerance:g}: bad (bad)" in done.out
    (result,) = json.loads((tmp_path / "localize.json").read_text())["runtimes"]
    assert result["session"]["executed"] == "fp16" and result["recipe"] == ["pytorch(tests.planted:planted_model)", "fp16 on cpu"]
    assert result["first_divergent"]["layer"] == "bad" and result["first_divergent"]["op"] == "RmsNorm"
    before = [t for t in result["tensors"] if t["index"] < result["first_divergent"]["index"]]
    assert before and all(t["rel_l2"] <= tolerance for t in before)  # the modules feeding it are fine
    assert result["probes_measured"] < result["probes_total"]  # bisection, not every module
    assert (tmp_path / "localize.png").read_bytes()[:4] == b"\x89PNG"


def test_torch_localize_reads_each_samples_module_output(planted: Callable[[str], Suite], cache: ArtifactCache) -> None:
    """The hooked outputs of 10 samples fed in padded batches of 4 are those of the model run on the samples alone."""
    import copy

    import torch

    run = SuiteRun(planted("fp16"), cache, limit=10)
    bisection = localizer(run, "torch-fp16", None, samples=10, per_round=2, batch_size=4)
    assert [p.layer for p in bisection.probes] == ["conv1", "relu1", "conv2", "relu2", "bad", "conv3", "relu3", "conv4", "relu4", "head"]
    got, own, session = bisection._values(bisection.spec, ("conv2", "bad"))
    assert session["executed"] == "fp16" and set(own) == {"logits"} and not any(k.startswith(PROBED) for k in own)
    model = copy.deepcopy(run.artifacts.torch_model()).half()
    seen: dict[str, np.ndarray] = {}
    hooks = [getattr(model, name).register_forward_hook(lambda _m, _a, out, n=name: seen.update({n: out.float().numpy()})) for name in got]
    with torch.inference_mode():
        logits = model(torch.from_numpy(bisection.inputs.tensors).half()).float().numpy()
    for hook in hooks:
        hook.remove()
    for name, value in got.items():
        np.testing.assert_array_equal(value, seen[name], err_msg=name)
    np.testing.assert_array_equal(own["logits"], logits)
    want = bisection._values(bisection.reference, ("bad",))[0]["bad"]
    assert not tensor_error(bisection.probes[4], got["bad"], want).rel_l2 <= run.suite.tolerances.for_precision("fp16").max_layer_rel_l2


def test_sensitivity_cli_with_noise_injection(harness_cli: Callable, tmp_path: Path) -> None:
    done = harness_cli("sensitivity", "--suite", "demo", "--runtime", "ort-int8", "--limit", "40", "--levels", "0.1,0.5",
                       "--report-dir", tmp_path)  # fmt: skip
    assert done.code == 0, done.err
    data = json.loads((tmp_path / "sensitivity.json").read_text())
    assert len(data["precision"]["layers"]) >= 10
    noise = data["noise"]
    assert set(noise["metric"]) == {"additive", "multiplicative"} and "head" in noise["metric"]["additive"]
    assert all(len(v) == 2 for v in noise["metric"]["additive"].values())
    # a ten times stronger noise never agrees more with the clean model, on average over the layers
    agree = noise["agreement"]["additive"]
    assert np.mean([v[1] for v in agree.values()]) <= np.mean([v[0] for v in agree.values()])
    assert (tmp_path / "noise.png").is_file()


def test_keep_fp32_auto_stops_at_once_when_nothing_needs_keeping(harness_cli: Callable, tmp_path: Path) -> None:
    result = harness_cli(
        "export", "--suite", "demo", "--precision", "fp16", "--keep-fp32", "auto", "--limit", "32", "--report-dir", tmp_path
    )
    assert result.code == 0, result.err
    assert "ort-fp16 already passes with no layer kept in FP32: nothing to keep" in result.out
    assert "one layer kept in FP32 at a time" not in result.out  # no layer was ranked
