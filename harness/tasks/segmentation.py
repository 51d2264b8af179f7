"""Semantic segmentation: class-score maps resized back to each source image, argmaxed, scored by mIoU.

Targets are mask images beside the images (the manifest entry's `mask`: a grey or palette PNG, one class index
per pixel, `ignore_index` where no class is annotated; `mask_sha256` optional), checked when the manifest
loads.  A split's targets stack, so each mask sits top-left on a `mask_canvas` square of `ignore_index`.

Predictions: the model's scores `[N, C, h, w]` cover its input tensor; every source pixel's centre is taken
through the stack's geometry (crop, pad and letterbox undone) onto the score grid, the scores are interpolated
there (`interpolation`: bilinear, bicubic, nearest; `align_corners`: the resize's corner convention) and
argmaxed (`argmax = "after-resize"`), or argmaxed on the grid and the labels taken from the nearest cell
(`"before-resize"`: the cheaper deployment; nearest interpolation of the scores gives the same labels).  A
one-class probability map (`[N, 1, h, w]` or `[N, h, w]`, DB-style text detectors) is thresholded instead
(`threshold`: class 1 where the probability passes it).  Source pixels the tensor does not show (a centre crop
cut them) are predicted as `ignore_index`: they count as missed.  Predictions are uint8 masks on the canvas.

mIoU comes in two conventions, named in every report (`miou`): `nanmean` drops classes absent from both
prediction and truth from the mean (mmsegmentation), `zero` counts them as 0 (per-class IoU with
zero_division=0 averaged over every class).  IoU is accumulated over the whole split (one confusion matrix).
Agreement is per image: the share of its pixels whose class changed; an image past `flip_share` is a flip,
negative when its IoU against the truth dropped, positive when it rose.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness.core.errors import HarnessError
from harness.data.stack import Geometry
from harness.tasks.base import Agreement, ClassDelta, Observed, OutputContractError, Shapes, register_task, require_output, shape_text

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
ARGMAX_ORDERS = ("after-resize", "before-resize")
MIOU_CONVENTIONS = ("nanmean", "zero")
MASK_MODES = ("L", "P")  # grey or palette: one class index per pixel
CUBIC_A = -0.75  # PyTorch's and OpenCV's bicubic kernel
ROW_BLOCK = 32  # output rows resampled at a time (bicubic): the block of scores stays in cache
DENSE_SHARE = 0.3  # bilinear: past this share of boundary pixels, every pixel is interpolated
Labeller = Callable[[np.ndarray], np.ndarray]  # (C, ...) scores -> (...) uint8 labels


# -- resampling a score map at source-pixel centres -----------------------------------------------


def _taps(coords: np.ndarray, size: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices (n, K) and weights (n, K) of the grid cells that interpolate `coords` (cell-index coordinates: cell i's
    centre is i) on a grid of `size` cells; indices clamp to the edge (PyTorch's border behaviour)."""
    if interpolation == "nearest":
        index = np.floor(coords + 0.5)[:, None]
        weight = np.ones_like(index)
    else:
        base = np.floor(coords)
        t = (coords - base)[:, None]
        if interpolation == "bilinear":
            index = base[:, None] + np.arange(2)
            weight = np.concatenate([1 - t, t], axis=1)
        else:  # bicubic: taps at -1, 0, 1, 2
            index = base[:, None] + np.arange(-1, 3)
            distance = np.abs(t - np.arange(-1, 3))
            near = ((CUBIC_A + 2) * distance - (CUBIC_A + 3)) * distance**2 + 1
            far = ((CUBIC_A * distance - 5 * CUBIC_A) * distance + 8 * CUBIC_A) * distance - 4 * CUBIC_A
            weight = np.where(distance <= 1, near, far)
    return np.clip(index, 0, size - 1).astype(np.intp), weight.astype(np.float32)


