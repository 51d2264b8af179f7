"""One suite run, in data-flow order:

dataset -> stack -> input tensors -> runtime -> outputs -> post-processing
-> comparison (vs reference, vs golden) -> report.

Inputs are decoded and pre-processed once; every runtime gets the same array.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from exporters.artifacts import ModelArtifacts
from exporters.cache import ArtifactCache
from exporters.rewrites import get_variant
from harness.compare import GOLDEN, Baseline, Comparison, compare, judge
from harness.dataset import Dataset, load_dataset
from harness.environment import environment
from harness.errors import HarnessError
from harness.feed import InputSet, batch_layout, build_inputs, first_samples, padded_batch
from harness.golden import Golden, GoldenStore
from harness.measured import Inference, RunOutputs
from harness.provenance import executed_precision, numeric_changes, staleness
from harness.report import RunReport, RuntimeResult
from harness.stack import StackSpec
from harness.stages import Tolerated, attribute
from harness.suite import Suite
from harness.tasks import Task, make_task
from harness.tolerance import Tolerance
from runtimes import RuntimeSpec, Session, get_runtime
from runtimes.precision import judged_precision, parse_counts, precision_note

Tracker = Callable[[str, int], Callable[[], None]]


def no_tracking(_description: str, _total: int) -> Callable[[], None]:
    return lambda: None


def feed_session(
    session: Session, input_name: str, inputs: InputSet, batch_size: int, advance: Callable[[], None]
) -> tuple[dict[str, np.ndarray], float]:
    """Feed `inputs` in full batches of the split's fixed grid (`feed.batch_layout`); returns each sample's
    outputs (padding rows dropped) and the inference seconds."""
    outputs: dict[str, np.ndarray] = {}
    seconds = 0.0
    for rows, slots in batch_layout(inputs.positions, batch_size):
        feed = {input_name: padded_batch(inputs.tensors, rows, slots, batch_size)}
        start = time.perf_counter()
        out = session.run(feed)
        seconds += time.perf_counter() - start
        for name, value in out.items():
            if name not in outputs:
                outputs[name] = np.empty((len(inputs), *value.shape[1:]), dtype=value.dtype)
            outputs[name][rows] = value[slots]
        advance()
    return outputs, seconds


@dataclass
class OpenSession:
    session: Session
    input_name: str
    describe: dict[str, str]
    used: dict[str, Any]  # provenance of the artifacts the session consumed


def open_session(spec: RuntimeSpec, artifacts: ModelArtifacts) -> OpenSession:
    """A session of `spec` on `artifacts`, with what it runs and the provenance of the files it consumed."""
    artifacts.accessed.clear()
    session = spec.open(artifacts)
    used = {label: artifacts.provenance[label] for label in dict.fromkeys(artifacts.accessed)}
    return OpenSession(session, artifacts.input_names[0], session.describe(), used)


def run_session(
    spec: RuntimeSpec, artifacts: ModelArtifacts, inputs: InputSet, batch_size: int, advance: Callable[[], None]
) -> tuple[dict[str, np.ndarray], float, dict[str, str]]:
    """Open a session, feed it `inputs` (`feed_session`) and close it; returns the outputs, inference seconds
    and what the session ran."""
    opened = open_session(spec, artifacts)
    try:
        outputs, seconds = feed_session(opened.session, opened.input_name, inputs, batch_size, advance)
        return outputs, seconds, opened.describe
    finally:
        opened.session.close()


def batches(inputs: InputSet, batch_size: int) -> int:
    """Batches of the fixed grid that `inputs` touch."""
    return len(np.unique(inputs.positions // batch_size))


class Sessions:
    """Sessions kept open across the parts of a run that stream through them (work units, matrix chunks)."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, ...], OpenSession] = {}

    def infer(
        self,
        key: tuple[str, ...],
        runtime: str,
        artifacts: ModelArtifacts,
        inputs: InputSet,
        batch_size: int,
        task: Task,
        advance: Callable[[], None],
    ) -> Inference:
        """`runtime` on `inputs` through the session opened for `key` (opened on first use)."""
        if key not in self._open:
            self._open[key] = open_session(get_runtime(runtime), artifacts)
        opened = self._open[key]
        outputs, seconds = feed_session(opened.session, opened.input_name, inputs, batch_size, advance)
        return Inference(runtime, outputs, task.predictions(outputs, inputs.geometry), seconds, opened.describe, opened.used)

    def close(self) -> None:
        for opened in self._open.values():
            opened.session.close()
        self._open.clear()


