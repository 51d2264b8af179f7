"""The NMS catalogue: each deployed implementation's boundary rules emulated in vectorised numpy.

Deployments differ where a rule meets its boundary: a score equal to the threshold, an IoU equal to the
threshold *as that implementation computes it* (its precision, its formula, its guards), tied scores, boxes
with flipped corners, and how many candidates it looks at.  Each entry of `NMS` is one implementation:

- `torchvision` (`batched_nms` / `nms`): score kept if > st (its detection models' filter; `nms` has no
  threshold); suppressed if IoU > t, with t a double; the boxes' own dtype, corners as given, no guard (0 / 0
  never suppresses); classes apart by the coordinate offset trick up to 1000 candidates (negative coordinates
  let classes meet), per class above; ties: lower index first.
- `onnx-ort` (ONNX Runtime `NonMaxSuppression`): > st, IoU > t, float32, corners reordered, an empty
  intersection or a zero-area box never suppresses; per class, class-major output; lower index wins ties.
- `onnx-openvino` (OpenVINO `NonMaxSuppression`, CPU): > st, IoU >= t (so t = 0 suppresses disjoint boxes),
  float32, corners reordered; otherwise as ONNX Runtime.
- `opencv` (`cv2.dnn.NMSBoxes` / `NMSBoxesBatched`): > st, overlap > t where overlap is
  `1.f - float(1 - IoU)`; double `Rect2d` (x, y, w, h), flipped corners empty, two empty boxes overlap
  fully; classes apart by OpenCV's own offset trick; stable sort.  `opencv-int`: fed ints, `Rect` truncation.
- `trt-efficient` (EfficientNMS_TRT): >= st, IoU >= t, float32, corners reordered, empty pairs IoU 0; only the
  top 4096 candidates.  Emulated from the plugin's documentation and source: TensorRT does not run here.
- `trt-inms` / `trt-inms-2000` (INMSLayer): > st, IoU > t, candidates sorted across classes, the top 5000
  (2000) considered.  Emulated from the INMSLayer documentation.

The rules above were checked on real runs where the library runs here (`tests/test_nms.py`: the
same constructed boundary cases, and random boxes whose threshold is set to one of their own IoUs, through
the real implementation and the emulation); the TensorRT rows are emulations only.

`area_offset = 1` is the legacy `x2 - x1 + 1` extent in every width, height and area an IoU uses (no
implementation above does it by itself: it emulates a deployment that adds it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# (M, 4) candidate boxes, the (4,) kept box or (M, 4) kept boxes pairwise, area offset -> (M,) IoU in the implementation's
# precision; NaN or -inf never suppresses
Overlap = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


def _iou_torchvision(boxes: np.ndarray, box: np.ndarray, offset: float) -> np.ndarray:
    """torchvision's CPU kernel: corners as given, `inter / (area_i + area_j - inter)`, no guard (0 / 0 is NaN)."""
    off = boxes.dtype.type(offset)
    area = (box[..., 2] - box[..., 0] + off) * (box[..., 3] - box[..., 1] + off)
    areas = (boxes[:, 2] - boxes[:, 0] + off) * (boxes[:, 3] - boxes[:, 1] + off)
    w = np.maximum(np.minimum(box[..., 2], boxes[:, 2]) - np.maximum(box[..., 0], boxes[:, 0]) + off, 0)
    h = np.maximum(np.minimum(box[..., 3], boxes[:, 3]) - np.maximum(box[..., 1], boxes[:, 1]) + off, 0)
    inter = w * h
    union = area + areas - inter
    return np.divide(inter, union, out=np.full_like(inter, np.nan), where=union != 0)


