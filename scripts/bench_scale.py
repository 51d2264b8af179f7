"""Scale: a synthetic ImageNet-like set (JPEGs of about 500x375) through the demo model on ort-fp32.

1. Scaling: `harness run` on 2,000 -> 8,000 -> 32,000 images, each a process of its own: wall time, time per
   image (after the start-up, measured by a 64-image run) and peak RSS (ru_maxrss).
2. Pre-processing throughput of the reference stack on the same files: 1 process vs every core
   (`harness.data.parallel`) vs a bare Pillow decode + resize + crop loop (this CPU's ceiling per core).
3. `--ray`: the same run on a local 2-worker Ray instance vs the local executor.

The images (rendered by `demo_images.render`, one base image per 16 files, each file its own crop, flip and
JPEG quality) are made once under --data and reused.

    python scripts/bench_scale.py [--sizes 2000,8000,32000] [--data /tmp/harness-scale] [--ray]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from demo_images import render

from harness.data.dataset import load_dataset
from harness.data.intake import IntakePolicy
from harness.data.parallel import Preparer
from harness.spec.suite import BUNDLED_DIR, load_suite

CLASSES = 12
PER_BASE = 16
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _write_block(args: tuple[Path, int, int]) -> list[dict[str, object]]:
    """Files [start, stop): base image i // PER_BASE, cropped, flipped and encoded its own way."""
    folder, start, stop = args
    entries = []
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        label = (i // PER_BASE) % CLASSES
        if i % PER_BASE == 0 or i == start:
            base = render(np.random.default_rng(i // PER_BASE), label, 540, 405)
        x, y = int(rng.integers(0, 40)), int(rng.integers(0, 30))
        image = base.crop((x, y, x + 500, y + 375))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(rng.integers(80, 96)))
        name = f"eval/{i:06d}.jpg"
        (folder / name).write_bytes(buf.getvalue())
        entries.append({"file": name, "label": label, "sha256": hashlib.sha256(buf.getvalue()).hexdigest()})
    return entries


def make_data(folder: Path, count: int) -> Path:
    manifest = folder / "manifest.json"
    if manifest.is_file() and len(json.loads(manifest.read_text())["splits"]["eval"]) >= count:
        return manifest
    (folder / "eval").mkdir(parents=True, exist_ok=True)
    blocks = [(folder, a, min(a + 1000, count)) for a in range(0, count, 1000)]
    start = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        entries = [e for block in pool.map(_write_block, blocks) for e in block]
    demo = json.loads((BUNDLED_DIR / "demo" / "data" / "manifest.json").read_text())
    manifest.write_text(json.dumps({"schema_version": 1, "name": "scale", "classes": demo["classes"], "splits": {"eval": entries}}))
    print(f"made {count} JPEGs in {time.perf_counter() - start:.0f} s under {folder}", file=sys.stderr)
    return manifest


def write_suite(folder: Path, manifest: Path) -> Path:
    demo = BUNDLED_DIR / "demo.toml"
    text = demo.read_text().replace('weights = "demo/', f'weights = "{BUNDLED_DIR}/demo/')
    text = text.replace('manifest = "demo/data/manifest.json"', f'manifest = "{manifest}"').replace('calibration_split = "calib"\n', "")
    text = text.replace('dir = "../../golden/demo"', f'dir = "{folder / "golden"}"').replace('name = "demo"', 'name = "scale"')
    path = folder / "scale.toml"
    path.write_text(text)
    return path


def process(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process, which must succeed."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _pid, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{child.stderr.read().decode() if child.stderr else ''}")
    return seconds, usage.ru_maxrss / 1024


def bare_loop(paths: list[Path], size: int, crop: int, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> float:
    """Images/s of Pillow decode + shorter-side bilinear resize + centre crop + normalisation to a float32 CHW tensor,
    one core: the same work as the reference stack, written plainly."""
    shift = np.asarray(mean, dtype=np.float32) * 255.0
    scale = 1.0 / (np.asarray(std, dtype=np.float32) * 255.0)
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            w, h = image.size
            scale_side = size / min(w, h)
            image = image.resize((round(w * scale_side), round(h * scale_side)), Image.Resampling.BILINEAR)
            left, top = (image.width - crop) // 2, (image.height - crop) // 2
            pixels = np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float32)
            np.ascontiguousarray(((pixels - shift) * scale).transpose(2, 0, 1))
    return len(paths) / (time.perf_counter() - start)


def preprocessing(suite_path: Path, count: int) -> None:
    suite = load_suite(str(suite_path))
    samples = load_dataset(suite.data.manifest, suite.data.split).samples[:count]
    cores = len(os.sched_getaffinity(0))
    paths = [s.path for s in samples]
    bare = bare_loop(paths, suite.stack.resize_size, suite.stack.crop or 0)
    with ProcessPoolExecutor(cores) as pool:  # the same loop on every core: what this machine's cores scale to
        list(pool.map(bare_loop, [paths[:64]] * cores, [suite.stack.resize_size] * cores, [suite.stack.crop or 0] * cores))
        start = time.perf_counter()
        parts = [paths[i::cores] for i in range(cores)]
        list(pool.map(bare_loop, parts, [suite.stack.resize_size] * cores, [suite.stack.crop or 0] * cores))
        bare_all = count / (time.perf_counter() - start)
    rates = {}
    for workers in (0, cores):
        with Preparer(workers) as preparer:
            preparer.submit(samples[:64], suite.stack, IntakePolicy()).result()  # workers started and warm
            start = time.perf_counter()
            preparer.submit(samples, suite.stack, IntakePolicy()).result()
            rates[workers] = count / (time.perf_counter() - start)
    print(f"\npre-processing, reference stack (decode, intake checks, resize, crop, normalise, stage hashes), {count} files")
    print("| loop | images/s | ratio |\n| --- | --- | --- |")
    print(f"| bare Pillow decode + resize + crop + normalise, 1 core | {bare:.0f} | 1.00 |")
    print(f"| bare loop, {cores} processes | {bare_all:.0f} | {bare_all / bare:.2f}x 1 core (this machine's scaling) |")
    print(f"| harness, in this process (1 core) | {rates[0]:.0f} | {rates[0] / bare:.2f} of bare (target >= 0.8) |")
    print(f"| harness, {cores} processes | {rates[cores]:.0f} | {rates[cores] / rates[0]:.2f}x 1 core (target >= 1.7) |")


def run_command(suite: Path, report: Path, limit: int, *extra: str) -> list[str]:
    harness = Path(sys.executable).parent / "harness"
    return [
        *(str(harness), "run", "--suite", str(suite), "--runtime", "ort-fp32", "--no-golden", "--limit", str(limit)),
        *("--report-dir", str(report), *extra),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,8000,32000")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "harness-scale")
    parser.add_argument("--ray", action="store_true", help="also run the smallest size on a local 2-worker Ray instance")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    suite = write_suite(args.data, make_data(args.data, max(sizes)))
    reports = args.data / "reports"
    process(run_command(suite, reports / "warm", 64))  # artifacts exported and cached: no run below pays for them
    startup = statistics.median(process(run_command(suite, reports / "startup", 64))[0] for _ in range(3))
    rows = []
    for size in sizes:
        wall, rss = process(run_command(suite, reports / str(size), size))
        rows.append((size, wall, rss, (wall - startup) / size * 1e3))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line), "?")
    print(f"{cpu}, {len(os.sched_getaffinity(0))} CPUs; demo model, ort-fp32 + the torch-fp32 reference; start-up {startup:.1f} s")
    print("| images | wall s | ms per image after start-up | vs smallest | peak RSS MiB | vs smallest |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size, wall, rss, per in rows:
        print(f"| {size} | {wall:.1f} | {per:.2f} | {per / rows[0][3]:.2f} | {rss:.0f} | {rss / rows[0][2]:.2f} |")
    preprocessing(suite, min(sizes[0], 2000))
    if args.ray:
        size = sizes[0]
        local = process(run_command(suite, reports / "local", size))[0]
        ray = process(run_command(suite, reports / "ray", size, "--executor", "ray", "--workers", "2"))[0]
        print(f"\n{size} images: local executor {local:.1f} s, Ray (local instance, 2 workers) {ray:.1f} s: {ray / local:.2f}x")


if __name__ == "__main__":
    main()
