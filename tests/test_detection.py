"""Detection: the COCO evaluator against a hand-computed mAP and against a second maintained evaluator,
each post-processing variant on constructed outputs with a known answer, the functional-interpolate
model variant, box agreement, and the bundled detection suite end to end (goldens, matrix)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from exporters.cache import ArtifactCache
from exporters.onnx_export import export_onnx
from exporters.rewrites import MODEL_VARIANTS, patch_torch, rewrite_onnx
from harness.analysis.matrix import run_matrix
from harness.data.stack import Geometry
from harness.judge.golden import GoldenStore
from harness.run.prepared import SuiteRun
from harness.spec.suite import Suite, load_suite
from harness.tasks import TaskSpec, make_task
from harness.tasks.boxes import locations
from harness.tasks.detection import DetectionTask, coco_evaluate
from tests.conftest import CliResult

NAN = np.nan
CANVAS = (32, 32)  # strides 8, 16, 32: 16 + 4 + 1 locations


def _targets(*boxes: tuple[float, float, float, float, int]) -> np.ndarray:
    rows = np.full((1, 128, 5), NAN)
    rows[0, : len(boxes)] = boxes
    return rows


def _predictions(*detections: tuple[float, float, float, float, float, int]) -> np.ndarray:
    rows = np.full((1, 100, 6), NAN)
    rows[0, : len(detections)] = detections
    return rows


def test_coco_map_matches_a_hand_computed_case() -> None:
    """Two objects; a perfect detection (0.9), a false positive (0.8), the second object missed: precision 1 up to
    recall 0.5 and nothing after, so AP = 51 of the 101 recall points = 0.50495 at every IoU threshold."""
    targets = _targets((10, 10, 50, 50, 0), (60, 60, 90, 90, 0))
    predictions = _predictions((10, 10, 50, 50, 0.9, 0), (100, 100, 120, 120, 0.8, 0))
    result = coco_evaluate(predictions, targets)
    assert result["AP"] == pytest.approx(51 / 101) and result["AP50"] == pytest.approx(51 / 101)
    assert result["per_class"] == {0: pytest.approx(51 / 101)} and result["objects"] == {0: 2}
    perfect = coco_evaluate(_predictions((10, 10, 50, 50, 0.9, 0), (60, 60, 90, 90, 0.7, 0)), targets)
    assert perfect["AP"] == pytest.approx(1.0)


def test_pycocotools_and_faster_coco_eval_agree_on_the_demo() -> None:
    suite = load_suite("detect")
    golden = GoldenStore(suite.golden_dir, suite.name).load("ort-fp32")
    run = SuiteRun(suite, ArtifactCache(Path("/nonexistent")))  # targets only: nothing is built
    index = {s.id: s for s in run.samples}
    targets = np.stack([index[i].target for i in golden.ids])
    first, second = coco_evaluate(golden.predictions, targets, "pycocotools"), coco_evaluate(golden.predictions, targets)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert first[name] == pytest.approx(second[name], abs=1e-4), name
    assert 0.3 < first["AP"] < 1.0  # high enough that a 1-point drop is measurable


def _raw(entries: dict[int, tuple[int, float, tuple[float, float, float, float]]]) -> dict[str, np.ndarray]:
    """Outputs for one image: location -> (class, probability, box in tensor pixels), every other location silent."""
    centres, strides = locations(CANVAS, (8, 16, 32))
    scores = np.full((1, len(centres), 3), -20.0)
    deltas = np.zeros((1, len(centres), 4))
    for location, (label, probability, (x1, y1, x2, y2)) in entries.items():
        scores[0, location, label] = np.log(probability / (1 - probability))
        cx, cy = centres[location]
        deltas[0, location] = np.log(np.array([cx - x1, cy - y1, x2 - cx, y2 - cy]) / strides[location])
    return {"scores": scores.astype(np.float32), "boxes": deltas.astype(np.float32)}


# Two boxes of class 0 overlapping at IoU 0.6, and a class-1 box overlapping the best one at IoU 0.70.
RAW = _raw({5: (0, 0.9, (4.0, 4.0, 20.0, 20.0)), 6: (0, 0.8, (8.0, 4.0, 24.0, 20.0)), 0: (1, 0.7, (2.0, 2.0, 19.0, 19.0))})
GEOMETRY = [Geometry((64, 64), CANVAS, scale=(0.5, 0.5))]  # the tensor is the source at half size


def _detect(**flags: object) -> np.ndarray:
    task = make_task(TaskSpec("detection", ("scores", "boxes"), {"strides": [8, 16, 32]} | flags))
    rows = task.predictions(RAW, GEOMETRY)[0]
    return rows[~np.isnan(rows[:, 0])]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({}, [(8, 8, 40, 40, 0.9, 0), (4, 4, 38, 38, 0.7, 1)]),  # per-class NMS drops the 0.8 box; source pixels
        ({"nms_iou": 0.7}, [(8, 8, 40, 40, 0.9, 0), (16, 8, 48, 40, 0.8, 0), (4, 4, 38, 38, 0.7, 1)]),
        ({"class_agnostic": True}, [(8, 8, 40, 40, 0.9, 0)]),  # the class-1 box overlaps the best one too much
        ({"nms": "opencv"}, [(8, 8, 40, 40, 0.9, 0), (4, 4, 38, 38, 0.7, 1)]),
        ({"nms": "onnx-ort"}, [(8, 8, 40, 40, 0.9, 0), (4, 4, 38, 38, 0.7, 1)]),
        ({"nms": "onnx-openvino"}, [(8, 8, 40, 40, 0.9, 0), (4, 4, 38, 38, 0.7, 1)]),
        ({"nms": "onnx-ort", "class_agnostic": True}, [(8, 8, 40, 40, 0.9, 0)]),
        ({"score_threshold": 0.75}, [(8, 8, 40, 40, 0.9, 0)]),
        ({"max_detections": 1}, [(8, 8, 40, 40, 0.9, 0)]),
        ({"pre_nms_top_k": 1}, [(8, 8, 40, 40, 0.9, 0)]),
        ({"plus_one": True}, [(8, 8, 42, 42, 0.9, 0), (4, 4, 40, 40, 0.7, 1)]),  # +1 tensor px = +2 source px
    ],
    ids=[
        "reference",
        "nms-iou-0.7",
        "class-agnostic",
        "opencv-nms",
        "onnx-nms-ort",
        "onnx-nms-openvino",
        "onnx-nms-ort-class-agnostic",
        "score-threshold",
        "max-detections",
        "top-k",
        "plus-one",
    ],
)
def test_post_processing_variants_on_constructed_outputs(flags: dict[str, object], expected: list[tuple[float, ...]]) -> None:
    np.testing.assert_allclose(_detect(**flags), np.array(expected), atol=1e-4)


def test_rounding_and_clamped_decoding() -> None:
    raw = _raw({5: (0, 0.9, (4.3, 4.6, 20.2, 19.7))})
    task = make_task(TaskSpec("detection", ("scores", "boxes"), {"strides": [8, 16, 32], "round_boxes": True}))
    rows = task.predictions(raw, [Geometry(CANVAS, CANVAS)])[0]
    assert rows[0, :4].tolist() == [4.0, 5.0, 20.0, 20.0]
    far = {"scores": raw["scores"], "boxes": np.full_like(raw["boxes"], 5.0)}
    wide = [Geometry((5000, 5000), CANVAS)]  # nothing clipped
    clamped = make_task(TaskSpec("detection", ("scores", "boxes"), {"strides": [8, 16, 32], "clamp": 1.0})).predictions(far, wide)
    plain = make_task(TaskSpec("detection", ("scores", "boxes"), {"strides": [8, 16, 32]})).predictions(far, wide)
    cx = locations(CANVAS, (8, 16, 32))[0][5, 0]
    assert clamped[0, 0, 2] == pytest.approx(cx + np.e * 8) and plain[0, 0, 2] == pytest.approx(cx + np.exp(5.0) * 8)


def test_box_agreement_counts_missing_extra_and_lost_true_positives() -> None:
    task = DetectionTask(("scores", "boxes"))
    targets = np.concatenate([_targets((10, 10, 50, 50, 0)), _targets((10, 10, 50, 50, 1))])
    base = np.concatenate([_predictions((10, 10, 50, 50, 0.9, 0)), _predictions((10, 10, 50, 50, 0.9, 1))])
    cand = np.concatenate([_predictions((11, 10, 50, 50, 0.8, 0)), _predictions((10, 10, 50, 50, 0.9, 2))])

    class Side:
        def __init__(self, predictions: np.ndarray) -> None:
            self.predictions, self.outputs = predictions, {}

    agreement = task.agree(["same", "relabelled"], targets, Side(cand), Side(base))
    assert agreement.flips == ["relabelled"] and agreement.negative_flips == ["relabelled"] and agreement.positive_flips == []
    assert agreement.details["missing_boxes"] == 1 and agreement.details["extra_boxes"] == 1
    assert agreement.details["mean_matched_iou"] == pytest.approx(39 / 40) and agreement.details["mean_score_delta"] == pytest.approx(0.1)
    assert agreement.agreement == 0.5


class Pyramid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] + nn.functional.interpolate(self.conv(x)[:, :1], scale_factor=2.0, mode="nearest")


def test_upsample_variant_reroutes_functional_interpolate(tmp_path: Path) -> None:
    model = Pyramid().eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    export_onnx(model, x, tmp_path / "m.onnx", "x", ("y",), 18, {})
    patched = copy.deepcopy(model)
    assert patch_torch(patched, MODEL_VARIANTS["upsample-linear"]) == ["Pyramid.forward: F.interpolate(mode='nearest')"]
    rewrite_onnx(tmp_path / "m.onnx", tmp_path / "r.onnx", MODEL_VARIANTS["upsample-linear"])
    with torch.inference_mode():
        bilinear = patched(torch.from_numpy(x)).numpy()
        nearest = model(torch.from_numpy(x)).numpy()
        expected = x[:, :1] + nn.functional.interpolate(model.conv(torch.from_numpy(x))[:, :1], scale_factor=2.0, mode="bilinear").numpy()
        half = copy.deepcopy(patched).double()(torch.from_numpy(x).double()).float().numpy()  # hooks survive copies and casts
    np.testing.assert_allclose(bilinear, expected, atol=1e-6)
    np.testing.assert_allclose(half, expected, atol=1e-5)
    assert not np.allclose(bilinear, nearest)
    np.testing.assert_allclose(ort.InferenceSession(str(tmp_path / "r.onnx")).run(None, {"x": x})[0], bilinear, atol=1e-5)
    assert nn.functional.interpolate.__name__ == "interpolate" and nn.functional.interpolate.__module__ == "torch.nn.functional"


def test_detection_suite_against_its_goldens(harness_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    result = harness_cli(
        "run", "--suite", "detect", "--runtime", "ort-fp32", "--runtime", "ov-fp16", "--limit", "40", "--report-dir", tmp_path
    )
    assert result.code == 0, result.out + result.err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["task"] == "detection" and report["metric_name"] == "mAP"
    ort_vs_torch = next(r for r in report["results"] if r["runtime"] == "ort-fp32")["comparisons"][0]
    assert ort_vs_torch["mean_matched_iou"] > 0.999 and {c["name"] for c in ort_vs_torch["checks"]} >= {"mean_matched_iou", "flips"}
    against_golden = [c for r in report["results"] for c in r["comparisons"] if c["against"] == "golden"]
    assert len(against_golden) == 2 and all(c["attribution"]["first_changed_stage"] is None for c in against_golden)


@pytest.fixture(scope="module")
def detect_suite() -> Suite:
    return load_suite("detect")


def test_detection_matrix_on_a_subset(detect_suite: Suite, cache: ArtifactCache) -> None:
    run = SuiteRun(detect_suite, cache, limit=16)
    report = run_matrix(detect_suite, ["order", "model", "postprocess"], ["torch-fp32"], run, 16)
    variants = {(r.axis, r.variant) for r in report.rows}
    assert {("order", "resize_mode=letterbox"), ("order", "resize_mode=direct"), ("postprocess", "legacy-plus-one")} <= variants
    assert ("model", "upsample-linear") in variants  # the FPN's functional nearest interpolate, patched and rewritten
    combined = next(r for r in report.rows if r.axis == "combined")
    assert combined.comparison.metric_delta <= 0 and "upsample-linear" in combined.variant


def test_html_report_draws_the_box_sets_of_flipped_images(harness_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    harness_cli("run", "--suite", "detect", "--runtime", "ort-int8", "--limit", "40", "--no-golden", "--report-dir", tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    flips = [len(c["flips"]) for r in report["results"] for c in r["comparisons"]]  # how many depends on this CPU's int8 kernels
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/jpeg;base64,") == sum(min(n, 12) for n in flips)
    assert page.count(" detections</figcaption>") == sum(min(n, 12) for n in flips)


def test_upsample_variant_of_another_mode_is_not_applicable() -> None:
    assert patch_torch(copy.deepcopy(Pyramid()), MODEL_VARIANTS["upsample-nearest"]) == []  # Pyramid only upsamples nearest


def test_the_cycle_collector_is_paused_during_evaluations_and_restored_after_the_last() -> None:
    """Overlapping evaluations (threads) leave the collector as it was before the first began."""
    import gc

    from harness.tasks.detection import _collector_paused

    assert gc.isenabled()
    with _collector_paused():
        assert not gc.isenabled()
        with _collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer evaluation still runs
    assert gc.isenabled()
    gc.disable()
    try:
        with _collector_paused():
            pass
        assert not gc.isenabled()  # off before: left off
    finally:
        gc.enable()
