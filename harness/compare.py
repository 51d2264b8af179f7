"""Comparison of one runtime's outputs with a reference's, judged by a tolerance.

Numeric error per output (max/mean abs, max relative, cosine per sample),
prediction agreement and flips, and the task metric delta; each judged check
is one PASS/FAIL line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from harness.tolerance import Tolerance

REL_FLOOR = 1e-6


@dataclass(frozen=True)
class OutputStats:
    max_abs: float
    mean_abs: float
    max_rel: float
    min_cosine: float
    mean_cosine: float


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    limit: float
    op: str  # "<=" or ">="

    @property
    def passed(self) -> bool:
        return bool(self.value <= self.limit) if self.op == "<=" else bool(self.value >= self.limit)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "limit": self.limit, "op": self.op, "passed": self.passed}


@dataclass
class Comparison:
    """One runtime against one baseline (`reference:<runtime>` or `golden`)."""

    runtime: str
    against: str
    samples: int
    outputs: dict[str, OutputStats]
    top1_agreement: float
    flips: list[str]
    metric: float
    metric_baseline: float
    checks: list[Check] = field(default_factory=list)

    @property
    def metric_delta(self) -> float:
        return self.metric - self.metric_baseline

    @property
    def worst(self) -> OutputStats:
        """Worst value of each statistic over all outputs."""
        stats = list(self.outputs.values())
        return OutputStats(
            max_abs=max(s.max_abs for s in stats),
            mean_abs=max(s.mean_abs for s in stats),
            max_rel=max(s.max_rel for s in stats),
            min_cosine=min(s.min_cosine for s in stats),
            mean_cosine=min(s.mean_cosine for s in stats),
        )

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "against": self.against,
            "samples": self.samples,
            "outputs": {k: asdict(v) for k, v in self.outputs.items()},
            "top1_agreement": self.top1_agreement,
            "flips": self.flips,
            "metric": self.metric,
            "metric_baseline": self.metric_baseline,
            "metric_delta": self.metric_delta,
            "checks": [c.describe() for c in self.checks],
            "passed": self.passed,
        }


def output_stats(candidate: np.ndarray, baseline: np.ndarray) -> OutputStats:
    if candidate.shape != baseline.shape:
        raise ValueError(f"shape {candidate.shape} differs from baseline {baseline.shape}")
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    base = baseline.reshape(len(baseline), -1).astype(np.float64)
    diff = np.abs(cand - base)
    norms = np.linalg.norm(cand, axis=1) * np.linalg.norm(base, axis=1)
    dots = np.sum(cand * base, axis=1)
    cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(np.all(diff == 0, axis=1), 1.0, 0.0))
    return OutputStats(
        max_abs=float(diff.max(initial=0.0)),
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        max_rel=float((diff / np.maximum(np.abs(base), REL_FLOOR)).max(initial=0.0)),
        min_cosine=float(cosine.min(initial=1.0)),
        mean_cosine=float(cosine.mean()) if cosine.size else 1.0,
    )


def compare(
    runtime: str,
    against: str,
    ids: tuple[str, ...],
    outputs: dict[str, np.ndarray],
    baseline: dict[str, np.ndarray],
    predictions: np.ndarray,
    baseline_predictions: np.ndarray,
    metric: float,
    metric_baseline: float,
) -> Comparison:
    same = predictions == baseline_predictions
    return Comparison(
        runtime=runtime,
        against=against,
        samples=len(ids),
        outputs={name: output_stats(outputs[name], baseline[name]) for name in baseline},
        top1_agreement=float(np.mean(same)) if len(same) else 1.0,
        flips=[ids[i] for i in np.flatnonzero(~same)],
        metric=metric,
        metric_baseline=metric_baseline,
    )


def judge(comparison: Comparison, tolerance: Tolerance) -> Comparison:
    """Attach one check per tolerance key; returns the same comparison."""
    worst = comparison.worst
    comparison.checks = [
        Check("max_abs", worst.max_abs, tolerance.max_abs, "<="),
        Check("min_cosine", worst.min_cosine, tolerance.min_cosine, ">="),
        Check("top1_agreement", comparison.top1_agreement, tolerance.min_top1_agreement, ">="),
        Check("flips", len(comparison.flips), tolerance.max_flips, "<="),
        Check("metric_delta", abs(comparison.metric_delta), tolerance.max_metric_delta, "<="),
    ]
    return comparison
