"""Tolerance profiles: the thresholds one comparison is judged by.

Profiles are keyed by precision (`fp32`, `fp16`, `int8`, ...): a runtime named
`ort-fp16` is judged by the `fp16` profile.  Suites override any key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from harness.errors import HarnessError


@dataclass(frozen=True)
class Tolerance:
    """Thresholds; a check passes when its measured value is within them."""

    max_abs: float = 1e-3
    min_cosine: float = 0.99999
    min_top1_agreement: float = 1.0
    max_flips: int = 0
    max_metric_delta: float = 0.0
    max_negative_flip_rate: float = 0.0  # share of samples right before and wrong now

    def describe(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_PROFILES: dict[str, Tolerance] = {
    "fp32": Tolerance(),
    "fp16": Tolerance(
        max_abs=5e-2, min_cosine=0.9995, min_top1_agreement=0.99, max_flips=5, max_metric_delta=0.01, max_negative_flip_rate=0.01
    ),
    "bf16": Tolerance(
        max_abs=2e-1, min_cosine=0.998, min_top1_agreement=0.98, max_flips=10, max_metric_delta=0.02, max_negative_flip_rate=0.02
    ),
    # INT8 logits move a lot on individual samples; gate on what users feel: top-1, flips, negative flips.
    "int8": Tolerance(
        max_abs=10.0, min_cosine=0.0, min_top1_agreement=0.98, max_flips=10, max_metric_delta=0.02, max_negative_flip_rate=0.02
    ),
}


def parse_profiles(table: dict[str, Any], origin: str) -> dict[str, Tolerance]:
    """Merge a suite's `[tolerance.<precision>]` tables over the defaults."""
    profiles = dict(DEFAULT_PROFILES)
    allowed = {f.name: f.type for f in fields(Tolerance)}
    for precision, overrides in table.items():
        if not isinstance(overrides, dict):
            raise HarnessError(f"{origin}: [tolerance.{precision}] must be a table", "e.g. [tolerance.fp32] max_abs = 1e-3")
        unknown = sorted(set(overrides) - set(allowed))
        if unknown:
            raise HarnessError(f"{origin}: [tolerance.{precision}] has unknown keys {unknown}", f"allowed: {sorted(allowed)}")
        for key, value in overrides.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise HarnessError(f"{origin}: [tolerance.{precision}] {key} must be a number, got {value!r}")
        profiles[precision] = replace(profiles.get(precision, Tolerance()), **overrides)
    return profiles
