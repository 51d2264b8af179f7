"""Tasks: raw outputs -> predictions -> the task metric.

Classification is the first task; detection adds an entry with its own
post-processing (box decoding, NMS) and metric (mAP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class Task(Protocol):
    metric_name: str
    output_name: str  # the output holding class scores

    def predictions(self, outputs: dict[str, np.ndarray]) -> np.ndarray: ...

    def metric(self, predictions: np.ndarray, labels: np.ndarray) -> float: ...


@dataclass(frozen=True)
class ClassificationTask:
    """Top-1 over the logits of one output.

    `label_offset` is the post-processing flag that maps a score index to a
    dataset label (1 for models trained with a background class at index 0):
    a deployment that forgets it shifts every prediction.
    """

    output_name: str
    metric_name: str = "top1"
    label_offset: int = 0

    def predictions(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.argmax(outputs[self.output_name], axis=1) - self.label_offset

    def metric(self, predictions: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(predictions == labels)) if len(labels) else 0.0


POSTPROCESS_KEYS = {"classification": {"label_offset": int}}


def make_task(task: str, output_names: tuple[str, ...], postprocess: dict[str, Any] | None = None) -> Task:
    if task == "classification":
        return ClassificationTask(output_name=output_names[0], **(postprocess or {}))
    raise ValueError(f"unknown task {task}")
