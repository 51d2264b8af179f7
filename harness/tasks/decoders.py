"""Detection decoders: one per output format deployed detectors emit, by name (`[postprocess] decoder`).

A decoder turns the model's raw outputs (in `[model] output_names` order) into either dense candidates
(`Dense`: boxes in tensor pixels and per-class probabilities for every location or prior, which the task
thresholds, caps and runs through NMS) or final detections (`Final`: the model ran its own NMS).  Each one
declares its output contract (checked on the declared outputs before inference and on the first batch, one
line on a mismatch) and the `[postprocess]` flags it reads:

- `fcos`: class logits [N, L, C], log-distances to the box edges in strides [N, L, 4]; reads strides,
  clamp, decode_plus_one, activation (default sigmoid).
- `yolov8`: [N, 4 + C, L]: cx, cy, w, h in input pixels, then class scores; decode_plus_one, activation (none).
- `yolov5` (and v7): [N, L, 5 + C]: cx, cy, w, h, objectness, class scores, scored objectness x class;
  decode_plus_one, activation (none).
- `anchors` (SSD, RetinaNet): class scores [N, L, C (+ background)], box deltas [N, L, 4] against priors
  generated from anchor_sizes, anchor_ratios, anchor_offset and strides (torchvision's AnchorGenerator) or
  taken from an output (priors, prior_format, priors_normalised); coder_weights or SSD's variances; clamp,
  decode_plus_one, activation (sigmoid; softmax), background_class.
- `final`: the model ran its own NMS: boxes [N, K, 4], scores [N, K], labels [N, K], after num_dets [N, 1]
  when listed first (TensorRT's NMS plugins; `[export] nms = "graph"` emits them); label_offset.  Ragged
  per-image outputs (boxes [K, 4], scores [K], labels [K], K varying, batch 1: `[model] ragged_outputs`) arrive
  NaN-padded to `ragged_rows` by the result format.

The task's own flags (score_threshold, max_detections, round_boxes, clip_minus_one; for dense candidates
nms, nms_iou, pre_nms_top_k, class_agnostic, multi_label, area_plus_one) apply to every decoder's output.
A plugin registers its own with `register_detection_decoder`, or names a function as `decoder =
"module:function"`; either returns `Dense` or `Final`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from harness.core.errors import HarnessError, first_line
from harness.tasks.base import OutputContractError, Shapes, require_output, shape_text
from harness.tasks.boxes import decode, locations

ACTIVATIONS = ("auto", "none", "sigmoid", "softmax")
PRIOR_FORMATS = ("xyxy", "cxcywh")


@dataclass(frozen=True, kw_only=True)
class DecodeFlags:
    """The `[postprocess]` keys decoders read; the detection task holds them (`Decoder.reads` says which decoder
    reads which)."""

    strides: list[int] = field(default_factory=lambda: [8, 16, 32])
    clamp: float = 0.0  # bound log-sizes before exp; 0: plain exp (torchvision's box coder: log(1000 / 16) = 4.135)
    decode_plus_one: bool = False  # the legacy `x2 - x1 + 1` extent in box decoding
    activation: str = "auto"  # class scores: the decoder's default, none, sigmoid, softmax
    anchor_sizes: list[Any] = field(default_factory=list)  # per level: a size, or a list of sizes
    anchor_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # height / width
    anchor_offset: float = 0.0  # where in its cell a prior is centred, in strides (torchvision: 0)
    priors: str = ""  # the output holding the priors ([N, L, 4], in [model] output_names) instead of generating them
    prior_format: str = "xyxy"
    priors_normalised: bool = False  # priors in [0, 1] of the input (SSD)
    coder_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])  # torchvision BoxCoder weights
    variances: list[float] = field(default_factory=list)  # SSD's [centre, size] variances: weights 1/v
    background_class: int = -1  # score column dropped (SSD softmax: 0); -1: none
    label_offset: int = 0  # final detections: subtracted from the model's labels (torchvision's are 1-based: 1)


_TYPES: dict[str, type] = {"list": list, "float": float, "bool": bool, "str": str, "int": int}
DECODE_KEYS: dict[str, type] = {f.name: _TYPES[str(f.type).split("[")[0]] for f in fields(DecodeFlags)}


@dataclass(frozen=True)
class Dense:
    """Candidates for NMS: (N, L, 4) x1 y1 x2 y2 in tensor pixels and (N, L, C) class probabilities."""

    boxes: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class Final:
    """Detections the model already chose: (N, K, 4) boxes in tensor pixels, (N, K) scores and labels, (N, K) valid."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    valid: np.ndarray


