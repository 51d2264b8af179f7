"""Tasks as registered plugins (`harness.tasks.base`): classification, detection, segmentation, raw outputs."""

from harness.tasks import classification, detection, raw, segmentation  # noqa: F401  (registration)
from harness.tasks.base import POSTPROCESS_KEYS, TASKS, Agreement, ClassDelta, Observed, Task, TaskSpec, make_task, register_task
from harness.tasks.classification import ClassificationTask

__all__ = [
    "POSTPROCESS_KEYS",
    "TASKS",
    "Agreement",
    "ClassDelta",
    "ClassificationTask",
    "Observed",
    "Task",
    "TaskSpec",
    "make_task",
    "register_task",
]
