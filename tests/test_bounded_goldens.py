"""Bounded goldens: exact raw outputs of a hash-chosen subset, predictions, stage hashes and output magnitudes of
every sample.  A sample changed outside the subset is still detected and attributed; a run identical to its golden
passes; the subset is the same whatever --limit or --shard; a schema-2 golden (every raw output) still loads."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from harness import api
from harness.core.errors import HarnessError
from harness.judge.compare import Comparison
from harness.judge.golden import GoldenStore, golden_store, raw_subset
from harness.judge.verdict import RunReport, judge_run
from harness.run.outputs import Inference, RunOutputs
from harness.spec.suite import GoldenSpec, Suite, load_suite
from harness.tasks.classification import ClassificationTask

TORCH = ["torch-fp32"]


def _bounded(name: str, tmp_path: Path, raw_samples: int) -> Suite:
    """A bundled suite whose goldens live in `tmp_path` and keep the raw outputs of `raw_samples` samples."""
    return dataclasses.replace(load_suite(name), golden_dir=tmp_path / "golden", golden=GoldenSpec(raw_samples=raw_samples))


def _golden_comparison(report: RunReport, runtime: str = "torch-fp32") -> Comparison:
    result = next(r for r in report.results if r.runtime == runtime)
    return next(c for c in result.comparisons if c.against.kind == "golden")


def _changed(measured: RunOutputs, runtime: str, sample: str, change: dict[str, object]) -> RunOutputs:
    """`measured` with one sample's raw outputs of `runtime` replaced (output name -> function of the row)."""
    inference = measured.inferences[runtime]
    row = measured.ids.index(sample)
    outputs = {name: value.copy() for name, value in inference.outputs.items()}
    for name, edit in change.items():
        outputs[name][row] = edit(outputs[name][row])  # type: ignore[operator]
    return dataclasses.replace(measured, inferences=measured.inferences | {runtime: dataclasses.replace(inference, outputs=outputs)})


@pytest.fixture(scope="module")
def detect(tmp_path_factory: pytest.TempPathFactory) -> tuple[Suite, RunReport]:
    """The detection suite with goldens of 6 raw samples, and a run of its first 64 images against them."""
    suite = _bounded("detect", tmp_path_factory.mktemp("detect"), 6)
    api.record_goldens(suite, TORCH)
    return suite, api.check(suite, TORCH, limit=64)


def test_identical_detection_run_passes_against_its_bounded_golden(detect: tuple[Suite, RunReport]) -> None:
    suite, report = detect
    golden = golden_store(suite).load("torch-fp32")
    assert not golden.complete and len(golden.raw) == 6 and golden.outputs["scores"].shape[0] == 6
    assert report.passed, report.summary()
    comparison = _golden_comparison(report)
    measured = report.measured
    assert measured is not None
    kept = len(set(golden.raw) & set(measured.ids))
    assert comparison.details["golden_raw_samples"] == kept and comparison.details["unmeasured_samples"] == 0
    assert comparison.samples == 64 and comparison.attribution is not None
    assert comparison.attribution.message() == "all recorded stages identical for 64 samples"
    assert f"golden of torch-fp32 keeps raw outputs of {kept}/64 samples: numeric checks on those" in "\n".join(report.notes)


def test_changed_detection_sample_outside_the_raw_subset_is_detected_and_attributed(detect: tuple[Suite, RunReport]) -> None:
    """A change of one image's class logits outside the subset fails max abs by its lower bound (the change of the
    largest |logit|) and is blamed on inference; a last-bit change there is named as not measured, not failed."""
    suite, report = detect
    measured = report.measured
    assert measured is not None
    store = golden_store(suite)
    golden = store.load("torch-fp32")
    sample = next(i for i in measured.ids if i not in golden.raw)
    shifted = judge_run(suite, _changed(measured, "torch-fp32", sample, {"scores": lambda row: row + 0.5}), store)
    comparison = _golden_comparison(shifted)
    assert not comparison.passed and "max_abs" in {c.name for c in comparison.checks if not c.passed}
    assert comparison.worst_samples[0][0] == sample and comparison.worst_samples[0][1] >= 0.5 - 1e-6
    attribution = comparison.attribution
    assert attribution is not None and attribution.first == "outputs" and attribution.introduced["outputs"] == 1
    assert attribution.message().startswith("raw outputs differ beyond the fp32 tolerance for 1/64 samples: inference changed")

    last_bit = _changed(measured, "torch-fp32", sample, {"boxes": lambda row: np.nextafter(row, np.float32(np.inf))})
    quiet = _golden_comparison(judge_run(suite, last_bit, store))
    assert quiet.passed and quiet.details["unmeasured_samples"] == 1
    assert quiet.attribution is not None and quiet.attribution.unmeasured == 1 and quiet.attribution.first is None
    assert "raw outputs of 1/64 samples outside the golden's raw subset differ in their bits" in quiet.attribution.message()


