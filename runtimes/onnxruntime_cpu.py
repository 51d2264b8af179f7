"""ONNX Runtime, CPU execution provider."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.errors import HarnessError
from runtimes.base import RuntimeSpec, register

if TYPE_CHECKING:
    from exporters.artifacts import ModelArtifacts


class OrtSession:
    def __init__(self, artifacts: ModelArtifacts, spec: RuntimeSpec, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime as ort

        path = artifacts.onnx_path(spec.precision)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as exc:
            raise HarnessError(
                f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}", "check the file is a valid ONNX model"
            ) from exc
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._version = ort.__version__

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._session.run(self._output_names, feeds)
        return {name: np.asarray(o, dtype=np.float32) for name, o in zip(self._output_names, outs, strict=True)}

    def describe(self) -> dict[str, str]:
        return {"device": "cpu", "providers": ",".join(self._session.get_providers()), "onnxruntime": self._version}


register(
    RuntimeSpec(
        name="ort-fp32",
        backend="onnxruntime",
        device="cpu",
        precision="fp32",
        modules=("onnxruntime",),
        install_hint="pip install onnxruntime",
        opener=OrtSession,
    )
)
