"""Run reports: terminal table, JSON (versioned schema) and Markdown.

The JSON schema is documented in README.md ("Report format"); bump
`SCHEMA_VERSION` on any incompatible change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.compare import Comparison
from harness.measured import Determinism, RunOutputs

SCHEMA_VERSION = "1.2"


def render_table(console: Console, title: str, headers: tuple[str, ...], rows: list[list[str]]) -> None:
    """Rich table; rows whose last cell starts with FAIL are red."""
    table = Table(title=title)
    for header in headers:
        table.add_column(header, justify="left" if header in ("runtime", "executed", "vs", "verdict", "set", "output") else "right")
    for row in rows:
        table.add_row(*row, style="red" if row[-1].startswith("FAIL") else None)
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


@dataclass
class RuntimeResult:
    runtime: str
    session: dict[str, str]
    metric: float
    infer_seconds: float
    comparisons: list[Comparison] = field(default_factory=list)
    determinism: Determinism | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "session": self.session,
            "metric": self.metric,
            "infer_seconds": round(self.infer_seconds, 4),
            "determinism": self.determinism.describe() if self.determinism else None,
            "comparisons": [c.describe() for c in self.comparisons],
            "passed": self.passed,
        }


@dataclass
class RunReport:
    suite: str
    task: str
    metric_name: str
    reference: str
    samples: int
    context: dict[str, Any]
    results: list[RuntimeResult]
    notes: list[str] = field(default_factory=list)
    shard: tuple[int, int] = (1, 1)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    measured: RunOutputs | None = field(default=None, repr=False, compare=False)  # the raw outputs judged (`api.check`)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def describe(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "suite-run",
            "created": self.created,
            "suite": self.suite,
            "task": self.task,
            "metric_name": self.metric_name,
            "reference": self.reference,
            "samples": self.samples,
            "shard": f"{self.shard[0]}/{self.shard[1]}",
            **self.context,
            "notes": self.notes,
            "results": [r.describe() for r in self.results],
            "passed": self.passed,
        }

    def rows(self) -> list[list[str]]:
        """One row per comparison; the reference runtime alone gets a metric-only row."""
        rows = []
        for result in self.results:
            executed = result.session.get("executed", "")
            if not result.comparisons:
                rows.append([result.runtime, executed, "-", f"{result.metric:.4f}", "", "", "", "", "", "", "", "reference"])
            for comp in result.comparisons:
                worst = comp.worst
                failed = [c.name for c in comp.checks if not c.passed]
                rows.append(
                    [
                        result.runtime,
                        executed,
                        str(comp.against),
                        f"{comp.metric:.4f}",
                        f"{comp.metric_delta:+.4f}",
                        f"{worst.max_abs:.2e}",
                        f"{worst.mean_abs:.2e}",
                        f"{worst.min_cosine:.6f}",
                        f"{comp.top1_agreement:.4f}",
                        str(len(comp.flips)),
                        f"{len(comp.negative_flips)}/{len(comp.positive_flips)}",
                        "PASS" if comp.passed else "FAIL: " + ", ".join(failed),
                    ]
                )
        return rows

    HEADERS = ("runtime", "executed", "vs", "metric", "delta", "max abs", "mean abs", "min cos", "agree", "flips", "neg/pos", "verdict")

    def render(self, console: Console) -> None:
        render_table(
            console, f"{self.suite}: {self.metric_name} on {self.samples} samples (reference {self.reference})", self.HEADERS, self.rows()
        )
        for note in self.notes:
            console.print(f"note: {note}")
        console.print("[green]all checks passed[/green]" if self.passed else "[red]some checks failed[/red]")

    def to_markdown(self) -> str:
        lines = [
            f"# {self.suite}: {'PASS' if self.passed else 'FAIL'}",
            "",
            f"{self.metric_name} on {self.samples} samples, reference `{self.reference}`, {self.created}.",
            "",
            *markdown_table(self.HEADERS, self.rows()),
        ]
        flipped = [(r.runtime, c) for r in self.results for c in r.comparisons if c.flips]
        if flipped:
            lines += ["", "## Flipped samples", ""]
            for runtime, comp in flipped:
                shown = ", ".join(f"`{f}`" for f in comp.flips[:20])
                more = f" and {len(comp.flips) - 20} more" if len(comp.flips) > 20 else ""
                lines.append(f"- {runtime} vs {comp.against}: {shown}{more}")
        lines += self._detail_lines()
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        env = self.context.get("environment", {})
        lines += ["", "## Environment", "", f"- cpu: {env.get('cpu')}", f"- ISA: {', '.join(env.get('isa', [])) or '-'}"]
        lines += [f"- threads: {env.get('threads')}", f"- batch size: {self.context.get('batch_size')}"]
        lines += [f"- platform: {env.get('platform')}"]
        lines += [f"- {k}: {v}" for k, v in env.get("libraries", {}).items()]
        return "\n".join(lines) + "\n"

    def _detail_lines(self) -> list[str]:
        """Where drift came from: stage attribution, worst class, worst samples, determinism."""
        lines = ["", "## Details", ""]
        for result in self.results:
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
