"""OpenVINO on the CPU (and an OpenVINO GPU device when present), from IR files.

The inference precision is pinned explicitly (on CPUs with AMX or
AVX512-BF16 OpenVINO would default to bf16), and the precision the compiled
graph really executes in is read back from its runtime model: an FP16 IR on
a CPU without FP16 arithmetic is reported as running in f32.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from harness.errors import HarnessError
from runtimes.base import RuntimeSpec, register

if TYPE_CHECKING:
    from exporters.artifacts import ModelArtifacts

PRECISION_HINTS = {"fp32": "f32", "fp16": "f16", "int8": "f32"}
COMPUTE_OPS = ("Convolution", "MatMul", "FullyConnected", "GroupConvolution")


class OpenVinoSession:
    def __init__(self, artifacts: ModelArtifacts, spec: RuntimeSpec, device: str = "CPU") -> None:
        import openvino as ov

        path = artifacts.openvino_ir(spec.precision)
        core = ov.Core()
        try:
            self._compiled = core.compile_model(
                core.read_model(str(path)), device, {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[spec.precision]}
            )
        except Exception as exc:
            raise HarnessError(f"OpenVINO cannot load {path}: {str(exc).splitlines()[0]}", "check the IR and the device") from exc
        self._request = self._compiled.create_infer_request()
        self._outputs = [(port.get_any_name(), port) for port in self._compiled.outputs]
        self._device = device
        self._version = ov.get_version()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._request.infer(feeds)
        return {name: np.array(result[port], dtype=np.float32) for name, port in self._outputs}

    def effective_precisions(self) -> dict[str, int]:
        """Runtime precision of the compute-heavy ops of the compiled graph, counted."""
        counts: Counter[str] = Counter()
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            keys = set(info.keys())
            if {"layerType", "runtimePrecision"} <= keys and info["layerType"].astype(str) in COMPUTE_OPS:
                counts[info["runtimePrecision"].astype(str)] += 1
        return dict(counts)

    def describe(self) -> dict[str, str]:
        """`precision` is what arithmetic really runs in: int8 when the compiled graph has integer
        convolutions, else the inference precision the plugin accepted (an f16 request on a CPU
        without f16 arithmetic reads back as f32)."""
        ops = self.effective_precisions()
        accepted = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        return {
            "device": self._device,
            "precision": "int8" if {"i8", "u8"} & set(ops) else accepted,
            "compute_op_precisions": ",".join(f"{k}:{v}" for k, v in sorted(ops.items())),
            "openvino": self._version,
        }


def _gpu_probe() -> str | None:
    import openvino as ov

    return None if "GPU" in ov.Core().available_devices else "no OpenVINO GPU device on this machine"


for _suffix, _device in (("", "CPU"), ("gpu-", "GPU")):
    for _precision in ("fp32", "fp16", "int8"):
        register(
            RuntimeSpec(
                name=f"ov-{_suffix}{_precision}",
                backend="openvino",
                device=_device.lower(),
                precision=_precision,
                modules=("openvino",),
                install_hint="pip install 'sysnoise-harness[openvino]'",
                opener=partial(OpenVinoSession, device=_device),
                probe=_gpu_probe if _device == "GPU" else None,
            )
        )
