"""Golden round trip: update then run passes; a drifted golden fails with exit 1;
a corrupt one is exit 2; `run` never writes goldens."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from harness.judge.golden import GoldenStore

RUNTIMES = ("--runtime", "torch-fp32", "--runtime", "ort-fp32")


@pytest.fixture
def recorded(make_suite: Callable[..., Path], harness_cli: Callable[..., object], tmp_path: Path) -> tuple[Path, GoldenStore]:
    suite = make_suite()
    result = harness_cli("golden", "update", "--suite", suite, *RUNTIMES)
    assert result.code == 0, result.err
    assert result.out.count("new golden") == 2
    return suite, GoldenStore(tmp_path / "golden", "demo")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_update_then_run_passes(recorded: tuple[Path, GoldenStore], harness_cli: Callable[..., object], tmp_path: Path) -> None:
    suite, store = recorded
    before = _snapshot(store.root)
    assert sorted(p.name for p in store.folder("ort-fp32").iterdir()) == ["golden.json", "outputs.npz"]
    result = harness_cli("run", "--suite", suite, *RUNTIMES, "--limit", "120", "--report-dir", tmp_path / "rep")
    assert result.code == 0, result.out + result.err
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["passed"] and report["samples"] == 120
    against = [(r["runtime"], c["against"]) for r in report["results"] for c in r["comparisons"]]
    assert against == [("torch-fp32", "golden"), ("ort-fp32", "reference:torch-fp32"), ("ort-fp32", "golden")]
    assert _snapshot(store.root) == before


def test_drifted_golden_fails_with_exit_1(recorded: tuple[Path, GoldenStore], harness_cli: Callable[..., object], tmp_path: Path) -> None:
    suite, store = recorded
    golden = store.load("ort-fp32")
    logits = golden.outputs["logits"].copy()
    logits[3] += 0.01  # small numeric drift on one sample
    flipped = int(np.argsort(logits[7])[-2])
    logits[7, flipped] = logits[7].max() + 1.0  # one prediction flips
    predictions = logits.argmax(1)
    store.write(dataclasses.replace(golden, outputs={"logits": logits}, predictions=predictions))
    result = harness_cli("run", "--suite", suite, *RUNTIMES, "--limit", "20", "--report-dir", tmp_path / "rep")
    assert result.code == 1
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    ort_golden = report["results"][1]["comparisons"][1]
    assert ort_golden["against"] == "golden" and not ort_golden["passed"]
    failed = {c["name"] for c in ort_golden["checks"] if not c["passed"]}
    assert {"max_abs", "flips", "top1_agreement"} <= failed
    assert len(ort_golden["flips"]) == 1 and ort_golden["flips"][0].endswith("0007.jpg")
    assert report["results"][0]["passed"]  # torch's own golden untouched
    assert "FAIL" in result.out

    update = harness_cli("golden", "update", "--suite", suite, "--runtime", "ort-fp32")
    assert update.code == 0
    assert "max abs change" in update.out and "1 predictions changed" in update.out


def test_corrupt_golden_is_detected(recorded: tuple[Path, GoldenStore], harness_cli: Callable[..., object]) -> None:
    suite, store = recorded
    npz = store.folder("ort-fp32") / "outputs.npz"
    blob = bytearray(npz.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    npz.write_bytes(bytes(blob))
    result = harness_cli("run", "--suite", suite, *RUNTIMES, "--limit", "8")
    assert result.code == 2
    assert "outputs.npz: checksum differs from golden.json" in result.err
    assert f"harness golden update --suite {suite.resolve()} --runtime ort-fp32" in result.err  # the command as it works


def test_committed_demo_goldens_pass(harness_cli: Callable[..., object], tmp_path: Path) -> None:
    """What `make demo` runs: every default runtime against the committed goldens."""
    result = harness_cli("run", "--suite", "demo", "--report-dir", tmp_path / "rep")
    assert result.code == 0, result.out
    assert result.out.count("PASS") == 13  # 6 runtimes x (reference, golden) + torch-fp32 golden


def test_a_named_stack_has_goldens_of_its_own(
    recorded: tuple[Path, GoldenStore], harness_cli: Callable[..., object], tmp_path: Path
) -> None:
    """A run through [stacks.opencv-service] is never judged by the reference stack's goldens: without its own it
    names the command that records them; with them it passes, and the report names the stack."""
    suite, store = recorded
    missing = harness_cli("run", "--suite", suite, "--stack", "opencv-service", *RUNTIMES, "--limit", "32")
    assert missing.code == 2 and "no goldens for runtimes torch-fp32, ort-fp32" in missing.err
    hint = f"harness golden update --suite {suite.resolve()} --stack opencv-service --runtime torch-fp32 --runtime ort-fp32"
    assert hint in missing.err
    before = _snapshot(store.root / "torch-fp32")
    assert harness_cli(*hint.split()[1:]).code == 0
    assert _snapshot(store.root / "torch-fp32") == before  # the reference stack's goldens are untouched
    assert (store.root / "stacks" / "opencv-service" / "ort-fp32" / "golden.json").is_file()
    ran = harness_cli("run", "--suite", suite, "--stack", "opencv-service", *RUNTIMES, "--limit", "32", "--report-dir", tmp_path / "r")
    assert ran.code == 0, ran.out + ran.err
    assert "opencv-service stack" in ran.out
    assert "through the <code>opencv-service</code> stack" in (tmp_path / "r" / "report.html").read_text()


def test_a_golden_written_twice_is_the_same_bytes(tmp_path: Path) -> None:
    """A re-recorded golden whose arrays did not change is byte-identical (no timestamps in its npz), so
    `golden update` shows no change in git."""
    import time

    from harness.spec.suite import load_suite

    suite = load_suite("demo")
    golden = GoldenStore(suite.golden_dir, suite.command_name).load("ort-fp32")
    first = GoldenStore(tmp_path / "a", suite.command_name).write(golden) / "outputs.npz"
    time.sleep(1.1)  # `ZipFile.writestr` with a bare name would stamp the current second into each member
    second = GoldenStore(tmp_path / "b", suite.command_name).write(golden) / "outputs.npz"
    assert first.read_bytes() == second.read_bytes()
    assert GoldenStore(tmp_path / "a", suite.command_name).load("ort-fp32").predictions.tobytes() == golden.predictions.tobytes()
