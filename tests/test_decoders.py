"""Detection decoders (`harness.tasks.decoders`): each one on constructed outputs with a known answer, the
anchor decoder's priors and box coder against torchvision's own, the output contracts, the flag checks, a
plugin's `module:function`, and real exported models (a YOLOv8-style head through the harness's ONNX export
and ONNX Runtime, the bundled YOLOv8-style demo detector; torchvision's Faster R-CNN with its NMS in the graph, TorchScript-exported)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from exporters.cache import ArtifactCache
from exporters.onnx_export import export_onnx
from harness.core.errors import HarnessError
from harness.data.stack import Geometry
from harness.run.prepared import SuiteRun
from harness.spec.models import MODEL_BUILDERS
from harness.spec.suite import load_suite
from harness.tasks import TaskSpec, make_task
from harness.tasks.base import OutputContractError, shapes_of
from harness.tasks.decoders import DECODERS, DecodeFlags, Dense, decode_anchors, generated_priors, get_decoder, register_detection_decoder
from harness.tasks.detection import DetectionTask

CANVAS = (32, 32)
SAME = [Geometry(CANVAS, CANVAS)]  # tensor pixels are source pixels


def _task(names: tuple[str, ...], **flags: object) -> DetectionTask:
    task = make_task(TaskSpec("detection", names, dict(flags)))
    assert isinstance(task, DetectionTask)
    return task


def _rows(task: DetectionTask, outputs: dict[str, np.ndarray], geometry: list[Geometry] = SAME) -> np.ndarray:
    task.check_outputs(shapes_of(outputs), 2)
    rows = task.predictions(outputs, geometry)[0]
    return rows[~np.isnan(rows[:, 0])]


def test_yolov8_head() -> None:
    """[1, 4 + 2, 3]: a class-1 box, a lower class-0 box overlapping it (another class: kept), a silent column."""
    head = np.zeros((1, 6, 3), np.float32)
    head[0, :, 0] = [10, 10, 8, 8, 0.1, 0.9]
    head[0, :, 1] = [11, 10, 8, 8, 0.6, 0.2]
    head[0, :, 2] = [20, 20, 4, 4, 0.01, 0.01]
    rows = _rows(_task(("out",), decoder="yolov8"), {"out": head})  # per class: each lower box suppressed by its class's best
    np.testing.assert_allclose(rows, [[6, 6, 14, 14, 0.9, 1], [7, 6, 15, 14, 0.6, 0]], atol=1e-6)
    best = _rows(_task(("out",), decoder="yolov8", multi_label=False, score_threshold=0.01), {"out": head})
    assert best[:, 5].tolist() == [1, 0]  # each box's best class; the silent column's 0.01 is not over 0.01


def test_yolov5_head_scores_objectness_times_class() -> None:
    head = np.zeros((1, 2, 7), np.float32)
    head[0, 0] = [16, 16, 10, 6, 0.5, 0.9, 0.1]  # 0.45 for class 0
    head[0, 1] = [16, 16, 10, 6, 0.04, 1.0, 1.0]  # 0.04: under the threshold
    rows = _rows(_task(("out",), decoder="yolov5"), {"out": head})
    np.testing.assert_allclose(rows, [[11, 13, 21, 19, 0.45, 0]], atol=1e-6)  # class 1's 0.5 x 0.1 is not over 0.05


def test_generated_priors_are_torchvision_anchor_generator() -> None:
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    flags = DecodeFlags(strides=[8, 16], anchor_sizes=[[16, 20], [32]], anchor_ratios=[0.5, 1.0, 2.0])
    generator = AnchorGenerator(sizes=((16, 20), (32,)), aspect_ratios=((0.5, 1.0, 2.0),) * 2)
    images = ImageList(torch.zeros(1, 3, 48, 32), [(48, 32)])
    features = [torch.zeros(1, 1, 6, 4), torch.zeros(1, 1, 3, 2)]  # strides 8 and 16
    np.testing.assert_allclose(generated_priors(flags, (48, 32)), generator(images, features)[0].numpy())


def test_anchor_box_coder_is_torchvision_box_coder() -> None:
    from torchvision.models.detection._utils import BoxCoder

    rng = np.random.default_rng(0)
    flags = DecodeFlags(strides=[16], anchor_sizes=[[24]], anchor_ratios=[1.0], coder_weights=[10.0, 10.0, 5.0, 5.0], clamp=4.135)
    priors = generated_priors(flags, CANVAS)
    deltas = rng.normal(0, 2, (1, len(priors), 4)).astype(np.float32)
    scores = np.zeros((1, len(priors), 3), np.float32)
    dense = decode_anchors(flags, {"s": scores, "d": deltas}, ("s", "d"), CANVAS)
    expected = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(torch.from_numpy(deltas[0]).double(), torch.from_numpy(priors))
    np.testing.assert_allclose(dense.boxes[0], expected.numpy(), rtol=1e-9)
    variances = DecodeFlags(strides=[16], anchor_sizes=[[24]], anchor_ratios=[1.0], variances=[0.1, 0.2], clamp=4.135)
    np.testing.assert_allclose(decode_anchors(variances, {"s": scores, "d": deltas}, ("s", "d"), CANVAS).boxes, dense.boxes)


def test_anchors_softmax_with_background_and_priors_from_an_output() -> None:
    """SSD-style: normalised cx, cy, w, h priors as an output, softmax over background + 2 classes."""
    priors = np.array([[[0.5, 0.5, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25]]], np.float32)  # [1, 2, 4]
    logits = np.array([[[0.0, 3.0, 0.0], [5.0, 0.0, 0.0]]], np.float32)  # prior 0: class 0 (column 1); prior 1: background
    outputs = {"conf": logits, "loc": np.zeros((1, 2, 4), np.float32), "priors": priors}
    flags = {"priors": "priors", "prior_format": "cxcywh", "priors_normalised": True, "activation": "softmax", "background_class": 0}
    task = _task(("conf", "loc", "priors"), decoder="anchors", variances=[0.1, 0.2], **flags)
    rows = _rows(task, outputs)
    top = np.exp(3.0) / (np.exp(3.0) + 2)
    np.testing.assert_allclose(rows, [[12, 12, 20, 20, top, 0]], atol=1e-5)  # the rest under 0.05


def test_final_detections_padded_with_num_dets_and_labels_offset() -> None:
    """TensorRT's EfficientNMS outputs (num_dets, boxes, scores, classes), and torchvision-style 1-based labels."""
    boxes = np.array([[[1, 2, 10, 12], [3, 3, 9, 9], [0, 0, 0, 0]]], np.float32)
    scores = np.array([[0.3, 0.9, 0.0]], np.float32)
    classes = np.array([[1, 0, 0]], np.int32)
    rows = _rows(
        _task(("num", "boxes", "scores", "classes"), decoder="final"),
        {"num": np.array([[2]]), "boxes": boxes, "scores": scores, "classes": classes},
    )
    np.testing.assert_allclose(rows, [[3, 3, 9, 9, 0.9, 0], [1, 2, 10, 12, 0.3, 1]], atol=1e-6)
    one_based = _task(("boxes", "scores", "labels"), decoder="final", label_offset=1)
    rows = _rows(one_based, {"boxes": boxes, "scores": scores, "labels": classes.astype(np.int64) + 1})
    assert rows[:, 5].tolist() == [0, 1]  # the padding row (score 0) is under the score threshold


