"""Tolerance profiles: the thresholds one comparison is judged by.

Profiles are keyed by precision (`fp32`, `fp16`, `int8`, ...): a runtime named
`ort-fp16` is judged by the `fp16` profile.  Suites override any key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Tolerance:
    """Thresholds; a check passes when its measured value is within them."""

    max_abs: float = 1e-3
    min_cosine: float = 0.99999
    min_top1_agreement: float = 1.0
    max_flips: int = 0
    max_metric_delta: float = 0.0
    max_negative_flip_rate: float = 0.0  # share of samples right before and wrong now
    min_mean_matched_iou: float = 0.0  # detection: mean IoU of the detections matched across the two sides
    max_layer_rel_l2: float = 1e-4  # `harness localize`: an intermediate tensor's relative L2 error beyond this diverges
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)  # output -> its own max_abs / min_cosine

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    def for_output(self, name: str) -> Tolerance:
        """The profile with output `name`'s own numeric limits ([tolerance.<precision>.outputs.<name>]) over it."""
        return replace(self, **self.outputs[name]) if name in self.outputs else self


DEFAULT_PROFILES: dict[str, Tolerance] = {
    "fp32": Tolerance(),
    "fp16": Tolerance(
        max_abs=5e-2,
        min_cosine=0.9995,
        min_top1_agreement=0.99,
        max_flips=5,
        max_metric_delta=0.01,
        max_negative_flip_rate=0.01,
        max_layer_rel_l2=1e-2,
    ),
    "bf16": Tolerance(
        max_abs=2e-1,
        min_cosine=0.998,
        min_top1_agreement=0.98,
        max_flips=10,
        max_metric_delta=0.02,
        max_negative_flip_rate=0.02,
        max_layer_rel_l2=5e-2,
    ),
    # INT8 logits move a lot on individual samples; gate on what users feel: top-1, flips, negative flips.
    "int8": Tolerance(
        max_abs=10.0,
        min_cosine=0.0,
        min_top1_agreement=0.98,
        max_flips=10,
        max_metric_delta=0.02,
        max_negative_flip_rate=0.02,
        max_layer_rel_l2=0.25,
    ),
}


def merge_profiles(overrides: dict[str, dict[str, Any]]) -> dict[str, Tolerance]:
    """A suite's `[tolerance.<precision>]` tables (validated by `harness.spec.schema`) over the defaults."""
    profiles = dict(DEFAULT_PROFILES)
    for precision, keys in overrides.items():
        profiles[precision] = replace(profiles.get(precision, Tolerance()), **keys)
    return profiles


@dataclass(frozen=True)
class Tolerances:
    """A suite's profiles by precision; a precision without one of its own is judged by the fp32 profile."""

    profiles: dict[str, Tolerance]

    def for_precision(self, precision: str) -> Tolerance:
        return self.profiles.get(precision, self.profiles["fp32"])
