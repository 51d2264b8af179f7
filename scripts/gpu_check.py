"""Helpers of scripts/gpu_check.sh: which modules import, what GPU this is, and the summary of the steps.

python scripts/gpu_check.py modules OUT   # import every module the check needs; exit 1 naming the missing ones
python scripts/gpu_check.py probe OUT     # OUT/gpu.json; exit 0 with a CUDA device, 3 without (one line why)
python scripts/gpu_check.py summary OUT   # OUT/steps.tsv -> OUT/summary.json and OUT/summary.md
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import platform
import sys
from pathlib import Path

WHEEL_LIST = Path(__file__).with_name("gpu_wheels.txt")
# What the GPU test machine brings itself (its CUDA PyTorch above all), distribution -> module: no wheel replaces these.
MACHINE_PACKAGES = {
    "numpy": "numpy",
    "torch": "torch",
    "torchvision": "torchvision",
    "onnx": "onnx",
    "ml-dtypes": "ml_dtypes",
    "onnxruntime": "onnxruntime",
    "safetensors": "safetensors",
    "opencv-python-headless": "cv2",
    "pillow": "PIL",
}
LEFT_OUT = ("av",)  # dependencies without a wheel there, on purpose (why: the head of scripts/gpu_wheels.txt)
NO_CUDA = 3
COMMAND_SHOWN = 200  # characters of a step's command in summary.md (summary.json has it whole)
# The demo run's runtimes on a GPU (the three), then every other CUDA runtime at fp32/fp16 that can run there.
DEMO_RUNTIMES = ("torch-cuda-fp32", "torch-cuda-fp16", "ort-fp32")


def wheel_rows() -> list[list[str]]:
    """The rows of scripts/gpu_wheels.txt: requirement, module, tier, and `pure` where it says so."""
    return [line.split() for line in WHEEL_LIST.read_text().splitlines() if line.strip() and not line.startswith("#")]


def wheel_modules() -> dict[str, str]:
    """Import name -> tier ('gpu' or 'cpu') of every wheel in scripts/gpu_wheels.txt."""
    return {module: tier for _, module, tier, *_ in wheel_rows()}


def check_modules(out: Path) -> int:
    """Import each module; OUT/modules.json records version and origin (a wheel of ours or the machine's)."""
    wanted = {name: "gpu" for name in MACHINE_PACKAGES.values()} | wheel_modules()
    found: dict[str, dict[str, str]] = {}
    missing: list[str] = []
    distributions = importlib.metadata.packages_distributions()  # top-level module -> the distributions holding it
    for name, tier in wanted.items():
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # ImportError, or a compiled module built for another Python
            found[name] = {"tier": tier, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            if tier == "gpu":
                missing.append(f"{name} ({found[name]['error']})")
            continue
        holders = distributions.get(name.split(".")[0], [])
        found[name] = {
            "tier": tier,
            "version": importlib.metadata.version(holders[0]) if holders else "",
            "origin": str(getattr(module, "__file__", "")),
        }
    (out / "modules.json").write_text(json.dumps(found, indent=2) + "\n")
    if missing:
        print(f"gpu_check: missing modules: {', '.join(missing)} (run scripts/gpu_wheels.sh, carry .gpu-wheels)")
        return 1
    return 0


def probe(out: Path) -> int:
    """OUT/gpu.json: PyTorch's view of GPU 0 (name, capability, memory, CUDA and cuDNN builds), ORT's providers and why
    a CUDA runtime cannot run; OUT/runtimes.txt: the runtimes of the demo run."""
    import onnxruntime
    import torch

    from harness.core.devices import device_missing
    from runtimes import RUNTIMES

    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "devices": torch.cuda.device_count(),
            "cudnn": torch.backends.cudnn.version(),
        }
        cuda = [spec for spec in RUNTIMES.values() if spec.device == "cuda" and spec.precision in ("fp32", "fp16")]
        unavailable = {spec.name: reason for spec in cuda if (reason := spec.unavailable_reason())}
        others = [spec.name for spec in cuda if spec.name not in unavailable and spec.name not in DEMO_RUNTIMES]
        info["unavailable"] = unavailable
        (out / "runtimes.txt").write_text("\n".join([*DEMO_RUNTIMES, *others]) + "\n")
    else:
        info["no_cuda"] = device_missing("cuda") or "PyTorch sees no CUDA device"
    (out / "gpu.json").write_text(json.dumps(info, indent=2) + "\n")
    if "no_cuda" in info:
        print(info["no_cuda"])
        return NO_CUDA
    gpu = f"{info['gpu']} (compute {info['compute_capability']}, {info['memory_gib']} GiB)"
    print(f"gpu_check: {gpu}, torch {info['torch']} (CUDA {info['torch_cuda_build']}), onnxruntime {info['onnxruntime']}")
    return 0


def summary(out: Path) -> int:
    """OUT/summary.json and OUT/summary.md from the steps gpu_check.sh recorded (name, exit code, seconds, log, command)."""
    steps = []
    for line in (out / "steps.tsv").read_text().splitlines():
        name, rc, seconds, log, command = line.split("\t")
        steps.append({"step": name, "rc": int(rc), "seconds": int(seconds), "log": log, "command": command.strip()})
    gpu_file = out / "gpu.json"
    gpu = json.loads(gpu_file.read_text()) if gpu_file.is_file() else {}
    (out / "summary.json").write_text(json.dumps({"gpu": gpu, "steps": steps}, indent=2) + "\n")
    device = gpu.get("gpu") or f"no CUDA device ({gpu.get('no_cuda', 'not probed')})"
    lines = [f"# GPU check: {device}", "", "| step | exit | seconds | log | command |", "| --- | --- | --- | --- | --- |"]
    shown = [c if len(c) <= COMMAND_SHOWN else c[:COMMAND_SHOWN] + " ..." for c in (s["command"] for s in steps)]
    lines += [f"| {s['step']} | {s['rc']} | {s['seconds']} | {s['log']} | `{c}` |" for s, c in zip(steps, shown, strict=True)]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("modules", "probe", "summary"))
    parser.add_argument("out", type=Path, help="the check's output folder")
    args = parser.parse_args()
    sys.exit({"modules": check_modules, "probe": probe, "summary": summary}[args.action](args.out))


if __name__ == "__main__":
    main()