def decode_centre_points(flags: DecodeFlags, outputs: Mapping[str, np.ndarray], names: Sequence[str], input_hw: tuple[int, int]) -> Dense:
    """A plugin's decoder: [N, L, 2 + C] centre points with a fixed 8 px box."""
    points = outputs[names[0]]
    return Dense(np.concatenate([points[..., :2] - 4, points[..., :2] + 4], axis=-1), points[..., 2:])


def test_a_plugin_decoder_by_module_and_function() -> None:
    task = _task(("points",), decoder="tests.test_decoders:decode_centre_points")
    rows = task.predictions({"points": np.array([[[10, 10, 0.2, 0.7]]], np.float32)}, SAME)[0]
    np.testing.assert_allclose(rows[0], [6, 6, 14, 14, 0.7, 1])
    with pytest.raises(HarnessError, match=r"tests\.test_decoders:missing"):
        _task(("points",), decoder="tests.test_decoders:missing")


def test_a_registered_plugin_decoder_declares_its_flags() -> None:
    register_detection_decoder("test-points", reads=("strides",))(decode_centre_points)
    try:
        assert _task(("points",), decoder="test-points", strides=[4]).strides == [4]
        with pytest.raises(HarnessError, match="clamp is not read by the detection decoder 'test-points'"):
            _task(("points",), decoder="test-points", clamp=1.0)
        with pytest.raises(ValueError, match="reads unknown flags"):
            register_detection_decoder("test-bad", reads=("stride",))(decode_centre_points)
    finally:
        DECODERS.pop("test-points")