Decode = Callable[
    [DecodeFlags, Mapping[str, np.ndarray], Sequence[str], tuple[int, int]], Dense | Final
]  # flags, outputs, output_names, input HxW
Check = Callable[[DecodeFlags, Sequence[str], Shapes, int], None]


@dataclass(frozen=True)
class Decoder:
    name: str
    decode: Decode
    check: Check | None = None  # the output contract; None: any outputs
    reads: tuple[str, ...] | None = None  # the DecodeFlags it reads; None: it may read any
    nms: bool = True  # its candidates go through the task's threshold, top-k and NMS (False for `Final`)
    lists: bool = False  # its boxes, scores, labels are detection lists: rows move when scores tie or reorder


DECODERS: dict[str, Decoder] = {}


def register_detection_decoder(
    name: str, *, check: Check | None = None, reads: Sequence[str] | None = None, nms: bool = True, lists: bool = False
) -> Callable[[Decode], Decode]:
    """Register `decode` as the detection decoder `name` (`[postprocess] decoder = "name"`); `lists`: it reads
    detection lists (the last three outputs), whose element-wise errors are reported but judge nothing."""

    def add(decode_fn: Decode) -> Decode:
        unknown = sorted(set(reads or ()) - set(DECODE_KEYS))
        if unknown:
            raise ValueError(f"decoder '{name}' reads unknown flags {unknown}: the decoders' flags are {sorted(DECODE_KEYS)}")
        DECODERS[name] = Decoder(name, decode_fn, check, tuple(reads) if reads is not None else None, nms, lists)
        return decode_fn

    return add


def get_decoder(name: str) -> Decoder:
    """A registered decoder, or a plugin's `module:function` (imported here, once)."""
    if name in DECODERS:
        return DECODERS[name]
    if ":" not in name:
        raise HarnessError(
            f"[postprocess] decoder = '{name}' is not a detection decoder", f"use one of {sorted(DECODERS)} or a plugin's 'module:function'"
        )
    module_name, _, attr = name.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise HarnessError(
            f"[postprocess] decoder = '{name}': {type(exc).__name__}: {first_line(exc)}", "name an importable module and its function"
        ) from exc
    DECODERS[name] = Decoder(name, function)
    return DECODERS[name]


# -- helpers ---------------------------------------------------------------------------------


def _output(shapes: Shapes, names: Sequence[str], index: int, role: str) -> tuple[int | None, ...] | None:
    if len(names) <= index:
        raise OutputContractError(
            f"the detection decoder reads {role} as output {index + 1} of [model] output_names; it lists {list(names)}",
            "list the decoder's outputs in [model] output_names, in its order",
        )
    return require_output(shapes, names[index], f"output {index + 1} of [model] output_names ({role})")


def _fits(dims: tuple[int | None, ...] | None, want: tuple[int | None, ...], at_least: dict[int, int] | None = None) -> bool:
    """`dims` matches `want` (None: any size), and axis i is at least `at_least[i]` where known."""
    if dims is None:
        return True
    if len(dims) != len(want) or any(w is not None and d is not None and d != w for d, w in zip(dims, want, strict=True)):
        return False
    return all(dims[i] is None or dims[i] >= n for i, n in (at_least or {}).items())


def _refuse(name: str, dims: tuple[int | None, ...] | None, needs: str, fix: str) -> OutputContractError:
    return OutputContractError(f"output '{name}' is {shape_text(dims)}: the detection decoder needs {needs}", fix)


def _same_length(names: Sequence[str], shapes: Shapes, axis: int = 1) -> None:
    known = {n: shapes[n][axis] for n in names if shapes.get(n) is not None and len(shapes[n]) > axis and shapes[n][axis] is not None}
    if len(set(known.values())) > 1:
        listed = ", ".join(f"'{n}' {shape_text(shapes[n])}" for n in known)
        raise OutputContractError(f"outputs {listed} cover other numbers of boxes", "the decoder's outputs must cover the same boxes")


