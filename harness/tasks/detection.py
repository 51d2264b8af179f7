"""Detection: decoders by output format, NMS as deployments run it, COCO mAP, box-level agreement.

Raw outputs go through a detection decoder (`[postprocess] decoder`, `harness.tasks.decoders`: `fcos` (the
demo detector's per-location logits and log-distances), `yolov8`, `yolov5`, `anchors` (SSD / RetinaNet),
`final` (the model ran its own NMS), or a plugin's).  Dense candidates are scored (`multi_label`: every class
over `score_threshold`, else each box's best class), the `pre_nms_top_k` best kept, suppressed by the NMS
implementation `nms` names (`harness.tasks.nms`: torchvision, ONNX Runtime, OpenVINO, OpenCV, TensorRT, each
with its own boundary rules) per class or across classes (`class_agnostic`), `max_detections` kept; boxes
are mapped back to source pixels through each tensor's geometry and clipped to the image.  The legacy `+1`
is three flags, as deployments differ: `decode_plus_one` (box decoding), `area_plus_one` (widths and areas
in NMS's IoU), `clip_minus_one` (clip to `w - 1`, `h - 1`); `plus_one` sets all three.  `round_boxes`:
integer pixels.

Predictions are (N, max_detections, 6) arrays, x1 y1 x2 y2 score label, NaN-padded; targets are
(N, MAX_OBJECTS, 7) arrays, x1 y1 x2 y2 label iscrowd area, NaN-padded (an entry's optional `iscrowd` and
`areas` lists, COCO's: a crowd region is ignored by the evaluator, neither found nor missed, and `area`
sorts objects into small, medium and large; without them an object is no crowd and its area is its box's).
Agreement is per image: detections with a score of at least `FLIP_SCORE` matched across the two sides (same
class, IoU >= 0.5); an image with a detection missing or extra is a flip, one that lost a true positive (a
crowd region is none) a negative flip.  mAP is computed by
faster-coco-eval (the same numbers as pycocotools, faster), with the ground truth indexed once per target set.
"""

from __future__ import annotations

import contextlib
import gc
import io
import threading
from collections.abc import Iterator, Sequence
from dataclasses import MISSING, dataclass, field, fields
from importlib.metadata import version
from typing import Any, ClassVar

import numpy as np

from harness.core.errors import HarnessError
from harness.core.hashing import digest
from harness.data.stack import Geometry
from harness.tasks.base import Agreement, ClassDelta, Observed, Shapes, register_task
from harness.tasks.boxes import iou
from harness.tasks.decoders import ACTIVATIONS, DECODE_KEYS, DecodeFlags, Final, get_decoder
from harness.tasks.nms import NMS

MAX_OBJECTS = 128
TARGET_COLUMNS = 7  # x1 y1 x2 y2 label iscrowd area
FLIP_SCORE = 0.3
MATCH_IOU = 0.5
EVALUATOR = f"faster-coco-eval {version('faster-coco-eval')}"


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


# The flags every decoder's detections go through, and those only NMS (dense candidates) reads
COMMON_KEYS = ("score_threshold", "max_detections", "round_boxes", "clip_minus_one", "decoder")  # plus_one: where decode_plus_one is read
NMS_KEYS = ("nms_iou", "pre_nms_top_k", "class_agnostic", "nms", "area_plus_one", "multi_label")


