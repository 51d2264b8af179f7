"""NMS inside the exported graph (`[export] nms = "graph"`, `exporters.nms_graph`): the graph holds
NonMaxSuppression, a constructed head's in-graph detections equal the Python NMS of the same decode, and on the
demo detector the in-graph NMS (ONNX Runtime's, OpenVINO's) is compared with the task's Python NMS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import tomllib

from exporters.cache import ArtifactCache
from exporters.nms_graph import GRAPH_OUTPUTS, GraphNms, append_nms
from harness.core.errors import HarnessError
from harness.judge.compare import Baseline, compare, judge
from harness.judge.verdict import Recorded
from harness.run.prepared import SuiteRun
from harness.spec.suite import BUNDLED_DIR, load_suite, suite_from_mapping
from harness.tasks.detection import DetectionTask

LIMIT = 16


def _head_model(path: Path, head: np.ndarray) -> None:
    """A one-node ONNX model whose output `head` is a constant plus 0 x the image (a yolov8-style [1, 4 + C, L] head)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["constant", "nothing"], ["head"]),
        ],
        "head",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("head", TensorProto.FLOAT, list(head.shape))],
        [numpy_helper.from_array(head.astype(np.float32), "constant"), numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_constructed_yolov8_head_in_graph_equals_the_python_nms(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    locations, classes = 200, 3
    centres, sizes = rng.uniform(4, 28, (locations, 2)), rng.uniform(2, 12, (locations, 2))
    scores = rng.uniform(0, 1, (locations, classes)) ** 4  # most under the threshold
    head = np.concatenate([centres, sizes, scores], axis=1).T[None]  # [1, 4 + C, L]
    _head_model(tmp_path / "head.onnx", head)
    nms = GraphNms("yolov8", ("head",), (32, 32), score_threshold=0.1, iou_threshold=0.5, pre_nms_top_k=150, max_detections=20)
    info = append_nms(tmp_path / "head.onnx", tmp_path / "nms.onnx", nms)
    model = onnx.load(str(tmp_path / "nms.onnx"))
    assert "NonMaxSuppression" in {n.op_type for n in model.graph.node} and info["appended_nodes"] > 0
    assert tuple(o.name for o in model.graph.output) == GRAPH_OUTPUTS
    session = onnxruntime.InferenceSession(str(tmp_path / "nms.onnx"), providers=["CPUExecutionProvider"])
    count, boxes, det_scores, labels = session.run(list(GRAPH_OUTPUTS), {"images": np.zeros((1, 3, 32, 32), np.float32)})
    assert count.shape == (1, 1) and boxes.shape == (1, 20, 4) and labels.dtype == np.int32
    n = int(count[0, 0])
    assert (labels[0, n:] == -1).all() and (det_scores[0, n:] == 0).all()

    # the task's Python NMS with ONNX Runtime's rules on the same head: the same detections, in the same order
    task = DetectionTask(("head",), decoder="yolov8", score_threshold=0.1, pre_nms_top_k=150, max_detections=20, nms="onnx-ort")
    python = task._nms(*_decoded(task, head))
    assert n == len(python) > 3
    np.testing.assert_allclose(boxes[0, :n], python[:, :4], atol=1e-5)
    np.testing.assert_allclose(det_scores[0, :n], python[:, 4], atol=1e-6)
    np.testing.assert_array_equal(labels[0, :n], python[:, 5])


def _decoded(task: DetectionTask, head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from harness.tasks.decoders import get_decoder

    dense = get_decoder("yolov8").decode(task, {"head": head.astype(np.float32)}, ("head",), (32, 32))
    return dense.boxes[0].astype(np.float32), dense.scores[0].astype(np.float32)


def test_graph_nms_refuses_what_it_cannot_carry_out() -> None:
    data = tomllib.loads((BUNDLED_DIR / "detect-nms.toml").read_text())
    data["postprocess"]["class_agnostic"] = True
    with pytest.raises(HarnessError, match="class_agnostic has no counterpart in the graph NMS"):
        suite_from_mapping(data, BUNDLED_DIR)
    data["postprocess"].pop("class_agnostic")
    data["export"]["nms"] = "inside"
    with pytest.raises(HarnessError, match=r"\[export\] nms = 'inside'"):
        suite_from_mapping(data, BUNDLED_DIR)


@pytest.fixture(scope="module")
def both(cache: ArtifactCache) -> dict[str, SuiteRun]:
    return {name: SuiteRun(load_suite(name), cache, limit=LIMIT) for name in ("detect", "detect-nms")}


def test_demo_detector_in_graph_nms_against_python_nms(both: dict[str, SuiteRun]) -> None:
    graph_run, python_run = both["detect-nms"], both["detect"]
    artifacts = graph_run.artifacts
    graph = onnx.load(str(artifacts.onnx_path("fp32")), load_external_data=False).graph
    assert "NonMaxSuppression" in {n.op_type for n in graph.node}
    assert artifacts.recipe("int8")[-1].startswith("nms-graph(fcos")
    targets = np.stack([s.target for s in python_run.samples])
    ids = tuple(s.id for s in python_run.samples)
    python = python_run.infer("torch-fp32", 16)
    lines = []
    for runtime in ("torch-fp32", "ort-fp32", "ov-fp32"):
        inference = graph_run.infer(runtime, 16)
        assert set(inference.outputs) == set(GRAPH_OUTPUTS)
        counts = inference.outputs["num_dets"][:, 0]
        assert ((counts >= 0) & (counts <= 100)).all()
        assert (np.sum(~np.isnan(inference.predictions[:, :, 0]), axis=1) <= counts).all()  # `final` keeps the counted rows
        agreement = python_run.task.agree(ids, targets, inference, python)
        lines.append(
            f"{runtime} in-graph vs torch-fp32 Python NMS: agreement {agreement.agreement:.3f}, mAP delta "
            f"{agreement.metric - agreement.metric_baseline:+.5f}, matched IoU {agreement.details['mean_matched_iou']:.5f}"
        )
        # measured here, judged loosely: NMS placed elsewhere moves boundary cases, never most images
        assert agreement.agreement >= 0.75 and agreement.details["mean_matched_iou"] > 0.99, lines[-1]
    print("\n".join(lines))


def test_detection_lists_are_reported_and_judge_nothing(both: dict[str, SuiteRun]) -> None:
    """The `final` decoder's det_boxes/det_scores/det_labels swap rows when scores tie: two detections of one image
    swapped change their element-wise errors, not the detections, so the comparison still passes; num_dets judges."""
    run = both["detect-nms"]
    inference = run.infer("torch-fp32", 16)
    image = int(np.argmax(inference.outputs["num_dets"][:, 0] >= 2))
    assert inference.outputs["num_dets"][image, 0] >= 2
    swapped = {name: value.copy() for name, value in inference.outputs.items()}
    for name in ("det_boxes", "det_scores", "det_labels"):
        swapped[name][image, [0, 1]] = swapped[name][image, [1, 0]]
    ids = tuple(s.id for s in run.samples)
    targets = np.stack([s.target for s in run.samples])
    predictions = inference.predictions.copy()
    predictions[image, [0, 1]] = predictions[image, [1, 0]]
    candidate = Recorded(swapped, predictions)
    comparison = compare("rows-swapped", Baseline.reference("torch-fp32"), ids, targets, candidate, inference, run.task)
    judge(comparison, run.suite.tolerances.for_precision("fp32"))
    assert comparison.reported == ("det_boxes", "det_scores", "det_labels")
    assert comparison.outputs["det_boxes"].max_abs > 0  # reported ...
    assert {c.name for c in comparison.checks} >= {"max_abs[num_dets]", "min_cosine[num_dets]", "metric_delta"}
    assert not any("det_" in c.name for c in comparison.checks) and comparison.passed, comparison.checks  # ... not judged
    assert comparison.describe()["reported_outputs"] == ["det_boxes", "det_scores", "det_labels"]
