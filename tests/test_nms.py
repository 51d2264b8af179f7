"""The NMS catalogue (`harness.tasks.nms`): every implementation's boundary rules on constructed cases with a
known answer, held against the real implementation where it runs here (torchvision, ONNX Runtime, OpenVINO,
OpenCV); TensorRT's rules are emulated from its documentation and source and tested on the constructed cases
only.  Random boxes whose IoU threshold is one of their own IoUs (as each implementation computes it) check
the emulations beyond the constructed cases."""

from __future__ import annotations

import numpy as np
import pytest

from harness.tasks.nms import NMS
from tests.nms_reference import REAL

THIRD = float(np.float32(1 / 3))  # the IoU of [0, 0, 2, 1] and [1, 0, 3, 1] in float32, as a double

# name -> (boxes, scores, labels, iou threshold, score threshold, {implementation: kept, best first})
CASES: dict[str, tuple[list[list[float]], list[float], list[int], float, float, dict[str, list[int]]]] = {
    "score-equal-to-threshold": (
        [[0, 0, 10, 10], [20, 20, 30, 30]],
        [0.5, 0.9],
        [0, 0],
        0.5,
        0.5,
        {"gt": [1], "ge": [1, 0]},
    ),
    "iou-equal-to-threshold": ([[0, 0, 10, 10], [0, 0, 10, 5]], [0.9, 0.8], [0, 0], 0.5, 0.0, {"gt": [0, 1], "ge": [0]}),
    "iou-equal-as-float32": ([[0, 0, 2, 1], [1, 0, 3, 1]], [0.9, 0.8], [0, 0], THIRD, 0.0, {"gt": [0, 1], "ge": [0]}),
    # a threshold of 1/3 as a double: torchvision compares the float32 IoU with it as a double (above it), the
    # others hold the threshold as a float32 (equal to the IoU)
    "iou-threshold-a-double": (
        [[0, 0, 2, 1], [1, 0, 3, 1]],
        [0.9, 0.8],
        [0, 0],
        1 / 3,
        0.0,
        {"gt": [0, 1], "ge": [0], "torchvision": [0]},
    ),
    "tied-scores-lower-index-wins": (
        [[1, 0, 11, 10], [0, 0, 10, 10], [2, 0, 12, 10]],
        [0.8, 0.8, 0.8],
        [0, 0, 0],
        0.5,
        0.0,
        {"gt": [0], "ge": [0]},
    ),
    "tied-scores-across-classes": (  # class-major output, then sorted by score: the lower class first
        [[0, 0, 10, 10], [20, 20, 30, 30]],
        [0.8, 0.8],
        [1, 0],
        0.5,
        0.0,
        {"gt": [0, 1], "ge": [0, 1], "onnx-ort": [1, 0], "onnx-openvino": [1, 0]},
    ),
    "flipped-corners": (  # reordered by ONNX Runtime, OpenVINO, TensorRT; a negative area elsewhere
        [[0, 0, 10, 10], [10, 10, 0, 0]],
        [0.9, 0.8],
        [0, 0],
        0.5,
        0.0,
        {"gt": [0], "ge": [0], "torchvision": [0, 1], "opencv": [0, 1], "opencv-int": [0, 1]},
    ),
    "two-empty-boxes": (  # OpenCV's jaccard guard: two empty boxes overlap fully
        [[0, 0, 0, 0], [0, 0, 0, 0]],
        [0.9, 0.8],
        [0, 0],
        0.5,
        0.0,
        {"gt": [0, 1], "ge": [0, 1], "opencv": [0], "opencv-int": [0]},
    ),
    "iou-threshold-zero": (  # `>= 0` suppresses boxes that do not even touch
        [[0, 0, 10, 10], [20, 20, 30, 30]],
        [0.9, 0.8],
        [0, 0],
        0.0,
        0.0,
        {"gt": [0, 1], "ge": [0]},
    ),
    "negative-coordinates-meet-across-classes": (  # the offset tricks shift class 1's box onto class 0's
        [[0, 0, 5, 5], [-6, -6, -1, -1]],
        [0.9, 0.8],
        [0, 1],
        0.5,
        0.0,
        {"gt": [0, 1], "ge": [0, 1], "torchvision": [0], "opencv": [0], "opencv-int": [0]},
    ),
    "integer-rect-truncation": (  # ints: [0, 0, 10, 10] and [0, 0, 10, 5]: IoU 0.5, kept
        [[0.6, 0, 10.6, 10], [0, 0, 10, 5.9]],
        [0.9, 0.8],
        [0, 0],
        0.5,
        0.0,
        {"gt": [0], "ge": [0], "opencv-int": [0, 1]},
    ),
}
RULES = {"torchvision": "gt", "onnx-ort": "gt", "onnx-openvino": "ge", "opencv": "gt", "opencv-int": "gt"}
RULES |= {"trt-efficient": "ge", "trt-inms": "gt", "trt-inms-2000": "gt"}
SCORE_RULES = {"onnx-openvino": "gt", "trt-efficient": "ge"}  # OpenVINO: >= IoU, but > score


