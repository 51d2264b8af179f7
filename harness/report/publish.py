"""Everything a run leaves in its report folder: report.json (versioned
schema), report.md, report.xml (JUnit), report.html (self-contained, with
plots) and outputs.npz (raw outputs, for `harness merge`)."""

from __future__ import annotations

from pathlib import Path

from harness.core.files import atomic_write
from harness.judge.verdict import RunReport
from harness.report.html import html_report
from harness.report.junit import junit_xml
from harness.report.tables import report_markdown, write_report_files
from harness.run.outputs import RunOutputs
from harness.spec.suite import DataSpec


def publish(report_dir: Path, report: RunReport, measured: RunOutputs, data: DataSpec) -> list[Path]:
    """Every report file of a run; the HTML shows the samples of `data` with their class names."""
    paths = write_report_files(report_dir, report.describe(), report_markdown(report))
    atomic_write(report_dir / "report.xml", junit_xml(report).encode())
    atomic_write(report_dir / "report.html", html_report(report, measured, data.root, data.class_names()).encode())
    return [*paths, report_dir / "report.xml", report_dir / "report.html", measured.save(report_dir)]
