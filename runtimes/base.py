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

from harness.errors import HarnessError, RuntimeUnavailable

if TYPE_CHECKING:
    from exporters.artifacts import ModelArtifacts


class TensorInfo(NamedTuple):
    """One input or output of a loaded model: its name, shape (None where dynamic or unknown) and dtype."""

    name: str
    shape: tuple[int | None, ...] | None
    dtype: str


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


# Device files a GPU runtime needs: without them it cannot run, and nothing is imported to find that out.
DEVICE_FILES = {"cuda": "nvidia[0-9]*", "gpu": "dri/renderD*"}


def device_missing(device: str) -> str | None:
    """Why a GPU `device` cannot be here, seen from its device files alone (None: it may be; a probe tells)."""
    if device in DEVICE_FILES and not any(Path("/dev").glob(DEVICE_FILES[device])):
        return f"no {device.upper()} device on this machine (no /dev/{DEVICE_FILES[device]})"
    return None


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    backend: str
    device: str
    precision: str
    modules: tuple[str, ...]
    install_hint: str
    opener: Callable[[ModelArtifacts, RuntimeSpec], Session]
    probe: Callable[[], str | None] | None = None

    def unavailable_reason(self, probe: bool = True) -> str | None:
        """None when this runtime can run here, else why not (one line).  `probe=False` checks only what needs no
        import: the modules are installed, and a GPU runtime's device files exist."""
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        if missing:
            return f"python module {', '.join(missing)} not installed ({self.install_hint})"
        if probe:
            return self.probe() if self.probe else None
        return device_missing(self.device)

    def require_available(self) -> None:
        reason = self.unavailable_reason()
        if reason:
            raise RuntimeUnavailable(f"runtime '{self.name}' is unavailable: {reason}")

    def open(self, artifacts: ModelArtifacts) -> Session:
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
