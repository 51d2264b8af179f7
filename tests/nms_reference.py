"""The real NMS implementations that run here, called as a deployment calls them, for `tests/test_nms.py` to
hold the catalogue's emulations (`harness.tasks.nms`) against: kept candidate indices, best first."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable

import numpy as np


def _best_first(kept: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return kept[np.argsort(-scores.astype(np.float32)[kept], kind="stable")]


def torchvision_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float, score_threshold: float) -> np.ndarray:
    """A torchvision detection model's filter (`scores > threshold`), then `batched_nms`."""
    import torch
    from torchvision.ops import batched_nms

    s = torch.from_numpy(scores)
    index = torch.nonzero(s > score_threshold).ravel()
    keep = batched_nms(torch.from_numpy(boxes)[index], s[index], torch.from_numpy(labels)[index], iou)
    return index[keep].numpy()


@functools.cache
def _onnx_nms(backend: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """ONNX `NonMaxSuppression` (opset 13) as a one-node graph, compiled by ONNX Runtime or OpenVINO."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_per_class", "iou", "threshold"], ["selected"], center_point_box=0)],
        "nms",
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, "k", 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, "c", "k"]),
            helper.make_tensor_value_info("max_per_class", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("threshold", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, ["s", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if backend == "ort":
        import onnxruntime

        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)[0]
    import openvino as ov

    from runtimes.openvino import compile_model

    core = ov.Core()
    compiled = compile_model(core, core.read_model(io.BytesIO(model.SerializeToString())), "CPU")
    return lambda feeds: np.asarray(compiled(feeds)[compiled.outputs[0]])


def onnx_nms(backend: str) -> Callable[..., np.ndarray]:
    """Per-class `NonMaxSuppression` in ONNX Runtime ("ort") or OpenVINO ("openvino"): each candidate scores in its
    own class only; the selected (class, box) rows, class by class, then sorted by score."""

    def run(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float, score_threshold: float) -> np.ndarray:
        if not len(boxes):
            return np.zeros(0, dtype=np.int64)
        matrix = np.zeros((1, int(labels.max()) + 1, len(boxes)), dtype=np.float32)
        matrix[0, labels, np.arange(len(boxes))] = scores
        feeds = {
            "boxes": boxes[None].astype(np.float32),
            "scores": matrix,
            "max_per_class": np.array([len(boxes)], dtype=np.int64),
            "iou": np.array([iou], dtype=np.float32),
            "threshold": np.array([score_threshold], dtype=np.float32),
        }
        selected = _onnx_nms(backend)(feeds)
        return _best_first(selected[:, 2], scores)

    return run


def opencv_nms(integer: bool) -> Callable[..., np.ndarray]:
    """`cv2.dnn.NMSBoxesBatched` on x, y, w, h lists of Python floats (or ints, truncated, as a deployment that casts)."""

    def run(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float, score_threshold: float) -> np.ndarray:
        import cv2

        xywh = np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2]].astype(np.float32)
        rects = np.trunc(xywh).astype(int).tolist() if integer else xywh.astype(np.float64).tolist()
        kept = np.array(cv2.dnn.NMSBoxesBatched(rects, scores.tolist(), labels.tolist(), score_threshold, iou), dtype=np.int64).ravel()
        return _best_first(kept, scores)

    return run


REAL = {
    "torchvision": torchvision_nms,
    "onnx-ort": onnx_nms("ort"),
    "onnx-openvino": onnx_nms("openvino"),
    "opencv": opencv_nms(integer=False),
    "opencv-int": opencv_nms(integer=True),
}
