"""Harness overhead on the demo: `ort-fp32` and `ov-fp32` through the harness vs a raw loop of the same library.

Both sides get the same pre-decoded tensors, batch size, thread count and model file; runs are interleaved and
the median of each is compared, so the ratio comes from one run on one machine.  Also times the whole
`harness run` command, for context.

    python scripts/bench_overhead.py [--repeats 7] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from exporters.cache import ArtifactCache, default_cache_dir
from harness.core.environment import compute_threads
from harness.data.feed import batch_slices
from harness.run.prepared import SuiteRun
from harness.run.sessions import run_session
from harness.spec.suite import load_suite
from runtimes import get_runtime


def raw_ort(model: Path, tensors: np.ndarray, batch_size: int) -> tuple[float, float]:
    """(inference seconds, seconds including session creation) of a plain InferenceSession loop."""
    opened = time.perf_counter()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = compute_threads(), 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    for rows in batch_slices(len(tensors), batch_size):
        session.run(None, {"images": tensors[rows]})
    end = time.perf_counter()
    return end - start, end - opened


def raw_openvino(model: Path, tensors: np.ndarray, batch_size: int) -> tuple[float, float]:
    """The same with OpenVINO: compile the IR, one infer request."""
    import openvino as ov

    opened = time.perf_counter()
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(compute_threads())}
    request = core.compile_model(core.read_model(str(model)), "CPU", config).create_infer_request()
    start = time.perf_counter()
    for rows in batch_slices(len(tensors), batch_size):
        request.infer({"images": tensors[rows]})
    end = time.perf_counter()
    return end - start, end - opened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    suite = load_suite("demo")
    run = SuiteRun(suite, ArtifactCache(default_cache_dir()))
    start = time.perf_counter()
    tensors = run.inputs.tensors
    decode_seconds = time.perf_counter() - start
    loops = {"ort-fp32": (raw_ort, run.artifacts.export_fp32()), "ov-fp32": (raw_openvino, run.artifacts.openvino_ir("fp32"))}
    times: dict[str, dict[str, list[float]]] = {name: {"harness": [], "harness wall": [], "raw": [], "raw wall": []} for name in loops}
    for _ in range(args.repeats):
        for name, (loop, model) in loops.items():
            opened = time.perf_counter()
            _, seconds, _ = run_session(get_runtime(name), run.artifacts, run.inputs, args.batch_size, lambda: None)
            times[name]["harness wall"].append(time.perf_counter() - opened)
            times[name]["harness"].append(seconds)
            raw_seconds, raw_wall = loop(model, tensors, args.batch_size)
            times[name]["raw"].append(raw_seconds)
            times[name]["raw wall"].append(raw_wall)

    with tempfile.TemporaryDirectory() as reports:
        start = time.perf_counter()
        command = [sys.executable, "-m", "harness", "run", "--suite", "demo", "--runtime", "ort-fp32", "--no-golden"]
        command += ["--report-dir", reports]
        subprocess.run(command, check=True, capture_output=True)
        cli_seconds = time.perf_counter() - start

    threads = compute_threads()
    print(f"demo: {len(tensors)} samples, batch {args.batch_size}, {threads} threads, {args.repeats} interleaved repeats (median)")
    print("| runtime | inference, harness ms | raw loop ms | ratio (target <= 1.10) | with session creation: harness / raw |")
    print("| --- | --- | --- | --- | --- |")
    for name, measured in times.items():
        median = {key: statistics.median(values) for key, values in measured.items()}
        ratio, wall = median["harness"] / median["raw"], median["harness wall"] / median["raw wall"]
        print(f"| {name} | {median['harness'] * 1e3:.1f} | {median['raw'] * 1e3:.1f} | {ratio:.3f} | {wall:.3f} |")
    print(f"decode + stack, once: {decode_seconds * 1e3:.0f} ms; whole `harness run --runtime ort-fp32` command: {cli_seconds:.2f} s")


if __name__ == "__main__":
    main()
