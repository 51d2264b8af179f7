"""Tasks: raw outputs -> predictions -> the task metric.

Classification is the first task; detection adds an entry with its own
post-processing (box decoding, NMS) and metric (mAP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Task(Protocol):
    metric_name: str

    def predictions(self, outputs: dict[str, np.ndarray]) -> np.ndarray: ...

    def metric(self, predictions: np.ndarray, labels: np.ndarray) -> float: ...


@dataclass(frozen=True)
class ClassificationTask:
    """Top-1 over the logits of one output."""

    output_name: str
    metric_name: str = "top1"

    def predictions(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.argmax(outputs[self.output_name], axis=1)

    def metric(self, predictions: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(predictions == labels)) if len(labels) else 0.0


def make_task(task: str, output_names: tuple[str, ...]) -> Task:
    if task == "classification":
        return ClassificationTask(output_name=output_names[0])
    raise ValueError(f"unknown task {task}")
