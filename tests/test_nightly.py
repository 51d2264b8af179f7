"""scripts/nightly.sh end to end: doctor, cached exports, a sharded run, the exit code as the CI verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _nightly(tmp_path: Path, *suites: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = os.environ | {"HARNESS": f"{sys.executable} -m harness", "REPORT_ROOT": str(tmp_path)} | env
    script = str(ROOT / "scripts" / "nightly.sh")
    return subprocess.run(["bash", script, *suites], cwd=ROOT, env=environment, capture_output=True, text=True, check=False)


def test_nightly_passes_and_writes_every_report(tmp_path: Path) -> None:
    done = _nightly(tmp_path, "demo", RUNTIMES="torch-fp32 ort-fp32 ort-int8", SHARD="2/5")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = tmp_path / "demo"
    assert sorted(p.name for p in folder.iterdir()) == ["outputs.npz", "report.html", "report.json", "report.md", "report.xml"]
    report = json.loads((folder / "report.json").read_text())
    assert report["samples"] == 100 and report["shard"] == "2/5" and report["passed"]
    assert "nightly verdict: 0" in done.stdout


def test_nightly_exit_code_is_the_worst_suite(tmp_path: Path) -> None:
    done = _nightly(tmp_path, "no-such-suite", "demo", RUNTIMES="torch-fp32", SHARD="1/10")
    assert done.returncode == 2
    assert "unknown suite 'no-such-suite'" in done.stderr
    assert (tmp_path / "demo" / "report.json").is_file()  # the other suite still ran
