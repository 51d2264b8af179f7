"""Report outputs: JUnit XML (the structure CI reporters read), self-contained HTML,
`harness report OLD NEW`, `--shard` + `harness merge` equal to the full run, `--repeat`."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.report.html import THUMBNAILS
from harness.run.outputs import RunOutputs
from tests.conftest import CliResult

Cli = Callable[..., CliResult]
RUNTIMES = ("--runtime", "torch-fp32", "--runtime", "ort-fp32", "--runtime", "ort-int8")
DEMO_GOLDENS = Path(__file__).resolve().parent.parent / "golden" / "demo"
VOLATILE = {"created", "infer_seconds", "shard", "seconds", "execution"}  # execution: how it ran (3 shards or 1 run), not what


def _run(harness_cli: Cli, report_dir: Path, *extra: str) -> CliResult:
    return harness_cli("run", "--suite", "demo", *RUNTIMES, "--limit", "60", "--report-dir", report_dir, *extra)


def _stable(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _stable(v) for k, v in data.items() if k not in VOLATILE}
    if isinstance(data, list):
        return [_stable(v) for v in data]
    return data


def test_shards_merge_into_the_full_run(harness_cli: Cli, tmp_path: Path) -> None:
    assert _run(harness_cli, tmp_path / "full").code == 0
    shard_dirs = [tmp_path / f"shard{i}" for i in (1, 2, 3)]
    for i, folder in enumerate(shard_dirs, start=1):
        assert _run(harness_cli, folder, "--shard", f"{i}/3").code == 0
    assert json.loads((shard_dirs[1] / "report.json").read_text())["samples"] == 20
    merged = harness_cli("merge", *reversed(shard_dirs), "--suite", "demo", "--report-dir", tmp_path / "merged")
    assert merged.code == 0, merged.err
    full = json.loads((tmp_path / "full" / "report.json").read_text())
    combined = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert _stable(combined) == _stable(full)
    a, b = RunOutputs.load(tmp_path / "full"), RunOutputs.load(tmp_path / "merged")
    assert a.ids == b.ids and a.stages == b.stages
    for name in a.inferences:
        assert np.array_equal(a.inferences[name].outputs["logits"], b.inferences[name].outputs["logits"])


def test_merge_refuses_an_incomplete_set(harness_cli: Cli, tmp_path: Path) -> None:
    assert _run(harness_cli, tmp_path / "s1", "--shard", "1/2").code == 0
    result = harness_cli("merge", tmp_path / "s1", "--suite", "demo", "--report-dir", tmp_path / "m")
    assert result.code == 2 and "are not 1..2 of 2" in result.err


@pytest.mark.parametrize("spec", ["3/2", "two/4", "0/1"])
def test_bad_shard_spec_is_one_line(harness_cli: Cli, spec: str) -> None:
    result = harness_cli("run", "--suite", "demo", "--shard", spec)
    assert result.code == 2 and "--shard" in result.err and "Traceback" not in result.err


def _check_junit(root: ET.Element) -> None:
    """The junit-10.xsd rules CI reporters rely on."""
    assert root.tag == "testsuites"
    for suite in root:
        assert suite.tag == "testsuite"
        for attr in ("name", "tests", "failures", "errors", "skipped", "time"):
            assert attr in suite.attrib, attr
        cases = suite.findall("testcase")
        assert int(suite.get("tests", -1)) == len(cases)
        assert int(suite.get("failures", -1)) == sum(1 for c in cases if c.find("failure") is not None)
        assert next(child.tag for child in suite) == "properties"
        for prop in suite.find("properties") or []:
            assert prop.tag == "property" and {"name", "value"} <= set(prop.attrib)
        for case in cases:
            assert {"name", "classname", "time"} <= set(case.attrib)
            float(case.get("time", "x"))
            tags = [child.tag for child in case]
            assert tags in (["system-out"], ["failure", "system-out"]), tags
            failure = case.find("failure")
            if failure is not None:
                assert failure.get("message") and failure.get("type")


def _drifted_goldens(tmp_path: Path, stack: str) -> Path:
    """A golden folder whose goldens of `stack` are the reference stack's: the run through `stack` drifts from them."""
    root = tmp_path / "goldens"
    shutil.copytree(DEMO_GOLDENS, root / "stacks" / stack)
    return root


def test_junit_has_one_case_per_runtime_and_check(harness_cli: Cli, tmp_path: Path) -> None:
    goldens = _drifted_goldens(tmp_path, "camera-nv12")
    args = ("--stack", "camera-nv12", *RUNTIMES, "--limit", "60", "--report-dir", tmp_path, "--golden-dir", goldens)
    result = harness_cli("run", "--suite", "demo", *args)
    root = ET.parse(tmp_path / "report.xml").getroot()
    _check_junit(root)
    cases = root.findall("testsuite/testcase")
    assert len(cases) == 5 * 6  # (ort-fp32, ort-int8) x reference + 3 runtimes x golden, six checks each
    assert {c.get("classname") for c in cases} == {"demo.torch-fp32", "demo.ort-fp32", "demo.ort-int8"}
    failed = [c for c in cases if c.find("failure") is not None]
    assert result.code == 1 and failed
    assert any("stages: pre-processed tensors differ" in (c.findtext("system-out") or "") for c in failed)


def test_html_report_is_self_contained(harness_cli: Cli, tmp_path: Path) -> None:
    assert harness_cli("run", "--suite", "demo", *RUNTIMES, "--report-dir", tmp_path).code == 0
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "<table>" in page
    report = json.loads((tmp_path / "report.json").read_text())
    comparisons = [c for r in report["results"] for c in r["comparisons"]]  # their flips depend on this CPU's kernels
    moved_a_class = any(d["delta"] for c in comparisons for d in c["per_class"])
    assert page.count("data:image/png;base64,") == 1 + moved_a_class  # error histogram, per-class deltas when a class moved
    assert ("no class changed accuracy" in page) != moved_a_class
    flips = [len(c["flips"]) for c in comparisons]
    assert page.count("data:image/jpeg;base64,") == sum(min(n, THUMBNAILS) for n in flips)  # one thumbnail per flipped sample
    assert 'src="http' not in page and "<script" not in page


