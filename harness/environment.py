"""What a number was measured with: library versions and hardware.

Recorded in every report and golden so a drift can be traced to an upgrade or
another machine.
"""

from __future__ import annotations

import importlib.metadata
import platform
from functools import cache
from pathlib import Path
from typing import Any

import harness

LIBRARIES = ("numpy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "Pillow", "opencv-python-headless", "tensorrt")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "harness": harness.__version__}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@cache
def environment() -> dict[str, Any]:
    """Versions and hardware of this process (computed once)."""
    return {
        "libraries": library_versions(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
    }
