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
from harness.compare import Comparison, compare, judge
from harness.dataset import Dataset, load_dataset
from harness.environment import environment
from harness.errors import HarnessError
from harness.feed import InputSet, batch_slices, build_inputs
from harness.golden import Golden, GoldenStore, metadata_changes
from harness.report import RunReport, RuntimeResult
from harness.suite import Suite
from harness.tasks import Task, make_task
from runtimes import RuntimeSpec, get_runtime

Tracker = Callable[[str, int], Callable[[], None]]
STALENESS_KEYS = ("model", "dataset", "stack", "environment", "artifacts")


def _no_tracking(_description: str, _total: int) -> Callable[[], None]:
    return lambda: None


@dataclass(frozen=True)
class Inference:
    """Raw outputs of one runtime on one input set, and what it ran on."""

    runtime: str
    outputs: dict[str, np.ndarray]
    predictions: np.ndarray
    metric: float
    seconds: float
    session: dict[str, str]
    artifacts: dict[str, Any]  # provenance of the files this runtime consumed


def run_session(
    spec: RuntimeSpec, artifacts: ModelArtifacts, inputs: InputSet, batch_size: int, advance: Callable[[], None]
) -> tuple[dict[str, np.ndarray], float, dict[str, str]]:
    """Feed `inputs` batch by batch; returns concatenated outputs and inference seconds."""
    artifacts.accessed.clear()
    session = spec.open(artifacts)
    input_name = artifacts.input_names[0]
    chunks: dict[str, list[np.ndarray]] = {}
    seconds = 0.0
    for rows in batch_slices(len(inputs), batch_size):
        feed = {input_name: inputs.tensors[rows]}
        start = time.perf_counter()
        out = session.run(feed)
        seconds += time.perf_counter() - start
        for name, value in out.items():
            chunks.setdefault(name, []).append(value)
        advance()
    return {name: np.concatenate(parts) for name, parts in chunks.items()}, seconds, session.describe()


