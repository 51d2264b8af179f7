"""Classification: top-1 over the logits of one output.

`label_offset` is the post-processing flag that maps a score index to a dataset label (1 for models
trained with a background class at index 0): a deployment that forgets it shifts every prediction.
Agreement: top-1 agreement and top-5 overlap, KL divergence of the softmax, flips split into
negative (right before, wrong now) and positive, per-class accuracy deltas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from harness.data.dataset import class_label
from harness.data.stack import Geometry
from harness.tasks.base import (
    Agreement,
    ClassDelta,
    Observed,
    OutputContractError,
    Shapes,
    listed,
    register_task,
    require_output,
    shape_text,
)


def softmax_kl(candidate: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """KL(baseline softmax || candidate softmax) per sample, in nats."""

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        shifted = x - x.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    log_p, log_q = log_softmax(baseline), log_softmax(candidate)
    return np.maximum((np.exp(log_p) * (log_p - log_q)).sum(axis=1), 0.0)


def top5_agreement(candidate: np.ndarray, baseline: np.ndarray) -> float | None:
    """Mean overlap of the two top-5 sets (1.0: same five classes, in any order)."""
    if candidate.ndim != 2 or candidate.shape[1] <= 5:
        return None
    top_c, top_b = np.argsort(-candidate, axis=1)[:, :5], np.argsort(-baseline, axis=1)[:, :5]
    overlap = [len(set(c) & set(b)) / 5 for c, b in zip(top_c.tolist(), top_b.tolist(), strict=True)]
    return float(np.mean(overlap)) if overlap else 1.0


def per_class(predictions: np.ndarray, baseline_predictions: np.ndarray, labels: np.ndarray) -> list[ClassDelta]:
    rows = []
    for label in np.unique(labels):
        mask = labels == label
        rows.append(
            ClassDelta(
                int(label), int(mask.sum()), float(np.mean(predictions[mask] == label)), float(np.mean(baseline_predictions[mask] == label))
            )
        )
    return rows


@register_task
@dataclass(frozen=True)
class ClassificationTask:
    name: ClassVar[str] = "classification"
    postprocess_keys: ClassVar[dict[str, type]] = {"label_offset": int, "scores": str}
    postprocess_variants: ClassVar[dict[str, dict[str, Any]]] = {}  # argmax has no deployment choices (a wrong offset is a bug)

    output_names: tuple[str, ...]
    label_offset: int = 0
    scores: str = ""  # the output holding the class scores (default: the first)
    metric_name: str = field(default="top1", init=False)

    @property
    def output_name(self) -> str:
        """The output holding the class scores."""
        return self.scores or self.output_names[0]

    def check_outputs(self, shapes: Shapes, classes: int) -> None:
        name = self.output_name
        dims = require_output(shapes, name, "[postprocess] scores")
        if dims is None:
            return
        raw_hint = ', or task = "raw" to compare the outputs as they are'
        if len(dims) != 2:
            raise OutputContractError(
                f"output '{name}' is {shape_text(dims)}: classification needs one [N, C] class-score output",
                f"set [postprocess] scores to an [N, C] output of {listed(shapes)}{raw_hint}",
            )
        width = dims[1]
        if width is None:
            return
        if width < classes:
            raise OutputContractError(
                f"output '{name}' is {shape_text(dims)}: {width} scores for the manifest's {classes} classes",
                "set [postprocess] scores to the class-score output, or fix the manifest's classes",
            )
        if not self.scores and len(shapes) > 1 and width not in (classes, classes + self.label_offset):
            raise OutputContractError(
                f"the model has {len(shapes)} outputs ({listed(shapes)}); classification reads the first, '{name}', "
                f"whose {width} values do not match the manifest's {classes} classes",
                'name the class-score output: [postprocess] scores = "<output>"',
            )

    def target(self, entry: dict[str, Any], classes: int) -> np.ndarray:
        return class_label(entry, classes)

    def predictions(self, outputs: dict[str, np.ndarray], geometry: Sequence[Geometry] = ()) -> np.ndarray:
        return np.argmax(outputs[self.output_name], axis=1) - self.label_offset

    def metric(self, predictions: np.ndarray, targets: np.ndarray) -> float:
        return float(np.mean(predictions == targets)) if len(targets) else 0.0

    def agree(self, ids: Sequence[str], targets: np.ndarray, candidate: Observed, baseline: Observed) -> Agreement:
        pred, base_pred = candidate.predictions, baseline.predictions
        same = pred == base_pred
        right, base_right = pred == targets, base_pred == targets
        scores, base_scores = candidate.outputs[self.output_name], baseline.outputs[self.output_name]
        kl = softmax_kl(scores, base_scores) if scores.ndim == 2 else np.zeros(len(ids))
        return Agreement(
            agreement=float(np.mean(same)) if len(same) else 1.0,
            flips=[ids[i] for i in np.flatnonzero(~same)],
            negative_flips=[ids[i] for i in np.flatnonzero(base_right & ~right)],
            positive_flips=[ids[i] for i in np.flatnonzero(~base_right & right)],
            per_class=per_class(pred, base_pred, targets),
            metric=self.metric(pred, targets),
            metric_baseline=self.metric(base_pred, targets),
            details={
                "top5_agreement": top5_agreement(scores, base_scores),
                "kl_mean": float(kl.mean()) if len(kl) else 0.0,
                "kl_max": float(kl.max(initial=0.0)),
            },
        )