def test_classification_against_a_bounded_golden_compares_known_samples(tmp_path: Path) -> None:
    """Classification's agreement reads the scores (top-5, KL): a sample whose outputs the golden did not keep and
    whose bits changed is left out of the comparison, and still blamed by stage attribution."""
    suite = _bounded("demo", tmp_path, 8)
    api.record_goldens(suite, TORCH)
    report = api.check(suite, TORCH, limit=100)
    assert report.passed and _golden_comparison(report).details["uncompared_samples"] == 0
    measured = report.measured
    assert measured is not None
    store = golden_store(suite)
    sample = next(i for i in measured.ids if i not in store.load("torch-fp32").raw)
    changed = _golden_comparison(judge_run(suite, _changed(measured, "torch-fp32", sample, {"logits": lambda row: row * 2}), store))
    assert changed.samples == 99 and changed.details["uncompared_samples"] == 1
    assert changed.attribution is not None and changed.attribution.introduced["outputs"] == 1
    inference = measured.inferences["torch-fp32"]
    narrower = dataclasses.replace(inference, outputs={"logits": inference.outputs["logits"][:, :3]})
    hint = store.update_hint("torch-fp32")
    with pytest.raises(HarnessError, match=r"output logits has shape \(\d+,\) per sample, this run has \(3,\)") as refused:
        store.load("torch-fp32").select(measured.ids, hint).baseline_for(narrower, hint)
    assert hint in (refused.value.fix or "")


def test_raw_subset_is_the_same_under_limit_and_shard(tmp_path: Path) -> None:
    """Membership depends on a sample's id only: each shard and a --limit run compare numerically exactly the
    golden's raw samples they hold, and the shards together hold all of them."""
    suite = _bounded("demo", tmp_path, 12)
    api.record_goldens(suite, TORCH)
    golden = golden_store(suite).load("torch-fp32")
    outputs = {"x": np.zeros((len(golden.ids), 3), dtype=np.float32)}
    reordered = raw_subset(golden.ids[::-1], outputs, GoldenSpec(raw_samples=12))
    assert set(reordered) == set(golden.raw) and len(golden.raw) == 12
    held = 0
    for index in (1, 2, 3):
        report = api.check(suite, TORCH, shard=(index, 3))
        assert report.passed and report.measured is not None
        comparison = _golden_comparison(report)
        assert comparison.details["golden_raw_samples"] == len(set(golden.raw) & set(report.measured.ids))
        held += int(comparison.details["golden_raw_samples"] or 0)
    assert held == 12
    limited = api.check(suite, TORCH, limit=200)
    assert limited.measured is not None
    assert _golden_comparison(limited).details["golden_raw_samples"] == len(set(golden.raw) & set(limited.measured.ids))


def test_a_schema_2_golden_still_loads_and_judges(tmp_path: Path) -> None:
    """Goldens recorded before bounded goldens (a run's result file with every raw output) load as goldens that keep
    every sample's raw outputs: nothing is lost, so nothing needs re-recording."""
    suite = _bounded("demo", tmp_path, 500)
    api.record_goldens(suite, TORCH)
    store = golden_store(suite)
    new = store.load("torch-fp32")
    assert new.complete
    inference = Inference("torch-fp32", new.outputs, new.predictions, 0.0, new.metadata["session"], {})
    input_stages = {k: v for k, v in new.stages.items() if k in ("encoded", "decoded", "tensor")}
    blob = RunOutputs("demo", new.ids, new.labels, input_stages, {"torch-fp32": inference}, {}).to_bytes()
    folder = store.folder("torch-fp32")
    (folder / "outputs.npz").write_bytes(blob)
    meta = json.loads((folder / "golden.json").read_text())
    meta |= {"schema_version": 2, "outputs_sha256": hashlib.sha256(blob).hexdigest()}
    del meta["raw_samples"]
    (folder / "golden.json").write_text(json.dumps(meta))
    old = store.load("torch-fp32")
    assert old.complete and old.stages == new.stages
    np.testing.assert_array_equal(old.magnitudes["logits"], new.magnitudes["logits"])
    report = api.check(suite, TORCH, limit=50)
    assert report.passed and "golden_raw_samples" not in _golden_comparison(report).details


def test_the_evaluator_is_part_of_the_golden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task that names its evaluator has it recorded; a run scored by another says so (without failing)."""
    suite = _bounded("demo", tmp_path, 8)
    monkeypatch.setattr(ClassificationTask, "evaluator", "accuracy 1", raising=False)
    api.record_goldens(suite, TORCH)
    assert GoldenStore(suite.golden_dir, "demo").load("torch-fp32").metadata["evaluator"] == "accuracy 1"
    monkeypatch.setattr(ClassificationTask, "evaluator", "accuracy 2")
    report = api.check(suite, TORCH, limit=20)
    assert report.passed and "golden of torch-fp32 recorded with evaluator: accuracy 1, now accuracy 2" in report.notes
