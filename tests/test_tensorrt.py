"""TensorRT engine builder and runner through a fake `tensorrt` module (TensorRT
10 and 11 variants), plus real-hardware tests marked `gpu`."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from exporters.cache import ArtifactCache
from exporters.tensorrt_engine import EngineOptions, build_engine
from harness.core.errors import HarnessError, RuntimeUnavailable
from harness.judge.verdict import run_suite
from harness.run.plan import RunRequest
from harness.run.prepared import SuiteRun
from harness.spec.suite import Suite, load_suite
from runtimes import RUNTIMES
from runtimes.tensorrt import TensorRTSession
from tests.fake_tensorrt import FakeDeviceMemory, make_fake_tensorrt

TRT_RUNTIMES = ("trt-fp32", "trt-fp16", "trt-int8")


@pytest.fixture(scope="module")
def demo_run(demo_suite: Suite, cache: ArtifactCache) -> SuiteRun:
    return SuiteRun(demo_suite, cache, limit=48)


@pytest.fixture(params=["10.9.0", "11.4.0"], ids=["trt10", "trt11"])
def fake_trt(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[types.ModuleType, FakeDeviceMemory]:
    memory = FakeDeviceMemory()
    trt = make_fake_tensorrt(request.param, memory)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr("harness.core.devices.gpu_identity", lambda: {"gpu": "Fake GPU", "compute_capability": "9.0"})
    monkeypatch.setattr("runtimes.tensorrt.default_device_memory", lambda: memory)
    monkeypatch.setattr("runtimes.base.device_missing", lambda device: None)  # the fake GPU is there
    for name in TRT_RUNTIMES:
        monkeypatch.setitem(RUNTIMES, name, dataclasses.replace(RUNTIMES[name], probe=None))
    return trt, memory


def test_build_is_strongly_typed_real_fp32_and_uses_no_removed_api(fake_trt: tuple, demo_run: SuiteRun, tmp_path: Path) -> None:
    trt, _ = fake_trt
    options = EngineOptions("images", (1, 32, 64), 512)
    info = build_engine(demo_run.artifacts.onnx_path("fp32"), tmp_path / "a.engine", options, tmp_path / "timing.cache")
    expected_flags = 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED if trt.__version__.startswith("10.") else 0
    assert [c for c in trt.calls if c[0] == "create_network"] == [("create_network", expected_flags)]
    config = next(c[1] for c in trt.calls if c[0] == "build")
    assert config.cleared == ["TF32"] and config.set_flags == []  # no FP16/INT8/precision flags, ever
    assert config.pools == {"WORKSPACE": 512 << 20}
    assert config.profiles[0].shapes["images"] == ((1, 3, 64, 64), (32, 3, 64, 64), (64, 3, 64, 64))
    assert info["strongly_typed"] and info["tf32"] is False
    assert (tmp_path / "timing.cache").read_bytes() == b"+timing"

    build_engine(demo_run.artifacts.onnx_path("fp32"), tmp_path / "b.engine", options, tmp_path / "timing.cache")
    assert [c[1] for c in trt.calls if c[0] == "create_timing_cache"] == [b"", b"+timing"]  # persisted and reused


def test_trt11_fake_really_lacks_the_removed_apis(fake_trt: tuple) -> None:
    trt, _ = fake_trt
    if not trt.__version__.startswith("11."):
        pytest.skip("TensorRT 10 still has the weak-typing flags")
    for removed in ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"):
        assert not hasattr(trt.BuilderFlag, removed)
    config = trt.Builder(trt.Logger(2)).create_builder_config()
    with pytest.raises(AttributeError):
        config.int8_calibrator = object()


def test_every_trt_precision_runs_through_the_harness(fake_trt: tuple, demo_suite: Suite, tmp_path: Path) -> None:
    _, memory = fake_trt
    report = run_suite(demo_suite, RunRequest(TRT_RUNTIMES, 16, limit=48), ArtifactCache(tmp_path / "cache"))[0]
    results = {r.runtime: r for r in report.results}
    fp32 = results["trt-fp32"].comparisons[0]
    assert fp32.worst.max_abs < 1e-4 and fp32.passed
    assert results["trt-fp16"].comparisons[0].worst.max_abs < 5e-2
    assert results["trt-int8"].comparisons[0].top1_agreement >= 0.9
    assert memory.synchronized == 3 * 3  # one sync per batch: 48 samples / 16, three runtimes
    assert {"tensorrt:fp32", "tensorrt:fp16", "tensorrt:int8", "onnx:int8"} <= set(report.context["artifacts"])
    assert report.context["artifacts"]["tensorrt:int8"]["strongly_typed"] is True


def test_runner_checks_engine_io_against_the_suite(fake_trt: tuple, demo_run: SuiteRun, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    build_engine(demo_run.artifacts.onnx_path("fp32"), engine, EngineOptions("images", (1, 8, 16), 64), tmp_path / "t.cache")
    stub = types.SimpleNamespace(
        input_names=("images",),
        graph_outputs=lambda precision: ("scores",),
        tensorrt_engine=lambda precision: engine,
        onnx_path=demo_run.artifacts.onnx_path,
    )
    with pytest.raises(HarnessError, match=r"engine .* has inputs \['images'\] and outputs \['logits'\]"):
        TensorRTSession(stub, RUNTIMES["trt-fp32"])  # type: ignore[arg-type]
    stub.graph_outputs = lambda precision: ("logits",)
    session = TensorRTSession(stub, RUNTIMES["trt-fp32"])  # type: ignore[arg-type]
    assert session.describe()["executed"] == "fp32" and session.describe()["compute_ops"] == "fp32:13"  # strongly typed: the ONNX's types
    with pytest.raises(HarnessError, match="outside the engine's optimization profile"):
        session.run({"images": demo_run.inputs.tensors[:17]})


def test_old_tensorrt_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("8.6.1"))
    with pytest.raises(RuntimeUnavailable, match=r"TensorRT 8\.6\.1 is too old"):
        build_engine(tmp_path / "x.onnx", tmp_path / "x.engine", EngineOptions("images", (1, 1, 1), 1), tmp_path / "t")


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed (GPU runners only)")
def test_real_tensorrt_matches_torch(demo_suite: Suite, cache: ArtifactCache) -> None:
    report = run_suite(demo_suite, RunRequest(TRT_RUNTIMES, 32, limit=128), cache)[0]
    results = {r.runtime: r.comparisons[0] for r in report.results[1:]}
    assert results["trt-fp32"].worst.max_abs < 1e-3
    assert results["trt-fp16"].top1_agreement >= 0.99
    assert results["trt-int8"].passed


def test_a_ready_onnx_with_dynamic_size_takes_the_stacks_size_in_the_profile(fake_trt: tuple, tmp_path: Path) -> None:
    """A shipped file (PP-OCR's DBNet: [N, 3, H, W]) gets the stack's H x W in its optimization profile."""
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, (1, 3, 1, 1), [1.0, 2.0, 3.0])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, "h", "w"])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "dynamic.onnx"))
    trt, _ = fake_trt
    build_engine(tmp_path / "dynamic.onnx", tmp_path / "a.engine", EngineOptions("x", (1, 2, 4), 64, (32, 48)), tmp_path / "t")
    config = next(c[1] for c in trt.calls if c[0] == "build")
    assert config.profiles[0].shapes["x"] == ((1, 3, 32, 48), (2, 3, 32, 48), (4, 3, 32, 48))
    # per-image sizes ([stack] size_divisor = 32, the largest 160 x 160): from a divisor's square up to the largest
    build_engine(tmp_path / "dynamic.onnx", tmp_path / "c.engine", EngineOptions("x", (1, 1, 1), 64, (160, 160), (32, 32)), tmp_path / "t")
    config = [c[1] for c in trt.calls if c[0] == "build"][-1]
    assert config.profiles[0].shapes["x"] == ((1, 3, 32, 32), (1, 3, 160, 160), (1, 3, 160, 160))
    with pytest.raises(HarnessError, match="dynamic non-batch dimensions"):
        build_engine(tmp_path / "dynamic.onnx", tmp_path / "b.engine", EngineOptions("x", (1, 2, 4), 64), tmp_path / "t")


def test_per_image_sizes_build_a_profile_up_to_the_largest_and_feed_each_image_alone(
    fake_trt: tuple, make_suite: Callable[..., Path], cache: ArtifactCache
) -> None:
    """A per-image stack ([stack] size_divisor): the PyTorch model is exported with dynamic sides, the engine's profile
    spans a divisor's square to the largest size, and every image runs at its own size through the engine."""
    sizes = 'resize_size = 64\nresize_mode = "keep-ratio"\ncrop = 0\nmax_size = 96\nsize_divisor = 32'
    # torch.export cannot flatten the pooled features with dynamic sides (aten.sym_stride): "auto" traces instead
    path = make_suite({'resize_size = 72\nresize_mode = "shorter"\ncrop = 64': sizes, "[export]\n": '[export]\nexporter = "auto"\n'})
    run = SuiteRun(load_suite(path), cache, limit=12)
    trt, _ = fake_trt
    got = run.infer("trt-fp32", 4)
    config = [c[1] for c in trt.calls if c[0] == "build"][-1]
    assert config.profiles[0].shapes["images"] == ((1, 3, 32, 32), (1, 3, 96, 96), (1, 3, 96, 96))  # batch 1: one image a run
    assert len({g.tensor_hw for g in run.inputs.geometry}) > 1
    want = run.infer("ort-fp32", 4)
    assert np.abs(got.outputs["logits"] - want.outputs["logits"]).max() < 1e-4
