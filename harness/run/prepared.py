"""A suite prepared for inference in one process: its dataset, its task, the samples through its stack
(decoded once, on first use) and its model artifacts (built lazily, per model variant)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

import numpy as np

from exporters.artifacts import ModelArtifacts
from exporters.cache import ArtifactCache
from exporters.rewrites import get_variant
from harness.core.environment import environment
from harness.core.errors import HarnessError
from harness.data.dataset import Dataset
from harness.data.feed import InputSet, build_inputs, first_samples
from harness.data.stack import StackSpec
from harness.run.outputs import Inference
from harness.run.sessions import Sessions, Tracker, batches, no_tracking
from harness.spec.suite import Suite
from harness.tasks import Task, make_task
from harness.tasks.base import Shapes, shapes_of, target_parser


class SuiteRun:
    """A suite prepared for inference: dataset, input tensors, lazy model artifacts."""

    def __init__(
        self, suite: Suite, cache: ArtifactCache, limit: int | None = None, track: Tracker = no_tracking, stack: StackSpec | None = None
    ) -> None:
        self.suite = suite
        self.stack = stack or suite.stack  # what the samples are fed through; calibration always uses the reference stack
        self.track = track
        self.task: Task = make_task(suite.task)
        self.dataset: Dataset = suite.data.load(suite.data.split, target_parser(self.task, suite.data.root))
        self.samples = self.dataset.samples[:limit] if limit else self.dataset.samples
        self.cache = cache
        self._inputs: InputSet | None = None
        self._first: dict[int, InputSet] = {}
        self._variants: dict[str, ModelArtifacts] = {}
        self.artifacts = self.artifacts_for(None)
        if suite.model.onnx:  # the declared outputs (ragged ones as the result format holds them), before anything runs
            names, rows = suite.model.ragged
            self._check_shapes(
                {o.name: (None, rows, *o.dims[1:]) if o.name in names and o.dims else o.dims for o in suite.model.onnx.outputs}
            )

    def _check_shapes(self, shapes: Shapes) -> None:
        contract = getattr(self.task, "check_outputs", None)  # optional for a plugin's task: without one, any outputs fit
        if contract is not None:
            contract(shapes, len(self.dataset.classes))

    def check_outputs(self, outputs: Mapping[str, np.ndarray]) -> None:
        """The task's output contract on one batch of real outputs."""
        self._check_shapes(shapes_of(outputs))

    def artifacts_for(self, variant: str | None) -> ModelArtifacts:
        """The suite's model artifacts, or those of a model variant (`exporters.rewrites`), built lazily and shared."""
        key = variant or ""
        if key not in self._variants:
            model = self.suite.model
            sizing = self.stack if self.stack.per_image else self.suite.stack  # a per-image stack: H and W left dynamic
            self._variants[key] = ModelArtifacts(
                self.cache,
                model=None if model.onnx else model,
                onnx_file=model.weights if model.onnx else None,
                export=self.suite.export,
                input_hw=sizing.input_hw,
                parity_inputs=lambda: self.first_inputs(self.suite.export.parity_samples).first_batch(self.suite.export.parity_samples),
                calibration_inputs=(lambda: self.calibration) if self.suite.data.calibration_split else None,
                variant=get_variant(variant) if variant else None,
                ragged=model.ragged,
                image_sizes=sizing.image_sizes,
            )
        return self._variants[key]

    @property
    def inputs(self) -> InputSet:
        """The samples through the suite's stack, decoded on first use."""
        if self._inputs is None:
            track = self.track(f"decode + {self.stack.name} stack", len(self.samples))
            self._inputs = build_inputs(self.samples, self.stack, track, self.suite.data.intake)
        return self._inputs

    def first_inputs(self, count: int) -> InputSet:
        """The first `count` samples through the run's stack (the export's parity check), decoding only those
        unless every sample already is."""
        if self._inputs is not None:
            return first_samples(self._inputs, count)
        if count not in self._first:
            self._first[count] = build_inputs(self.samples[:count], self.stack, None, self.suite.data.intake)
        return self._first[count]

    @cached_property
    def calibration(self) -> InputSet:
        """The calibration split through the reference stack (INT8 quantization data)."""
        if not self.suite.data.calibration_split:
            raise HarnessError(f"{self.suite.path}: no [data] calibration_split", "int8 variants need calibration data")
        samples = self.suite.data.load(self.suite.data.calibration_split, target_parser(self.task, self.suite.data.root)).samples
        return build_inputs(samples, self.suite.stack, self.track("decode calibration split", len(samples)), self.suite.data.intake)

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
            track = self.track(f"infer {runtime}", batches(inputs, artifacts.fixed_batch or batch_size))
            return sessions.infer((runtime,), runtime, artifacts, inputs, batch_size, self.task, track, self.check_outputs)
        finally:
            sessions.close()

    def context(self) -> dict[str, Any]:
        """Provenance shared by reports and goldens."""
        return {
            "model": self.suite.model.identity() | {"weights_sha256": self.artifacts.weights_sha256},
            "dataset": {"manifest": self.dataset.manifest.name, "sha256": self.dataset.manifest_sha256, "split": self.dataset.split},
            "stack": self.stack.describe(),
            "environment": environment(),
        }
