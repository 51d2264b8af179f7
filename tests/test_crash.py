"""Crash and concurrency, as real processes: SIGKILL during `golden update` and during an artifact
build never leaves a half-written golden or artifact; two runs share one cache and one golden folder;
SIGINT during a run is one line and exit code 130."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from exporters.cache import DEFAULT_CACHE_ENV, ArtifactCache
from harness.core.errors import INTERRUPTED
from harness.judge.golden import GoldenStore
from harness.spec.suite import BUNDLED_DIR

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = BUNDLED_DIR / "demo" / "data"
MOMENTS = 8


def _small_dataset(tmp_path: Path, count: int = 40) -> Path:
    demo = json.loads((DEMO_DATA / "manifest.json").read_text())
    root = tmp_path / "small"
    (root / "eval").mkdir(parents=True)
    entries = demo["splits"]["eval"][:count]
    for entry in entries:
        shutil.copy(DEMO_DATA / entry["file"], root / entry["file"])
    (root / "manifest.json").write_text(json.dumps({"classes": demo["classes"], "splits": {"eval": entries}}))
    return root / "manifest.json"


def _default_sigint() -> None:
    """In the child: SIGINT back to its default.  A CI job started in the background inherits SIGINT ignored, and
    Python then never turns it into KeyboardInterrupt; a user's terminal delivers it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _harness(*args: str | Path, cache: Path) -> subprocess.Popen[str]:
    env = os.environ | {DEFAULT_CACHE_ENV: str(cache), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "harness", *map(str, args)]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def _killed_at(args: list[str | Path], cache: Path, seconds: float) -> None:
    process = _harness(*args, cache=cache)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)


def _duration(args: list[str | Path], cache: Path) -> float:
    start = time.perf_counter()
    code, out, err = _finish(_harness(*args, cache=cache))
    assert code == 0, out + err
    return time.perf_counter() - start


def test_sigkill_during_golden_update_leaves_the_old_or_the_new_golden(
    make_suite: Callable[..., Path], cache_dir: Path, tmp_path: Path
) -> None:
    manifest = _small_dataset(tmp_path)
    old = make_suite(manifest=manifest)
    new = make_suite({'resize = "pillow-bilinear"': 'resize = "opencv-nearest"'}, manifest=manifest, name="new.toml")
    runtimes = ["--runtime", "torch-fp32", "--runtime", "ort-fp32"]
    _duration(["golden", "update", "--suite", old, *runtimes], cache_dir)
    store = GoldenStore(tmp_path / "golden", "demo")
    full = _duration(["golden", "update", "--suite", new, *runtimes], cache_dir)  # how long a whole update takes
    _duration(["golden", "update", "--suite", old, *runtimes], cache_dir)
    seen = set()
    for moment in range(1, MOMENTS + 1):
        _killed_at(["golden", "update", "--suite", new if moment % 2 else old, *runtimes], cache_dir, full * moment / (MOMENTS + 1))
        for runtime in ("torch-fp32", "ort-fp32"):
            golden = store.load(runtime)  # checksum verified: never half of one
            seen.add(golden.metadata["stack"]["resize"])
            assert golden.metadata["stack"]["resize"] in ("pillow-bilinear", "opencv-nearest")
    assert seen  # and the store still loads after every kill


def test_sigkill_during_an_artifact_build_leaves_no_half_artifact(make_suite: Callable[..., Path], tmp_path: Path) -> None:
    cache = tmp_path / "cold-cache"
    suite = make_suite(manifest=_small_dataset(tmp_path))
    export = ["export", "--suite", suite, "--precision", "fp16", "--target", "openvino"]
    for seconds in (3.0, 5.0, 7.0):
        _killed_at(export, cache, seconds)
        for _kind, folder, _size in ArtifactCache(cache).entries():
            info = json.loads((folder / "info.json").read_text())  # complete: key, info and the files it hashes
            assert info["files_sha256"]
            assert any(p.suffix in (".onnx", ".xml") for p in folder.iterdir())
    code, out, err = _finish(_harness(*export, cache=cache))
    assert code == 0, out + err


def test_two_runs_share_one_cache_and_one_golden_folder(make_suite: Callable[..., Path], tmp_path: Path) -> None:
    cache = tmp_path / "shared-cache"
    suite = make_suite(manifest=_small_dataset(tmp_path))
    args = ["--suite", suite, "--runtime", "torch-fp32", "--runtime", "ort-fp32"]
    assert _finish(_harness("golden", "update", *args, cache=cache))[0] == 0
    shutil.rmtree(cache)  # both runs find a cold cache and export at the same time
    runs = [_harness("run", *args, "--report-dir", tmp_path / f"rep{i}", cache=cache) for i in (1, 2)]
    results = [_finish(p) for p in runs]
    assert [code for code, _, _ in results] == [0, 0], results
    reports = [json.loads((tmp_path / f"rep{i}" / "report.json").read_text()) for i in (1, 2)]
    assert [r["passed"] for r in reports] == [True, True]
    assert len([e for e in ArtifactCache(cache).entries() if e[0] == "onnx"]) == 1


@pytest.mark.parametrize("command", ["run", "matrix"])
def test_sigint_is_one_line_and_exit_130(cache_dir: Path, tmp_path: Path, command: str) -> None:
    args = ["--suite", "demo", "--runtime", "ort-fp32", "--report-dir", tmp_path]
    extra = ["--repeat", "50", "--no-golden"] if command == "run" else ["--axes", "decoder,resize,colour,order"]
    process = _harness(command, *args, *extra, cache=cache_dir)
    time.sleep(6)
    assert process.poll() is None, "finished before the interrupt: make the workload longer"
    process.send_signal(signal.SIGINT)
    code, _out, err = _finish(process)
    assert code == 130, f"exit {code}: {err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["error: interrupted (reports, goldens and cached artifacts are written whole or not at all)"]
    assert not (tmp_path / "report.json").exists() and not (tmp_path / "matrix.json").exists()


def test_sigint_while_the_libraries_import_is_one_line_too(cache_dir: Path, tmp_path: Path) -> None:
    process = _harness("run", "--suite", "demo", "--runtime", "torch-fp32", "--no-golden", "--report-dir", tmp_path, cache=cache_dir)
    time.sleep(0.5)  # inside the CLI's imports, or the command's `import torch` & co.
    process.send_signal(signal.SIGINT)
    code, _out, err = _finish(process)
    assert code == 130 and [line for line in err.splitlines() if line.strip()] == [INTERRUPTED], err
