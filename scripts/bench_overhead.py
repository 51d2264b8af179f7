"""Harness overhead on the demo: `ort-fp32` through the harness vs a raw loop.

Both sides get the same pre-decoded tensors and the same batch size; runs are
interleaved and the median of each is compared, so the ratio comes from one
run on one machine.  Also times the whole `harness run` command against
decode + raw loop in-process, for context.

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

import onnxruntime as ort

from exporters.cache import ArtifactCache, default_cache_dir
from harness.feed import batch_slices
from harness.pipeline import SuiteRun, run_session
from harness.suite import load_suite
from runtimes import get_runtime


def raw_loop(model: Path, tensors: object, batch_size: int) -> tuple[float, float]:
    """(inference seconds, seconds including session creation)."""
    opened = time.perf_counter()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    for rows in batch_slices(len(tensors), batch_size):
        session.run(None, {"images": tensors[rows]})
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
    model = run.artifacts.export_fp32()
    spec = get_runtime("ort-fp32")

    harness_times, harness_walls, raw_times, raw_walls = [], [], [], []
    for _ in range(args.repeats):
        opened = time.perf_counter()
        _, seconds, _ = run_session(spec, run.artifacts, run.inputs, args.batch_size, lambda: None)
        harness_walls.append(time.perf_counter() - opened)
        harness_times.append(seconds)
        raw_seconds, raw_wall = raw_loop(model, tensors, args.batch_size)
        raw_times.append(raw_seconds)
        raw_walls.append(raw_wall)
    harness_median, raw_median = statistics.median(harness_times), statistics.median(raw_times)
    harness_wall, raw_wall = statistics.median(harness_walls), statistics.median(raw_walls)

    with tempfile.TemporaryDirectory() as reports:
        start = time.perf_counter()
        command = [sys.executable, "-m", "harness", "run", "--suite", "demo", "--runtime", "ort-fp32", "--no-golden"]
        command += ["--report-dir", reports]
        subprocess.run(command, check=True, capture_output=True)
        cli_seconds = time.perf_counter() - start

    print(f"demo: {len(tensors)} samples, batch {args.batch_size}, {args.repeats} interleaved repeats (median)")
    print(f"  inference, harness ort-fp32 : {harness_median * 1e3:8.1f} ms")
    print(f"  inference, raw ORT loop     : {raw_median * 1e3:8.1f} ms")
    print(f"  inference ratio harness/raw : {harness_median / raw_median:8.3f}   (target <= 1.10)")
    walls = f"{harness_wall * 1e3:.1f} vs {raw_wall * 1e3:.1f} ms"
    print(f"  with session creation + output concatenation: {walls}, ratio {harness_wall / raw_wall:.3f}")
    print(f"  decode + stack, once        : {decode_seconds * 1e3:8.1f} ms")
    print(f"  whole `harness run` command : {cli_seconds * 1e3:8.1f} ms (torch reference + ort + report + start-up)")


if __name__ == "__main__":
    main()