def test_report_command_compares_two_runs(harness_cli: Cli, tmp_path: Path) -> None:
    assert _run(harness_cli, tmp_path / "old").code == 0
    _run(harness_cli, tmp_path / "new", "--stack", "opencv-service", "--golden-dir", str(_drifted_goldens(tmp_path, "opencv-service")))
    result = harness_cli("report", tmp_path / "old" / "report.json", tmp_path / "new" / "report.json")
    assert result.code == 1 and "PASS -> FAIL" in result.out
    assert "changed: stack.resize: pillow-bilinear -> opencv-linear" in result.out
    same = harness_cli("report", tmp_path / "old" / "report.json", tmp_path / "old" / "report.json")
    assert same.code == 0
    bad = harness_cli("report", tmp_path / "old" / "report.md", tmp_path / "old" / "report.json")
    assert bad.code == 2 and "not a readable report.json" in bad.err


@pytest.mark.parametrize("suite", ["demo", "detect", "segment"])
def test_repeat_reports_determinism(harness_cli: Cli, tmp_path: Path, suite: str) -> None:
    """Labels, NaN-padded box lists and masks alike (NaN padding equals itself)."""
    result = harness_cli(
        "run", "--suite", suite, "--runtime", "ort-fp32", "--limit", "16", "--repeat", "3", "--no-golden", "--report-dir", tmp_path
    )
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "report.json").read_text())
    det = {r["runtime"]: r["determinism"] for r in report["results"]}
    assert det["ort-fp32"] == {"repeats": 3, "bit_identical": True, "max_abs_spread": 0.0, "prediction_changes": 0}
    assert "3 repeats bit-identical" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("width", [80, 120, 200])
def test_tables_fit_the_terminal_without_cutting_a_runtime_name_or_a_number(demo_suite: Any, cache: Any, width: int) -> None:
    """The run table at 80, 120 and 200 columns: every line fits, no cell is elided, the columns that stay are whole."""
    import io

    from rich.console import Console

    from harness.judge.verdict import run_suite
    from harness.report.tables import REPORT_HEADERS, render_report, report_rows
    from harness.run.plan import RunRequest

    report, _ = run_suite(demo_suite, RunRequest(("ort-fp32", "ort-int8", "ov-fp16"), 32, limit=32), cache)
    console = Console(width=width, file=io.StringIO(), color_system=None)
    render_report(console, report)
    text = console.file.getvalue()
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    assert "…" not in text
    table_rows = [line for line in lines if line.startswith("│")]
    for row in report_rows(report):
        assert any(line.startswith(f"│ {row[0]} ") for line in table_rows), row[0]  # runtime names whole
        assert any(f" {row[REPORT_HEADERS.index('delta pts')]} " in line for line in table_rows) or not row[4]
    if width >= 200:
        assert "left out" not in text
    else:
        assert "left out to fit" in text


PROBE = """<script>window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter((image) => !(image.complete && image.naturalWidth > 0)).length;
  document.title = `IMAGES ${images.length} BROKEN ${broken}`;
});</script>"""


def test_the_html_report_renders_in_a_real_browser(harness_cli: Cli, tmp_path: Path) -> None:
    """Headless Chromium opens report.html (with flipped samples and a class heat map): no console error, and
    every image (plots, thumbnails) loads."""
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium here (.ci/run installs Debian's chromium)")
    goldens = _drifted_goldens(tmp_path, "camera-nv12")
    args = ("--stack", "camera-nv12", *RUNTIMES, "--limit", "120", "--report-dir", tmp_path / "r", "--golden-dir", goldens)
    assert harness_cli("run", "--suite", "demo", *args).code == 1  # drifted: flips, class deltas, thumbnails
    page = (tmp_path / "r" / "report.html").read_text()
    assert "triangle" in page and "truth " in page  # class names in the captions
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]
    done = subprocess.run(
        [browser, *flags, "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    title = done.stdout.split("<title>", 1)[1].split("</title>", 1)[0]
    assert title.startswith("IMAGES") and int(title.split()[1]) >= 4 and title.endswith("BROKEN 0"), title
    assert [line for line in done.stderr.splitlines() if ":CONSOLE" in line] == []


@pytest.mark.parametrize("width", [80, 120])
def test_matrix_tables_fit_the_terminal(width: int) -> None:
    import io

    from rich.console import Console

    from harness.analysis.matrix import MatrixReport
    from harness.report.tables import render_table

    summary = [["decoder", "ort-int8", "4", "-0.25 (-1.00)", "0.5 (2)", "1.23e-01", "opencv-nearest + letterbox"]] * 3
    variants = [["resize", "torchvision-bilinear-noaa", "ort-int8", "93.20", "-1.00", "5", "1.23e-01", "4.56e-03"]] * 3
    console = Console(width=width, file=io.StringIO(), color_system=None)
    render_table(console, "summary", MatrixReport.SUMMARY_HEADERS, summary, MatrixReport.SUMMARY_DROP)
    render_table(console, "every variant", MatrixReport.ROW_HEADERS, variants, MatrixReport.ROW_DROP)
    text = console.file.getvalue()
    assert all(len(line) <= width for line in text.splitlines()) and "…" not in text
    assert "opencv-nearest + letterbox" in text and "torchvision-bilinear-noaa" in text and "-1.00" in text
