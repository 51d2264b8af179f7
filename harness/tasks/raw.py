"""Raw outputs only: for fully convolutional, multi-output or unusual nets that no task decodes.

Every output is compared by name (max and mean abs, max relative, relative L2, cosine per sample) and judged by
the precision's tolerance profile, with an output's own limits where the suite gives them
(`[tolerance.fp16.outputs.boxes]`). There are no predictions and no invented metric: a sample agrees when all
its outputs are within the profile, and the share of samples that agree is both the agreement and the
reported metric (`within`; the baseline agrees with itself, 1.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from harness.data.stack import Geometry
from harness.tasks.base import Agreement, Observed, OutputContractError, Shapes, listed, register_task, require_output


@register_task
@dataclass(frozen=True)
class RawTask:
    name: ClassVar[str] = "raw"
    postprocess_keys: ClassVar[dict[str, type]] = {}
    postprocess_variants: ClassVar[dict[str, dict[str, Any]]] = {}
    agreement_by_profile: ClassVar[bool] = True  # `harness.judge.compare.by_profile` fills agreement and metric

    output_names: tuple[str, ...]
    metric_name: str = field(default="within", init=False)

    def check_outputs(self, shapes: Shapes, classes: int) -> None:
        for name in self.output_names:
            require_output(shapes, name, "[model] output_names")
        for name, dims in shapes.items():
            if dims is not None and len(dims) == 0:
                raise OutputContractError(
                    f"output '{name}' is a scalar: raw comparison needs one row per sample ({listed(shapes)})",
                    "export the model with a batch axis on every output",
                )

    def target(self, entry: dict[str, Any], classes: int) -> np.ndarray:
        return np.zeros(0)  # labels, if the manifest has any, are not read

    def predictions(self, outputs: dict[str, np.ndarray], geometry: Sequence[Geometry] = ()) -> np.ndarray:
        rows = len(next(iter(outputs.values()))) if outputs else 0
        return np.zeros((rows, 0))

    def metric(self, predictions: np.ndarray, targets: np.ndarray) -> float:
        return 1.0  # a runtime's outputs are within any profile of themselves

    def agree(self, ids: Sequence[str], targets: np.ndarray, candidate: Observed, baseline: Observed) -> Agreement:
        return Agreement(agreement=1.0, flips=[], negative_flips=[], positive_flips=[], per_class=[], metric=1.0, metric_baseline=1.0)
