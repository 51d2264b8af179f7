"""What a number was measured with: library versions, hardware, the CPU
features that change numerics, and the thread count.

Recorded in every report and golden so a drift can be traced to an upgrade or
another machine: ONNX Runtime's and oneDNN's int8 kernels take other paths
with and without VNNI or AMX, OpenVINO runs an fp16 request in bf16 on a CPU
with AVX512-BF16 but no FP16 arithmetic, and oneDNN picks kernels per ISA.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from functools import cache
from pathlib import Path
from typing import Any

import harness
from harness.core.errors import HarnessError, RuntimeUnavailable
from harness.core.records import metadata_changes

LIBRARIES = ("numpy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "Pillow", "opencv-python-headless", "tensorrt")

# /proc/cpuinfo flag -> name, for the x86 features that change which kernels (and so which numbers) libraries use.
NUMERIC_ISA = {
    "fma": "FMA",
    "f16c": "F16C",
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "avx512_fp16": "AVX512-FP16",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
    "amx_fp16": "AMX-FP16",
    "asimd": "NEON",
    "asimdhp": "NEON-FP16",
    "asimddp": "NEON-DOTPROD",
    "sve": "SVE",
}
THREADS_ENV = "HARNESS_THREADS"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "harness": harness.__version__}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _cpuinfo_field(*keys: str) -> str | None:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.split(":", 1)[0].strip() in keys:
                return line.split(":", 1)[1].strip()
    return None


def cpu_name() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def isa_features() -> list[str]:
    """The numerics-relevant instruction-set features of this CPU (names of `NUMERIC_ISA`), in that order."""
    flags = set((_cpuinfo_field("flags", "Features") or "").split())
    return [name for flag, name in NUMERIC_ISA.items() if flag in flags]


def compute_threads() -> int:
    """Threads every runtime is given: $HARNESS_THREADS, else $OMP_NUM_THREADS, else the CPUs this process may use."""
    for variable in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(variable, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise HarnessError(f"${variable} = {value!r} is not a positive integer", f"e.g. {variable}=2, or unset it")
            return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


INT8_DOT_ISA = ("AVX512-VNNI", "AVX-VNNI", "AMX-INT8")  # int8 dot products accumulated in 32 bits


def int8_saturates() -> bool:
    """An x86 CPU whose int8 kernels add pairs of u8 x s8 products in saturating 16-bit lanes (VPMADDUBSW):
    AVX2 without VNNI or AMX-INT8."""
    isa = set(isa_features())
    return "AVX2" in isa and not isa & set(INT8_DOT_ISA)


def gpu() -> dict[str, str] | None:
    """Name and compute capability of GPU 0 when this process loaded a CUDA library (torch, pycuda) and sees a
    device; None otherwise (a CPU-only run never imports one just to look)."""
    if not {"torch", "pycuda"} & set(sys.modules):
        return None
    from harness.core.devices import gpu_identity

    try:
        return gpu_identity()
    except RuntimeUnavailable:
        return None


@cache
def _machine() -> dict[str, Any]:
    """Versions and hardware of this process (computed once)."""
    env: dict[str, Any] = {
        "libraries": library_versions(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "isa": isa_features(),
        "cpus": os.cpu_count() or 1,
    }
    device = gpu()
    if device:
        env["gpu"] = device
    return env


def environment() -> dict[str, Any]:
    """Versions and hardware of this process, and the threads runtimes get now (`HARNESS_THREADS` may change)."""
    return _machine() | {"threads": compute_threads()}


# Environment keys whose change can move numbers; `platform` (kernel build) and `cpus` are recorded, never noted.
NUMERIC_KEYS = ("libraries", "machine", "cpu", "threads", "gpu")
VOLATILE_KEYS = ("platform", "cpus")


def isa_changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """ISA features gained and lost since `old` was recorded (none when `old` predates ISA recording)."""
    if "isa" not in old or "isa" not in new:
        return [], []
    return [f for f in new["isa"] if f not in old["isa"]], [f for f in old["isa"] if f not in new["isa"]]


def environment_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Numerics-relevant differences of two `environment()` records other than ISA features, one line each:
    'libraries.onnxruntime: 1.17 -> 1.18', 'threads: 16 -> 2'."""
    return metadata_changes({k: old.get(k) for k in NUMERIC_KEYS if k in old}, {k: new.get(k) for k in NUMERIC_KEYS if k in old})
