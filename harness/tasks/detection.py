"""Detection: box decoding + NMS in Python, COCO mAP with pycocotools, box-level agreement.

Raw outputs are per-location class logits (`scores`) and log-distances to the box edges (`boxes`) of
a feature pyramid (`harness.demo.models.DemoDetector`).  Post-processing decodes them around each
location's centre, keeps scores over `score_threshold`, the `pre_nms_top_k` best, runs NMS per
class (torchvision `batched_nms`) or across classes, keeps `max_detections`, and maps the boxes back
to source pixels through each tensor's geometry.  Deployment differences are flags: `clamp` (bound
the log-distances before `exp`), `plus_one` (the legacy `x2 - x1 + 1` width), `round_boxes`
(integer pixels), `class_agnostic`, `nms` (`torchvision`; `opencv`: `cv2.dnn.NMSBoxes`; `onnx-ort` and
`onnx-openvino`: ONNX `NonMaxSuppression` run by ONNX Runtime or OpenVINO, as a deployment with NMS
in its graph runs it).

Predictions are (N, max_detections, 6) arrays, x1 y1 x2 y2 score label, NaN-padded; targets are
(N, MAX_OBJECTS, 7) arrays, x1 y1 x2 y2 label iscrowd area, NaN-padded (an entry's optional `iscrowd` and
`areas` lists, COCO's: a crowd region is ignored by the evaluator, neither found nor missed, and `area`
sorts objects into small, medium and large; without them an object is no crowd and its area is its box's).
Agreement is per image: detections with a score of at least `FLIP_SCORE` matched across the two sides (same
class, IoU >= 0.5); an image with a detection missing or extra is a flip, one that lost a true positive (a
crowd region is none) a negative flip.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from harness.core.hashing import digest
from harness.data.stack import Geometry
from harness.tasks.base import Agreement, ClassDelta, Observed, OutputContractError, Shapes, register_task, require_output, shape_text
from harness.tasks.boxes import decode, iou, locations

MAX_OBJECTS = 128
TARGET_COLUMNS = 7  # x1 y1 x2 y2 label iscrowd area
FLIP_SCORE = 0.3
MATCH_IOU = 0.5
NMS_CHOICES = ("torchvision", "opencv", "onnx-ort", "onnx-openvino")


def valid_rows(rows: np.ndarray) -> np.ndarray:
    """The real rows of one sample's NaN-padded box list."""
    return rows[~np.isnan(rows[:, 0])]


def objects(targets: np.ndarray) -> np.ndarray:
    """One sample's target objects, x1 y1 x2 y2 label, crowd regions left out (nothing to find in them)."""
    rows = valid_rows(targets)
    return rows[rows[:, 5] != 1, :5] if rows.shape[1] > 5 else rows


def confident(detections: np.ndarray) -> np.ndarray:
    """One image's detections (padded or not) with a score of at least FLIP_SCORE: the ones agreement counts."""
    rows = valid_rows(detections)
    return rows[rows[:, 4] >= FLIP_SCORE]