def activate(flags: DecodeFlags, scores: np.ndarray, default: str) -> np.ndarray:
    """Class scores through the activation `flags.activation` names (`auto`: the decoder's default)."""
    kind = default if flags.activation == "auto" else flags.activation
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-scores))
    if kind == "softmax":
        shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    return scores


def _drop_background(flags: DecodeFlags, scores: np.ndarray) -> np.ndarray:
    return np.delete(scores, flags.background_class, axis=-1) if flags.background_class >= 0 else scores


def _corners(centre_size: np.ndarray, plus_one: bool) -> np.ndarray:
    """(..., 4) cx, cy, w, h -> x1, y1, x2, y2 (the legacy `+1` makes the far corner one pixel further)."""
    half = centre_size[..., 2:] / 2
    boxes = np.concatenate([centre_size[..., :2] - half, centre_size[..., :2] + half], axis=-1)
    if plus_one:
        boxes[..., 2:] += 1
    return boxes


# -- fcos --------------------------------------------------------------------------------------


def _check_fcos(flags: DecodeFlags, names: Sequence[str], shapes: Shapes, classes: int) -> None:
    scores = _output(shapes, names, 0, "class logits")
    boxes = _output(shapes, names, 1, "box distances")
    if not _fits(scores, (None, None, None), {2: classes}):
        raise _refuse(
            names[0],
            scores,
            f"per-location class logits [N, L, C >= {classes}]",
            "put the class-logit output first in [model] output_names",
        )
    if not _fits(boxes, (None, None, 4)):
        raise _refuse(names[1], boxes, "per-location box distances [N, L, 4]", "put the box output second in [model] output_names")
    _same_length(names[:2], shapes)


@register_detection_decoder("fcos", check=_check_fcos, reads=("strides", "clamp", "decode_plus_one", "activation"))
def decode_fcos(flags: DecodeFlags, outputs: Mapping[str, np.ndarray], names: Sequence[str], input_hw: tuple[int, int]) -> Dense:
    """Per-location logits and log-distances (left, top, right, bottom, in strides) around each location's centre."""
    scores = activate(flags, outputs[names[0]].astype(np.float64), "sigmoid")
    centres, strides = locations(input_hw, tuple(flags.strides))
    boxes = decode(outputs[names[1]], centres, strides, flags.clamp or None)
    if flags.decode_plus_one:
        boxes[..., 2:] += 1.0
    return Dense(boxes, scores)


# -- yolov8 / yolov5 ---------------------------------------------------------------------------


def _check_yolov8(flags: DecodeFlags, names: Sequence[str], shapes: Shapes, classes: int) -> None:
    dims = _output(shapes, names, 0, "the YOLOv8 head")
    if not _fits(dims, (None, None, None), {1: 4 + classes}):
        raise _refuse(
            names[0],
            dims,
            f"[N, 4 + C, L] with C >= {classes} (cx, cy, w, h, then class scores)",
            "export the head channels first, as ultralytics does",
        )


@register_detection_decoder("yolov8", check=_check_yolov8, reads=("decode_plus_one", "activation"))
def decode_yolov8(flags: DecodeFlags, outputs: Mapping[str, np.ndarray], names: Sequence[str], input_hw: tuple[int, int]) -> Dense:
    """[N, 4 + C, L]: centre, size in input pixels, then class scores (sigmoid already in the graph)."""
    head = np.swapaxes(outputs[names[0]], 1, 2)
    return Dense(_corners(head[..., :4], flags.decode_plus_one), activate(flags, head[..., 4:], "none"))


def _check_yolov5(flags: DecodeFlags, names: Sequence[str], shapes: Shapes, classes: int) -> None:
    dims = _output(shapes, names, 0, "the YOLOv5 head")
    if not _fits(dims, (None, None, None), {2: 5 + classes}):
        raise _refuse(
            names[0], dims, f"[N, L, 5 + C] with C >= {classes} (cx, cy, w, h, objectness, class scores)", "name the head's output"
        )


@register_detection_decoder("yolov5", check=_check_yolov5, reads=("decode_plus_one", "activation"))
def decode_yolov5(flags: DecodeFlags, outputs: Mapping[str, np.ndarray], names: Sequence[str], input_hw: tuple[int, int]) -> Dense:
    """[N, L, 5 + C] (YOLOv5, YOLOv7): score = objectness x class score."""
    raw = outputs[names[0]]
    head = activate(flags, raw, "none")
    return Dense(_corners(raw[..., :4], flags.decode_plus_one), head[..., 4:5] * head[..., 5:])