class SuiteRun:
    """A suite prepared for inference: dataset, input tensors, lazy model artifacts."""

    def __init__(self, suite: Suite, cache: ArtifactCache, limit: int | None = None, track: Tracker = _no_tracking) -> None:
        self.suite = suite
        self.track = track
        self.dataset: Dataset = load_dataset(suite.manifest, suite.split)
        self.samples = self.dataset.samples[:limit] if limit else self.dataset.samples
        self.task: Task = make_task(suite.task, suite.model.output_names)
        self.cache = cache
        self._inputs: InputSet | None = None
        self._variants: dict[str, ModelArtifacts] = {}
        self.artifacts = self.artifacts_for(None)

    def artifacts_for(self, variant: str | None) -> ModelArtifacts:
        """The suite's model artifacts, or those of a model variant (`exporters.rewrites`), built lazily and shared."""
        key = variant or ""
        if key not in self._variants:
            self._variants[key] = ModelArtifacts(
                self.cache,
                suite=self.suite,
                parity_inputs=lambda: self.inputs.tensors[: self.suite.export.parity_samples],
                calibration_inputs=lambda: self.calibration,
                variant=get_variant(variant) if variant else None,
            )
        return self._variants[key]

    @property
    def inputs(self) -> InputSet:
        """The samples through the suite's stack, decoded on first use."""
        if self._inputs is None:
            track = self.track(f"decode + {self.suite.stack.name} stack", len(self.samples))
            self._inputs = build_inputs(self.samples, self.suite.stack, track)
        return self._inputs

    def set_inputs(self, inputs: InputSet) -> None:
        """Use tensors the caller already built from the suite's stack (e.g. from pixels it decoded once)."""
        if inputs.stack != self.suite.stack or inputs.ids != tuple(s.id for s in self.samples):
            raise ValueError("inputs were not built from this run's samples and stack")
        self._inputs = inputs

    @cached_property
    def calibration(self) -> InputSet:
        """The calibration split through the reference stack (INT8 quantization data)."""
        if not self.suite.calibration_split:
            raise HarnessError(f"{self.suite.path}: no [data] calibration_split", "int8 variants need calibration data")
        samples = load_dataset(self.suite.manifest, self.suite.calibration_split).samples
        return build_inputs(samples, self.suite.stack, self.track("decode calibration split", len(samples)))

    def infer(self, runtime: str, batch_size: int, inputs: InputSet | None = None, variant: str | None = None) -> Inference:
        """Outputs of `runtime` on `inputs` (default: the suite's stack) with the model or one of its variants."""
        spec = get_runtime(runtime)
        inputs = inputs or self.inputs
        artifacts = self.artifacts_for(variant)
        advance = self.track(f"infer {runtime}", -(-len(inputs) // batch_size))
        outputs, seconds, session = run_session(spec, artifacts, inputs, batch_size, advance)
        used = {label: artifacts.provenance[label] for label in dict.fromkeys(artifacts.accessed)}
        predictions = self.task.predictions(outputs)
        return Inference(runtime, outputs, predictions, self.task.metric(predictions, inputs.labels), seconds, session, used)

    def context(self) -> dict[str, Any]:
        """Provenance shared by reports and goldens."""
        return {
            "model": {"builder": self.suite.model.builder, "weights_sha256": self.artifacts.weights_sha256},
            "dataset": {"manifest": self.dataset.manifest.name, "sha256": self.dataset.manifest_sha256, "split": self.dataset.split},
            "stack": self.suite.stack.describe(),
            "environment": environment(),
        }

    def golden_from(self, inference: Inference) -> Golden:
        return Golden(
            runtime=inference.runtime,
            ids=self.inputs.ids,
            outputs=inference.outputs,
            predictions=inference.predictions,
            metrics={self.task.metric_name: inference.metric},
            metadata={**self.context(), "artifacts": inference.artifacts, "session": inference.session},
        )

    def compare_to_golden(self, inference: Inference, golden: Golden, update_hint: str) -> Comparison:
        outputs, predictions = golden.select(self.inputs.ids, update_hint)
        baseline_metric = self.task.metric(predictions, self.inputs.labels)
        return compare(
            inference.runtime,
            "golden",
            self.inputs.ids,
            inference.outputs,
            outputs,
            inference.predictions,
            predictions,
            inference.metric,
            baseline_metric,
        )


def precision_of(runtime: str) -> str:
    return runtime.rsplit("-", 1)[-1]


def validate_runtimes(names: list[str]) -> None:
    """Unknown or unavailable runtimes fail before any work is done."""
    for name in names:
        get_runtime(name).require_available()


def run_suite(
    suite: Suite,
    runtimes: list[str],
    cache: ArtifactCache,
    golden_store: GoldenStore | None,
    batch_size: int,
    limit: int | None = None,
    track: Tracker = _no_tracking,
) -> RunReport:
    """Run every runtime, compare each to the reference and (when a store is given) to its golden."""
    reference = suite.reference_runtime
    order = [reference] + [r for r in runtimes if r != reference]
    validate_runtimes(order)
    goldens = {r: golden_store.load(r) for r in runtimes} if golden_store else {}
    run = SuiteRun(suite, cache, limit, track)
    ref = run.infer(reference, batch_size)
    results: list[RuntimeResult] = []
    notes: list[str] = []
    for name in order:
        inference = ref if name == reference else run.infer(name, batch_size)
        result = RuntimeResult(name, inference.session, inference.metric, inference.seconds)
        tolerance = suite.tolerance_for(precision_of(name))
        if name != reference:
            against = compare(
                name,
                f"reference:{reference}",
                run.inputs.ids,
                inference.outputs,
                ref.outputs,
                inference.predictions,
                ref.predictions,
                inference.metric,
                ref.metric,
            )
            result.comparisons.append(judge(against, tolerance))
        if name in goldens:
            assert golden_store is not None
            golden = goldens[name]
            result.comparisons.append(judge(run.compare_to_golden(inference, golden, golden_store.update_hint(name)), tolerance))
            notes += staleness_notes(name, golden.metadata, {**run.context(), "artifacts": inference.artifacts})
        results.append(result)
    context = run.context() | {"artifacts": dict(run.artifacts.provenance)}
    return RunReport(
        suite=suite.name,
        task=suite.task,
        metric_name=run.task.metric_name,
        reference=reference,
        samples=len(run.inputs),
        context=context,
        results=results,
        notes=notes,
    )


def staleness_notes(runtime: str, recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'golden of ort-fp32 recorded with environment.libraries.onnxruntime: 1.17 -> now 1.18' lines; never a failure by itself."""
    old = {k: recorded.get(k, {}) for k in STALENESS_KEYS}
    new = {k: now.get(k, {}) for k in STALENESS_KEYS}
    return [f"golden of {runtime} recorded with {change.replace(' -> ', ', now ')}" for change in metadata_changes(old, new)]


def record_goldens(
    suite: Suite, runtimes: list[str], cache: ArtifactCache, store: GoldenStore, batch_size: int, track: Tracker = _no_tracking
) -> list[tuple[str, list[str]]]:
    """Run `runtimes`, write their goldens, and say per runtime what changed against the old one."""
    validate_runtimes(runtimes)
    run = SuiteRun(suite, cache, None, track)
    inferences = [run.infer(name, batch_size) for name in runtimes]
    changes = []
    for inference in inferences:
        new = run.golden_from(inference)
        lines = ["new golden"]
        if store.exists(inference.runtime):
            old = store.load(inference.runtime)
            comp = run.compare_to_golden(inference, old, store.update_hint(inference.runtime)) if set(old.ids) >= set(new.ids) else None
            lines = [f"{run.task.metric_name} {old.metrics.get(run.task.metric_name)} -> {inference.metric}"]
            if comp:
                lines.append(f"max abs change {comp.worst.max_abs:.3e}, {len(comp.flips)} predictions changed")
            else:
                lines.append("sample set changed")
            lines += metadata_changes(old.metadata, new.metadata)
        store.write(new)
        changes.append((inference.runtime, lines))
    return changes
