"""An example plugin: a task with its own decoding, for MTCNN's proposal net (facenet-pytorch's PNet).

PNet is fully convolutional: for each cell of a map it gives a face probability (`prob`, [N, 2, H, W]) and box
offsets (`boxes`, [N, 4, H, W]).  MTCNN's first stage keeps the cells whose face probability is over a threshold
(0.6) as proposals.  This task decodes exactly that, and scores it against image-level labels (0: no face,
1: a face):
- predictions: per image, the mask of proposal cells (one row of H*W zeros and ones),
- metric: face-presence accuracy (an image has a face when some cell is a proposal),
- agreement: an image flips when its set of proposal cells changes; a negative flip lost the right answer,
- a post-processing variant for `harness matrix`: the threshold moved to 0.7.

Use it from a suite (`plugins = ["harness_faces"]`, `task = "face-proposals"`, the module beside the suite
file) or from the command line (`harness --plugin harness_faces run --suite ...`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from harness.data.dataset import class_label
from harness.data.stack import Geometry
from harness.tasks import Agreement, ClassDelta, Observed, register_task
from harness.tasks.base import OutputContractError, Shapes, require_output, shape_text


@register_task
@dataclass(frozen=True)
class FaceProposals:
    name: ClassVar[str] = "face-proposals"
    postprocess_keys: ClassVar[dict[str, type]] = {"threshold": float}
    postprocess_variants: ClassVar[dict[str, dict[str, Any]]] = {"threshold-0.7": {"threshold": 0.7}}

    output_names: tuple[str, ...]
    threshold: float = 0.6  # MTCNN's first-stage threshold
    metric_name: str = field(default="face accuracy", init=False)

    def check_outputs(self, shapes: Shapes, classes: int) -> None:
        dims = require_output(shapes, "prob", "[model] output_names")
        if dims is not None and (len(dims) != 4 or dims[1] not in (None, 2)):
            raise OutputContractError(f"output 'prob' is {shape_text(dims)}: face proposals need [N, 2, H, W]", "use MTCNN's PNet")

    def target(self, entry: dict[str, Any], classes: int) -> np.ndarray:
        return class_label(entry, classes)

    def predictions(self, outputs: dict[str, np.ndarray], geometry: Sequence[Geometry] = ()) -> np.ndarray:
        face = outputs["prob"][:, 1]  # softmax over the two channels: channel 1 is "face"
        return (face > self.threshold).reshape(len(face), -1).astype(np.float32)

    def metric(self, predictions: np.ndarray, targets: np.ndarray) -> float:
        found = predictions.max(axis=1, initial=0) > 0
        return float(np.mean(found == (targets == 1))) if len(targets) else 0.0

    def agree(self, ids: Sequence[str], targets: np.ndarray, candidate: Observed, baseline: Observed) -> Agreement:
        now, before = candidate.predictions, baseline.predictions
        same = np.all(now == before, axis=1)
        right = (now.max(axis=1, initial=0) > 0) == (targets == 1)
        was_right = (before.max(axis=1, initial=0) > 0) == (targets == 1)
        per_class = [
            ClassDelta(int(label), int(mask.sum()), float(right[mask].mean()), float(was_right[mask].mean()))
            for label in np.unique(targets)
            for mask in [targets == label]
        ]
        return Agreement(
            agreement=float(same.mean()) if len(same) else 1.0,
            flips=[ids[i] for i in np.flatnonzero(~same)],
            negative_flips=[ids[i] for i in np.flatnonzero(was_right & ~right)],
            positive_flips=[ids[i] for i in np.flatnonzero(~was_right & right)],
            per_class=per_class,
            metric=float(right.mean()) if len(right) else 0.0,
            metric_baseline=float(was_right.mean()) if len(was_right) else 0.0,
            details={"proposals_mean": float(now.sum(axis=1).mean()) if len(now) else 0.0},
        )
