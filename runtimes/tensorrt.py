"""TensorRT: deserialize the cached engine of a precision and run it.

I/O is bound by tensor name (`set_input_shape`, `set_tensor_address`,
`execute_async_v3` on a CUDA stream), with device buffers from CUDA PyTorch
tensors when available, else pycuda.  Engine I/O names and dtypes are checked
against the suite before the first batch.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from harness.core.errors import HarnessError, RuntimeUnavailable
from runtimes.base import Artifacts, RuntimeSpec, TensorInfo, register
from runtimes.precision import executed, format_counts, onnx_compute_precisions


class DeviceMemory(Protocol):
    """The few CUDA operations the runner needs, from torch or pycuda."""

    stream_handle: int

    def upload(self, array: np.ndarray) -> tuple[Any, int]: ...

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[Any, int]: ...

    def download(self, buffer: Any) -> np.ndarray: ...

    def synchronize(self) -> None: ...


class TorchDeviceMemory:
    def __init__(self) -> None:
        import torch

        self._torch = torch
        self._stream = torch.cuda.Stream()
        self.stream_handle = self._stream.cuda_stream

    def upload(self, array: np.ndarray) -> tuple[Any, int]:
        with self._torch.cuda.stream(self._stream):
            tensor = self._torch.from_numpy(np.ascontiguousarray(array)).to("cuda", non_blocking=False)
        return tensor, tensor.data_ptr()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[Any, int]:
        tensor = self._torch.empty(shape, dtype=self._torch.from_numpy(np.zeros(0, dtype)).dtype, device="cuda")
        return tensor, tensor.data_ptr()

    def download(self, buffer: Any) -> np.ndarray:
        return buffer.cpu().numpy()

    def synchronize(self) -> None:
        self._stream.synchronize()


class PyCudaDeviceMemory:
    def __init__(self) -> None:
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as cuda

        self._cuda = cuda
        self._stream = cuda.Stream()
        self.stream_handle = self._stream.handle

    def upload(self, array: np.ndarray) -> tuple[Any, int]:
        host = np.ascontiguousarray(array)
        device = self._cuda.mem_alloc(host.nbytes)
        self._cuda.memcpy_htod(device, host)
        return device, int(device)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[Any, int]:
        host = np.empty(shape, dtype)
        device = self._cuda.mem_alloc(max(host.nbytes, 1))
        return (device, host), int(device)

    def download(self, buffer: Any) -> np.ndarray:
        device, host = buffer
        self._cuda.memcpy_dtoh(host, device)
        return host

    def synchronize(self) -> None:
        self._stream.synchronize()


def default_device_memory() -> DeviceMemory:
    try:
        import torch

        if torch.cuda.is_available():
            return TorchDeviceMemory()
    except ImportError:
        pass
    return PyCudaDeviceMemory()


class TensorRTSession:
    def __init__(self, artifacts: Artifacts, spec: RuntimeSpec, memory: DeviceMemory | None = None) -> None:
        import onnx

        from harness.core.devices import import_tensorrt

        trt = import_tensorrt()
        self._trt = trt
        path = artifacts.tensorrt_engine(spec.precision)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise HarnessError(
                f"TensorRT cannot deserialize {path}", "the engine was built for another TensorRT or GPU: run `harness cache clear`"
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        expected_outputs = artifacts.graph_outputs(spec.precision)  # the model's, and tensors a recipe exposed
        if sorted(self._inputs) != sorted(artifacts.input_names) or sorted(self._outputs) != sorted(expected_outputs):
            raise HarnessError(
                f"engine {path} has inputs {self._inputs} and outputs {self._outputs}, the suite expects "
                f"{list(artifacts.input_names)} and {list(expected_outputs)}",
                "run `harness cache clear` and rebuild",
            )
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._memory = memory or default_device_memory()
        self._precision = spec.precision
        # Strongly typed networks (the only kind TensorRT 11 builds) run each layer in the type the ONNX gives it.
        self._compute_ops = onnx_compute_precisions(onnx.load(str(artifacts.onnx_path(spec.precision))))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep_alive = []
        for name in self._inputs:
            array = feeds[name]
            if array.dtype != self._dtypes[name]:
                raise HarnessError(
                    f"engine input '{name}' is {self._dtypes[name]}, the stack gives {array.dtype}", "export with float32 I/O"
                )
            if not self._context.set_input_shape(name, tuple(array.shape)):
                raise HarnessError(
                    f"input shape {array.shape} for '{name}' is outside the engine's optimization profile", "adjust [export] trt_batch"
                )
            buffer, address = self._memory.upload(array)
            self._context.set_tensor_address(name, address)
            keep_alive.append(buffer)
        outputs = {}
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            outputs[name], address = self._memory.empty(shape, self._dtypes[name])
            self._context.set_tensor_address(name, address)
        if not self._context.execute_async_v3(self._memory.stream_handle):
            raise HarnessError("TensorRT execute_async_v3 failed", "see the TensorRT log above")
        self._memory.synchronize()
        return {name: self._memory.download(buffer).astype(np.float32) for name, buffer in outputs.items()}

    def inputs(self) -> list[TensorInfo]:
        return [TensorInfo(name, None, str(self._dtypes[name])) for name in self._inputs]

    def outputs(self) -> list[TensorInfo]:
        return [TensorInfo(name, None, str(self._dtypes[name])) for name in self._outputs]

    def close(self) -> None:
        del self._context, self._engine

    def describe(self) -> dict[str, str]:
        return {
            "device": "cuda",
            "precision": self._precision,
            "executed": executed(self._compute_ops),
            "compute_ops": format_counts(self._compute_ops),
            "tensorrt": str(self._trt.__version__),
        }


def _cuda_probe() -> str | None:
    from harness.core.devices import gpu_identity

    try:
        gpu_identity()
    except RuntimeUnavailable as exc:
        return str(exc)
    return None


for _precision in ("fp32", "fp16", "int8"):
    register(
        RuntimeSpec(
            name=f"trt-{_precision}",
            backend="tensorrt",
            device="cuda",
            precision=_precision,
            modules=("tensorrt",),
            install_hint="on a GPU runner: pip install 'sysnoise-harness[trt]'",
            opener=TensorRTSession,
            probe=_cuda_probe,
        )
    )