class SuiteRun:
    """A suite prepared for inference: dataset, input tensors, lazy model artifacts."""

    def __init__(
        self, suite: Suite, cache: ArtifactCache, limit: int | None = None, track: Tracker = no_tracking, stack: StackSpec | None = None
    ) -> None:
        self.suite = suite
        self.stack = stack or suite.stack  # what the samples are fed through; calibration always uses the reference stack
        self.track = track
        self.task: Task = make_task(suite.task, suite.model.output_names, suite.postprocess)
        self.dataset: Dataset = load_dataset(suite.manifest, suite.split, self.task.target)
        self.samples = self.dataset.samples[:limit] if limit else self.dataset.samples
        self.cache = cache
        self._inputs: InputSet | None = None
        self._first: dict[int, InputSet] = {}
        self._variants: dict[str, ModelArtifacts] = {}
        self.artifacts = self.artifacts_for(None)

    def artifacts_for(self, variant: str | None) -> ModelArtifacts:
        """The suite's model artifacts, or those of a model variant (`exporters.rewrites`), built lazily and shared."""
        key = variant or ""
        if key not in self._variants:
            self._variants[key] = ModelArtifacts(
                self.cache,
                suite=self.suite,
                parity_inputs=lambda: self.first_inputs(self.suite.export.parity_samples).tensors,
                calibration_inputs=lambda: self.calibration,
                variant=get_variant(variant) if variant else None,
            )
        return self._variants[key]

    @property
    def inputs(self) -> InputSet:
        """The samples through the suite's stack, decoded on first use."""
        if self._inputs is None:
            track = self.track(f"decode + {self.stack.name} stack", len(self.samples))
            self._inputs = build_inputs(self.samples, self.stack, track, self.suite.intake)
        return self._inputs

    def first_inputs(self, count: int) -> InputSet:
        """The first `count` samples through the run's stack (the export's parity check), decoding only those
        unless every sample already is."""
        if self._inputs is not None:
            return first_samples(self._inputs, count)
        if count not in self._first:
            self._first[count] = build_inputs(self.samples[:count], self.stack, None, self.suite.intake)
        return self._first[count]

    @cached_property
    def calibration(self) -> InputSet:
        """The calibration split through the reference stack (INT8 quantization data)."""
        if not self.suite.calibration_split:
            raise HarnessError(f"{self.suite.path}: no [data] calibration_split", "int8 variants need calibration data")
        samples = load_dataset(self.suite.manifest, self.suite.calibration_split, self.task.target).samples
        return build_inputs(samples, self.suite.stack, self.track("decode calibration split", len(samples)), self.suite.intake)

    def infer(
        self,
        runtime: str,
        batch_size: int,
        inputs: InputSet | None = None,
        variant: str | None = None,
        artifacts: ModelArtifacts | None = None,
    ) -> Inference:
        """Outputs of `runtime` on `inputs` (default: the suite's stack) with the model, one of its variants, or
        `artifacts` derived from them (other recipe steps)."""
        inputs = inputs or self.inputs
        artifacts = artifacts or self.artifacts_for(variant)
        sessions = Sessions()  # one session, closed after these inputs
        try:
            return sessions.infer(
                (runtime,), runtime, artifacts, inputs, batch_size, self.task, self.track(f"infer {runtime}", batches(inputs, batch_size))
            )
        finally:
            sessions.close()

    def context(self) -> dict[str, Any]:
        """Provenance shared by reports and goldens."""
        return {
            "model": {"builder": self.suite.model.builder, "weights_sha256": self.artifacts.weights_sha256},
            "dataset": {"manifest": self.dataset.manifest.name, "sha256": self.dataset.manifest_sha256, "split": self.dataset.split},
            "stack": self.stack.describe(),
            "environment": environment(),
        }


def validate_runtimes(names: list[str]) -> None:
    """Unknown or unavailable runtimes fail before any work is done."""
    for name in names:
        get_runtime(name).require_available()


