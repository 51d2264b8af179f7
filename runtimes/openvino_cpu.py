"""OpenVINO on the CPU, reading the same ONNX file as every other backend.

The inference precision is pinned explicitly: on CPUs with AMX or AVX512-BF16
OpenVINO defaults to bf16, which would make `ov-fp32` silently not FP32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.errors import HarnessError
from runtimes.base import RuntimeSpec, register

if TYPE_CHECKING:
    from exporters.artifacts import ModelArtifacts

PRECISION_HINTS = {"fp32": "f32"}


class OpenVinoSession:
    def __init__(self, artifacts: ModelArtifacts, spec: RuntimeSpec) -> None:
        import openvino as ov

        path = artifacts.onnx_path(spec.precision)
        core = ov.Core()
        try:
            model = core.read_model(str(path))
            self._compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[spec.precision]})
        except Exception as exc:
            raise HarnessError(f"OpenVINO cannot load {path}: {str(exc).splitlines()[0]}", "check the file is a valid ONNX model") from exc
        self._request = self._compiled.create_infer_request()
        self._outputs = [(port.get_any_name(), port) for port in self._compiled.outputs]
        self._version = ov.get_version()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._request.infer(feeds)
        return {name: np.array(result[port], dtype=np.float32) for name, port in self._outputs}

    def describe(self) -> dict[str, str]:
        return {
            "device": "CPU",
            "precision": self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            "openvino": self._version,
        }


register(
    RuntimeSpec(
        name="ov-fp32",
        backend="openvino",
        device="cpu",
        precision="fp32",
        modules=("openvino",),
        install_hint="pip install 'sysnoise-harness[openvino]'",
        opener=OpenVinoSession,
    )
)