def grid_coords(geometry: Geometry, grid_hw: tuple[int, int], align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each source row's and column's position on a score grid of `grid_hw` cells covering the tensor (cell-index
    coordinates: cell k's centre is k), and the (H, W) mask of source pixels the tensor shows.

    Half-pixel (`align_corners` False): the grid's cells tile the tensor, a source pixel is looked up where its centre
    lands.  Align-corners (mmsegmentation's `resize(..., align_corners=True)` of the logits cut to the image): the
    image's span on the grid, from the first cell's centre to the last's, is spread over the source pixels' centres."""
    coords, inside = [], []
    for axis, centres in enumerate(geometry.tensor_centres()):
        tensor, grid, source = geometry.tensor_hw[axis], grid_hw[axis], geometry.source_hw[axis]
        if align_corners:
            start = geometry.offset[axis] * grid / tensor  # where the image begins and how many cells it spans
            span = geometry.scale[axis] * source * grid / tensor
            coords.append(start + np.arange(source) * ((span - 1) / (source - 1) if source > 1 else 0.0))
        else:
            coords.append(centres * grid / tensor - 0.5)
        inside.append((centres >= 0) & (centres < tensor))
    return coords[0], coords[1], inside[0][:, None] & inside[1][None, :]


def resample(scores: np.ndarray, rows: tuple[np.ndarray, np.ndarray], cols: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(C, h, w) scores at the separable taps (`_taps`) of rows and columns: (C, H, W) float32."""
    (row_index, row_weight), (col_index, col_weight) = rows, cols
    scores = scores.astype(np.float32, copy=False)
    by_rows = sum(scores[:, row_index[:, k], :] * row_weight[None, :, k, None] for k in range(row_index.shape[1]))
    return sum(by_rows[:, :, col_index[:, k]] * col_weight[None, None, :, k] for k in range(col_index.shape[1]))  # type: ignore[return-value]


def argmax_channels(scores: np.ndarray) -> np.ndarray:
    """(C, ...) -> (...) uint8 index of the largest score (the first on ties, as np.argmax): one pass per channel
    over contiguous planes instead of a strided reduction."""
    best, label = scores[0].copy(), np.zeros(scores.shape[1:], dtype=np.uint8)
    for c in range(1, len(scores)):
        better = scores[c] > best
        np.copyto(best, scores[c], where=better)
        label[better] = c
    return label


def dense_labels(
    scores: np.ndarray, rows: tuple[np.ndarray, np.ndarray], cols: tuple[np.ndarray, np.ndarray], label: Labeller
) -> np.ndarray:
    """The labels of the scores interpolated at every pixel, `ROW_BLOCK` rows at a time."""
    (row_index, row_weight) = rows
    blocks = [slice(start, start + ROW_BLOCK) for start in range(0, len(row_index), ROW_BLOCK)]
    return np.concatenate([label(resample(scores, (row_index[b], row_weight[b]), cols)) for b in blocks])


def bilinear_labels(scores: np.ndarray, coords: tuple[np.ndarray, np.ndarray], label: Labeller) -> np.ndarray:
    """The labels of bilinearly interpolated scores at `coords` (rows, columns; cell-index coordinates), interpolating
    only where they can differ from the grid's.

    A pixel whose four tap cells share a label keeps it: the label's score is the largest (the first of ties) at
    each corner, so it is at their convex combination too (for a threshold: all corners pass it, so does their
    mean).  The other pixels, near boundaries, are interpolated in full and labelled.  Same labels as interpolating
    everywhere, up to float rounding of exact ties."""
    grid = label(scores)
    padded = np.pad(grid, 1, mode="edge")  # clamped taps at the borders: the edge cell twice
    uniform = (padded[:-1, :-1] == padded[1:, :-1]) & (padded[:-1, :-1] == padded[:-1, 1:]) & (padded[:-1, :-1] == padded[1:, 1:])
    row, col = (np.clip(np.floor(c), -1, n - 1).astype(np.intp) + 1 for c, n in zip(coords, grid.shape, strict=True))
    labels = padded[row][:, col]
    mixed_at = ~uniform[row][:, col]
    rows, cols = _taps(coords[0], grid.shape[0], "bilinear"), _taps(coords[1], grid.shape[1], "bilinear")
    if mixed_at.mean() > DENSE_SHARE:  # boundaries everywhere (noise): interpolating every pixel costs less
        return dense_labels(scores, rows, cols, label)
    ys, xs = np.nonzero(mixed_at)
    if len(ys):
        (row_index, row_weight), (col_index, col_weight) = rows, cols
        cells = np.ascontiguousarray(np.moveaxis(scores.astype(np.float32, copy=False), 0, -1)).reshape(-1, len(scores))
        mixed = np.zeros((len(ys), len(scores)), dtype=np.float32)
        for a in (0, 1):
            for b in (0, 1):
                corner = np.take(cells, row_index[ys, a] * grid.shape[1] + col_index[xs, b], axis=0)
                corner *= (row_weight[ys, a] * col_weight[xs, b])[:, None]
                mixed += corner
        labels[ys, xs] = label(mixed.T)
    return labels


def confusion(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes + 1) pixel counts, truth by prediction, over pixels whose truth is a class (ignore_index
    is above the classes: `SegmentationTask` checks it); the last column counts pixels predicted as no class
    (outside the tensor's view).  One bincount, no compaction: pixels of ignored truth land in a row that is dropped."""
    side = classes + 1
    index = np.minimum(truth.ravel(), classes).astype(np.uint16)  # values past the classes (ignore_index): the extra one
    index *= side
    index += np.minimum(predicted.ravel(), classes)
    return np.bincount(index, minlength=side * side).reshape(side, side)[:classes]


def class_iou(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class IoU (NaN where a class is absent from truth and prediction) and each class's truth pixel count."""
    classes = len(matrix)
    hits = np.diag(matrix[:, :classes]).astype(np.float64)
    truth = matrix.sum(axis=1).astype(np.float64)
    union = truth + matrix[:, :classes].sum(axis=0) - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, hits / union, np.nan), truth


def mean_iou(iou: np.ndarray, convention: str) -> float:
    """The mean of per-class IoU: `nanmean` over classes present in truth or prediction, `zero` over every class."""
    if convention == "zero":
        return float(np.nan_to_num(iou, nan=0.0).mean()) if len(iou) else 0.0
    present = iou[~np.isnan(iou)]
    return float(present.mean()) if len(present) else 0.0


def pixel_accuracy(matrix: np.ndarray) -> float:
    total = matrix.sum()
    return float(np.trace(matrix[:, : len(matrix)]) / total) if total else 0.0


# -- the task ---------------------------------------------------------------------------------------


def read_mask(path: Path) -> np.ndarray:
    """A mask image's class indices; ValueError when it is unreadable or not one index per pixel."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode not in MASK_MODES:
                raise ValueError(f"mask {path.name} is a {image.mode} image, not one class index per pixel (grey L or palette P)")
            return np.asarray(image)
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"mask {path.name} is unreadable ({exc})") from exc


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image's header; ValueError when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"image is unreadable ({exc})") from exc


@register_task
@dataclass(frozen=True)
class SegmentationTask:
    name: ClassVar[str] = "segmentation"
    postprocess_keys: ClassVar[dict[str, type]] = {
        "scores": str,
        "mask_canvas": int,
        "ignore_index": int,
        "interpolation": str,
        "align_corners": bool,
        "argmax": str,
        "threshold": float,
        "miou": str,
        "flip_share": float,
    }
    # The post-processing noise axis of `harness matrix`: how deployed segmenters bring the scores back.
    postprocess_variants: ClassVar[dict[str, dict[str, Any]]] = {
        "argmax-before-resize": {"argmax": "before-resize"},  # = nearest resize of the scores
        "resize-bicubic": {"interpolation": "bicubic"},
        "resize-align-corners": {"align_corners": True},
    }
    takes_classes: ClassVar[bool] = True  # built with the manifest's class count: `zero` counts classes nothing shows

    output_names: tuple[str, ...]
    scores: str = ""  # the output holding the class scores (default: the first)
    mask_canvas: int = 512
    ignore_index: int = 255
    interpolation: str = "bilinear"
    align_corners: bool = False
    argmax: str = "after-resize"
    threshold: float | None = None  # a one-class probability map: foreground where the probability passes it
    miou: str = "nanmean"
    flip_share: float = 0.01
    classes: int = 0  # the manifest's class count (`TaskSpec.classes`); 0: the largest index seen, plus one
    metric_name: str = field(default="", init=False)

    def __post_init__(self) -> None:
        for key, value, choices in (
            ("interpolation", self.interpolation, INTERPOLATIONS),
            ("argmax", self.argmax, ARGMAX_ORDERS),
            ("miou", self.miou, MIOU_CONVENTIONS),
        ):
            if value not in choices:
                raise ValueError(f"[postprocess] {key} '{value}' is not one of {', '.join(choices)}")
        if not 0 <= self.ignore_index <= 255:
            raise ValueError(f"[postprocess] ignore_index {self.ignore_index} is not 0..255 (masks are uint8)")
        if self.mask_canvas < 1:
            raise ValueError(f"[postprocess] mask_canvas {self.mask_canvas} is not a positive size")
        object.__setattr__(self, "metric_name", f"mIoU ({self.miou})")

    @property
    def output_name(self) -> str:
        return self.scores or self.output_names[0]

    @property
    def binary(self) -> bool:
        return self.threshold is not None

    # -- output contract and targets ---------------------------------------------------------------

    def check_outputs(self, shapes: Shapes, classes: int) -> None:
        name = self.output_name
        dims = require_output(shapes, name, "[postprocess] scores")
        if dims is None:
            return
        if self.binary:
            if len(dims) not in (3, 4) or (len(dims) == 4 and dims[1] not in (None, 1)):
                raise OutputContractError(
                    f"output '{name}' is {shape_text(dims)}: a thresholded map needs one probability per pixel [N, 1, h, w] or [N, h, w]",
                    "unset [postprocess] threshold for a class-score map [N, C, h, w]",
                )
            return
        if len(dims) != 4:
            raise OutputContractError(
                f"output '{name}' is {shape_text(dims)}: segmentation needs class scores per pixel [N, C, h, w]",
                'set [postprocess] scores to such an output, [postprocess] threshold for a one-class map, or task = "raw"',
            )
        if dims[1] is not None and dims[1] != classes:
            raise OutputContractError(
                f"output '{name}' is {shape_text(dims)}: {dims[1]} score maps for the manifest's {classes} classes",
                "fix the manifest's classes, or set [postprocess] threshold for a one-class probability map",
            )

    def target_parser(self, root: Path) -> Callable[[dict[str, Any], int], np.ndarray]:
        """The target of an entry of a manifest in `root` (masks are files beside the images)."""
        return partial(self.mask_target, root)

    def target(self, entry: dict[str, Any], classes: int) -> np.ndarray:
        """The entry's mask, its path relative to the working directory (a manifest's loader uses `target_parser`)."""
        return self.mask_target(Path.cwd(), entry, classes)

    def mask_target(self, root: Path, entry: dict[str, Any], classes: int) -> np.ndarray:
        """The entry's mask on the canvas; ValueError (one line) when it is missing, unreadable, of another size than
        the image, larger than the canvas or holds an index that is no class."""
        from harness.data.dataset import confined

        rel, expected = entry.get("mask"), entry.get("mask_sha256")
        if not isinstance(rel, str) or not isinstance(expected, str | None):
            raise ValueError("needs a string 'mask' (the mask image, relative to the manifest) and an optional string 'mask_sha256'")
        if classes > 255 or (classes > self.ignore_index):
            raise ValueError(f"has {classes} classes: uint8 masks hold class indices 0..{min(254, self.ignore_index - 1)}")
        try:
            path = confined(root, rel, root)
        except HarnessError as exc:  # the caller names the manifest
            raise ValueError(f"mask '{rel}' points outside the dataset folder") from exc
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"mask {rel} cannot be read ({exc.strerror})") from exc
        if expected and hashlib.sha256(blob).hexdigest() != expected:
            raise ValueError(f"mask {rel}: sha256 differs from the manifest (file corrupt or replaced)")
        mask = read_mask(path)
        image = root / str(entry["file"])
        if image.is_file() and image_size(image) != mask.shape:
            height, width = image_size(image)
            raise ValueError(f"mask {rel} is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}")
        if max(mask.shape) > self.mask_canvas:
            raise ValueError(f"mask {rel} is {mask.shape[1]}x{mask.shape[0]}, larger than [postprocess] mask_canvas = {self.mask_canvas}")
        wrong = mask[(mask >= classes) & (mask != self.ignore_index)]
        if len(wrong):
            raise ValueError(f"mask {rel} holds index {int(wrong.max())}: no class 0..{classes - 1} nor ignore_index {self.ignore_index}")
        out = np.full((self.mask_canvas, self.mask_canvas), self.ignore_index, dtype=np.uint8)
        out[: mask.shape[0], : mask.shape[1]] = mask
        return out

    # -- predictions ----------------------------------------------------------------------------

    def predictions(self, outputs: dict[str, np.ndarray], geometry: Sequence[Geometry]) -> np.ndarray:
        scores = outputs[self.output_name]
        if self.binary and scores.ndim == 4:
            scores = scores[:, 0]
        out = np.full((len(scores), self.mask_canvas, self.mask_canvas), self.ignore_index, dtype=np.uint8)
        for i, geo in enumerate(geometry[: len(scores)]):
            labels = self.source_labels(scores[i], geo)
            out[i, : labels.shape[0], : labels.shape[1]] = labels
        return out

    def source_labels(self, scores: np.ndarray, geometry: Geometry) -> np.ndarray:
        """One sample's (C, h, w) scores (a one-class map: (h, w)) -> (H, W) uint8 labels of its source image."""
        if max(geometry.source_hw) > self.mask_canvas:
            raise HarnessError(
                f"an image of {geometry.source_hw[1]}x{geometry.source_hw[0]} px is larger than mask_canvas = {self.mask_canvas}",
                "raise mask_canvas to the largest image side (an EXIF rotation can swap an image's sides: check its mask)",
            )
        planes = scores[None] if self.binary else scores
        row_coords, col_coords, inside = grid_coords(geometry, planes.shape[1:], self.align_corners)
        mode = "nearest" if self.argmax == "before-resize" else self.interpolation
        if mode == "bilinear":
            labels = bilinear_labels(planes, (row_coords, col_coords), self._label)
        else:
            rows, cols = _taps(row_coords, planes.shape[1], mode), _taps(col_coords, planes.shape[2], mode)
            if mode == "nearest":  # labels on the grid, each source pixel takes its nearest cell's (argmax commutes with it)
                labels = self._label(planes)[rows[0][:, 0]][:, cols[0][:, 0]]
            else:  # bicubic: negative weights, a shared corner label proves nothing
                labels = dense_labels(planes, rows, cols, self._label)
        return labels if inside.all() else np.where(inside, labels, self.ignore_index).astype(np.uint8)

    def _label(self, planes: np.ndarray) -> np.ndarray:
        if self.binary:
            return (planes[0] > self.threshold).astype(np.uint8)
        return argmax_channels(planes)

    # -- metric and agreement -------------------------------------------------------------------

    def _classes(self, *masks: np.ndarray) -> int:
        """The class count the confusion matrix spans: 2 for a thresholded map, the manifest's, else the largest index
        seen below ignore_index, plus one."""
        if self.binary:
            return 2
        if self.classes:
            return self.classes
        seen = [int(m[m < min(self.ignore_index, 255)].max(initial=0)) for m in masks]
        return max(seen, default=0) + 1

    def confusion(self, predictions: np.ndarray, targets: np.ndarray, classes: int) -> np.ndarray:
        return confusion(targets, predictions, classes)

    def metric(self, predictions: np.ndarray, targets: np.ndarray) -> float:
        iou, _ = class_iou(self.confusion(predictions, targets, self._classes(targets, predictions)))
        return mean_iou(iou, self.miou)

    def agree(self, ids: Sequence[str], targets: np.ndarray, candidate: Observed, baseline: Observed) -> Agreement:
        pred, base = candidate.predictions, baseline.predictions
        classes = self._classes(targets, pred, base)
        mine, theirs = self.confusion(pred, targets, classes), self.confusion(base, targets, classes)
        iou, truth_pixels = class_iou(mine)
        base_iou, _ = class_iou(theirs)
        shown = (pred != self.ignore_index) | (base != self.ignore_index)
        changed = ((pred != base) & shown).reshape(len(ids), -1).sum(axis=1) / np.maximum(shown.reshape(len(ids), -1).sum(axis=1), 1)
        flipped = [int(i) for i in np.argsort(-changed, kind="stable") if changed[i] > self.flip_share]  # largest change first
        negative, positive = [], []
        for i in flipped:
            own = mean_iou(class_iou(confusion(targets[i], pred[i], classes))[0], "nanmean")
            before = mean_iou(class_iou(confusion(targets[i], base[i], classes))[0], "nanmean")
            (negative if own < before else positive if own > before else []).append(ids[i])
        present = ~(np.isnan(iou) & np.isnan(base_iou))
        return Agreement(
            agreement=1.0 - len(flipped) / len(ids) if len(ids) else 1.0,
            flips=[ids[i] for i in flipped],
            negative_flips=negative,
            positive_flips=positive,
            per_class=[
                ClassDelta(int(c), int(truth_pixels[c]), float(np.nan_to_num(iou[c])), float(np.nan_to_num(base_iou[c])))
                for c in np.flatnonzero(present)
            ],
            metric=mean_iou(iou, self.miou),
            metric_baseline=mean_iou(base_iou, self.miou),
            details={
                "miou_nanmean": mean_iou(iou, "nanmean"),
                "miou_zero": mean_iou(iou, "zero"),
                "miou_nanmean_delta": mean_iou(iou, "nanmean") - mean_iou(base_iou, "nanmean"),
                "miou_zero_delta": mean_iou(iou, "zero") - mean_iou(base_iou, "zero"),
                "pixel_accuracy": pixel_accuracy(mine),
                "pixel_accuracy_delta": pixel_accuracy(mine) - pixel_accuracy(theirs),
                "changed_pixels_mean": float(changed.mean()) if len(changed) else 0.0,
                "changed_pixels_max": float(changed.max(initial=0.0)),
            },
        )