@pytest.mark.parametrize(
    ("names", "flags", "shapes", "message"),
    [
        (("out",), {"decoder": "yolov8"}, {"out": (None, 5, 8400)}, r"output 'out' is \[N, 5, 8400\]: .*\[N, 4 \+ C, L\] with C >= 2"),
        (("out",), {"decoder": "yolov5"}, {"out": (None, 100, 6)}, r"\[N, L, 5 \+ C\] with C >= 2"),
        (("s", "b"), {}, {"s": (None, 10, 2), "b": (None, 12, 4)}, "other numbers of boxes"),
        (
            ("s", "b"),
            {"decoder": "anchors", "anchor_sizes": [8, 16, 32], "background_class": 0},
            {"s": (None, 9, 2), "b": (None, 9, 4)},
            r"C >= 2 \+ 1 background",
        ),
        (("b", "s"), {"decoder": "final"}, {"b": (None, 10, 4), "s": (None, 10)}, "reads boxes, scores, labels"),
        (("b", "s", "l"), {"decoder": "final"}, {"b": (None, 10, 4), "s": (None, 10), "l": (None, 9)}, "other numbers of boxes"),
        (("b", "s", "l"), {"decoder": "final"}, {"b": (None, 4), "s": (None, 10), "l": (None, 10)}, r"boxes \[N, K, 4\]"),
    ],
)
def test_output_contracts(
    names: tuple[str, ...], flags: dict[str, object], shapes: dict[str, tuple[int | None, ...]], message: str
) -> None:
    with pytest.raises(OutputContractError, match=message) as info:
        _task(names, **flags).check_outputs(shapes, 2)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"decoder": "yolov8", "strides": [8]}, "strides is not read by the detection decoder 'yolov8'"),
        ({"decoder": "final", "nms": "opencv"}, "nms is not read by the detection decoder 'final'"),
        ({"decoder": "final", "plus_one": True}, "plus_one is not read"),
        ({"nms": "tensorrt"}, "nms = 'tensorrt' is not an NMS implementation"),
        ({"decoder": "detr"}, "decoder = 'detr' is not a detection decoder"),
        ({"activation": "relu"}, "activation = 'relu'"),
    ],
)
def test_flag_checks(flags: dict[str, object], message: str) -> None:
    with pytest.raises(HarnessError, match=message):
        _task(("s", "b"), **flags)


def test_anchor_flag_checks() -> None:
    task = _task(("s", "b"), decoder="anchors", anchor_sizes=[8, 16])
    with pytest.raises(HarnessError, match="anchor_sizes has 2 levels, strides 3"):
        task.check_outputs({"s": (None, 9, 2), "b": (None, 9, 4)}, 2)


def test_plus_one_sets_the_split_flags_and_variants_follow_the_decoder() -> None:
    task = _task(("s", "b"), plus_one=True)
    assert task.decode_plus_one and task.area_plus_one and task.clip_minus_one
    final = _task(("b", "s", "l"), decoder="final").applicable_variants()
    assert set(final) == {"integer-boxes", "clip-minus-one", "score-threshold-0.3", "max-detections-10"}
    assert "clamped-decode" not in _task(("o",), decoder="yolov8").applicable_variants()
    assert {"trt-efficient-nms", "legacy-plus-one", "clamped-decode"} <= set(_task(("s", "b")).applicable_variants())


def test_clip_minus_one_and_decode_plus_one() -> None:
    head = np.zeros((1, 6, 1), np.float32)
    head[0, :, 0] = [28, 16, 8, 8, 0.9, 0.0]  # x2 = 32: the image's edge
    assert _rows(_task(("o",), decoder="yolov8"), {"o": head})[0, :4].tolist() == [24, 12, 32, 20]
    assert _rows(_task(("o",), decoder="yolov8", clip_minus_one=True), {"o": head})[0, :4].tolist() == [24, 12, 31, 20]
    assert _rows(_task(("o",), decoder="yolov8", decode_plus_one=True), {"o": head})[0, :4].tolist() == [24, 12, 32, 21]


