"""OpenVINO on the CPU (and an OpenVINO GPU device when present), from IR files.

The inference precision is pinned explicitly (on CPUs with AMX or
AVX512-BF16 OpenVINO would default to bf16), and the precision the compiled
graph really executes in is read back from the plugin and its runtime model:
an f16 request on a CPU without FP16 arithmetic runs in f32, or in bf16 where
the CPU has AVX512-BF16 or AMX.
"""

from __future__ import annotations

import ctypes
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np

from harness.core.environment import compute_threads, int8_saturates
from harness.core.errors import HarnessError
from runtimes.base import Artifacts, RuntimeSpec, TensorInfo, register
from runtimes.precision import executed, format_counts, normalize

PRECISION_HINTS = {"fp32": "f32", "fp16": "f16", "int8": "f32"}
COMPUTE_OPS = ("Convolution", "MatMul", "FullyConnected", "GroupConvolution")


class SignalStack(ctypes.Structure):
    """`stack_t` of sigaltstack(2)."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def signal_stack() -> SignalStack | None:
    """This thread's alternate signal stack (None off Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    current = SignalStack()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(current))
    return current


@contextmanager
def signal_stack_kept() -> Iterator[None]:
    """Put this thread's alternate signal stack back as it was.  OpenVINO's CPU plugin gives the thread that
    compiles a model an alternate signal stack of its own, and a compiled model puts back, when destroyed, the
    stack it found: models destroyed out of order leave the thread on a freed stack, and the next Python signal
    handler (they run on it, SA_ONSTACK: a SIGCHLD handler, Ctrl-C) kills the process with SIGSEGV."""
    before = signal_stack()
    try:
        yield
    finally:
        if before is not None:
            ctypes.CDLL(None).sigaltstack(ctypes.byref(before), None)


def compile_model(core: Any, model: Any, device: str, config: dict[str, str] | None = None) -> Any:
    """`core.compile_model`, leaving the calling thread's signal stack as it was (`signal_stack_kept`)."""
    with signal_stack_kept():
        return core.compile_model(model, device, config or {})


class OpenVinoSession:
    def __init__(self, artifacts: Artifacts, spec: RuntimeSpec, device: str = "CPU") -> None:
        import openvino as ov

        path = artifacts.openvino_ir(spec.precision)
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[spec.precision]}
        self._threads = compute_threads() if device == "CPU" else None
        if self._threads and spec.precision == "int8" and int8_saturates():
            self._threads = 1  # its int8 kernels without VNNI gave other logits run to run on 2 threads (up to 0.046)
        if self._threads:
            config["INFERENCE_NUM_THREADS"] = str(self._threads)
        try:
            self._compiled = compile_model(core, core.read_model(str(path)), device, config)
        except Exception as exc:
            raise HarnessError(f"OpenVINO cannot load {path}: {str(exc).splitlines()[0]}", "check the IR and the device") from exc
        self._request = self._compiled.create_infer_request()
        self._outputs = [(port.get_any_name(), port) for port in self._compiled.outputs]
        self._device = device
        self._precision = spec.precision
        self._version = ov.get_version()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._request.infer(feeds)
        return {name: np.array(result[port], dtype=np.float32) for name, port in self._outputs}

    def inputs(self) -> list[TensorInfo]:
        return [self._info(port) for port in self._compiled.inputs]

    def outputs(self) -> list[TensorInfo]:
        return [self._info(port) for _, port in self._outputs]

    @staticmethod
    def _info(port: object) -> TensorInfo:
        shape = port.get_partial_shape()  # type: ignore[attr-defined]
        axes = tuple(d.get_length() if d.is_static else None for d in shape) if shape.rank.is_static else None
        return TensorInfo(port.get_any_name(), axes, port.get_element_type().get_type_name())  # type: ignore[attr-defined]

    def close(self) -> None:
        del self._request, self._compiled, self._outputs

    def compute_op_precisions(self) -> dict[str, int]:
        """Compute-heavy ops of the compiled graph counted by their runtime precision (fp32, fp16, bf16, int8)."""
        counts: Counter[str] = Counter()
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            keys = set(info.keys())
            if {"layerType", "runtimePrecision"} <= keys and info["layerType"].astype(str) in COMPUTE_OPS:
                counts[normalize(info["runtimePrecision"].astype(str))] += 1
        return dict(counts)

    def describe(self) -> dict[str, str]:
        """`executed` is what the arithmetic really runs in: int8 for integer convolutions, else the inference
        precision the plugin accepted (an f16 request reads back as f32, or bf16 on a CPU with AVX512-BF16
        but no FP16 arithmetic), whatever the runtime precision label of the ops."""
        ops = self.compute_op_precisions()
        accepted = normalize(self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
        ran: Counter[str] = Counter()
        for precision, count in ops.items():
            ran["int8" if precision == "int8" else accepted] += count
        info = {
            "device": self._device,
            "precision": self._precision,
            "executed": executed(ran),
            "compute_ops": format_counts(ran),
            "openvino": self._version,
        }
        if self._threads:
            info["threads"] = str(self._threads)
        return info


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