def _passing(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(location, label) of an (L, C) mask's true entries in row-major order, read in the mask's own memory
    order (a channels-first head's scores are an (L, C) view of [C, L] memory)."""
    classes = mask.shape[1]
    if mask.flags.c_contiguous or not mask.T.flags.c_contiguous:
        return np.divmod(np.flatnonzero(mask), classes)
    label, location = np.divmod(np.flatnonzero(mask.T), mask.shape[0])
    return np.divmod(np.sort(location * classes + label), classes)


@register_task
@dataclass(frozen=True)
class DetectionTask(DecodeFlags):
    name: ClassVar[str] = "detection"
    agreement_from_predictions: ClassVar[bool] = True  # `agree` reads predictions only: a bounded golden compares it on every sample
    evaluator: ClassVar[str] = EVALUATOR  # recorded by goldens and reports
    postprocess_keys: ClassVar[dict[str, type]] = {
        "decoder": str,
        "score_threshold": float,
        "nms_iou": float,
        "pre_nms_top_k": int,
        "max_detections": int,
        "class_agnostic": bool,
        "multi_label": bool,
        "nms": str,
        "plus_one": bool,
        "area_plus_one": bool,
        "clip_minus_one": bool,
        "round_boxes": bool,
        **DECODE_KEYS,
    }

    # The post-processing noise axis of `harness matrix`: what deployed detectors do differently, one entry each
    # (those whose flags the suite's decoder does not read are left out: `applicable_variants`).
    postprocess_variants: ClassVar[dict[str, dict[str, Any]]] = {
        "legacy-plus-one": {"plus_one": True},
        "decode-plus-one": {"decode_plus_one": True},
        "area-plus-one": {"area_plus_one": True},
        "clip-minus-one": {"clip_minus_one": True},
        "integer-boxes": {"round_boxes": True},
        "class-agnostic-nms": {"class_agnostic": True},
        "best-class-only": {"multi_label": False},
        **{f"{name}-nms": {"nms": name} for name in NMS if name != "torchvision"},
        "nms-iou-0.3": {"nms_iou": 0.3},
        "nms-iou-0.7": {"nms_iou": 0.7},
        "pre-nms-top-50": {"pre_nms_top_k": 50},
        "score-threshold-0.3": {"score_threshold": 0.3},
        "max-detections-10": {"max_detections": 10},
        "clamped-decode": {"clamp": 4.135},  # torchvision's log(1000 / 16)
    }

    output_names: tuple[str, ...]
    decoder: str = "fcos"
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    pre_nms_top_k: int = 1000
    max_detections: int = 100
    class_agnostic: bool = False
    multi_label: bool = True
    nms: str = "torchvision"
    plus_one: bool = False  # the legacy +1 everywhere: decode_plus_one, area_plus_one and clip_minus_one
    area_plus_one: bool = False
    clip_minus_one: bool = False
    round_boxes: bool = False
    metric_name: str = field(default="mAP", init=False)
    _scores: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.nms not in NMS:
            raise HarnessError(f"[postprocess] nms = '{self.nms}' is not an NMS implementation", f"use one of {sorted(NMS)}")
        if self.activation not in ACTIVATIONS:
            raise HarnessError(f"[postprocess] activation = '{self.activation}'", f"use one of {ACTIVATIONS}")
        unread = self._unread(self._given())
        if unread:
            raise HarnessError(
                f"[postprocess] {unread[0]} is not read by the detection decoder '{self.decoder}'",
                f"it reads {sorted(self._reads())}; remove {unread[0]} or set decoder to one that reads it (see harness/tasks/decoders.py)",
            )
        if self.plus_one:
            for key in ("decode_plus_one", "area_plus_one", "clip_minus_one"):
                object.__setattr__(self, key, True)

    def _given(self) -> dict[str, Any]:
        """The flags set to other than their defaults."""
        given = {}
        for f in fields(self):
            if f.init and f.name != "output_names":
                default = f.default_factory() if f.default is MISSING else f.default
                if getattr(self, f.name) != default:
                    given[f.name] = getattr(self, f.name)
        return given

    def _reads(self) -> set[str]:
        decoder = get_decoder(self.decoder)
        reads = set(DECODE_KEYS) if decoder.reads is None else set(decoder.reads)
        return reads | set(COMMON_KEYS) | (set(NMS_KEYS) if decoder.nms else set())

    def _unread(self, flags: dict[str, Any]) -> list[str]:
        reads = self._reads()
        if "decode_plus_one" in reads:
            reads.add("plus_one")
        return sorted(set(flags) - reads)

    def applicable_variants(self) -> dict[str, dict[str, Any]]:
        """The matrix's post-processing variants whose flags this suite's decoder reads."""
        return {name: flags for name, flags in self.postprocess_variants.items() if not self._unread(flags)}

    @property
    def reported_outputs(self) -> tuple[str, ...]:
        """Outputs whose element-wise errors are reported and judge nothing: a `final` decoder's detection lists
        (two detections with tied scores, or reordered by a reduced precision, swap rows); their count (num_dets)
        and the predictions judge."""
        return tuple(self.output_names[-3:]) if get_decoder(self.decoder).lists else ()

    def check_outputs(self, shapes: Shapes, classes: int) -> None:
        """The decoder's output contract."""
        check = get_decoder(self.decoder).check
        if check is not None:
            check(self, self.output_names, shapes, classes)

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
        first = next(iter(outputs.values()), None)
        out = np.full((0 if first is None else len(first), self.max_detections, 6), np.nan)
        if not len(out):
            return out
        decoded = get_decoder(self.decoder).decode(self, outputs, self.output_names, geometry[0].tensor_hw)
        for i in range(len(out)):
            kept = self._final(decoded, i) if isinstance(decoded, Final) else self._nms(decoded.boxes[i], decoded.scores[i])
            if len(kept):
                kept[:, :4] = geometry[i].to_source(kept[:, :4])
                if self.clip_minus_one:
                    height, width = geometry[i].source_hw
                    kept[:, :4] = np.minimum(kept[:, :4], [width - 1, height - 1, width - 1, height - 1])
                if self.round_boxes:
                    kept[:, :4] = np.round(kept[:, :4])
                out[i, : len(kept)] = kept
        return out

    def _final(self, decoded: Final, i: int) -> np.ndarray:
        """(K, 6) of one image's own detections over the score threshold, best first."""
        keep = np.flatnonzero(decoded.valid[i] & (decoded.scores[i] > self.score_threshold))
        keep = keep[np.argsort(-decoded.scores[i][keep], kind="stable")][: self.max_detections]
        return np.c_[decoded.boxes[i][keep], decoded.scores[i][keep], decoded.labels[i][keep]]

    def _nms(self, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """(K, 6) detections of one image, best first."""
        implementation = NMS[self.nms]
        if self.multi_label:
            location, label = _passing(implementation.passes(scores, self.score_threshold))
            confidence = scores[location, label]
        else:
            label = np.argmax(scores, axis=1)
            confidence = scores[np.arange(len(scores)), label]
            location = np.flatnonzero(implementation.passes(confidence, self.score_threshold))
            label, confidence = label[location], confidence[location]
        order = np.argsort(-confidence, kind="stable")[: self.pre_nms_top_k]
        location, label, confidence = location[order], label[order], confidence[order]
        candidates = boxes[location]
        keep = implementation(
            candidates,
            confidence,
            np.zeros_like(label) if self.class_agnostic else label,
            self.nms_iou,
            self.score_threshold,
            self.max_detections,
            1.0 if self.area_plus_one else 0.0,
        )
        return np.c_[candidates[keep], confidence[keep], label[keep]]

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
    """Every detection of (N, K, 6) padded predictions as a COCO result annotation (image ids 1..N, category ids
    label + 1, ids 1..), with the `area` and `iscrowd` a box result set gets when loaded (`COCO.loadRes`)."""
    image, row = np.nonzero(~np.isnan(predictions[..., 0]))
    x1, y1, x2, y2, score, label = predictions[image, row].T
    width, height = x2 - x1, y2 - y1
    columns = (image + 1, (label + 1).astype(np.int64), x1, y1, width, height, score, width * height)
    return [
        {"image_id": i, "category_id": c, "bbox": [x, y, w, h], "score": s, "area": a, "id": n, "iscrowd": 0}
        for n, (i, c, x, y, w, h, s, a) in enumerate(zip(*(column.tolist() for column in columns), strict=True), 1)
    ]


_GROUND_TRUTH: dict[tuple[str, str], Any] = {}  # (evaluator, digest of a target set) -> its indexed COCO ground truth
_KEEP_GROUND_TRUTH = 4


def _ground_truth(targets: np.ndarray, evaluator: str) -> Any:
    """The targets indexed once as a COCO ground truth (the matrix evaluates many prediction sets against one)."""
    key = (evaluator, digest(targets))
    if key not in _GROUND_TRUTH:
        if evaluator == "pycocotools":
            from pycocotools.coco import COCO
        else:
            from faster_coco_eval import COCO
        with contextlib.redirect_stdout(io.StringIO()):
            truth = COCO()
            truth.dataset = coco_ground_truth(targets)
            truth.createIndex()
        while len(_GROUND_TRUTH) >= _KEEP_GROUND_TRUTH:
            _GROUND_TRUTH.pop(next(iter(_GROUND_TRUTH)))
        _GROUND_TRUTH[key] = truth
    return _GROUND_TRUTH[key]


_PAUSE = threading.Lock()
_PAUSED: list[bool] = []  # one entry per evaluation running: whether the collector was on before the first began


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while an evaluation builds its tens of thousands of annotation dicts: each
    would otherwise set off collections that walk every object of a process that has loaded runtimes (in the
    matrix, one evaluation in four took 0.38 s instead of 0.12).  Evaluations in several threads switch it back
    on only when the last one ends, and only if it was on before the first began."""
    with _PAUSE:
        _PAUSED.append(gc.isenabled() if not _PAUSED else _PAUSED[0])
        gc.disable()
    try:
        yield
    finally:
        with _PAUSE:
            was_enabled = _PAUSED.pop()
            if not _PAUSED and was_enabled:
                gc.enable()


def coco_evaluate(predictions: np.ndarray, targets: np.ndarray, evaluator: str = "faster-coco-eval") -> dict[str, Any]:
    """COCO box AP with a maintained evaluator: faster-coco-eval (the task's), or pycocotools (the cross-check)."""
    with _collector_paused():
        return _evaluate(predictions, targets, evaluator)


def _evaluate(predictions: np.ndarray, targets: np.ndarray, evaluator: str) -> dict[str, Any]:
    if evaluator == "pycocotools":
        from pycocotools.cocoeval import COCOeval
    else:
        from faster_coco_eval import COCOeval_faster as COCOeval
    truth = _ground_truth(targets, evaluator)
    detections = coco_detections(predictions)
    if not detections:
        return {name: 0.0 for name in STAT_NAMES} | {"per_class": {}, "objects": {}}
    with contextlib.redirect_stdout(io.StringIO()):
        result = type(truth)()  # the result set `loadRes` would build, without its per-box polygons and copies
        images, categories = list(truth.dataset["images"]), list(truth.dataset["categories"])
        result.dataset = {"images": images, "categories": categories, "annotations": detections}
        result.createIndex()
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
