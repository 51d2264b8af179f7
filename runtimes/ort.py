"""ONNX Runtime: CPU, CUDA and TensorRT execution providers, every precision.

Each precision runs its own file (`model.fp16.onnx`, `model.int8-qdq.onnx`);
the precision each compute op really runs in is read from the graph ONNX
Runtime optimized for the provider (`runtimes.precision`);
the GPU providers need the `onnxruntime-gpu` build (never installed beside
the CPU `onnxruntime`: both provide the same module).
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from harness.core.environment import compute_threads
from harness.core.errors import HarnessError
from runtimes.base import Artifacts, RuntimeSpec, TensorInfo, dims, register
from runtimes.precision import executed, format_counts, onnx_compute_precisions

GPU_HINT = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"


class OrtSession:
    def __init__(self, artifacts: Artifacts, spec: RuntimeSpec, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime as ort

        path = artifacts.onnx_path(spec.precision)
        options = ort.SessionOptions()
        options.log_severity_level = 4  # fatal only: an error reaches the caller as the exception, not also as a log line
        options.intra_op_num_threads = self._threads = compute_threads()
        options.inter_op_num_threads = 1
        # The graph ONNX Runtime really runs (casts inserted around ops without kernels of the model's type) is written
        # by this session as it optimizes (`_executed_ops` reads it); a provider that compiles its nodes (TensorRT)
        # writes none, and the model's own types are what runs there.
        self._scratch = None if providers[0] == "TensorrtExecutionProvider" else tempfile.TemporaryDirectory(prefix="harness-ort-")
        if self._scratch is not None:
            options.optimized_model_filepath = str(Path(self._scratch.name) / "optimized.onnx")
            # weights beside it, not in it: only the graph is read back (a large model's weights would double RSS)
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.weights")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        try:
            self._session = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as exc:
            self._drop_scratch()
            first = str(exc).splitlines()[0]
            raise HarnessError(f"ONNX Runtime cannot load {path}: {first}", "check the file is a valid ONNX model") from exc
        self._path = path
        self._compute_ops: dict[str, int] | None = None
        if self._session.get_providers()[0] != providers[0]:
            raise HarnessError(
                f"ONNX Runtime fell back from {providers[0]} to {self._session.get_providers()[0]}", "check the CUDA/TensorRT install"
            )
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._version = ort.__version__
        self._precision = spec.precision

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._session.run(self._output_names, feeds)
        return {name: np.asarray(o, dtype=np.float32) for name, o in zip(self._output_names, outs, strict=True)}

    def inputs(self) -> list[TensorInfo]:
        return [TensorInfo(i.name, dims(i.shape), i.type) for i in self._session.get_inputs()]

    def outputs(self) -> list[TensorInfo]:
        return [TensorInfo(o.name, dims(o.shape), o.type) for o in self._session.get_outputs()]

    def close(self) -> None:
        del self._session
        self._drop_scratch()

    def _drop_scratch(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def _executed_ops(self) -> dict[str, int]:
        """Compute ops per precision in the graph ONNX Runtime really runs, read from the optimized graph this session
        wrote (once; its scratch folder then goes), or from the model itself under TensorRT."""
        import onnx

        if self._compute_ops is None:
            if self._scratch is None:
                self._compute_ops = onnx_compute_precisions(onnx.load(str(self._path), load_external_data=False))
            else:
                optimized = Path(self._scratch.name) / "optimized.onnx"
                self._compute_ops = onnx_compute_precisions(onnx.load(str(optimized), load_external_data=False))
                self._drop_scratch()
        return self._compute_ops

    def describe(self) -> dict[str, str]:
        compute_ops = self._executed_ops()
        return {
            "providers": ",".join(self._session.get_providers()),
            "precision": self._precision,
            "executed": executed(compute_ops),
            "compute_ops": format_counts(compute_ops),
            "threads": str(self._threads),
            "onnxruntime": self._version,
        }


def _provider_probe(provider: str) -> str | None:
    import onnxruntime as ort

    if provider in ort.get_available_providers():
        return None
    return f"this onnxruntime build has no {provider} ({GPU_HINT})"


_DEVICES = {
    "": ("cpu", ("CPUExecutionProvider",)),
    "cuda-": ("cuda", ("CUDAExecutionProvider", "CPUExecutionProvider")),
    "trt-": ("cuda", ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")),
}

for _prefix, (_device, _providers) in _DEVICES.items():
    for _precision in ("fp32", "fp16", "int8"):
        register(
            RuntimeSpec(
                name=f"ort-{_prefix}{_precision}",
                backend="onnxruntime",
                device=_device,
                precision=_precision,
                modules=("onnxruntime",),
                install_hint="pip install onnxruntime" if _device == "cpu" else GPU_HINT,
                opener=partial(OrtSession, providers=_providers),
                probe=None if _device == "cpu" else partial(_provider_probe, _providers[0]),
            )
        )
