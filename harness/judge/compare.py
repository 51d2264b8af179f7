"""Comparison of one runtime's outputs with a baseline's, judged by a tolerance.

Task-neutral numeric error per output (max/mean abs, max relative, relative
L2, cosine per sample) here; the task plugin (`harness.tasks`) adds how far
the predictions agree: agreement, flips (negative flips: right before, wrong
now; positive flips: the reverse, as in the regression-free model update
literature), per-class deltas, the metric delta and task details (top-5 and
KL for classification; matched IoU, missing and extra boxes for detection).
Each judged check is one PASS/FAIL line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from harness.judge.attribution import Attribution
from harness.run.outputs import difference
from harness.spec.tolerance import Tolerance
from harness.tasks import ClassDelta, Observed, Task

REL_FLOOR = 1e-6
WORST_SAMPLES = 5


@dataclass(frozen=True)
class OutputStats:
    max_abs: float
    mean_abs: float
    max_rel: float
    max_rel_l2: float
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


@dataclass(frozen=True)
class Baseline:
    """What a runtime is compared with, resolved once: the suite's reference runtime, the runtime's golden, or
    another measurement (`noise`); written `reference:<runtime>`, `golden`, `noise` in reports."""

    kind: str
    runtime: str | None = None  # reference: which runtime

    @classmethod
    def reference(cls, runtime: str) -> Baseline:
        return cls("reference", runtime)

    def __str__(self) -> str:
        return f"{self.kind}:{self.runtime}" if self.runtime else self.kind


GOLDEN = Baseline("golden")


@dataclass(frozen=True)
class Unmeasured:
    """Samples whose baseline raw outputs were not kept (a bounded golden, `harness.judge.golden`) and whose bits
    differ from the candidate's: their error is known from below only, by how much their largest magnitude and L2
    norm moved (|max|a| - max|b|| <= max |a - b|, |‖a‖ - ‖b‖| <= ‖a - b‖); their cosine is not measured (1.0)."""

    mask: np.ndarray  # bool per sample
    max_abs: dict[str, np.ndarray]  # per output, per sample: a lower bound of the max abs error
    rel_l2: dict[str, np.ndarray]  # per output, per sample: a lower bound of the relative L2 error
    scale: dict[str, np.ndarray]  # per output, per sample: the baseline's largest magnitude

    @classmethod
    def between(cls, mask: np.ndarray, now: dict[str, np.ndarray], recorded: dict[str, np.ndarray]) -> Unmeasured:
        """From both sides' per-sample magnitudes ([max |x|, L2 norm] per output, `harness.judge.golden.magnitudes`)."""
        low = {name: np.abs(now[name] - value) for name, value in recorded.items()}
        return cls(
            mask,
            {name: value[:, 0] for name, value in low.items()},
            {name: value[:, 1] / np.maximum(recorded[name][:, 1], REL_FLOOR) for name, value in low.items()},
            {name: value[:, 0] for name, value in recorded.items()},
        )

    def of(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.mask, self.max_abs[name], self.rel_l2[name], self.scale[name]


@dataclass
class Comparison:
    """One runtime against one baseline."""

    runtime: str
    against: Baseline
    samples: int
    outputs: dict[str, OutputStats]
    top1_agreement: float  # the task's agreement: top-1 for classification, unchanged images for detection
    flips: list[str]
    negative_flips: list[str]
    positive_flips: list[str]
    per_class: list[ClassDelta]
    worst_samples: list[tuple[str, float]]  # (id, max abs error), largest first
    metric: float
    metric_baseline: float
    details: dict[str, float | None] = field(default_factory=dict)  # task-specific (top5_agreement, kl_mean, mean_iou, ...)
    sample_max_abs: np.ndarray = field(default_factory=lambda: np.zeros(0))  # worst over outputs, per sample
    sample_min_cosine: np.ndarray = field(default_factory=lambda: np.ones(0))
    checks: list[Check] = field(default_factory=list)
    attribution: Attribution | None = None
    # output -> per sample: max abs error, cosine, the baseline's largest magnitude
    sample_errors: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    by_profile: bool = False  # the task has no predictions: agreement = share of samples within the judging profile
    ids: tuple[str, ...] = ()
    reported: tuple[str, ...] = ()  # outputs whose statistics are reported and judge nothing (the task's `reported_outputs`)

    def judged_errors(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`sample_errors` of the outputs that judge."""
        return {name: errors for name, errors in self.sample_errors.items() if name not in self.reported}

    def within(self, tolerance: Tolerance) -> np.ndarray:
        """Per sample: are its raw outputs within the profile's numeric limits (max abs, cosine; an output's own
        limits where the profile gives them)?"""
        if not self.sample_errors:
            return (self.sample_max_abs <= tolerance.max_abs) & (self.sample_min_cosine >= tolerance.min_cosine)
        inside = np.ones(self.samples, dtype=bool)
        for name, (max_abs, _cosine, _scale) in self.judged_errors().items():
            limits = tolerance.for_output(name)
            inside &= (max_abs <= limits.max_abs) & (self.judged_cosine(name, limits) >= limits.min_cosine)
        return inside

    def judged_cosine(self, name: str, limits: Tolerance) -> np.ndarray:
        """Output `name`'s cosine per sample as judged: 1.0 where the baseline itself is within `max_abs` of zero
        (an empty text map, a blank frame: there the cosine of two near-zero vectors is noise, max abs judges)."""
        _max_abs, cosine, scale = self.sample_errors[name]
        return np.where(scale <= limits.max_abs, 1.0, cosine)

    def cosine_exempt(self, tolerance: Tolerance) -> int:
        """Samples whose cosine would fail but whose baseline is within max_abs of zero (judged by max abs alone)."""
        exempt = np.zeros(self.samples, dtype=bool)
        for name, (_max_abs, cosine, scale) in self.judged_errors().items():
            limits = tolerance.for_output(name)
            exempt |= (scale <= limits.max_abs) & (cosine < limits.min_cosine)
        return int(exempt.sum())

    @property
    def metric_delta(self) -> float:
        return self.metric - self.metric_baseline

    @property
    def negative_flip_rate(self) -> float:
        return len(self.negative_flips) / self.samples if self.samples else 0.0

    @property
    def positive_flip_rate(self) -> float:
        return len(self.positive_flips) / self.samples if self.samples else 0.0

    @property
    def worst_class(self) -> ClassDelta | None:
        return min(self.per_class, key=lambda c: c.delta) if self.per_class else None

    @property
    def worst(self) -> OutputStats:
        """Worst value of each statistic over the outputs that judge (all of them when every one is reported)."""
        stats = [s for name, s in self.outputs.items() if name not in self.reported] or list(self.outputs.values())
        return OutputStats(
            max_abs=max(s.max_abs for s in stats),
            mean_abs=max(s.mean_abs for s in stats),
            max_rel=max(s.max_rel for s in stats),
            max_rel_l2=max(s.max_rel_l2 for s in stats),
            min_cosine=min(s.min_cosine for s in stats),
            mean_cosine=min(s.mean_cosine for s in stats),
        )

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def describe(self) -> dict[str, Any]:
        worst_class = self.worst_class
        return {
            "runtime": self.runtime,
            "against": str(self.against),
            "samples": self.samples,
            "outputs": {k: asdict(v) for k, v in self.outputs.items()},
            "reported_outputs": list(self.reported),  # their statistics judge nothing
            "top1_agreement": self.top1_agreement,
            **self.details,
            "flips": self.flips,
            "negative_flips": self.negative_flips,
            "positive_flips": self.positive_flips,
            "negative_flip_rate": self.negative_flip_rate,
            "positive_flip_rate": self.positive_flip_rate,
            "per_class": [asdict(c) | {"delta": c.delta} for c in self.per_class],
            "worst_class": worst_class.label if worst_class else None,
            "worst_samples": [{"id": i, "max_abs": e} for i, e in self.worst_samples],
            "metric": self.metric,
            "metric_baseline": self.metric_baseline,
            "metric_delta": self.metric_delta,
            "attribution": self.attribution.describe() if self.attribution else None,
            "checks": [c.describe() for c in self.checks],
            "passed": self.passed,
        }


def _rows(candidate: np.ndarray, baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both sides as float64 rows (one per sample), NaN padding (ragged outputs) as 0, and their absolute difference
    (`outputs.difference`: a row only one side has is an infinite one)."""
    if candidate.shape != baseline.shape:
        raise ValueError(f"shape {candidate.shape} differs from baseline {baseline.shape}")
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    base = baseline.reshape(len(baseline), -1).astype(np.float64)
    diff = difference(cand, base)
    return np.nan_to_num(cand, nan=0.0), np.nan_to_num(base, nan=0.0), diff


def per_sample_max_abs(candidate: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    return _rows(candidate, baseline)[2].max(axis=1, initial=0.0)


def output_stats(candidate: np.ndarray, baseline: np.ndarray) -> OutputStats:
    return _stats_and_sample_errors(candidate, baseline)[0]


def _stats_and_sample_errors(
    candidate: np.ndarray, baseline: np.ndarray, bounds: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
) -> tuple[OutputStats, np.ndarray, np.ndarray, np.ndarray]:
    """Aggregated statistics, the per-sample max abs error, cosine and baseline magnitude, from one pass over the difference;
    with `bounds` (`Unmeasured.of`), its samples count with their lower bounds in max abs and relative L2 and are left
    out of the statistics that need both sides' values (mean abs, max relative, cosine)."""
    cand, base, diff = _rows(candidate, baseline)
    base_norm = np.linalg.norm(base, axis=1)
    norms = np.linalg.norm(cand, axis=1) * base_norm
    dots = np.sum(cand * base, axis=1)
    cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(np.all(diff == 0, axis=1), 1.0, 0.0))
    rel_l2 = np.linalg.norm(diff, axis=1) / np.maximum(base_norm, REL_FLOOR)
    errors, scale = diff.max(axis=1, initial=0.0), np.abs(base).max(axis=1, initial=0.0)
    kept = np.ones(len(diff), dtype=bool)
    if bounds is not None:
        mask, low_abs, low_rel, low_scale = bounds
        kept = ~mask
        errors, rel_l2, scale = np.where(mask, low_abs, errors), np.where(mask, low_rel, rel_l2), np.where(mask, low_scale, scale)
        cosine = np.where(mask, 1.0, cosine)
    measured, measured_cosine = diff[kept], cosine[kept]
    stats = OutputStats(
        max_abs=float(errors.max(initial=0.0)),
        mean_abs=float(measured.mean()) if measured.size else 0.0,
        max_rel=float((measured / np.maximum(np.abs(base[kept]), REL_FLOOR)).max(initial=0.0)),
        max_rel_l2=float(rel_l2.max(initial=0.0)),
        min_cosine=float(measured_cosine.min(initial=1.0)),
        mean_cosine=float(measured_cosine.mean()) if measured_cosine.size else 1.0,
    )
    return stats, errors, cosine, scale


def compare(
    runtime: str,
    against: Baseline,
    ids: tuple[str, ...],
    targets: np.ndarray,
    candidate: Observed,
    baseline: Observed,
    task: Task,
    unmeasured: Unmeasured | None = None,
) -> Comparison:
    """Candidate against baseline on the same samples: output statistics here, agreement from the task; the baseline's
    rows of `unmeasured` samples are stand-ins, their errors its lower bounds."""
    measured = {
        name: _stats_and_sample_errors(candidate.outputs[name], baseline.outputs[name], unmeasured.of(name) if unmeasured else None)
        for name in baseline.outputs
    }
    reported = tuple(getattr(task, "reported_outputs", ()))
    judged = [sample for name, sample in measured.items() if name not in reported] or list(measured.values())
    errors = np.sum([sample_errors for _, sample_errors, _, _ in judged], axis=0)
    worst = np.argsort(-errors)[:WORST_SAMPLES] if len(ids) else []
    agreement = task.agree(ids, targets, candidate, baseline)
    return Comparison(
        runtime=runtime,
        against=against,
        samples=len(ids),
        outputs={name: stats for name, (stats, _, _, _) in measured.items()},
        top1_agreement=agreement.agreement,
        flips=agreement.flips,
        negative_flips=agreement.negative_flips,
        positive_flips=agreement.positive_flips,
        per_class=agreement.per_class,
        worst_samples=[(ids[i], float(errors[i])) for i in worst],
        metric=agreement.metric,
        metric_baseline=agreement.metric_baseline,
        details=agreement.details,
        sample_max_abs=np.max([e for _, e, _, _ in judged], axis=0),
        sample_min_cosine=np.min([c for _, _, c, _ in judged], axis=0),
        sample_errors={name: (errors, cosine, scale) for name, (_, errors, cosine, scale) in measured.items()},
        by_profile=getattr(task, "agreement_by_profile", False),
        ids=ids,
        reported=reported,
    )


CHECKS = ("max_abs", "min_cosine", "top1_agreement", "flips", "negative_flip_rate", "metric_delta")  # what `judge` checks
DETECTION_CHECKS = ("mean_matched_iou",)  # and for detections


def _numeric(comparison: Comparison, tolerance: Tolerance) -> dict[str, tuple[float, float, str]]:
    """max_abs and min_cosine over the outputs without limits of their own, then per output with them
    (`max_abs[boxes]`)."""
    judged = [name for name in comparison.outputs if name not in comparison.reported]
    own = [name for name in judged if name in tolerance.outputs]
    plain = [name for name in judged if name not in tolerance.outputs]

    def cosine(name: str, limits: Tolerance) -> float:
        if name not in comparison.sample_errors:  # statistics without per-sample rows
            return comparison.outputs[name].min_cosine
        return float(comparison.judged_cosine(name, limits).min(initial=1.0))

    measured: dict[str, tuple[float, float, str]] = {}
    if plain:
        measured["max_abs"] = (max(comparison.outputs[n].max_abs for n in plain), tolerance.max_abs, "<=")
        measured["min_cosine"] = (min(cosine(n, tolerance) for n in plain), tolerance.min_cosine, ">=")
    for name in own:
        limits = tolerance.for_output(name)
        measured[f"max_abs[{name}]"] = (comparison.outputs[name].max_abs, limits.max_abs, "<=")
        measured[f"min_cosine[{name}]"] = (cosine(name, limits), limits.min_cosine, ">=")
    return measured


def by_profile(comparison: Comparison, tolerance: Tolerance) -> None:
    """A task without predictions (raw outputs): a sample agrees when its outputs are within `tolerance`; the
    share that agrees is both the agreement and the metric (the baseline agrees with itself: 1.0)."""
    inside = comparison.within(tolerance)
    share = float(inside.mean()) if len(inside) else 1.0
    comparison.top1_agreement = comparison.metric = share
    comparison.metric_baseline = 1.0
    comparison.flips = [comparison.ids[i] for i in np.flatnonzero(~inside)]  # no right or wrong: no negative flips


def judge(comparison: Comparison, tolerance: Tolerance) -> Comparison:
    """Attach one check per tolerance key; returns the same comparison."""
    if comparison.by_profile:
        by_profile(comparison, tolerance)
    exempt = comparison.cosine_exempt(tolerance) if comparison.sample_errors else 0
    if exempt:
        comparison.details["cosine_exempt_samples"] = exempt
    measured = _numeric(comparison, tolerance)
    measured |= {
        "top1_agreement": (comparison.top1_agreement, tolerance.min_top1_agreement, ">="),
        "flips": (len(comparison.flips), tolerance.max_flips, "<="),
        "negative_flip_rate": (comparison.negative_flip_rate, tolerance.max_negative_flip_rate, "<="),
        "metric_delta": (abs(comparison.metric_delta), tolerance.max_metric_delta, "<="),
    }
    matched_iou = comparison.details.get("mean_matched_iou")
    if matched_iou is not None:  # detection
        measured["mean_matched_iou"] = (matched_iou, tolerance.min_mean_matched_iou, ">=")
    order = [*CHECKS, *DETECTION_CHECKS]
    comparison.checks = [Check(name, *measured[name]) for name in sorted(measured, key=lambda n: order.index(n.split("[")[0]))]
    return comparison