class TinyYolo(nn.Module):
    """A YOLOv8-style head on a stride-8 grid: [N, 4 + 2, L], centres in input pixels, sigmoid class scores."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x)
        rows, cols = f.shape[2], f.shape[3]
        ys = (torch.arange(rows, dtype=x.dtype)[:, None].expand(rows, cols) + 0.5) * 8
        xs = (torch.arange(cols, dtype=x.dtype)[None, :].expand(rows, cols) + 0.5) * 8
        cx, cy = xs + 4 * torch.tanh(f[:, 0]), ys + 4 * torch.tanh(f[:, 1])
        size = 8 * torch.exp(torch.tanh(f[:, 2:4]))
        head = torch.cat([cx[:, None], cy[:, None], size, torch.sigmoid(4 * f[:, 4:])], dim=1)
        return head.flatten(2)


def test_yolov8_decoder_on_a_real_exported_head(tmp_path: Path) -> None:
    model = TinyYolo().eval()
    x = np.random.default_rng(1).uniform(-2, 2, (2, 3, 32, 32)).astype(np.float32)
    export_onnx(model, x, tmp_path / "yolo.onnx", "images", ("out",), 18, {})
    session = ort.InferenceSession(str(tmp_path / "yolo.onnx"), providers=["CPUExecutionProvider"])
    exported = {"out": session.run(None, {"images": x})[0]}
    with torch.inference_mode():
        eager = {"out": model(torch.from_numpy(x)).numpy()}
    task = _task(("out",), decoder="yolov8", score_threshold=0.3)
    task.check_outputs(shapes_of(exported), 2)
    geometry = [Geometry((64, 64), CANVAS, scale=(0.5, 0.5))] * 2
    mine, theirs = task.predictions(exported, geometry), task.predictions(eager, geometry)
    assert np.isfinite(mine[:, :, 0]).sum() >= 4
    np.testing.assert_allclose(mine, theirs, atol=1e-3)


class PaddedDetections(nn.Module):
    """torchvision's Faster R-CNN (NMS in the graph) for batch 1, detections padded to K = 20 (score 0 rows)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

        torch.manual_seed(0)
        self.model = fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64, box_detections_per_img=20, box_score_thresh=0.0
        ).eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        found = self.model([x[0]])[0]
        pad = 20 - found["scores"].shape[0]
        boxes = nn.functional.pad(found["boxes"], (0, 0, 0, pad))
        return boxes[None], nn.functional.pad(found["scores"], (0, pad))[None], nn.functional.pad(found["labels"], (0, pad))[None]


def test_final_decoder_on_torchvision_faster_rcnn_exported_by_torchscript(tmp_path: Path) -> None:
    model = PaddedDetections().eval()
    x = np.random.default_rng(2).uniform(0, 1, (1, 3, 64, 64)).astype(np.float32)
    export_onnx(model, x, tmp_path / "frcnn.onnx", "images", ("boxes", "scores", "labels"), 17, {}, exporter="torchscript")
    session = ort.InferenceSession(str(tmp_path / "frcnn.onnx"), providers=["CPUExecutionProvider"])
    exported = dict(zip(("boxes", "scores", "labels"), session.run(None, {"images": x}), strict=True))
    task = _task(("boxes", "scores", "labels"), decoder="final", label_offset=1, score_threshold=0.0)
    task.check_outputs(shapes_of(exported), 2)
    rows = task.predictions(exported, [Geometry((64, 64), (64, 64))])[0]
    with torch.inference_mode():
        found = model.model([torch.from_numpy(x[0])])[0]
    real = rows[~np.isnan(rows[:, 0])]
    assert len(real) == int((found["scores"] > 0).sum()) > 0
    np.testing.assert_allclose(real[:, 4], np.sort(found["scores"].numpy())[::-1][: len(real)], atol=1e-4)
    assert set(real[:, 5].tolist()) <= {0.0, 1.0}  # labels 1, 2 of 3 classes (0: background), offset to 0, 1


def test_demo_yolo_suite_decodes_its_exported_head_through_yolov8(cache: ArtifactCache) -> None:
    """The bundled YOLOv8-style demo (`detect-yolo`): the registered builder, the head's output contract, the
    training view (`dense`) equal to what the `yolov8` decoder reads back from the exported output, and ONNX
    Runtime's detections equal to PyTorch's on 8 images."""
    from harness.demo.models import DemoYolo

    assert MODEL_BUILDERS["demo-yolo"] == "harness.demo.models:build_demo_yolo"
    suite = load_suite("detect-yolo")
    run = SuiteRun(suite, cache, limit=8)
    assert isinstance(run.task, DetectionTask) and run.task.decoder == "yolov8"
    model = suite.model.build()
    assert isinstance(model, DemoYolo)
    x = torch.from_numpy(run.inputs.tensors)
    with torch.inference_mode():
        (logits, boxes), eager = model.dense(x), {"output0": model(x).numpy()}
    exported = run.infer("ort-fp32", 8)
    head = exported.outputs["output0"]
    assert head.shape == (8, 4 + 6, boxes.shape[1])  # [N, 4 + C, L], as an ultralytics YOLOv8 file
    dense = get_decoder("yolov8").decode(run.task, exported.outputs, ("output0",), suite.stack.input_hw)
    np.testing.assert_allclose(dense.boxes, boxes.numpy(), atol=1e-3)
    np.testing.assert_allclose(dense.scores, torch.sigmoid(logits).numpy(), atol=1e-5)
    expected = run.task.predictions(eager, run.inputs.geometry)
    assert np.isfinite(expected[:, :, 0]).sum() >= 8  # a trained head: detections on these images
    np.testing.assert_allclose(exported.predictions, expected, atol=1e-3)