# -- anchors (SSD, RetinaNet) ------------------------------------------------------------------


def generated_priors(flags: DecodeFlags, input_hw: tuple[int, int]) -> np.ndarray:
    """torchvision `AnchorGenerator`'s priors, (L, 4) x1 y1 x2 y2: per level (stride), per cell row-major, per
    ratio then size, base boxes rounded; `anchor_offset` moves the centres into the cell (in strides)."""
    priors = []
    ratios = np.asarray(flags.anchor_ratios, dtype=np.float64)
    for stride, sizes in zip(flags.strides, flags.anchor_sizes, strict=True):
        sizes = np.atleast_1d(np.asarray(sizes, dtype=np.float64))
        h_ratios = np.sqrt(ratios)
        ws, hs = (sizes[None, :] / h_ratios[:, None]).ravel(), (sizes[None, :] * h_ratios[:, None]).ravel()
        base = np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2)
        rows, cols = math.ceil(input_hw[0] / stride), math.ceil(input_hw[1] / stride)
        ys, xs = np.mgrid[0:rows, 0:cols]
        shifts = (np.stack([xs.ravel(), ys.ravel()], axis=1) + flags.anchor_offset) * stride
        priors.append((np.tile(shifts, 2)[:, None, :] + base[None, :, :]).reshape(-1, 4))
    return np.concatenate(priors)


def _coder_weights(flags: DecodeFlags) -> np.ndarray:
    if flags.variances:
        centre, size = flags.variances
        return np.array([1 / centre, 1 / centre, 1 / size, 1 / size])
    return np.asarray(flags.coder_weights, dtype=np.float64)


def _check_anchors(flags: DecodeFlags, names: Sequence[str], shapes: Shapes, classes: int) -> None:
    _check_anchor_flags(flags)
    scores = _output(shapes, names, 0, "class scores")
    deltas = _output(shapes, names, 1, "box deltas")
    extra = 1 if flags.background_class >= 0 else 0
    if not _fits(scores, (None, None, None), {2: classes + extra}):
        needs = f"per-prior class scores [N, L, C >= {classes}{' + 1 background' if extra else ''}]"
        raise _refuse(names[0], scores, needs, "put the class-score output first in [model] output_names")
    if not _fits(deltas, (None, None, 4)):
        raise _refuse(names[1], deltas, "per-prior box deltas [N, L, 4]", "put the box-delta output second in [model] output_names")
    if flags.priors:
        priors = require_output(shapes, flags.priors, "[postprocess] priors")
        if not _fits(priors, (None, None, 4)):
            raise _refuse(
                flags.priors, priors, "priors [N, L, 4]", "set [postprocess] priors to the prior-box output (batched, like every output)"
            )
    _same_length(names[:2], shapes)


def _check_anchor_flags(flags: DecodeFlags) -> None:
    if flags.priors and flags.anchor_sizes:
        raise HarnessError(
            "[postprocess] sets both priors and anchor_sizes", "take the priors from the model's output or generate them, not both"
        )
    if not flags.priors and len(flags.anchor_sizes) != len(flags.strides):
        raise HarnessError(
            f"[postprocess] anchor_sizes has {len(flags.anchor_sizes)} levels, strides {len(flags.strides)}",
            "give one size (or list of sizes) per stride, or name the priors output: priors = '<output>'",
        )
    if flags.variances and (len(flags.variances) != 2 or flags.coder_weights != [1.0, 1.0, 1.0, 1.0]):
        raise HarnessError(f"[postprocess] variances = {flags.variances}", "give SSD's two variances [centre, size], and no coder_weights")
    if len(flags.coder_weights) != 4:
        raise HarnessError(f"[postprocess] coder_weights = {flags.coder_weights}", "give four weights (wx, wy, ww, wh)")
    if flags.prior_format not in PRIOR_FORMATS:
        raise HarnessError(f"[postprocess] prior_format = '{flags.prior_format}'", f"use one of {PRIOR_FORMATS}")


