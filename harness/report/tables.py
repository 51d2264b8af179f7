"""Reports of a verdict: the terminal table, Markdown, and the files beside the JSON (`RunReport.describe()`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.judge.verdict import RunReport

LEFT = ("runtime", "executed", "vs", "verdict", "set", "output", "axis", "variant", "worst variant", "layer")
BORDER = 3  # a column's padding and its rule in rich's default box


def fitting(console: Console, headers: tuple[str, ...], rows: list[list[str]], drop: tuple[str, ...]) -> list[int]:
    """Indices of the columns shown: those named in `drop` are left out, first to last, until the table fits the
    console; a column that stays is never cut (a runtime name or a number reads whole or not at all)."""
    widths = [max([len(header), *(len(row[i]) for row in rows)]) + BORDER for i, header in enumerate(headers)]
    shown = list(range(len(headers)))
    for name in drop:
        if sum(widths[i] for i in shown) + 1 <= console.width:
            break
        shown.remove(headers.index(name))
    return shown


def render_table(console: Console, title: str, headers: tuple[str, ...], rows: list[list[str]], drop: tuple[str, ...] = ()) -> None:
    """Rich table that fits the console (`fitting`; the last column wraps when it must); rows whose last cell
    starts with FAIL are red."""
    shown = fitting(console, headers, rows, drop)
    left_out = [headers[i] for i in range(len(headers)) if i not in shown]
    table = Table(title=title, caption=f"{', '.join(left_out)} left out to fit {console.width} columns" if left_out else None)
    for i in shown:
        last = i == shown[-1]
        table.add_column(headers[i], justify="left" if headers[i] in LEFT else "right", no_wrap=not last, overflow="fold")
    for row in rows:
        table.add_row(*(row[i] for i in shown), style="red" if row[-1].startswith("FAIL") else None)
    console.print(table)


def markdown_table(headers: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(row) + " |" for row in rows]


def write_report_files(report_dir: Path, data: dict[str, Any], markdown: str, stem: str = "report") -> list[Path]:
    """<stem>.json and <stem>.md under `report_dir`."""
    report_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = report_dir / f"{stem}.json", report_dir / f"{stem}.md"
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    md_path.write_text(markdown)
    return [json_path, md_path]


def report_rows(report: RunReport) -> list[list[str]]:
    """One row per comparison; the reference runtime alone gets a metric-only row."""
    rows = []
    for result in report.results:
        executed = result.session.get("executed", "")
        if not result.comparisons:
            rows.append([result.runtime, executed, "-", f"{100 * result.metric:.2f}", "", "", "", "", "", "", "", "reference"])
        for comp in result.comparisons:
            worst = comp.worst
            failed = [c.name for c in comp.checks if not c.passed]
            rows.append(
                [
                    result.runtime,
                    executed,
                    str(comp.against),
                    f"{100 * comp.metric:.2f}",
                    f"{100 * comp.metric_delta:+.2f}",
                    f"{worst.max_abs:.2e}",
                    f"{worst.mean_abs:.2e}",
                    f"{worst.min_cosine:.6f}",
                    f"{100 * comp.top1_agreement:.2f}",
                    str(len(comp.flips)),
                    f"{len(comp.negative_flips)}/{len(comp.positive_flips)}",
                    "PASS" if comp.passed else "FAIL: " + ", ".join(failed),
                ]
            )
    return rows


REPORT_HEADERS = (
    "runtime",
    "executed",
    "vs",
    "metric %",
    "delta pts",
    "max abs",
    "mean abs",
    "min cos",
    "agree %",
    "flips",
    "neg/pos",
    "verdict",
)
REPORT_DROP = ("mean abs", "min cos", "neg/pos", "agree %", "executed", "max abs", "metric %")  # left out first to last on narrow terminals


def render_report(console: Console, report: RunReport) -> None:
    title = f"{report.suite}: {report.metric_name} on {report.samples} samples, {report.stack} stack (reference {report.reference})"
    render_table(console, title, REPORT_HEADERS, report_rows(report), REPORT_DROP)
    for note in report.notes:
        console.print(f"note: {note}")
    console.print("[green]all checks passed[/green]" if report.passed else "[red]some checks failed[/red]")


def report_markdown(report: RunReport) -> str:
    lines = [
        f"# {report.suite}: {'PASS' if report.passed else 'FAIL'}",
        "",
        f"{report.metric_name} on {report.samples} samples through the `{report.stack}` stack, reference `{report.reference}`,"
        f" {report.created}.",
        "",
        *markdown_table(REPORT_HEADERS, report_rows(report)),
    ]
    flipped = [(r.runtime, c) for r in report.results for c in r.comparisons if c.flips]
    if flipped:
        lines += ["", "## Flipped samples", ""]
        for runtime, comp in flipped:
            shown = ", ".join(f"`{f}`" for f in comp.flips[:20])
            more = f" and {len(comp.flips) - 20} more" if len(comp.flips) > 20 else ""
            lines.append(f"- {runtime} vs {comp.against}: {shown}{more}")
    lines += _detail_lines(report)
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    env = report.context.get("environment", {})
    lines += ["", "## Environment", "", f"- cpu: {env.get('cpu')}", f"- ISA: {', '.join(env.get('isa', [])) or '-'}"]
    lines += [f"- threads: {env.get('threads')}", f"- batch size: {report.context.get('batch_size')}"]
    lines += [f"- platform: {env.get('platform')}"]
    lines += [f"- {k}: {v}" for k, v in env.get("libraries", {}).items()]
    return "\n".join(lines) + "\n"


def _detail_lines(report: RunReport) -> list[str]:
    """Where drift came from: stage attribution, worst class, worst samples, determinism."""
    lines = ["", "## Details", ""]
    for result in report.results:
        if result.determinism:
            d = result.determinism
            verdict = (
                "bit-identical"
                if d.bit_identical
                else f"NOT bit-identical: spread {d.max_abs_spread:.2e}, {d.prediction_changes} predictions vary"
            )
            lines.append(f"- {result.runtime}: {d.repeats} repeats {verdict}")
        for comp in result.comparisons:
            parts = [f"{key.replace('_', ' ')} {value:.4g}" for key, value in comp.details.items() if value is not None]
            parts.append(f"negative flip rate {comp.negative_flip_rate:.4f}, positive {comp.positive_flip_rate:.4f}")
            worst_class = comp.worst_class
            if worst_class and worst_class.delta < 0:
                parts.append(f"worst class {worst_class.label}: {100 * worst_class.delta:+.1f} points ({worst_class.samples} samples)")
            if comp.worst_samples and comp.worst_samples[0][1] > 0:
                parts.append("largest errors " + ", ".join(f"`{i}` {e:.2e}" for i, e in comp.worst_samples[:3]))
            if comp.attribution:
                parts.append(f"stages: {comp.attribution.message()}")
            lines.append(f"- {result.runtime} vs {comp.against}: " + "; ".join(parts))
    return lines
