"""Device probing: which accelerators and accelerator libraries this machine has, found without importing
more than the question needs (a CPU-only run never imports a CUDA library just to look)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from harness.core.errors import RuntimeUnavailable

# Device files a GPU runtime needs: without them it cannot run, and nothing is imported to find that out.
DEVICE_FILES = {"cuda": "nvidia[0-9]*", "gpu": "dri/renderD*"}


def device_missing(device: str) -> str | None:
    """Why a GPU `device` cannot be here, seen from its device files alone (None: it may be; a probe tells)."""
    if device in DEVICE_FILES and not any(Path("/dev").glob(DEVICE_FILES[device])):
        return f"no {device.upper()} device on this machine (no /dev/{DEVICE_FILES[device]})"
    return None


TRT_INSTALL_HINT = "on a GPU runner: pip install 'sysnoise-harness[trt]'"


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError as exc:
        raise RuntimeUnavailable("python module tensorrt not installed", TRT_INSTALL_HINT) from exc
    major = tensorrt_major(tensorrt)
    if major < 10:
        raise RuntimeUnavailable(f"TensorRT {tensorrt.__version__} is too old", "TensorRT 10 or 11 is required")
    return tensorrt


def tensorrt_major(trt: ModuleType) -> int:
    return int(str(trt.__version__).split(".")[0])


def gpu_identity() -> dict[str, str]:
    """Name and compute capability of GPU 0: engines are only valid on the GPU they were built for."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except ImportError:
        pass
    try:
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as cuda

        device = cuda.Device(0)
        major, minor = device.compute_capability()
        return {"gpu": device.name(), "compute_capability": f"{major}.{minor}"}
    except Exception as exc:  # ImportError, or pycuda's own error when there is no driver or device
        raise RuntimeUnavailable(
            "no CUDA device visible (neither CUDA PyTorch nor pycuda)", "install a CUDA build of torch or pycuda"
        ) from exc
