"""Same numbers on every machine and batch layout: the fixed batch grid, attribution that tells
numeric noise from change, ISA features in the environment, and the precision that really executed.

Nothing here asserts a number that depends on this CPU's kernels: where a fact differs between
CPUs (which precision OpenVINO or ONNX Runtime executes), the expectation is derived from what
this machine reports and checked for consistency with what it computes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from exporters.artifacts import ModelArtifacts
from exporters.cache import ArtifactCache
from exporters.onnx_export import export_onnx
from exporters.openvino_ir import convert_ir
from harness.core.environment import NUMERIC_ISA, compute_threads, environment, isa_features
from harness.core.errors import HarnessError
from harness.data.feed import batch_layout, padded_batch
from harness.judge.attribution import Tolerated, attribute
from harness.judge.provenance import numeric_changes, staleness
from harness.run.execute import measure
from harness.run.plan import RunRequest
from harness.run.prepared import SuiteRun
from harness.spec.suite import Suite
from runtimes import get_runtime
from runtimes.precision import judged_precision, onnx_compute_precisions, parse_counts, precision_note
from tests.conftest import CliResult

Cli = Callable[..., CliResult]
FP32 = ["torch-fp32", "ort-fp32", "ov-fp32"]


def test_batch_layout_puts_each_position_in_its_grid_slot() -> None:
    layout = list(batch_layout(np.arange(37, 70), 32))
    assert [rows.tolist() for rows, _ in layout] == [list(range(27)), list(range(27, 33))]
    assert [slots.tolist() for _, slots in layout] == [list(range(5, 32)), list(range(6))]
    shuffled = np.array([65, 3, 64, 40])
    assert [(r.tolist(), s.tolist()) for r, s in batch_layout(shuffled, 32)] == [([1], [3]), ([3], [8]), ([0, 2], [1, 0])]
    assert list(batch_layout(np.zeros(0, dtype=np.int64), 8)) == []


def test_padded_batch_has_the_full_shape_and_zero_padding() -> None:
    tensors = np.arange(3 * 2, dtype=np.float32).reshape(3, 2) + 1
    batch = padded_batch(tensors, np.array([0, 2]), np.array([4, 1]), 5)
    assert batch.shape == (5, 2)
    assert batch[4].tolist() == tensors[0].tolist() and batch[1].tolist() == tensors[2].tolist()
    assert not batch[[0, 2, 3]].any()


@pytest.mark.parametrize("runtime", [*FP32, "ort-int8", "ov-int8"])
def test_outputs_do_not_depend_on_limit_shard_units_or_last_batch(demo_suite: Suite, cache: ArtifactCache, runtime: str) -> None:
    full = SuiteRun(demo_suite, cache, limit=96).infer(runtime, 32).outputs["logits"]

    def measured(**request: Any) -> np.ndarray:
        done = measure(demo_suite, RunRequest((runtime,), 32, reference=False, **request), cache)
        return done.inferences[runtime].outputs["logits"]

    assert np.array_equal(measured(limit=37), full[:37])
    assert np.array_equal(measured(limit=96, shard=(2, 3)), full[32:64])  # one whole batch of the grid
    assert np.array_equal(measured(limit=96, shard=(2, 5)), full[19:38])  # the tail of batch 0 and the head of batch 1
    assert np.array_equal(measured(limit=96, chunk=1), full)  # one unit per batch


def test_openvino_ir_is_byte_identical_whatever_the_process_converted_before(
    demo_suite: Suite, cache: ArtifactCache, tmp_path: Path
) -> None:
    """OpenVINO numbers the nodes it creates from a counter global to the process; the IR must not show it."""
    source = SuiteRun(demo_suite, cache, limit=32).artifacts.onnx_path("fp32")
    first, second = tmp_path / "first.xml", tmp_path / "second.xml"
    convert_ir(source, first, compress_to_fp16=False)
    convert_ir(source, second, compress_to_fp16=False)  # the counter has moved on by a whole model's nodes
    assert first.read_bytes() == second.read_bytes()
    assert first.with_suffix(".bin").read_bytes() == second.with_suffix(".bin").read_bytes()


def test_environment_records_isa_threads_and_numeric_changes() -> None:
    env = environment()
    assert env["isa"] == isa_features() and set(env["isa"]) <= set(NUMERIC_ISA.values())
    assert env["threads"] == compute_threads() >= 1
    old = {"environment": env | {"isa": ["AVX2"], "threads": 16}, "batch_size": 32, "session": {"executed": "fp32"}}
    new = {"environment": env | {"isa": ["AVX2", "AVX512-VNNI"], "threads": 2}, "batch_size": 16, "session": {"executed": "bf16"}}
    assert numeric_changes(old, new) == ["threads: 16 -> 2", "ISA +AVX512-VNNI", "batch size: 32 -> 16", "executed precision: fp32 -> bf16"]
    assert staleness(old, new) == [
        "with batch_size: 32, now 16",
        "with environment.threads: 16, now 2",
        "without AVX512-VNNI, now with it",
        "executing fp32, now bf16",
    ]
    legacy = {"environment": {k: v for k, v in env.items() if k not in ("isa", "threads")}}
    assert numeric_changes(legacy, {"environment": env}) == ["ISA features, threads, batch size not recorded in the golden"]


def test_thread_count_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_THREADS", "3")
    assert compute_threads() == 3
    monkeypatch.setenv("HARNESS_THREADS", "two")
    with pytest.raises(HarnessError, match="HARNESS_THREADS"):
        compute_threads()


def test_attribution_tells_noise_from_change() -> None:
    hashes = {"encoded": ("a", "b", "c"), "decoded": ("a", "b", "c"), "tensor": ("a", "b", "c")}
    recorded = hashes | {"outputs": ("a", "b", "c"), "predictions": ("a", "b", "c")}
    now = hashes | {"outputs": ("x", "y", "c"), "predictions": ("a", "b", "c")}
    quiet = Tolerated(np.array([True, True, True]), np.array([1.4e-6, 2e-7, 0.0]), "fp32")
    noise = attribute(recorded, now, 3, quiet, ["batch size: 32 -> 4"])
    assert noise.first is None and noise.noise == 2 and noise.introduced["outputs"] == 0
    assert noise.message() == (
        "inputs identical; raw outputs of 2/3 samples differ only within the fp32 tolerance (max abs 1.40e-06): "
        "numeric noise, not blamed on inference; the golden's environment differs: batch size: 32 -> 4"
    )
    loud = Tolerated(np.array([True, False, True]), np.array([1e-6, 0.5, 0.0]), "fp32")
    change = attribute(recorded, now, 3, loud)
    assert change.first == "outputs" and change.introduced["outputs"] == 1 and change.noise == 1
    assert change.message().startswith("raw outputs differ beyond the fp32 tolerance for 1/3 samples: inference changed")
    assert change.message().endswith("the golden's recorded environment is the same")


def test_limit_37_against_a_golden_of_500_attributes_nothing(make_suite: Callable[..., Path], harness_cli: Cli, tmp_path: Path) -> None:
    suite = make_suite()
    runtimes = [arg for name in FP32 for arg in ("--runtime", name)]
    assert harness_cli("golden", "update", "--suite", suite, *runtimes).code == 0
    result = harness_cli("run", "--suite", suite, *runtimes, "--limit", "37", "--report-dir", tmp_path / "rep")
    assert result.code == 0, result.out
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    for runtime in report["results"]:
        attribution = runtime["comparisons"][-1]["attribution"]
        assert attribution["message"] == "all recorded stages identical for 37 samples", runtime["runtime"]
    other_batch = harness_cli("run", "--suite", suite, *runtimes, "--batch-size", "5", "--limit", "37", "--report-dir", tmp_path / "b5")
    assert other_batch.code == 0, other_batch.out
    for runtime in json.loads((tmp_path / "b5" / "report.json").read_text())["results"]:
        attribution = runtime["comparisons"][-1]["attribution"]
        assert attribution["first_changed_stage"] is None  # another batch size may move the last bits: noise, never a change
        assert "batch size: 32 -> 5" in attribution["environment_changes"]


class Overflow(nn.Module):
    """One convolution whose output exceeds the FP16 range (weights x1e5), undone by the next one."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.big, self.small = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            self.big.weight.mul_(1e5)
            self.big.bias.mul_(1e5)
            self.small.weight.mul_(1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.small(self.big(x))


@pytest.fixture(scope="module")
def overflow(tmp_path_factory: pytest.TempPathFactory, cache: ArtifactCache) -> tuple[ModelArtifacts, np.ndarray, np.ndarray]:
    path = tmp_path_factory.mktemp("overflow") / "overflow.onnx"
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    model = Overflow().eval()
    export_onnx(model, x, path, "x", ("y",), 18, {})
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    return ModelArtifacts(cache, onnx_file=path), x, expected


def test_overflow_model_really_overflows_in_fp16(overflow: tuple[ModelArtifacts, np.ndarray, np.ndarray]) -> None:
    _, x, expected = overflow
    assert np.isfinite(expected).all()
    with torch.inference_mode():
        half = Overflow().eval().half()(torch.from_numpy(x).half()).float().numpy()
    assert not np.isfinite(half).all()


@pytest.mark.parametrize("runtime", ["ort-fp16", "ov-fp16"])
def test_executed_precision_is_what_really_ran(overflow: tuple[ModelArtifacts, np.ndarray, np.ndarray], runtime: str) -> None:
    """A runtime that reports fp16 execution must overflow on this model; one that reports a wider type
    (fp32, or bf16 with fp32's range) must not, and gets a note saying its fp16 check did not test fp16."""
    artifacts, x, expected = overflow
    session = get_runtime(runtime).open(artifacts)
    info = session.describe()
    out = session.run({"x": x})["y"]
    counts = parse_counts(info["compute_ops"])
    assert sum(counts.values()) == 2 and info["precision"] == "fp16"
    note = precision_note(runtime, "fp16", counts)
    if info["executed"] == "fp16":
        assert not np.isfinite(out).all() and note is None
    else:
        assert np.isfinite(out).all() and np.allclose(out, expected, rtol=0.05, atol=0.05)
        assert note is not None and f"fp16 requested, {info['executed']} executed" in note


def test_onnx_compute_precisions_of_the_demo_files(demo_suite: Suite, cache: ArtifactCache) -> None:
    import onnx

    artifacts = SuiteRun(demo_suite, cache, limit=8).artifacts
    assert onnx_compute_precisions(onnx.load(str(artifacts.onnx_path("fp32")))) == {"fp32": 13}
    assert onnx_compute_precisions(onnx.load(str(artifacts.onnx_path("fp16")))) == {"fp16": 13}
    int8 = onnx_compute_precisions(onnx.load(str(artifacts.onnx_path("int8"))))
    assert sum(int8.values()) == 13 and set(int8) <= {"int8", "fp32"}


def test_precision_notes_and_judged_profiles() -> None:
    assert precision_note("ort-fp32", "fp32", {"fp32": 13}) is None
    assert precision_note("ort-fp16", "fp16", {"fp32": 13}) == (
        "ort-fp16: fp16 requested, fp32 executed (compute ops 13/13 in fp32): this check ran at a higher precision "
        "than its name says and does not test fp16 arithmetic"
    )
    assert precision_note("ov-fp16", "fp16", {"bf16": 13}).endswith("judged by the bf16 tolerance profile")
    assert precision_note("ort-int8", "int8", {"int8": 6, "fp32": 7}) == (
        "ort-int8: int8 requested, int8+fp32 executed (compute ops 6/13 in int8, 7/13 in fp32)"
    )
    assert judged_precision("fp16", "fp32") == "fp16" and judged_precision("fp16", "bf16") == "bf16"
    assert judged_precision("int8", "int8+fp32") == "int8" and judged_precision("fp32", "unknown") == "fp32"
