"""PyTorch eager: `torch-fp32` is the reference every other runtime is compared
with; reduced precisions cast the model and the input (`.half()`,
`.bfloat16()`), on the CPU or a CUDA GPU.  CUDA fp32 has TF32 switched off
so it is real FP32."""

from __future__ import annotations

import copy
from functools import partial

import numpy as np

from harness.core.environment import compute_threads
from runtimes.base import Artifacts, RuntimeSpec, TensorInfo, register

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchSession:
    def __init__(self, artifacts: Artifacts, spec: RuntimeSpec, device: str = "cpu") -> None:
        import torch

        self._torch = torch
        self._device = device
        self._dtype = getattr(torch, DTYPES[spec.precision])
        model = artifacts.torch_model()
        if device != "cpu" or spec.precision != "fp32":
            model = copy.deepcopy(model).to(device=device, dtype=self._dtype)
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        else:
            torch.set_num_threads(compute_threads())
        self._model = model
        self._input_names = artifacts.input_names
        self._output_names = artifacts.output_names
        self._precision = spec.precision

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        inputs = [torch.from_numpy(np.ascontiguousarray(a)).to(self._device, self._dtype) for a in feeds.values()]
        with torch.inference_mode():
            out = self._model(*inputs)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {name: o.float().cpu().numpy() for name, o in zip(self._output_names, outs, strict=True)}

    def inputs(self) -> list[TensorInfo]:
        """Eager PyTorch takes any shape; inputs arrive as float32 and are cast to the session's dtype."""
        return [TensorInfo(name, None, "float32") for name in self._input_names]

    def outputs(self) -> list[TensorInfo]:
        return [TensorInfo(name, None, "float32") for name in self._output_names]

    def close(self) -> None:
        del self._model

    def describe(self) -> dict[str, str]:
        """Eager PyTorch runs every op in the dtype the model and input were cast to."""
        info = {"device": self._device, "precision": self._precision, "executed": self._precision, "torch": self._torch.__version__}
        if self._device == "cuda":
            info["gpu"] = self._torch.cuda.get_device_name(0)
        else:
            info["threads"] = str(self._torch.get_num_threads())
        return info


def _cuda_probe() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "no CUDA device visible to PyTorch (CPU build or no GPU)"


def _cpu_dtype_probe(precision: str) -> str | None:
    """A reduced-precision conv really runs on this CPU's PyTorch build."""
    import torch

    dtype = getattr(torch, DTYPES[precision])
    try:
        with torch.inference_mode():
            torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3, dtype=dtype), torch.ones(1, 1, 1, 1, dtype=dtype))
    except RuntimeError as exc:
        return f"PyTorch on this CPU cannot run {precision} convolutions ({str(exc).splitlines()[0]})"
    return None


for _name, _device, _precision, _probe in (
    ("torch-fp32", "cpu", "fp32", None),
    ("torch-fp16", "cpu", "fp16", partial(_cpu_dtype_probe, "fp16")),
    ("torch-bf16", "cpu", "bf16", partial(_cpu_dtype_probe, "bf16")),
    ("torch-cuda-fp32", "cuda", "fp32", _cuda_probe),
    ("torch-cuda-fp16", "cuda", "fp16", _cuda_probe),
):
    register(
        RuntimeSpec(
            name=_name,
            backend="torch",
            device=_device,
            precision=_precision,
            modules=("torch",),
            install_hint="pip install torch" if _device == "cpu" else "install a CUDA build of torch on a GPU machine",
            opener=partial(TorchSession, device=_device),
            probe=_probe,
        )
    )