@register_detection_decoder(
    "anchors",
    check=_check_anchors,
    reads=(
        "strides",
        "anchor_sizes",
        "anchor_ratios",
        "anchor_offset",
        "priors",
        "prior_format",
        "priors_normalised",
        "coder_weights",
        "variances",
        "background_class",
        "clamp",
        "decode_plus_one",
        "activation",
    ),
)
def decode_anchors(flags: DecodeFlags, outputs: Mapping[str, np.ndarray], names: Sequence[str], input_hw: tuple[int, int]) -> Dense:
    """Deltas against priors (torchvision `BoxCoder.decode_single`; the legacy `+1` coder with decode_plus_one)."""
    if flags.priors:
        priors = np.asarray(outputs[flags.priors], dtype=np.float64)
        if flags.prior_format == "cxcywh":
            priors = _corners(priors, plus_one=False)
        if flags.priors_normalised:
            priors = priors * np.array([input_hw[1], input_hw[0], input_hw[1], input_hw[0]])
    else:
        priors = generated_priors(flags, input_hw)
    deltas = outputs[names[1]].astype(np.float64) / _coder_weights(flags)
    one = 1.0 if flags.decode_plus_one else 0.0
    widths, heights = priors[..., 2] - priors[..., 0] + one, priors[..., 3] - priors[..., 1] + one
    cx, cy = priors[..., 0] + 0.5 * widths, priors[..., 1] + 0.5 * heights
    sizes = deltas[..., 2:] if not flags.clamp else np.minimum(deltas[..., 2:], flags.clamp)
    w, h = np.exp(sizes[..., 0]) * widths, np.exp(sizes[..., 1]) * heights
    x, y = deltas[..., 0] * widths + cx, deltas[..., 1] * heights + cy
    boxes = np.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w - one, y + 0.5 * h - one], axis=-1)
    scores = _drop_background(flags, activate(flags, outputs[names[0]].astype(np.float64), "sigmoid"))
    return Dense(boxes, scores)


# -- final ---------------------------------------------------------------------------------------


def _check_final(flags: DecodeFlags, names: Sequence[str], shapes: Shapes, classes: int) -> None:
    if len(names) not in (3, 4):
        raise OutputContractError(
            f"the 'final' decoder reads boxes, scores, labels (after num_dets: TensorRT NMS plugins); [model] output_names: {list(names)}",
            "list boxes, scores, labels (or num_dets, boxes, scores, classes) in [model] output_names",
        )
    offset = len(names) - 3
    if offset:
        count = _output(shapes, names, 0, "num_dets")
        if not (_fits(count, (None, 1)) or _fits(count, (None,))):
            raise _refuse(names[0], count, "a detection count [N, 1] or [N]", "list num_dets first, or leave it out")
    boxes = _output(shapes, names, offset, "boxes")
    if not _fits(boxes, (None, None, 4)):
        raise _refuse(
            names[offset],
            boxes,
            "boxes [N, K, 4]",
            "pad the detections to a fixed K in the graph, or list ragged [K, 4] outputs in [model] ragged_outputs",
        )
    for index, role in ((offset + 1, "scores"), (offset + 2, "labels")):
        dims = _output(shapes, names, index, role)
        if not _fits(dims, (None, None)):
            raise _refuse(
                names[index], dims, f"{role} [N, K]", f"list boxes, scores, labels in [model] output_names, {role} at {index + 1}"
            )
    _same_length(names[offset:], shapes)


@register_detection_decoder("final", check=_check_final, reads=("label_offset",), nms=False, lists=True)
def decode_final(flags: DecodeFlags, outputs: Mapping[str, np.ndarray], names: Sequence[str], input_hw: tuple[int, int]) -> Final:
    """Detections the model chose itself: rows past num_dets, with a non-finite score or a negative label are padding."""
    boxes, scores, labels = (outputs[name] for name in names[-3:])
    padding = ~np.isfinite(scores) | ~np.isfinite(labels)  # NaN rows: ragged outputs padded by the result format
    labels = np.where(padding, -1, np.rint(np.nan_to_num(labels)).astype(np.int64) - flags.label_offset)
    valid = ~padding & (labels >= 0)
    if len(names) == 4:
        valid &= np.arange(scores.shape[1])[None, :] < outputs[names[0]].reshape(len(scores), -1)[:, :1]
    return Final(boxes.astype(np.float64), scores.astype(np.float64), labels, valid)
