"""Throughput against the limit, in one interleaved run (every number a ratio of two things measured side by side).

1. Pre-processing of the reference stack (decode, intake checks, resize, crop, normalise, stage hashes) on the
   synthetic ImageNet-like files of `bench_scale.py`: the harness in one process vs a bare Pillow loop doing the
   same decode + resize + normalise (target >= 0.95x), and the harness on every core vs that bare loop on one
   (target >= 1.75x on 2 cores).  Rounds alternate bare / harness; medians.
2. `harness run --onnx` as a whole process vs a raw ONNX Runtime script on the same 50 test sets
   (`bench_startup.py`), interleaved (target <= 1.05x).
3. A whole `harness run --suite detect --runtime all` process vs its limit: decoding the samples once plus each
   runtime's bare inference loop (`session.run` on the same tensors, batch by batch), measured in this process.

    python scripts/bench_throughput.py [--quick] [--files 2000] [--rounds 5] [--data /tmp/harness-scale]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))
from bench_scale import bare_loop, make_data, write_suite
from bench_startup import RAW_SCRIPT, measure, test_data

from exporters.cache import ArtifactCache, default_cache_dir
from harness.data.dataset import load_dataset
from harness.data.intake import IntakePolicy
from harness.data.parallel import Preparer
from harness.run.prepared import SuiteRun
from harness.run.sessions import feed_session, open_session
from harness.spec.suite import load_suite
from runtimes.base import RUNTIMES


def median_rates(rounds: int, loops: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Each loop's median rate over `rounds`, the loops run in turn within each round (in reverse order every
    other round, so a machine speeding up or slowing down during a round favours none)."""
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for k in range(rounds):
        for name in list(loops)[:: 1 if k % 2 == 0 else -1]:
            rates[name].append(loops[name]())
    return {name: statistics.median(values) for name, values in rates.items()}


def preprocessing(suite_path: Path, count: int, rounds: int) -> list[tuple[str, float, str]]:
    """The bare loop runs in processes of its own (one, and one a core), the harness in this one: the C library's
    allocator tunes itself to a process's history of allocations, and in the process that also ran the harness
    the bare loop ran 450-520 images/s, against 610-840 in its own in the same minutes."""
    suite = load_suite(str(suite_path))
    stack = suite.stack
    samples = load_dataset(suite.data.manifest, suite.data.split).samples[:count]
    paths = [s.path for s in samples]
    cores = len(os.sched_getaffinity(0))
    args = (stack.resize_size, stack.crop or 0, stack.mean, stack.std)
    spawn = multiprocessing.get_context("spawn")
    with (
        Preparer(0) as inline,
        Preparer(cores) as parallel,
        ProcessPoolExecutor(1, mp_context=spawn) as alone,
        ProcessPoolExecutor(cores, mp_context=spawn) as pool,
    ):
        parallel.submit(samples[:64], stack, IntakePolicy()).result()  # workers started and warm
        alone.submit(bare_loop, paths[:64], *args).result()

        def harness(preparer: Preparer) -> float:
            start = time.perf_counter()
            preparer.submit(samples, stack, IntakePolicy()).result()
            return count / (time.perf_counter() - start)

        rates = median_rates(
            rounds,
            {
                "bare": lambda: alone.submit(bare_loop, paths, *args).result(),
                "harness": lambda: harness(inline),
                "bare-all": lambda: sum(pool.map(bare_loop, [paths[i::cores] for i in range(cores)], *([a] * cores for a in args))),
                "harness-all": lambda: harness(parallel),
            },
        )
    bare = rates["bare"]
    return [
        (f"bare Pillow decode + resize + crop + normalise, 1 process ({count} files)", rates["bare"], "1.00 (the base)"),
        ("harness pre-processing, 1 process", rates["harness"], f"{rates['harness'] / bare:.2f}x bare (target >= 0.95)"),
        (f"bare loop, {cores} processes", rates["bare-all"], f"{rates['bare-all'] / bare:.2f}x bare (this machine's scaling)"),
        (f"harness pre-processing, {cores} processes", rates["harness-all"], f"{rates['harness-all'] / bare:.2f}x bare (target >= 1.75)"),
    ]