def _reordered(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([np.minimum(boxes[..., :2], boxes[..., 2:]), np.maximum(boxes[..., :2], boxes[..., 2:])], axis=-1)


def _guarded(never: float, zero_area_guard: bool) -> Overlap:
    """Corner-reordering IoU (ONNX Runtime, OpenVINO, TensorRT): an empty intersection or union gives `never`;
    `zero_area_guard`: a box of zero area gives `never` too."""

    def overlap(boxes: np.ndarray, box: np.ndarray, offset: float) -> np.ndarray:
        off = boxes.dtype.type(offset)
        boxes, box = _reordered(boxes), _reordered(box)
        area = (box[..., 2] - box[..., 0] + off) * (box[..., 3] - box[..., 1] + off)
        areas = (boxes[:, 2] - boxes[:, 0] + off) * (boxes[:, 3] - boxes[:, 1] + off)
        w = np.maximum(np.minimum(box[..., 2], boxes[:, 2]) - np.maximum(box[..., 0], boxes[:, 0]) + off, 0)
        h = np.maximum(np.minimum(box[..., 3], boxes[:, 3]) - np.maximum(box[..., 1], boxes[:, 1]) + off, 0)
        inter = w * h
        union = area + areas - inter
        bad = (inter <= 0) | (union <= 0)
        if zero_area_guard:
            bad |= (areas <= 0) | (area <= 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(bad, boxes.dtype.type(never), inter / np.where(bad, 1, union))

    return overlap


def _iou_opencv(boxes: np.ndarray, box: np.ndarray, offset: float) -> np.ndarray:
    """OpenCV's `rectOverlap` of `Rect_` boxes (x, y, w, h): `a & b` as `Rect_::operator&=` forms it (an empty
    rectangle, i.e. w or h <= 0, intersects nothing), then `1.f - float(jaccardDistance)`, whose
    `Aa + Ab <= epsilon` guard makes two empty boxes overlap fully."""
    off = boxes.dtype.type(offset)
    bw, bh = boxes[:, 2] + off, boxes[:, 3] + off
    aw, ah = box[..., 2] + off, box[..., 3] + off
    empty = (bw <= 0) | (bh <= 0) | (aw <= 0) | (ah <= 0)
    inter_w = _rect_extent(boxes[:, 0], bw, box[..., 0], aw)
    inter_h = _rect_extent(boxes[:, 1], bh, box[..., 1], ah)
    inter = np.where(empty | (inter_w <= 0) | (inter_h <= 0), 0, inter_w * inter_h).astype(np.float64)
    areas, area = bw * bh, aw * ah
    total = areas + area
    epsilon = np.finfo(boxes.dtype).eps if np.issubdtype(boxes.dtype, np.floating) else 0
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.where(total <= epsilon, 0.0, 1.0 - inter / (total.astype(np.float64) - inter))
    return np.float32(1.0) - distance.astype(np.float32)


def _rect_extent(x: np.ndarray, w: np.ndarray, box_x: np.floating, box_w: np.floating) -> np.ndarray:
    """One axis of `Rect_::operator&=`: min(low.w - (high.x - low.x), high.w), low the rectangle of smaller x
    (the kept one, `box`, on a tie)."""
    low = x < box_x
    low_x, low_w = np.where(low, x, box_x), np.where(low, w, box_w)
    high_x, high_w = np.where(low, box_x, x), np.where(low, box_w, w)
    separated = (low_x < 0) & (low_x + low_w < high_x)
    return np.where(separated, 0, np.minimum(low_w - (high_x - low_x), high_w))


@dataclass(frozen=True)
class Nms:
    """One implementation's rules (see the module's table)."""

    name: str
    checked_against: str  # the real implementation the tests run it against, or why none
    score_rule: str  # ">" or ">=" (torchvision has no threshold of its own: `>` is its detection models')
    suppress_rule: str  # ">" or ">="
    overlap: Overlap
    precision: type | None = np.float32  # None: the boxes' own dtype
    batching: str = "mask"  # how classes are kept apart: "mask", "torchvision-offsets", "opencv-offsets"
    class_major: bool = False  # its output lists class by class (then sorted by score, stably)
    cap: int | None = None  # candidates it considers after the score threshold, best first
    integer_rects: bool = False  # OpenCV fed ints: Rect(x, y, w, h) truncated

    def __call__(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray,
        iou_threshold: float,
        score_threshold: float,
        limit: int | None = None,
        area_offset: float = 0.0,
    ) -> np.ndarray:
        """Kept candidate indices, best first (by score, stably over the implementation's output order): at most
        `limit` of them (the first `limit` the full run would keep)."""
        dtype = np.dtype(self.precision or boxes.dtype)
        boxes, scores, labels = boxes.astype(dtype), scores.astype(dtype), np.asarray(labels, dtype=np.int64)
        index = np.flatnonzero(self.passes(scores, score_threshold))
        index = index[np.argsort(-scores[index], kind="stable")][: self.cap]
        geometry, reach = self._geometry(boxes[index], labels[index], iou_threshold)
        kept = _greedy(geometry, labels[index], reach, self._suppressed(iou_threshold, area_offset), None if self.class_major else limit)
        if self.class_major:
            kept = kept[np.argsort(labels[index][kept], kind="stable")]
            kept = kept[np.argsort(-scores[index][kept], kind="stable")][:limit]
        return index[kept]

    def passes(self, scores: np.ndarray, score_threshold: float) -> np.ndarray:
        """Which scores clear the threshold, by this implementation's rule, in its precision."""
        dtype = np.dtype(self.precision or scores.dtype)
        scores, threshold = scores.astype(dtype, copy=False), dtype.type(score_threshold)
        return scores >= threshold if self.score_rule == ">=" else scores > threshold

    def _suppressed(self, iou_threshold: float, area_offset: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        # torchvision compares its IoU with the threshold as a double; the others hold the threshold as a float32
        threshold = np.float64(iou_threshold) if self.precision is None else np.float32(iou_threshold)
        if self.suppress_rule == ">=":
            return lambda rest, box: self.overlap(rest, box, area_offset) >= threshold
        return lambda rest, box: self.overlap(rest, box, area_offset) > threshold

    def _geometry(self, boxes: np.ndarray, labels: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, int | None]:
        """The boxes as the implementation holds them (OpenCV's x, y, w, h; the offset tricks' shifted boxes), and
        how many label steps apart boxes can still meet (0: per class; None: any).  An offset trick shifts
        label l by l (M + 1), M the largest coordinate: with the smallest coordinate `low`, labels fewer than
        (M - low) / (M + 1) apart overlap once shifted (none when low >= 0); OpenCV's two empty boxes overlap
        fully wherever they are, and a negative IoU threshold suppresses every pair."""
        if not len(boxes) or self.batching == "mask":
            return boxes, 0
        if self.batching == "opencv-offsets":
            rects = np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2]].astype(np.float64)  # a Python list of floats: Rect2d
            if self.integer_rects:
                rects = np.trunc(rects).astype(np.int64)
            corners = np.c_[rects[:, :2], rects[:, :2] + rects[:, 2:]]
            step = max(float(corners.max()), 0.0) + 1
            shift = labels * step
            shifted = rects + np.c_[shift, shift, 0 * shift, 0 * shift].astype(rects.dtype)
            if iou_threshold < 0 or not (rects[:, 2:] > 0).all():
                return shifted, None
            return shifted, _reach(float(corners.max()), float(corners.min()), step)
        if boxes.size > 4000:  # torchvision runs per class above 1000 candidates
            return boxes, 0
        step = boxes.max() + boxes.dtype.type(1)
        shifted = boxes + (labels.astype(boxes.dtype) * step)[:, None]
        return shifted, None if iou_threshold < 0 else _reach(float(boxes.max()), float(boxes.min()), float(step))


PAIR_LIMIT = 200_000  # candidate pairs whose IoUs are computed in one go; past it, one kept box at a time


def _reach(high: float, low: float, step: float) -> int:
    """Label steps within which boxes spanning [low, high] still meet once shifted by label x step (one pixel to spare)."""
    return max(0, int(np.ceil((high - low + 1) / step)) - 1) if low < 0 else 0


def _greedy(
    boxes: np.ndarray,
    labels: np.ndarray,
    reach: int | None,
    suppressed: Callable[[np.ndarray, np.ndarray], np.ndarray],
    limit: int | None,
) -> np.ndarray:
    """Greedy NMS over candidates sorted best first: each kept box suppresses the later ones it overlaps among
    those whose labels lie within `reach` of its own (0: its class; None: any); stops once `limit` are kept
    (later candidates cannot change earlier ones).  Vectorised: every such pair's IoU at once where there are
    few enough pairs, else each kept box against the later candidates."""
    if reach is None:
        labels, reach = np.zeros(len(boxes), dtype=np.int64), 0
    pairs = _pairs(labels, reach)
    if pairs is None:
        return _greedy_each(boxes, labels, reach, suppressed, limit)
    first, second = pairs
    hit = suppressed(boxes[second], boxes[first])
    first, second = first[hit], second[hit]
    order = np.argsort(first, kind="stable")
    bounds = np.searchsorted(first[order], np.arange(len(boxes) + 1))
    second, starts, stops = second[order], bounds[:-1].tolist(), bounds[1:].tolist()  # Python ints: a fast loop
    alive = np.ones(len(boxes), bool)
    kept: list[int] = []
    for i in range(len(boxes)):
        if alive[i]:
            kept.append(i)
            if len(kept) == limit:
                break
            if stops[i] > starts[i]:
                alive[second[starts[i] : stops[i]]] = False
    return np.array(kept, dtype=np.int64)


def _pairs(labels: np.ndarray, reach: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Every (earlier, later) candidate pair whose labels lie within `reach`; None past PAIR_LIMIT.  Sorted by
    label, each candidate's partners are the run of later ones up to its label + reach."""
    by_label = np.argsort(labels, kind="stable")
    ordered = labels[by_label]
    counts = np.searchsorted(ordered, ordered + reach, side="right") - np.arange(len(labels)) - 1
    total = int(counts.sum())
    if total > PAIR_LIMIT:
        return None
    k = np.repeat(np.arange(len(labels)), counts)
    partner = k + 1 + np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    a, b = by_label[k], by_label[partner]
    return np.minimum(a, b), np.maximum(a, b)


def _greedy_each(
    boxes: np.ndarray, labels: np.ndarray, reach: int, suppressed: Callable[[np.ndarray, np.ndarray], np.ndarray], limit: int | None
) -> np.ndarray:
    """`_greedy`, each kept box against the later candidates within reach."""
    alive = np.ones(len(boxes), bool)
    kept: list[int] = []
    for i in range(len(boxes)):
        if alive[i]:
            kept.append(i)
            if len(kept) == limit:
                break
            later = i + 1 + np.flatnonzero(np.abs(labels[i + 1 :] - labels[i]) <= reach)
            alive[later] &= ~suppressed(boxes[later], boxes[i])
    return np.array(kept, dtype=np.int64)


NMS: dict[str, Nms] = {
    entry.name: entry
    for entry in (
        Nms("torchvision", "torchvision.ops.batched_nms / nms", ">", ">", _iou_torchvision, precision=None, batching="torchvision-offsets"),
        Nms("onnx-ort", "ONNX Runtime NonMaxSuppression", ">", ">", _guarded(-np.inf, zero_area_guard=True), class_major=True),
        Nms("onnx-openvino", "OpenVINO NonMaxSuppression (CPU)", ">", ">=", _guarded(0.0, zero_area_guard=True), class_major=True),
        Nms("opencv", "cv2.dnn.NMSBoxes / NMSBoxesBatched", ">", ">", _iou_opencv, precision=np.float32, batching="opencv-offsets"),
        Nms(
            "opencv-int",
            "cv2.dnn.NMSBoxesBatched fed integer rectangles",
            ">",
            ">",
            _iou_opencv,
            batching="opencv-offsets",
            integer_rects=True,
        ),
        Nms(
            "trt-efficient", "not run: TensorRT is not installed here (EfficientNMS_TRT source)", ">=", ">=", _guarded(0.0, False), cap=4096
        ),
        Nms("trt-inms", "not run: TensorRT is not installed here (INMSLayer documentation)", ">", ">", _guarded(-np.inf, True), cap=5000),
        Nms(
            "trt-inms-2000",
            "not run: TensorRT is not installed here (INMSLayer documentation)",
            ">",
            ">",
            _guarded(-np.inf, True),
            cap=2000,
        ),
    )
}
