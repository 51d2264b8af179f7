"""The verdict of a run: per runtime its metric and its comparisons (vs the reference, vs its golden), judged
by the suite's tolerance profiles; `judge_run` makes it from what a run measured, `run_suite` measures then
judges.  `RunReport.describe()` is the report's JSON (versioned schema, documented in README.md, "Report
format"; bump `SCHEMA_VERSION` on any incompatible change); `harness.report` renders it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from exporters.cache import ArtifactCache
from exporters.fp16_audit import audit_lines
from harness.core.environment import int8_saturates
from harness.judge.attribution import Tolerated, attribute
from harness.judge.compare import GOLDEN, Baseline, Comparison, Unmeasured, compare, judge
from harness.judge.golden import Golden, GoldenStore, magnitudes
from harness.judge.provenance import evaluator, executed_precision, numeric_changes, staleness
from harness.run.execute import measure
from harness.run.executors.base import Execution
from harness.run.outputs import Determinism, Inference, RunOutputs
from harness.run.plan import RunRequest
from harness.run.sessions import Tracker, no_tracking, validate_runtimes
from harness.spec.suite import Suite
from harness.spec.tolerance import Tolerance
from harness.tasks import Task, make_task
from runtimes import get_runtime
from runtimes.precision import judged_precision, parse_counts, precision_note

SCHEMA_VERSION = "1.2"


@dataclass
class RuntimeResult:
    runtime: str
    session: dict[str, str]
    metric: float
    infer_seconds: float
    comparisons: list[Comparison] = field(default_factory=list)
    determinism: Determinism | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "session": self.session,
            "metric": self.metric,
            "infer_seconds": round(self.infer_seconds, 4),
            "determinism": self.determinism.describe() if self.determinism else None,
            "comparisons": [c.describe() for c in self.comparisons],
            "passed": self.passed,
        }


@dataclass(repr=False)
class RunReport:
    suite: str
    task: str
    metric_name: str
    reference: str
    samples: int
    context: dict[str, Any]
    results: list[RuntimeResult]
    notes: list[str] = field(default_factory=list)
    shard: tuple[int, int] = (1, 1)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    measured: RunOutputs | None = field(default=None, repr=False, compare=False)  # the raw outputs judged (`api.check`)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def __repr__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return f"<RunReport {self.suite}: {verdict}, {len(self.results)} runtimes on {self.samples} samples; .summary() for more>"

    def summary(self) -> str:
        """The verdict, then a line per runtime and baseline: metric, delta in points, failed checks."""
        lines = [f"{self.suite}: {'PASS' if self.passed else 'FAIL'} ({self.metric_name}, {self.samples} samples, {self.stack} stack)"]
        for result in self.results:
            if not result.comparisons:
                lines.append(f"  {result.runtime}: {self.metric_name} {100 * result.metric:.2f}% (reference)")
            for comp in result.comparisons:
                failed = [c.name for c in comp.checks if not c.passed]
                verdict = "FAIL " + ", ".join(failed) if failed else "PASS"
                metric = f"{100 * comp.metric:.2f}% ({100 * comp.metric_delta:+.2f} pts)"
                lines.append(f"  {result.runtime} vs {comp.against}: {metric}, {len(comp.flips)} flips, {verdict}")
        return "\n".join(lines + [f"  note: {note}" for note in self.notes])

    @property
    def stack(self) -> str:
        """The name of the stack the samples went through ("reference", or a named stack of the suite)."""
        return str(self.context.get("stack", {}).get("name", "reference"))

    def describe(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "suite-run",
            "created": self.created,
            "suite": self.suite,
            "task": self.task,
            "metric_name": self.metric_name,
            "reference": self.reference,
            "samples": self.samples,
            "shard": f"{self.shard[0]}/{self.shard[1]}",
            **self.context,
            "notes": self.notes,
            "results": [r.describe() for r in self.results],
            "passed": self.passed,
        }


def judged_profile(suite: Suite, inference: Inference, golden: Golden | None = None) -> tuple[str, Tolerance]:
    """The tolerance profile a runtime is judged by: that of the lowest precision it asked for or really executed
    (against a golden, also the one the golden executed: fp16 now against a bf16 golden differs at bf16's scale)."""
    requested = get_runtime(inference.runtime).precision
    executed = [inference.session.get("executed", requested)]
    if golden is not None and executed_precision(golden.metadata):
        executed.append(str(executed_precision(golden.metadata)))
    profile = judged_precision(requested, "+".join(executed))
    return profile, suite.tolerances.for_precision(profile)


def compare_to_reference(
    suite: Suite, ids: tuple[str, ...], labels: np.ndarray, inference: Inference, reference: Inference, task: Task
) -> Comparison:
    """A runtime against the reference runtime on the same samples, judged by the profile of its precision."""
    comparison = compare(inference.runtime, Baseline.reference(reference.runtime), ids, labels, inference, reference, task)
    return judge(comparison, judged_profile(suite, inference)[1])


@dataclass(frozen=True)
class Recorded:
    """Raw outputs and predictions of some samples (a `harness.tasks.Observed`)."""

    outputs: dict[str, np.ndarray]
    predictions: np.ndarray

    def take(self, rows: np.ndarray) -> Recorded:
        return Recorded({name: value[rows] for name, value in self.outputs.items()}, self.predictions[rows])


def compare_to_golden(measured: RunOutputs, inference: Inference, golden: Golden, task: Task, update_hint: str, suite: Suite) -> Comparison:
    """The run against the golden's recorded outputs and predictions, with stage attribution that tells
    numeric noise (within the judging profile) from a change, and names what differs in the environment.

    Against a bounded golden (raw outputs of a subset, `harness.judge.golden`): numeric statistics on the samples it
    keeps and on those bit for bit identical to it; the others (`Unmeasured`) count with lower bounds of their
    max abs and relative L2 change, predictions and stage hashes on every sample.  A task whose agreement reads
    raw outputs (classification's top-5 and KL; no `agreement_from_predictions`) is compared on the known samples only."""
    ids, now = measured.ids, magnitudes(inference.outputs)
    recorded = golden.select(ids, update_hint)
    outputs, known = recorded.baseline_for(inference, update_hint)
    before = recorded.magnitudes
    all_rows = known.all() or getattr(task, "agreement_from_predictions", False)
    rows = np.arange(len(ids)) if all_rows else np.flatnonzero(known)
    low = Unmeasured.between(~known, now, before)
    unmeasured = Unmeasured.between(~known[rows], {n: v[rows] for n, v in now.items()}, {n: v[rows] for n, v in before.items()})
    candidate, baseline = Recorded(inference.outputs, inference.predictions), Recorded(outputs, recorded.predictions)
    chosen = tuple(ids[r] for r in rows)
    comparison = compare(
        inference.runtime,
        GOLDEN,
        chosen,
        measured.labels[rows],
        candidate.take(rows),
        baseline.take(rows),
        task,
        unmeasured if unmeasured.mask.any() else None,
    )
    if not recorded.complete:
        comparison.details |= {
            "golden_raw_samples": float(len(recorded.raw)),
            "unmeasured_samples": float(unmeasured.mask.sum()),
            "uncompared_samples": float(len(ids) - len(rows)),
        }
    profile, tolerance = judged_profile(suite, inference, golden)
    bounds = {name: bound for name, bound in low.max_abs.items() if name not in comparison.reported}
    within, max_abs = np.ones(len(ids), dtype=bool), np.max(list(bounds.values()), axis=0, initial=0.0)
    for name, bound in bounds.items():
        within &= bound <= tolerance.for_output(name).max_abs  # samples left out of the comparison: their lower bounds
    within[rows], max_abs[rows] = comparison.within(tolerance), comparison.sample_max_abs
    tolerated = Tolerated(within, max_abs, profile, ~known)
    environment = numeric_changes(golden.metadata, measured.metadata(inference.runtime))
    comparison.attribution = attribute(recorded.stages, measured.stages | inference.stages, len(ids), tolerated, environment)
    return comparison


def coverage_note(comparison: Comparison) -> str | None:
    """What a bounded golden's comparison rests on, when the golden did not keep every sample's raw outputs."""
    if "golden_raw_samples" not in comparison.details:
        return None
    kept, left_out = (int(comparison.details[key] or 0) for key in ("golden_raw_samples", "uncompared_samples"))
    note = (
        f"raw outputs of {kept}/{comparison.samples + left_out} samples: numeric checks on those and on the samples bit for bit "
        "identical to them; on the rest output hashes, a lower bound of max abs from the recorded magnitudes, and predictions"
    )
    if left_out:
        note += "; this task's agreement reads raw outputs: it is compared on those samples only, stage attribution on all"
    return note


def degenerate(inference: Inference, max_abs: float) -> str | None:
    """Why `inference`'s outputs cannot tell runtimes apart, when they cannot: so small that no error check of
    `max_abs` can fail, or the same for every sample (random or untrained weights, a broken export)."""
    for name, values in inference.outputs.items():
        values = np.asarray(values, dtype=np.float64)
        scale = float(np.max(np.abs(values))) if values.size else 0.0
        if scale <= max_abs:
            return f"{inference.runtime}'s output {name} is at most {scale:.1e}, within max_abs {max_abs:g}: no error check can fail"
        spread = float(np.max(np.std(values, axis=0))) if len(values) > 1 else scale
        if spread <= 1e-6 * scale:
            return f"{inference.runtime}'s output {name} is the same for every sample (spread {spread:.1e} of {scale:.1e})"
    return None


def fp16_audit_notes(measured: RunOutputs) -> dict[str, list[str]]:
    """The FP16 range audit of each FP16 file a runtime consumed (its provenance), line -> runtimes."""
    found: dict[str, list[str]] = {}
    for name, inference in measured.inferences.items():
        audit = inference.artifacts.get("onnx:fp16", {}).get("fp16_audit")
        for line in audit_lines(audit) if audit else []:
            found.setdefault(line, []).append(name)
    return found


def saturation_note(name: str, inference: Inference) -> str | None:
    """One line when full-range 8-bit weights ran on an x86 CPU without VNNI, whose int8 kernels (VPMADDUBSW) add
    pairs of products in saturating 16-bit lanes: the same Q/DQ file scores lower there than on a VNNI CPU."""
    spec = get_runtime(name)
    full_range = not inference.artifacts.get("onnx:int8", {}).get("reduce_range", True)
    if spec.precision != "int8" or spec.device != "cpu" or not full_range or not int8_saturates():
        return None
    return (
        f"{name}: 8-bit weights on a CPU without VNNI, whose int8 kernels add pairs of products in saturating 16-bit "
        "lanes: this CPU can score points below a VNNI one; set [export] int8_reduce_range = true (7-bit weights)"
    )


def judge_run(suite: Suite, measured: RunOutputs, golden_store: GoldenStore | None, goldens: dict[str, Golden] | None = None) -> RunReport:
    """Compare each runtime with the reference and (when a store is given) with its golden (`goldens`: already loaded)."""
    task = make_task(suite.task)
    reference = suite.run.reference
    ref = measured.inferences[reference]
    if golden_store and goldens is None:
        goldens = golden_store.load_all(measured.requested)
    results: list[RuntimeResult] = []
    notes: list[str] = []
    stale: dict[str, list[str]] = {}  # staleness phrase -> runtimes whose golden it applies to
    covered: dict[str, list[str]] = {}  # a bounded golden's coverage -> runtimes
    for name, inference in measured.inferences.items():
        result = RuntimeResult(
            name,
            inference.session,
            task.metric(inference.predictions, measured.labels),
            inference.seconds,
            determinism=measured.determinism.get(name),
        )
        requested = get_runtime(name).precision
        ran = precision_note(name, requested, parse_counts(inference.session.get("compute_ops", "")))
        notes += [note for note in (ran, saturation_note(name, inference)) if note]
        if name != reference:
            result.comparisons.append(compare_to_reference(suite, measured.ids, measured.labels, inference, ref, task))
            profile, tolerance = judged_profile(suite, inference)
            if getattr(task, "agreement_by_profile", False) and tolerance.min_cosine <= 0:
                notes.append(
                    f"{name}: the {profile} profile bounds raw outputs loosely (max abs {tolerance.max_abs:g}, no cosine limit): "
                    f"set [tolerance.{profile}] max_abs and min_cosine for this model's outputs"
                )
        if goldens and name in goldens:
            assert golden_store is not None
            golden = goldens[name]
            comparison = compare_to_golden(measured, inference, golden, task, golden_store.update_hint(name), suite)
            assert comparison.attribution is not None
            comparison = judge(comparison, suite.tolerances.for_precision(comparison.attribution.profile))  # the profile attribution used
            result.comparisons.append(comparison)
            attribution = comparison.attribution
            if not comparison.passed or attribution.noise or attribution.unmeasured:
                notes.append(f"{name} vs golden: {attribution.message()}")
            coverage = coverage_note(comparison)
            if coverage:
                covered.setdefault(coverage, []).append(name)
            for phrase in staleness(golden.metadata, measured.metadata(name) | evaluator(task)):
                stale.setdefault(phrase, []).append(name)
        for comparison in result.comparisons:
            exempt = comparison.details.get("cosine_exempt_samples")
            if exempt:
                notes.append(
                    f"{name} vs {comparison.against}: {exempt} sample(s) whose reference output is within max_abs of zero "
                    "judged by max abs alone (the cosine of near-zero outputs is noise)"
                )
        results.append(result)
    notes += [f"golden{'s' if len(names) > 1 else ''} of {', '.join(names)} recorded {phrase}" for phrase, names in stale.items()]
    notes += [
        f"golden{'s' if len(names) > 1 else ''} of {', '.join(names)} keep{'' if len(names) > 1 else 's'} {phrase}"
        for phrase, names in covered.items()
    ]
    if suite.model.fixed_batch:
        batch = suite.model.fixed_batch
        notes.append(f"{suite.model.weights.name} is fixed to batch {batch}: every runtime was fed batches of {batch}")
    notes += [f"{', '.join(names)}: {line}" for line, names in fp16_audit_notes(measured).items()]
    degenerate_reference = degenerate(ref, suite.tolerances.for_precision("fp32").max_abs)
    if degenerate_reference:
        notes.append(f"{degenerate_reference}: the checks pass trivially; are the weights the trained ones?")
    if measured.intake:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(measured.intake.items()))
        count = sum(measured.intake.values())
        notes.append(f"image intake converted {count}/{len(measured.ids)} samples ({kinds}): see README, Image intake")
    return RunReport(
        suite=suite.name,
        task=suite.task.name,
        metric_name=task.metric_name,
        reference=reference,
        samples=len(measured.ids),
        context=measured.context,
        results=results,
        notes=notes,
        shard=measured.shard,
    )


def run_suite(
    suite: Suite,
    request: RunRequest,
    cache: ArtifactCache,
    golden_store: GoldenStore | None = None,
    execution: Execution | None = None,
    track: Tracker = no_tracking,
    golden_runtimes: Sequence[str] | None = None,
) -> tuple[RunReport, RunOutputs]:
    """Measure every runtime of `request` (the reference first), then judge against the reference and (with a store)
    the goldens of `golden_runtimes` (default: every runtime); returns the report and what was measured."""
    runtimes = list(request.runtimes)
    validate_runtimes([suite.run.reference, *runtimes])
    compared = runtimes if golden_runtimes is None else [r for r in runtimes if r in golden_runtimes]
    goldens = golden_store.load_all(compared) if golden_store else {}  # missing or corrupt: fail before inference
    execution = execution or Execution()
    measured = measure(suite, request, cache, execution, track)
    report = judge_run(suite, measured, golden_store, goldens)
    report.context = report.context | {"execution": execution.record}  # the report's, not the goldens': how, not what
    return report, measured