def _match(a: np.ndarray, b: np.ndarray) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matches (i in a, j in b, IoU) of same-class boxes with IoU >= MATCH_IOU, best first."""
    if not len(a) or not len(b):
        return []
    overlaps = iou(a[:, :4], b[:, :4])
    overlaps[a[:, -1][:, None] != b[:, -1][None, :]] = 0.0
    matches, used_a, used_b = [], set(), set()
    for flat in np.argsort(-overlaps, axis=None):
        i, j = divmod(int(flat), overlaps.shape[1])
        if overlaps[i, j] < MATCH_IOU:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            matches.append((i, j, float(overlaps[i, j])))
    return matches


def _found(detections: np.ndarray, truth: np.ndarray) -> set[int]:
    """Indices of the ground-truth boxes a confident detection finds."""
    found = confident(detections)
    return {j for _, j, _ in _match(np.c_[found[:, :4], found[:, 5]], truth)}


@register_task
@dataclass(frozen=True)
class DetectionTask:
    name: ClassVar[str] = "detection"
    agreement_from_predictions: ClassVar[bool] = True  # `agree` reads predictions only: a bounded golden compares it on every sample
    postprocess_keys: ClassVar[dict[str, type]] = {
        "score_threshold": float,
        "nms_iou": float,
        "pre_nms_top_k": int,
        "max_detections": int,
        "class_agnostic": bool,
        "nms": str,
        "clamp": float,
        "plus_one": bool,
        "round_boxes": bool,
        "strides": list,
    }

    # The post-processing noise axis of `harness matrix`: what deployed detectors do differently, one entry each.
    postprocess_variants: ClassVar[dict[str, dict[str, Any]]] = {
        "legacy-plus-one": {"plus_one": True},
        "integer-boxes": {"round_boxes": True},
        "class-agnostic-nms": {"class_agnostic": True},
        "opencv-nms": {"nms": "opencv"},
        "onnx-nms-ort": {"nms": "onnx-ort"},
        "onnx-nms-openvino": {"nms": "onnx-openvino"},
        "nms-iou-0.3": {"nms_iou": 0.3},
        "nms-iou-0.7": {"nms_iou": 0.7},
        "pre-nms-top-50": {"pre_nms_top_k": 50},
        "score-threshold-0.3": {"score_threshold": 0.3},
        "max-detections-10": {"max_detections": 10},
        "clamped-decode": {"clamp": 4.135},  # torchvision's log(1000 / 16)
    }

    output_names: tuple[str, ...]
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    pre_nms_top_k: int = 1000
    max_detections: int = 100
    class_agnostic: bool = False
    nms: str = "torchvision"
    clamp: float = 0.0  # 0: plain exp
    plus_one: bool = False
    round_boxes: bool = False
    strides: list[int] = field(default_factory=lambda: [8, 16, 32])
    metric_name: str = field(default="mAP", init=False)
    _scores: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.nms not in NMS_CHOICES:
            raise ValueError(f"nms '{self.nms}' is not one of {NMS_CHOICES}")

    def check_outputs(self, shapes: Shapes, classes: int) -> None:
        """Dense per-location heads: class logits [N, L, C >= classes] and box log-distances [N, L, 4]."""
        if len(self.output_names) < 2:
            raise OutputContractError(
                f"detection reads two outputs (class logits, box distances); [model] output_names has {list(self.output_names)}",
                "list the scores output, then the boxes output, in [model] output_names",
            )
        scores_name, boxes_name = self.output_names[:2]
        scores = require_output(shapes, scores_name, "the first of [model] output_names")
        boxes = require_output(shapes, boxes_name, "the second of [model] output_names")
        if scores is not None and (len(scores) != 3 or (scores[2] is not None and scores[2] < classes)):
            raise OutputContractError(
                f"output '{scores_name}' is {shape_text(scores)}: detection needs per-location class logits [N, L, C >= {classes}]",
                "put the class-logit output first in [model] output_names",
            )
        if boxes is not None and (len(boxes) != 3 or boxes[2] not in (None, 4)):
            raise OutputContractError(
                f"output '{boxes_name}' is {shape_text(boxes)}: detection needs per-location box distances [N, L, 4]",
                "put the box output second in [model] output_names",
            )
        if scores is not None and boxes is not None and None not in (scores[1], boxes[1]) and scores[1] != boxes[1]:
            raise OutputContractError(
                f"outputs '{scores_name}' {shape_text(scores)} and '{boxes_name}' {shape_text(boxes)} have other location counts",
                "both heads must cover the same locations",
            )

    # -- targets and predictions ---------------------------------------------------------------

    def target(self, entry: dict[str, Any], classes: int) -> np.ndarray:
        boxes, labels = entry.get("boxes"), entry.get("labels")
        if not isinstance(boxes, list) or not isinstance(labels, list) or len(boxes) != len(labels):
            raise ValueError("needs 'boxes' ([x1, y1, x2, y2] each) and as many integer 'labels'")
        if len(boxes) > MAX_OBJECTS:
            raise ValueError(f"has {len(boxes)} boxes, more than {MAX_OBJECTS}")
        crowd, areas = entry.get("iscrowd", [0] * len(boxes)), entry.get("areas", [None] * len(boxes))
        if not isinstance(crowd, list) or not isinstance(areas, list) or not len(crowd) == len(areas) == len(boxes):
            raise ValueError("has 'iscrowd' or 'areas' that are not lists as long as 'boxes'")
        row = np.full((MAX_OBJECTS, TARGET_COLUMNS), np.nan)
        for k, (box, label, flag, area) in enumerate(zip(boxes, labels, crowd, areas, strict=True)):
            if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, int | float) for v in box):
                raise ValueError(f"box {k} is not [x1, y1, x2, y2]")
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < classes:
                raise ValueError(f"label {label!r} of box {k} is not a class index 0..{classes - 1}")
            if not (box[0] <= box[2] and box[1] <= box[3]):
                raise ValueError(f"box {k} {box} has x2 < x1 or y2 < y1")
            if flag not in (0, 1) or not (area is None or (isinstance(area, int | float) and area >= 0)):
                raise ValueError(f"box {k} has iscrowd {flag!r} (0 or 1) or area {area!r} (a number >= 0)")
            row[k] = [*box, label, flag, (box[2] - box[0]) * (box[3] - box[1]) if area is None else area]
        return row

    def predictions(self, outputs: dict[str, np.ndarray], geometry: Sequence[Geometry]) -> np.ndarray:
        scores = 1.0 / (1.0 + np.exp(-outputs[self.output_names[0]].astype(np.float64)))
        deltas = outputs[self.output_names[1]]
        out = np.full((len(scores), self.max_detections, 6), np.nan)
        if not len(scores):
            return out
        centres, strides = locations(geometry[0].tensor_hw, tuple(self.strides))
        boxes = decode(deltas, centres, strides, self.clamp or None)
        if self.plus_one:
            boxes[..., 2:] += 1.0
        for i in range(len(scores)):
            kept = self._nms(boxes[i], scores[i])
            if len(kept):
                kept[:, :4] = geometry[i].to_source(kept[:, :4])
                if self.round_boxes:
                    kept[:, :4] = np.round(kept[:, :4])
                out[i, : len(kept)] = kept
        return out

    def _nms(self, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """(K, 6) detections of one image, best first."""
        location, label = np.nonzero(scores > self.score_threshold)
        confidence = scores[location, label]
        order = np.argsort(-confidence, kind="stable")[: self.pre_nms_top_k]
        location, label, confidence = location[order], label[order], confidence[order]
        candidates = boxes[location]
        if self.nms == "opencv":
            keep = self._nms_opencv(candidates, confidence, label)
        elif self.nms.startswith("onnx-"):
            keep = onnx_nms(
                self.nms.removeprefix("onnx-"), candidates, confidence, np.zeros_like(label) if self.class_agnostic else label, self.nms_iou
            )
        else:
            import torch
            from torchvision.ops import batched_nms, nms

            b, s = torch.from_numpy(candidates), torch.from_numpy(confidence)
            index = nms(b, s, self.nms_iou) if self.class_agnostic else batched_nms(b, s, torch.from_numpy(label), self.nms_iou)
            keep = index.numpy()
        keep = keep[: self.max_detections]
        return np.c_[candidates[keep], confidence[keep], label[keep]]

    def _nms_opencv(self, boxes: np.ndarray, confidence: np.ndarray, label: np.ndarray) -> np.ndarray:
        import cv2

        xywh = np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2]].tolist()
        if self.class_agnostic:
            kept = np.array(cv2.dnn.NMSBoxes(xywh, confidence.tolist(), 0.0, self.nms_iou), dtype=np.int64).ravel()
        else:
            kept = np.array(cv2.dnn.NMSBoxesBatched(xywh, confidence.tolist(), label.tolist(), 0.0, self.nms_iou), dtype=np.int64).ravel()
        return kept[np.argsort(-confidence[kept], kind="stable")]

    # -- metric ----------------------------------------------------------------------------------

    def coco(self, predictions: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """COCO box evaluation (pycocotools): AP@[.5:.95], AP50, AP75, AP small/medium/large, per-class AP."""
        key = digest(predictions) + digest(targets)
        if key not in self._scores:
            self._scores[key] = coco_evaluate(predictions, targets)
        return self._scores[key]

    def metric(self, predictions: np.ndarray, targets: np.ndarray) -> float:
        return float(self.coco(predictions, targets)["AP"])

    # -- agreement -------------------------------------------------------------------------------

    def agree(self, ids: Sequence[str], targets: np.ndarray, candidate: Observed, baseline: Observed) -> Agreement:
        flips, negative, positive, ious, score_deltas = [], [], [], [], []
        missing = extra = 0
        for i, sample_id in enumerate(ids):
            cand, base, truth = candidate.predictions[i], baseline.predictions[i], objects(targets[i])
            cand_confident, base_confident = confident(cand), confident(base)
            matches = _match(np.c_[cand_confident[:, :4], cand_confident[:, 5]], np.c_[base_confident[:, :4], base_confident[:, 5]])
            ious += [m[2] for m in matches]
            score_deltas += [abs(cand_confident[a, 4] - base_confident[b, 4]) for a, b, _ in matches]
            missing += len(base_confident) - len(matches)
            extra += len(cand_confident) - len(matches)
            if len(matches) < max(len(cand_confident), len(base_confident)):
                flips.append(sample_id)
            found, base_found = _found(cand, truth), _found(base, truth)
            if base_found - found:
                negative.append(sample_id)
            if found - base_found:
                positive.append(sample_id)
        mine, theirs = self.coco(candidate.predictions, targets), self.coco(baseline.predictions, targets)
        classes = sorted(set(mine["per_class"]) | set(theirs["per_class"]))
        return Agreement(
            agreement=1.0 - len(flips) / len(ids) if len(ids) else 1.0,
            flips=flips,
            negative_flips=negative,
            positive_flips=positive,
            per_class=[
                ClassDelta(c, mine["objects"].get(c, 0), mine["per_class"].get(c, 0.0), theirs["per_class"].get(c, 0.0)) for c in classes
            ],
            metric=float(mine["AP"]),
            metric_baseline=float(theirs["AP"]),
            details={
                "mean_matched_iou": float(np.mean(ious)) if ious else 1.0,
                "missing_boxes": float(missing),
                "extra_boxes": float(extra),
                "mean_score_delta": float(np.mean(score_deltas)) if score_deltas else 0.0,
                **{f"{k}_delta": float(mine[k] - theirs[k]) for k in ("AP50", "AP75", "APs", "APm", "APl")},
            },
        )


@functools.cache
def _onnx_nms_session(backend: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """ONNX `NonMaxSuppression` (opset 13) as a small graph, compiled once by ONNX Runtime or OpenVINO: NMS run the
    way a deployment that puts it in the graph runs it."""
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

    core = ov.Core()
    compiled = core.compile_model(core.read_model(io.BytesIO(model.SerializeToString())), "CPU")
    return lambda feeds: np.asarray(compiled(feeds)[compiled.outputs[0]])


def onnx_nms(backend: str, boxes: np.ndarray, confidence: np.ndarray, label: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Per-class NMS by ONNX `NonMaxSuppression` in `backend` ("ort" or "openvino"): kept candidate indices, best first."""
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    classes = int(label.max()) + 1
    scores = np.zeros((1, classes, len(boxes)), dtype=np.float32)
    scores[0, label, np.arange(len(boxes))] = confidence  # each candidate scores in its own class only
    feeds = {
        "boxes": boxes[None].astype(np.float32),
        "scores": scores,
        "max_per_class": np.array([len(boxes)], dtype=np.int64),
        "iou": np.array([iou_threshold], dtype=np.float32),
        "threshold": np.array([0.0], dtype=np.float32),
    }
    kept = np.unique(_onnx_nms_session(backend)(feeds)[:, 2])
    return kept[np.argsort(-confidence[kept], kind="stable")]


STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_ground_truth(targets: np.ndarray) -> dict[str, Any]:
    """The targets as a COCO dataset dict (image ids 1..N, category ids label + 1); targets without the iscrowd and
    area columns (x1 y1 x2 y2 label) are no crowds, their areas their boxes'."""
    images, annotations = [], []
    labels = set()
    for i, rows in enumerate(targets):
        images.append({"id": i + 1})
        for x1, y1, x2, y2, label, *coco in valid_rows(rows):
            labels.add(int(label))
            w, h = float(x2 - x1), float(y2 - y1)
            crowd, area = coco if coco else (0, w * h)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label) + 1, "bbox": [float(x1), float(y1), w, h]}
                | {"area": float(area), "iscrowd": int(crowd)}
            )
    return {"images": images, "annotations": annotations, "categories": [{"id": c + 1} for c in sorted(labels)]}


def coco_detections(predictions: np.ndarray) -> list[dict[str, Any]]:
    return [
        {
            "image_id": i + 1,
            "category_id": int(label) + 1,
            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
            "score": float(s),
        }
        for i, rows in enumerate(predictions)
        for x1, y1, x2, y2, s, label in valid_rows(rows)
    ]


def coco_evaluate(predictions: np.ndarray, targets: np.ndarray, evaluator: str = "pycocotools") -> dict[str, Any]:
    """COCO box AP with a maintained evaluator (pycocotools, or faster_coco_eval for the cross-check)."""
    if evaluator == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = coco_ground_truth(targets)
        truth.createIndex()
        detections = coco_detections(predictions)
        if not detections:
            return {name: 0.0 for name in STAT_NAMES} | {"per_class": {}, "objects": {}}
        result = truth.loadRes(detections)
        evaluation = COCOeval(truth, result, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = {name: max(float(v), 0.0) for name, v in zip(STAT_NAMES, evaluation.stats[:6], strict=True)}
    precision = np.asarray(evaluation.eval["precision"])  # (T, R, K, A, M): IoU thresholds, recall, class, area, max dets
    per_class, objects = {}, {}
    for k, category in enumerate(evaluation.params.catIds):
        values = precision[:, :, k, 0, -1]
        per_class[int(category) - 1] = float(values[values > -1].mean()) if (values > -1).any() else 0.0
        objects[int(category) - 1] = len(truth.getAnnIds(catIds=[int(category)]))
    return stats | {"per_class": per_class, "objects": objects}
