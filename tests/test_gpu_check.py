"""scripts/gpu_check.sh in its quick CPU mode (CUDA hidden: the same on any machine), its setup failure, the wheel
list against pyproject's dependencies, and the decoders the GPU test machine lacks a library for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from harness.analysis.matrix import collect_variants
from harness.data.decoders import decoder_unavailable
from harness.spec.suite import Suite, tomllib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402


def _check(tmp_path: Path, wheels: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "out"
    env = os.environ | {
        "GPU_CHECK_CPU": "quick",
        "GPU_CHECK_OUT": str(out),
        "GPU_CHECK_PYTHON": sys.executable,
        "GPU_CHECK_WHEELS": str(wheels),
        "CUDA_VISIBLE_DEVICES": "",  # PyTorch sees no GPU even on a GPU machine: the CPU mode
        "TMPDIR": str(tmp_path),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    return done, out


def test_without_a_gpu_the_check_says_so_in_one_line_and_runs_its_cpu_part(tmp_path: Path) -> None:
    done, out = _check(tmp_path, tmp_path / "no-wheels")
    assert done.returncode == 0, done.stdout + done.stderr
    skipped = [line for line in done.stdout.splitlines() if line.startswith("no CUDA device: GPU part skipped")]
    assert len(skipped) == 1, done.stdout
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["step"]: s["rc"] for s in summary["steps"]}
    assert steps == {"install-project": 0, "modules": 0, "probe": gpu_check.NO_CUDA, "demo-cpu": 0, "cpu-tests": 0}
    assert "no_cuda" in summary["gpu"] and "| demo-cpu | 0 |" in (out / "summary.md").read_text()
    report = json.loads((out / "demo-cpu" / "report.json").read_text())
    assert {r["runtime"] for r in report["results"]} >= {"ort-fp32"}
    assert "needs an NVIDIA GPU" in (out / "logs" / "cpu-tests.log").read_text()  # test_gpu.py collected, skipped with the reason
    modules = json.loads((out / "modules.json").read_text())
    assert modules["torch"]["version"] and modules["pydantic"]["tier"] == "gpu"
    assert not list(tmp_path.glob("gpu-check.*")), "the work folder (installed wheels, artifact cache) is removed"


def test_a_wheel_that_does_not_install_fails_the_setup_in_one_line(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip file")
    done, out = _check(tmp_path, wheels)
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1].startswith("gpu_check: setup failed at install-wheels: ")
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert [s["step"] for s in steps] == ["install-wheels"] and steps[0]["rc"] != 0


def test_every_dependency_comes_from_the_machine_a_wheel_or_is_left_out_on_purpose() -> None:
    """A dependency added to pyproject.toml needs a line in scripts/gpu_wheels.txt (or a reason to leave it out)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    on_312 = {"python_version": "3.12", "python_full_version": "3.12.0"}
    needed = {canonicalize_name(r.name) for r in map(Requirement, project["dependencies"]) if not r.marker or r.marker.evaluate(on_312)}
    requirements = [Requirement(row[0]) for row in gpu_check.wheel_rows()]
    wheels = {canonicalize_name(r.name) for r in requirements}
    assert all(len(r.specifier) == 1 and str(r.specifier).startswith("==") for r in requirements), "every wheel pinned"
    assert {row[2] for row in gpu_check.wheel_rows()} == {"gpu", "cpu"}
    assert needed - wheels - set(gpu_check.MACHINE_PACKAGES) - set(gpu_check.LEFT_OUT) == set()
    assert not wheels & set(gpu_check.MACHINE_PACKAGES), "a wheel would shadow the machine's own build"


def test_a_decoder_whose_library_is_missing_is_a_note_of_the_matrix(demo_suite: Suite, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU machine has no PyAV: its decoder row is left out with the reason, like nvJPEG without a GPU."""
    monkeypatch.setitem(sys.modules, "av", None)
    assert decoder_unavailable("pyav") == "python module av not installed (pip install av)"
    variants, notes = collect_variants(demo_suite, ["decoder"], set())
    assert "decoder:pyav not run: python module av not installed (pip install av)" in notes
    assert "pyav" not in {v.name for v in variants} and "opencv" in {v.name for v in variants}
