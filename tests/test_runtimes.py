"""Every CPU runtime against PyTorch on the whole demo, on identical inputs."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable

import pytest

from exporters.cache import ArtifactCache
from harness.core.errors import RuntimeUnavailable
from harness.judge.compare import Baseline
from harness.judge.verdict import RunReport, run_suite
from harness.run.plan import RunRequest
from harness.run.prepared import SuiteRun
from harness.spec.suite import Suite
from runtimes import RUNTIMES, RuntimeSpec, get_runtime
from runtimes.openvino import signal_stack
from runtimes.ort import OrtSession


@pytest.fixture(scope="session")
def demo_report(demo_suite: Suite, cache: ArtifactCache) -> RunReport:
    return run_suite(demo_suite, RunRequest(("torch-fp32", "ort-fp32", "ov-fp32"), 32), cache)[0]


def test_reference_accuracy_is_meaningful(demo_report: RunReport) -> None:
    reference = demo_report.results[0]
    assert reference.runtime == "torch-fp32" and not reference.comparisons
    assert reference.metric >= 0.85
    assert demo_report.samples == 500


@pytest.mark.parametrize("runtime", ["ort-fp32", "ov-fp32"])
def test_runtime_matches_torch(demo_report: RunReport, runtime: str) -> None:
    result = next(r for r in demo_report.results if r.runtime == runtime)
    (comparison,) = result.comparisons
    assert comparison.against == Baseline.reference("torch-fp32") and str(comparison.against) == "reference:torch-fp32"
    assert comparison.worst.max_abs < 1e-4
    assert comparison.worst.min_cosine > 0.99999
    assert comparison.flips == [] and comparison.top1_agreement == 1.0
    assert comparison.passed


def test_openvino_runs_in_f32(demo_report: RunReport) -> None:
    result = next(r for r in demo_report.results if r.runtime == "ov-fp32")
    assert result.session["precision"] == result.session["executed"] == "fp32"


def test_report_records_versions_and_hardware(demo_report: RunReport) -> None:
    data = demo_report.describe()
    assert data["schema_version"] == "1.2"
    assert {"torch", "onnxruntime", "openvino", "numpy"} <= set(data["environment"]["libraries"])
    assert data["environment"]["cpu"]
    assert data["model"]["weights_sha256"] and data["dataset"]["sha256"]


def test_missing_library_is_reported_with_install_hint(monkeypatch: pytest.MonkeyPatch, harness_cli: Callable[..., object]) -> None:
    spec = RuntimeSpec(
        name="ghost-fp32",
        backend="ghost",
        device="cpu",
        precision="fp32",
        modules=("ghost_runtime_that_is_not_installed",),
        install_hint="pip install ghost",
        opener=OrtSession,
    )
    monkeypatch.setitem(RUNTIMES, spec.name, spec)
    assert "pip install ghost" in (spec.unavailable_reason() or "")
    with pytest.raises(RuntimeUnavailable):
        spec.open(None)  # type: ignore[arg-type]
    listing = harness_cli("list")
    assert "ghost-fp32" in listing.out and "unavailable" in listing.out
    result = harness_cli("run", "--suite", "demo", "--runtime", "ghost-fp32", "--no-golden")
    assert result.code == 2
    assert result.err.strip() == (
        "error: runtime 'ghost-fp32' is unavailable: python module ghost_runtime_that_is_not_installed not installed (pip install ghost)"
    )


def test_a_gpu_runtime_without_a_gpu_says_so_instead_of_suggesting_an_install() -> None:
    from harness.core.devices import device_missing

    if device_missing("cuda") is None:
        pytest.skip("this machine has a CUDA device")
    for name in ("ort-cuda-fp32", "ort-trt-int8"):
        reason = RUNTIMES[name].unavailable_reason() or ""
        assert reason.startswith("no CUDA device on this machine") and "pip" not in reason, reason


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack(2) is read on Linux")
def test_openvino_models_destroyed_out_of_order_leave_the_signal_stack_as_it_was(demo_suite: Suite, cache: ArtifactCache) -> None:
    """Left to itself, OpenVINO leaves the thread on the first model's freed signal stack here, and the next SIGCHLD
    (a Python handler: torch's DataLoader installs one) killed the test process with SIGSEGV."""
    artifacts = SuiteRun(demo_suite, cache, limit=8).artifacts
    before = signal_stack()
    sessions = [get_runtime(name).opener(artifacts, get_runtime(name)) for name in ("ov-fp32", "ov-fp16", "ov-int8")]
    while sessions:
        del sessions[0]  # the first compiled first destroyed: not the reverse order OpenVINO restores stacks in
        gc.collect()
    after = signal_stack()
    assert before is not None and after is not None
    assert (after.ss_sp, after.ss_size, after.ss_flags) == (before.ss_sp, before.ss_size, before.ss_flags)
