"""Model artifacts, built lazily (Polygraphy's loader idea).

A runtime asks for what it consumes, `torch_model()` or `onnx_path(precision)`,
and only then is it built: a run on `torch-fp32` alone never exports, and an
export already in the cache is reused.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
import torch

from exporters.cache import ArtifactCache
from exporters.onnx_export import OutputParity, check_parity, export_onnx
from harness import __version__
from harness.dataset import sha256_file
from harness.errors import HarnessError
from harness.models import build_model
from harness.suite import Suite


class ModelArtifacts:
    """The model of one suite, or a ready ONNX file, in every form a runtime may need."""

    def __init__(
        self,
        suite: Suite | None = None,
        cache: ArtifactCache | None = None,
        parity_inputs: Callable[[], np.ndarray] | None = None,
        onnx_file: Path | None = None,
    ) -> None:
        if (suite is None) == (onnx_file is None):
            raise ValueError("give either a suite or an onnx_file")
        self.suite = suite
        self.cache = cache
        self._parity_inputs = parity_inputs
        self._onnx_file = onnx_file
        self.log: list[str] = []
        self.parity: list[OutputParity] = []

    @cached_property
    def weights_sha256(self) -> str:
        assert self.suite is not None
        if not self.suite.model.weights.is_file():
            raise HarnessError(f"weights file not found: {self.suite.model.weights}", "fix [model] weights in the suite")
        return sha256_file(self.suite.model.weights)

    @cached_property
    def _onnx_io(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        assert self._onnx_file is not None
        graph = onnx.load(str(self._onnx_file), load_external_data=False).graph
        initializers = {i.name for i in graph.initializer}
        return tuple(i.name for i in graph.input if i.name not in initializers), tuple(o.name for o in graph.output)

    @property
    def input_names(self) -> tuple[str, ...]:
        return (self.suite.model.input_name,) if self.suite else self._onnx_io[0]

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.suite.model.output_names if self.suite else self._onnx_io[1]

    @cached_property
    def _torch(self) -> torch.nn.Module:
        if self.suite is None:
            raise HarnessError(
                "torch runtimes need the PyTorch model of a suite", "with --onnx use onnxruntime/openvino runtimes, or pass --suite"
            )
        model = self.suite.model
        return build_model(model.builder, model.weights, model.kwargs)

    def torch_model(self) -> torch.nn.Module:
        return self._torch

    def onnx_path(self, precision: str) -> Path:
        if precision != "fp32":
            raise HarnessError(f"no {precision} model variant is available", "this build exports fp32 ONNX only")
        if self._onnx_file is not None:
            return self._onnx_file
        return self.export_fp32()

    def export_fields(self) -> dict[str, object]:
        """Everything the exported bytes depend on: the cache key."""
        assert self.suite is not None
        model = self.suite.model
        return {
            "artifact": "onnx-fp32",
            "builder": model.builder,
            "kwargs": model.kwargs,
            "weights_sha256": self.weights_sha256,
            "input_name": model.input_name,
            "output_names": list(model.output_names),
            "opset": self.suite.export.opset,
            "input_hw": self.suite.stack.input_hw,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
        }

    def export_fp32(self) -> Path:
        return self._fp32_onnx

    @cached_property
    def _fp32_onnx(self) -> Path:
        """The cached fp32 ONNX file (exported when absent), parity-checked against PyTorch."""
        assert self.suite is not None and self.cache is not None
        suite = self.suite
        fields = self.export_fields()
        inputs = self._parity_inputs() if self._parity_inputs else None
        if inputs is None or len(inputs) == 0:
            raise ValueError("export needs parity inputs")
        built = []

        def build(out: Path) -> None:
            metadata = {f"harness.{k}": str(v) for k, v in fields.items()} | {"harness.version": __version__}
            export_onnx(self.torch_model(), inputs[:2], out, suite.model.input_name, suite.model.output_names, suite.export.opset, metadata)
            built.append(out)

        path = self.cache.get_or_build("onnx", fields, "model.fp32.onnx", build)
        self.log.append(f"{'exported' if built else 'cached'} {path}")
        self.parity = check_parity(self.torch_model(), path, inputs, suite.model.input_name, suite.export.atol)
        self.log.extend(r.line() for r in self.parity)
        failed = [r for r in self.parity if not r.ok]
        if failed:
            raise HarnessError(
                f"export parity failed for suite {suite.name}: " + "; ".join(r.line() for r in failed),
                "the ONNX graph disagrees with PyTorch; raise [export] atol only if the difference is understood",
            )
        return path