def judged_profile(suite: Suite, inference: Inference, golden: Golden | None = None) -> tuple[str, Tolerance]:
    """The tolerance profile a runtime is judged by: that of the lowest precision it asked for or really executed
    (against a golden, also the one the golden executed: fp16 now against a bf16 golden differs at bf16's scale)."""
    requested = get_runtime(inference.runtime).precision
    executed = [inference.session.get("executed", requested)]
    if golden is not None and executed_precision(golden.metadata):
        executed.append(str(executed_precision(golden.metadata)))
    profile = judged_precision(requested, "+".join(executed))
    return profile, suite.tolerance_for(profile)


def compare_to_reference(
    suite: Suite, ids: tuple[str, ...], labels: np.ndarray, inference: Inference, reference: Inference, task: Task
) -> Comparison:
    """A runtime against the reference runtime on the same samples, judged by the profile of its precision."""
    comparison = compare(inference.runtime, Baseline.reference(reference.runtime), ids, labels, inference, reference, task)
    return judge(comparison, judged_profile(suite, inference)[1])


def compare_to_golden(measured: RunOutputs, inference: Inference, golden: Golden, task: Task, update_hint: str, suite: Suite) -> Comparison:
    """The run against the golden's recorded outputs and predictions, with stage attribution that tells
    numeric noise (within the judging profile) from a change, and names what differs in the environment."""
    recorded = golden.select(measured.ids, update_hint)
    comparison = compare(inference.runtime, GOLDEN, measured.ids, measured.labels, inference, recorded, task)
    profile, tolerance = judged_profile(suite, inference, golden)
    tolerated = Tolerated(comparison.within(tolerance), comparison.sample_max_abs, profile)
    environment = numeric_changes(golden.metadata, measured.metadata(inference.runtime))
    comparison.attribution = attribute(recorded.stages, measured.stages | inference.stages, len(measured.ids), tolerated, environment)
    return comparison


def judge_run(suite: Suite, measured: RunOutputs, golden_store: GoldenStore | None, goldens: dict[str, Golden] | None = None) -> RunReport:
    """Compare each runtime with the reference and (when a store is given) with its golden (`goldens`: already loaded)."""
    task = make_task(suite.task, suite.model.output_names, suite.postprocess)
    reference = suite.reference_runtime
    ref = measured.inferences[reference]
    if golden_store and goldens is None:
        goldens = {r: golden_store.load(r) for r in measured.requested}
    results: list[RuntimeResult] = []
    notes: list[str] = []
    stale: dict[str, list[str]] = {}  # staleness phrase -> runtimes whose golden it applies to
    for name, inference in measured.inferences.items():
        result = RuntimeResult(
            name,
            inference.session,
            task.metric(inference.predictions, measured.labels),
            inference.seconds,
            determinism=measured.determinism.get(name),
        )
        requested = get_runtime(name).precision
        note = precision_note(name, requested, parse_counts(inference.session.get("compute_ops", "")))
        if note:
            notes.append(note)
        if name != reference:
            result.comparisons.append(compare_to_reference(suite, measured.ids, measured.labels, inference, ref, task))
        if goldens and name in goldens:
            assert golden_store is not None
            golden = goldens[name]
            comparison = compare_to_golden(measured, inference, golden, task, golden_store.update_hint(name), suite)
            assert comparison.attribution is not None
            comparison = judge(comparison, suite.tolerance_for(comparison.attribution.profile))  # the profile attribution used
            result.comparisons.append(comparison)
            if comparison.attribution and (not comparison.passed or comparison.attribution.noise):
                notes.append(f"{name} vs golden: {comparison.attribution.message()}")
            for phrase in staleness(golden.metadata, measured.metadata(name)):
                stale.setdefault(phrase, []).append(name)
        results.append(result)
    notes += [f"golden{'s' if len(names) > 1 else ''} of {', '.join(names)} recorded {phrase}" for phrase, names in stale.items()]
    if measured.intake:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(measured.intake.items()))
        count = sum(measured.intake.values())
        notes.append(f"image intake converted {count}/{len(measured.ids)} samples ({kinds}): see README, Image intake")
    return RunReport(
        suite=suite.name,
        task=suite.task,
        metric_name=task.metric_name,
        reference=reference,
        samples=len(measured.ids),
        context=measured.context,
        results=results,
        notes=notes,
        shard=measured.shard,
    )