def onnx_process(root: Path, rounds: int) -> tuple[float, float]:
    """Median wall seconds of the raw ONNX Runtime script and of `harness run --onnx`, interleaved."""
    model = Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx"
    test_data(model, root / "data")
    (root / "raw.py").write_text(RAW_SCRIPT)
    harness = Path(sys.executable).parent / "harness"
    commands = {
        "raw": [sys.executable, str(root / "raw.py"), str(model), str(root / "data")],
        "harness": [
            *(str(harness), "run", "--onnx", str(model), "--inputs", str(root / "data"), "--runtime", "ort-fp32"),
            *("--report-dir", str(root / "report"), "--cache-dir", str(root / "cache")),
        ],
    }
    for command in commands.values():
        measure(command)  # page cache and artifact cache warm
    walls = median_rates(rounds, {name: (lambda c=command: measure(c)[0]) for name, command in commands.items()})
    return walls["raw"], walls["harness"]


def detect_limit(limit: int) -> tuple[float, list[str]]:
    """Seconds of decoding the detect suite's samples once plus each available runtime's bare inference loop."""
    suite = load_suite("detect")
    run = SuiteRun(suite, ArtifactCache(default_cache_dir()), limit)
    start = time.perf_counter()
    inputs = run.inputs
    seconds = time.perf_counter() - start
    names = [spec.name for spec in RUNTIMES.values() if not spec.unavailable_reason()]
    for name in names:
        opened = open_session(RUNTIMES[name], run.artifacts)
        batch = run.artifacts.fixed_batch or suite.run.batch_size
        try:
            seconds += feed_session(opened.session, opened.input_name, inputs, batch, lambda: None)[1]
        finally:
            opened.session.close()
    return seconds, names


FINISHED = (0, 1)  # a whole run that completed: passed, or some runtime out of tolerance (still a whole run)


def detect_run(root: Path, limit: int, rounds: int) -> tuple[float, float, list[str]]:
    harness = Path(sys.executable).parent / "harness"
    command = [
        *(str(harness), "run", "--suite", "detect", "--runtime", "all", "--no-golden", "--limit", str(limit)),
        *("--report-dir", str(root / "detect")),
    ]
    measure(command, FINISHED)  # artifacts exported and cached
    walls, limits = [], []
    names: list[str] = []
    for _ in range(rounds):
        walls.append(measure(command, FINISHED)[0])
        seconds, names = detect_limit(limit)
        limits.append(seconds)
    return statistics.median(walls), statistics.median(limits), names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="300 files, 3 rounds, 64 detect samples (a few minutes)")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--detect-limit", type=int, default=0, help="detect samples (default: the whole split; 64 with --quick)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "harness-scale")
    args = parser.parse_args()
    files, rounds = (300, 3) if args.quick else (args.files, args.rounds)
    detect = args.detect_limit or (64 if args.quick else 100_000)
    suite = write_suite(args.data, make_data(args.data, files))
    rows = preprocessing(suite, files, rounds)
    for row in rows:
        print(*row, sep=" | ", flush=True)  # the table repeats them at the end
    with tempfile.TemporaryDirectory() as tmp:
        raw, wall = onnx_process(Path(tmp), rounds)
        rows.append(("raw ONNX Runtime script, 50 test sets (process wall s)", raw, "1.00 (the base)"))
        rows.append(("harness run --onnx, same sets (process wall s)", wall, f"{wall / raw:.2f}x raw (target <= 1.05)"))
        whole, bound, names = detect_run(Path(tmp), detect, rounds)
    rows.append((f"limit: decode once + bare inference of {len(names)} runtimes (s)", bound, "1.00 (the base)"))
    rows.append(("harness run --suite detect --runtime all (process wall s)", whole, f"{whole / bound:.2f}x the limit"))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line), "?")
    print(f"{cpu}, {len(os.sched_getaffinity(0))} CPUs, medians of {rounds} interleaved rounds; runtimes: {', '.join(names)}")
    print("| measured | images/s or s | ratio |\n| --- | --- | --- |")
    for name, value, ratio in rows:
        print(f"| {name} | {value:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
