"""PyTorch eager: the reference every other runtime is compared with."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from runtimes.base import RuntimeSpec, register

if TYPE_CHECKING:
    from exporters.artifacts import ModelArtifacts


class TorchSession:
    def __init__(self, artifacts: ModelArtifacts, spec: RuntimeSpec) -> None:
        import torch

        self._torch = torch
        self._model = artifacts.torch_model()
        self._output_names = artifacts.output_names
        self._spec = spec

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        inputs = [torch.from_numpy(np.ascontiguousarray(a)) for a in feeds.values()]
        with torch.inference_mode():
            out = self._model(*inputs)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {name: o.float().numpy() for name, o in zip(self._output_names, outs, strict=True)}

    def describe(self) -> dict[str, str]:
        return {"device": "cpu", "precision": "fp32", "threads": str(self._torch.get_num_threads())}


register(
    RuntimeSpec(
        name="torch-fp32",
        backend="torch",
        device="cpu",
        precision="fp32",
        modules=("torch",),
        install_hint="pip install torch",
        opener=TorchSession,
        needs_torch_model=True,
    )
)