def _expected(name: str, answers: dict[str, list[int]], case: str) -> list[int]:
    if name in answers:
        return answers[name]
    rule = SCORE_RULES.get(name, RULES[name]) if case == "score-equal-to-threshold" else RULES[name]
    return answers[rule]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", list(NMS))
def test_boundary_case(name: str, case: str) -> None:
    boxes, scores, labels, iou, score_threshold, answers = CASES[case]
    args = (np.array(boxes, np.float32), np.array(scores, np.float32), np.array(labels), iou, score_threshold)
    expected = _expected(name, answers, case)
    assert NMS[name](*args).tolist() == expected
    if name in REAL:
        assert REAL[name](*args).tolist() == expected, f"the real {NMS[name].checked_against} disagrees"


def _random_case(seed: int, flip: bool, ties: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xy, wh = rng.uniform(0, 40, (60, 2)), rng.uniform(0, 25, (60, 2))
    boxes = np.c_[xy, xy + wh].astype(np.float32)
    if flip:
        flipped = rng.random(60) < 0.2
        boxes[flipped] = boxes[flipped][:, [2, 3, 0, 1]]
    scores = rng.uniform(0.01, 1, 60).astype(np.float32)
    if ties:
        scores = (np.round(scores * 5) / 5).astype(np.float32)
    return boxes, scores, rng.integers(0, 3, 60)


@pytest.mark.parametrize("name", list(REAL))
def test_emulation_equals_the_real_implementation_at_its_own_ious(name: str) -> None:
    """Thresholds set to IoUs the implementation computes between the boxes: the same boxes kept, in the same order."""
    emulation, compared = NMS[name], 0
    for seed in range(12):
        boxes, scores, labels = _random_case(seed, flip=seed % 3 == 0, ties=seed % 2 == 0)
        rects, _ = emulation._geometry(boxes.astype(emulation.precision or boxes.dtype), np.zeros(len(boxes), dtype=np.int64), 0.5)
        for first in range(0, 12, 4):
            ious = emulation.overlap(rects[first + 1 :], rects[first], 0.0)
            for threshold in np.unique(ious[np.isfinite(ious) & (ious > 0) & (ious < 1)])[:3]:
                score_threshold = float(scores[(seed + first) % len(scores)])
                kept = emulation(boxes, scores, labels, float(threshold), score_threshold)
                np.testing.assert_array_equal(kept, REAL[name](boxes, scores, labels, float(threshold), score_threshold))
                compared += 1
    assert compared > 50


def test_torchvision_above_a_thousand_candidates_runs_per_class() -> None:
    """Above 1000 candidates torchvision drops the offset trick: negative coordinates no longer meet across classes."""
    rng = np.random.default_rng(0)
    far = np.c_[rng.uniform(100, 5000, (1200, 2)), np.zeros((1200, 2))]
    far[:, 2:] = far[:, :2] + 3
    boxes = np.r_[[[0, 0, 5, 5], [-6, -6, -1, -1]], far].astype(np.float32)
    scores = np.r_[[0.9, 0.8], rng.uniform(0.1, 0.7, 1200)].astype(np.float32)
    labels = np.r_[[0, 1], rng.integers(0, 2, 1200)]
    kept = NMS["torchvision"](boxes, scores, labels, 0.5, 0.0)
    np.testing.assert_array_equal(kept, REAL["torchvision"](boxes, scores, labels, 0.5, 0.0))
    assert {0, 1} <= set(kept[:2].tolist())


@pytest.mark.parametrize(("name", "cap"), [("trt-efficient", 4096), ("trt-inms", 5000), ("trt-inms-2000", 2000), ("onnx-ort", None)])
def test_candidate_caps(name: str, cap: int | None) -> None:
    """5200 disjoint boxes: TensorRT looks at its top candidates only, in score order across classes."""
    corner = np.arange(5200, dtype=np.float32)[:, None] * 10
    boxes = np.c_[corner, corner, corner + 5, corner + 5]
    scores = np.linspace(0.99, 0.1, 5200, dtype=np.float32)
    kept = NMS[name](boxes, scores, np.arange(5200) % 3, 0.5, 0.0)
    assert kept.tolist() == list(range(cap or 5200))


@pytest.mark.parametrize("name", list(NMS))
def test_limit_is_the_first_of_the_full_run(name: str) -> None:
    boxes, scores, labels = _random_case(3, flip=False, ties=True)
    full = NMS[name](boxes, scores, labels, 0.4, 0.05)
    assert NMS[name](boxes, scores, labels, 0.4, 0.05, limit=5).tolist() == full[:5].tolist()


def test_area_plus_one_widens_every_extent() -> None:
    """[0, 0, 9, 9] and [0, 0, 9, 4]: IoU 36/81 plain, 50/100 with the legacy +1 (suppressed at 0.45)."""
    boxes, scores, labels = np.array([[0, 0, 9, 9], [0, 0, 9, 4]], np.float32), np.array([0.9, 0.8], np.float32), np.zeros(2, int)
    for name in NMS:
        assert NMS[name](boxes, scores, labels, 0.45, 0.0).tolist() == [0, 1], name
        assert NMS[name](boxes, scores, labels, 0.45, 0.0, area_offset=1.0).tolist() == [0], name
