"""Golden diff / update / --force / lock, and stage attribution end to end: a swapped
decoder, one changed weight and a changed post-processing flag are each blamed
on the right stage."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from harness.judge.attribution import attribute
from harness.judge.golden import GoldenStore
from tests.conftest import DEMO_DIR, CliResult

RUNTIME = ("--runtime", "torch-fp32")
Cli = Callable[..., CliResult]
MakeSuite = Callable[..., Path]


@pytest.fixture
def recorded(make_suite: MakeSuite, harness_cli: Cli, tmp_path: Path) -> GoldenStore:
    result = harness_cli("golden", "update", "--suite", make_suite(), *RUNTIME)
    assert result.code == 0, result.err
    return GoldenStore(tmp_path / "golden", "demo")


def _snapshot(store: GoldenStore) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(store.root.rglob("*")) if p.is_file() and p.name != ".lock"}


def _run(harness_cli: Cli, suite: Path, report_dir: Path) -> tuple[CliResult, dict[str, object]]:
    result = harness_cli("run", "--suite", suite, *RUNTIME, "--limit", "100", "--report-dir", report_dir)
    return result, json.loads((report_dir / "report.json").read_text())


def _golden_attribution(report: dict[str, object]) -> dict[str, object]:
    return report["results"][0]["comparisons"][0]["attribution"]  # type: ignore[index]


def test_unchanged_run_attributes_nothing(recorded: GoldenStore, make_suite: MakeSuite, harness_cli: Cli, tmp_path: Path) -> None:
    result, report = _run(harness_cli, make_suite(), tmp_path / "rep")
    assert result.code == 0
    attribution = _golden_attribution(report)
    assert attribution["first_changed_stage"] is None
    assert attribution["message"] == "all recorded stages identical for 100 samples"


def test_swapped_decoder_is_blamed_on_the_decoder(recorded: GoldenStore, make_suite: MakeSuite, harness_cli: Cli, tmp_path: Path) -> None:
    suite = make_suite({'decoder = "pillow"': 'decoder = "pyav"'}, name="ffmpeg.toml")
    result, report = _run(harness_cli, suite, tmp_path / "rep")
    attribution = _golden_attribution(report)
    assert result.code == 1
    assert attribution["first_changed_stage"] == "decoded"
    assert attribution["changed"]["encoded"] == 0 and 0 < attribution["changed"]["decoded"] <= 100
    assert attribution["introduced"]["outputs"] == 0  # inference changed nothing by itself
    count = attribution["changed"]["decoded"]
    assert attribution["message"].startswith(f"decoded pixels differ for {count}/100 samples: the decoder changed")
    assert "inference identical" in attribution["message"]
    assert any(n.startswith("torch-fp32 vs golden: decoded pixels differ") for n in report["notes"])


def test_one_changed_weight_is_blamed_on_inference(recorded: GoldenStore, make_suite: MakeSuite, harness_cli: Cli, tmp_path: Path) -> None:
    weights = load_file(DEMO_DIR / "weights.safetensors")
    weights["head.bias"] = weights["head.bias"].copy()
    weights["head.bias"][0] += 0.25
    save_file(weights, tmp_path / "changed.safetensors")
    suite = make_suite({f'weights = "{DEMO_DIR}/weights.safetensors"': f'weights = "{tmp_path / "changed.safetensors"}"'})
    result, report = _run(harness_cli, suite, tmp_path / "rep")
    attribution = _golden_attribution(report)
    assert result.code == 1
    assert attribution["first_changed_stage"] == "outputs"
    assert attribution["changed"]["tensor"] == 0 and attribution["changed"]["outputs"] == 100
    assert attribution["message"].startswith("raw outputs differ beyond the fp32 tolerance for 100/100 samples: inference changed")
    assert attribution["message"].endswith("the golden's recorded environment is the same")  # so the model or runtime changed
    assert any("model.weights_sha256" in n for n in report["notes"])  # staleness names the new weights


def test_post_processing_flag_is_blamed_on_post_processing(
    recorded: GoldenStore, make_suite: MakeSuite, harness_cli: Cli, tmp_path: Path
) -> None:
    suite = make_suite({"[export]": "[postprocess]\nlabel_offset = 1\n\n[export]"})
    result, report = _run(harness_cli, suite, tmp_path / "rep")
    attribution = _golden_attribution(report)
    assert result.code == 1
    assert attribution["first_changed_stage"] == "predictions"
    assert attribution["changed"]["outputs"] == 0 and attribution["changed"]["predictions"] == 100
    assert attribution["message"] == "predictions differ for 100/100 samples: post-processing changed"


def test_attribution_counts_only_new_changes_per_stage() -> None:
    recorded = {"encoded": ("a", "b", "c"), "decoded": ("a", "b", "c"), "tensor": ("a", "b", "c"), "outputs": ("a", "b", "c")}
    now = {"encoded": ("a", "b", "c"), "decoded": ("x", "b", "c"), "tensor": ("x", "b", "c"), "outputs": ("x", "y", "c")}
    result = attribute(recorded, now, 3)
    assert result.first == "decoded" and result.changed["outputs"] == 2 and result.introduced["outputs"] == 1
    assert result.missing == ("predictions",)
    assert result.message() == (
        "decoded pixels differ for 1/3 samples: the decoder changed; pre-processing identical; inference changed 1 more"
    )


def test_golden_diff_shows_changes_and_writes_nothing(recorded: GoldenStore, make_suite: MakeSuite, harness_cli: Cli) -> None:
    before = _snapshot(recorded)
    suite = make_suite({'resize = "pillow-bilinear"': 'resize = "opencv-nearest"'}, name="nearest.toml")
    result = harness_cli("golden", "diff", "--suite", suite, *RUNTIME)
    assert result.code == 0, result.err
    assert "predictions changed" in result.out and "stages: pre-processed tensors differ" in result.out
    assert "metadata stack.resize: pillow-bilinear -> opencv-nearest" in result.out
    assert _snapshot(recorded) == before


def test_update_refuses_a_new_model_without_force(recorded: GoldenStore, make_suite: MakeSuite, harness_cli: Cli, tmp_path: Path) -> None:
    weights = load_file(DEMO_DIR / "weights.safetensors")
    weights["head.bias"] = weights["head.bias"] + 0.01
    save_file(weights, tmp_path / "retrained.safetensors")
    suite = make_suite({f'weights = "{DEMO_DIR}/weights.safetensors"': f'weights = "{tmp_path / "retrained.safetensors"}"'})
    before = _snapshot(recorded)
    refused = harness_cli("golden", "update", "--suite", suite, *RUNTIME)
    assert refused.code == 2 and "refusing to update goldens: torch-fp32: model.weights_sha256" in refused.err
    assert "--force" in refused.err and "max abs change" in refused.out  # the diff was shown first
    assert _snapshot(recorded) == before
    forced = harness_cli("golden", "update", "--suite", suite, *RUNTIME, "--force")
    assert forced.code == 0, forced.err
    metadata = recorded.load("torch-fp32").metadata
    assert metadata["model"]["weights_sha256"] == hashlib.sha256((tmp_path / "retrained.safetensors").read_bytes()).hexdigest()


def test_update_refuses_while_another_holds_the_lock(recorded: GoldenStore, make_suite: MakeSuite, harness_cli: Cli) -> None:
    before = _snapshot(recorded)
    with recorded.lock():
        result = harness_cli("golden", "update", "--suite", make_suite(), *RUNTIME)
    assert result.code == 2 and "is locked by another golden update" in result.err
    assert _snapshot(recorded) == before
