"""The one small interface every backend implements, and the registry.

A runtime is named `<backend>[-<device>]-<precision>` (`ort-fp32`,
`trt-int8`, `torch-cuda-fp16`).  Its `RuntimeSpec` says what it needs; `open`
turns model artifacts into a `Session` whose `run` maps input name -> array
to output name -> float32 array.  Adding a backend is one module that calls
`register`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from harness.core.devices import device_missing
from harness.core.errors import HarnessError, RuntimeUnavailable

if TYPE_CHECKING:
    import torch


class TensorInfo(NamedTuple):
    """One input or output of a loaded model: its name, shape (None where dynamic or unknown) and dtype."""

    name: str
    shape: tuple[int | None, ...] | None
    dtype: str


class Artifacts(Protocol):
    """The model files a runtime consumes, built on first request (`exporters.artifacts.ModelArtifacts`)."""

    @property
    def input_names(self) -> tuple[str, ...]: ...

    @property
    def output_names(self) -> tuple[str, ...]: ...

    def torch_model(self) -> torch.nn.Module: ...

    def onnx_path(self, precision: str) -> Path: ...

    def graph_outputs(self, precision: str) -> tuple[str, ...]: ...

    def openvino_ir(self, precision: str) -> Path: ...

    def tensorrt_engine(self, precision: str) -> Path: ...


class Session(Protocol):
    """A loaded model on one backend."""

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict[str, str]:
        """What actually executes: device, effective precision, provider."""
        ...

    def inputs(self) -> list[TensorInfo]: ...

    def outputs(self) -> list[TensorInfo]: ...

    def close(self) -> None:
        """Release the model and its memory (device buffers, compiled graphs); the session is unusable after."""
        ...


def dims(shape: object) -> tuple[int | None, ...]:
    """A backend's shape (ints, symbolic names, -1 or '?') as ints with None for dynamic axes."""
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    backend: str
    device: str
    precision: str
    modules: tuple[str, ...]
    install_hint: str
    opener: Callable[[Artifacts, RuntimeSpec], Session]
    probe: Callable[[], str | None] | None = None

    def unavailable_reason(self, probe: bool = True) -> str | None:
        """None when this runtime can run here, else why not (one line).  `probe=False` checks only what needs no
        import: the modules are installed, and a GPU runtime's device files exist."""
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if missing:
            return f"python module {', '.join(missing)} not installed ({self.install_hint})"
        absent = device_missing(self.device)  # no device: no probe, and no hint to install a library for it
        if absent or not probe:
            return absent
        return self.probe() if self.probe else None

    def require_available(self) -> None:
        reason = self.unavailable_reason()
        if reason:
            raise RuntimeUnavailable(f"runtime '{self.name}' is unavailable: {reason}")

    def open(self, artifacts: Artifacts) -> Session:
        self.require_available()
        return self.opener(artifacts, self)


RUNTIMES: dict[str, RuntimeSpec] = {}


def register(spec: RuntimeSpec) -> RuntimeSpec:
    RUNTIMES[spec.name] = spec
    return spec


def get_runtime(name: str) -> RuntimeSpec:
    if name not in RUNTIMES:
        raise HarnessError(f"unknown runtime '{name}'", f"known runtimes: {', '.join(sorted(RUNTIMES))} (see `harness list`)")
    return RUNTIMES[name]
