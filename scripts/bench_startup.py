"""Start-up and whole-process cost of `harness run --onnx` against a raw ONNX Runtime script and Polygraphy.

The same model (ONNX's `light_resnet50.onnx` test model) and the same 50 random test sets (seed 0), with
expected outputs; each command runs as its own process, 5 times interleaved; medians of wall time and of
peak RSS (the process's own ru_maxrss).  Polygraphy runs from its own venv (its best case: no torch beside it):

    python3 -m venv /tmp/polyvenv && /tmp/polyvenv/bin/pip install polygraphy onnxruntime onnx numpy
    python scripts/bench_startup.py --polygraphy /tmp/polyvenv/bin/polygraphy
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import numpy_helper

SETS = 50
REPEATS = 5

RAW_SCRIPT = """
import sys, pathlib, numpy as np, onnx, onnxruntime
from onnx import numpy_helper
model, data = sys.argv[1], pathlib.Path(sys.argv[2])
session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
def read(p):
    t = onnx.TensorProto(); t.ParseFromString(p.read_bytes()); return numpy_helper.to_array(t)
ok = True
for folder in sorted(data.glob("test_data_set_*")):
    got = session.run(None, {name: read(folder / "input_0.pb")})[0]
    ok &= bool(np.allclose(got, read(folder / "output_0.pb"), rtol=1e-3, atol=1e-5))
sys.exit(0 if ok else 1)
"""

POLY_DATA = """
import sys, pathlib, onnx
from onnx import numpy_helper
from polygraphy.json import save_json
from polygraphy.comparator import IterationResult, RunResults
data, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def read(p):
    t = onnx.TensorProto(); t.ParseFromString(p.read_bytes()); return numpy_helper.to_array(t)
folders = sorted(data.glob("test_data_set_*"))
save_json([{sys.argv[3]: read(f / "input_0.pb")} for f in folders], str(out / "inputs.json"))
results = RunResults()
expected = [IterationResult({sys.argv[4]: read(f / "output_0.pb")}, runner_name="expected") for f in folders]
results.append(("expected", expected))
results.save(str(out / "outputs.json"))
"""


def test_data(model: Path, folder: Path) -> tuple[str, str]:
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    spec, output = session.get_inputs()[0], session.get_outputs()[0].name
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    rng = np.random.default_rng(0)
    for i in range(SETS):
        sub = folder / f"test_data_set_{i}"
        sub.mkdir(parents=True)
        x = rng.standard_normal(shape).astype(np.float32)
        y = session.run(None, {spec.name: x})[0]
        (sub / "input_0.pb").write_bytes(numpy_helper.from_array(x, spec.name).SerializeToString())
        (sub / "output_0.pb").write_bytes(numpy_helper.from_array(y, output).SerializeToString())
    return spec.name, output


def measure(command: list[str], codes: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process, which must exit with one of `codes`."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in codes:
        raise SystemExit(f"failed: {' '.join(command)}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--polygraphy", type=Path, help="polygraphy executable of a separate venv")
    args = parser.parse_args()
    model = Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx"
    harness = Path(sys.executable).parent / "harness"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        input_name, output_name = test_data(model, root / "data")
        (root / "raw.py").write_text(RAW_SCRIPT)
        commands = {
            "raw ONNX Runtime script": [sys.executable, str(root / "raw.py"), str(model), str(root / "data")],
            "harness run --onnx": [
                *(str(harness), "run", "--onnx", str(model), "--inputs", str(root / "data"), "--runtime", "ort-fp32"),
                *("--report-dir", str(root / "report"), "--cache-dir", str(root / "cache")),
            ],
        }
        if args.polygraphy:
            python = args.polygraphy.parent / "python"
            (root / "poly_data.py").write_text(POLY_DATA)
            subprocess.run([str(python), str(root / "poly_data.py"), str(root / "data"), str(root), input_name, output_name], check=True)
            commands["polygraphy run --onnxrt"] = [
                *(str(args.polygraphy), "run", str(model), "--onnxrt"),
                *("--load-inputs", str(root / "inputs.json"), "--load-outputs", str(root / "outputs.json")),
                *("--rtol", "1e-3", "--atol", "1e-5"),
            ]
        for command in commands.values():  # warm the page cache and the harness artifact cache
            measure(command)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(REPEATS):
            for name, command in commands.items():
                samples[name].append(measure(command))
    raw = statistics.median(s for s, _ in samples["raw ONNX Runtime script"])
    print(f"{SETS} test sets of {model.name}, medians of {REPEATS} interleaved runs, {os.cpu_count()} CPUs")
    print("| command | wall s | vs raw script | peak RSS MiB |\n| --- | --- | --- | --- |")
    for name, runs in samples.items():
        wall, rss = statistics.median(s for s, _ in runs), statistics.median(r for _, r in runs)
        print(f"| {name} | {wall:.2f} | {wall / raw:.2f}x | {rss:.0f} |")
    if "polygraphy run --onnxrt" in samples:
        poly = statistics.median(s for s, _ in samples["polygraphy run --onnxrt"])
        print(f"harness / polygraphy: {statistics.median(s for s, _ in samples['harness run --onnx']) / poly:.2f}x")


if __name__ == "__main__":
    main()
