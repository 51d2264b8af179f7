"""Measure -> mitigate -> verify: the same model trained on the reference stack and with mix training
(`harness.data.mix`), each run through the SysNoise matrix on the reference runtime, reported side by side per
axis (mean, largest drop and standard deviation of the metric delta over the axis's variants, with the clean
metric).  Training is the caller's (`scripts/mitigate.py` for the bundled demo); this module builds the mix axes
from a suite's matrix axes and compares the matrices.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporters.cache import ArtifactCache
from harness.analysis.matrix import AXES, CATASTROPHIC, MatrixReport, MatrixRow, run_matrix
from harness.core.errors import HarnessError
from harness.data.mix import REGISTRIES, MixAxis
from harness.judge.verdict import SCHEMA_VERSION
from harness.report.tables import markdown_table, write_report_files
from harness.run.prepared import SuiteRun
from harness.run.sessions import Tracker, no_tracking
from harness.spec.suite import Suite

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MIX_AXES = ("decoder", "resize")  # the study's Algorithm 1; add "colour" to draw the colour path too


def mix_axes(suite: Suite, axes: tuple[str, ...] = MIX_AXES) -> list[MixAxis]:
    """The suite's matrix variants of each axis, and its reference, as the choices to draw from; configuration bugs
    (the BGR slip) are no deployment choice and are left out."""
    unknown = [a for a in axes if a not in REGISTRIES]
    if unknown:
        raise HarnessError(f"unknown mix axis {', '.join(unknown)}", f"mix axes: {', '.join(REGISTRIES)}")
    built = []
    for axis in axes:
        reference = getattr(suite.stack, axis)
        variants = [(v.name, v.overrides) for v in AXES[axis](suite) if (axis, v.name) not in CATASTROPHIC]
        built.append(MixAxis(axis, ((reference, ()), *variants)))
    return built


@dataclass(frozen=True)
class AxisSpread:
    """One model's metric deltas over one axis's variants, in fractions of the metric."""

    axis: str
    variants: int
    mean: float
    max_drop: float
    std: float
    mean_flips: float  # samples whose prediction changed, per variant: what moves when the deltas are a few samples

    @classmethod
    def of(cls, axis: str, rows: list[MatrixRow]) -> AxisSpread:
        deltas = np.array([r.comparison.metric_delta for r in rows])
        flips = float(np.mean([len(r.comparison.flips) for r in rows]))
        return cls(axis, len(rows), float(deltas.mean()), float(deltas.min()), float(deltas.std()), flips)

    def cells(self) -> list[str]:
        """Mean, largest drop and std in points, mean flips."""
        return [f"{100 * self.mean:+.2f}", f"{100 * self.max_drop:+.2f}", f"{100 * self.std:.3f}", f"{self.mean_flips:.1f}"]


def spreads(matrix: MatrixReport) -> dict[str, AxisSpread]:
    """Per axis (configuration bugs left out, combined rows as their own axis), in the matrix's axis order."""
    groups: dict[str, list[MatrixRow]] = {}
    for row in matrix.rows:
        if (row.axis, row.variant) not in CATASTROPHIC:
            groups.setdefault(row.axis, []).append(row)
    return {axis: AxisSpread.of(axis, rows) for axis, rows in groups.items()}


@dataclass
class MitigationReport:
    suite: str
    metric_name: str
    samples: int
    matrices: dict[str, MatrixReport]  # model label (reference, mix) -> its matrix
    context: dict[str, Any] = field(default_factory=dict)  # training recipe, mix axes, seconds

    @property
    def models(self) -> list[str]:
        return list(self.matrices)

    def clean(self, model: str) -> float:
        """The model's metric on the reference stack and runtime."""
        rows = self.matrices[model].rows
        return rows[0].comparison.metric_baseline if rows else float("nan")

    @property
    def spreads(self) -> dict[str, dict[str, AxisSpread]]:
        return {model: spreads(matrix) for model, matrix in self.matrices.items()}

    @property
    def axes(self) -> list[str]:
        return list(dict.fromkeys(axis for per_model in self.spreads.values() for axis in per_model))

    @property
    def headers(self) -> tuple[str, ...]:
        return ("axis", "variants", *(f"{m}: {what}" for m in self.models for what in ("mean", "max drop", "std", "flips")))

    def rows(self) -> list[list[str]]:
        """Points; the first row is the clean metric (percent)."""
        spread = self.spreads
        clean = ["clean " + self.metric_name, "-", *(c for m in self.models for c in (f"{100 * self.clean(m):.2f} %", "", "", ""))]
        out = [clean]
        for axis in self.axes:
            got = [spread[m].get(axis) for m in self.models]
            variants = next(s.variants for s in got if s)
            cells = []
            for s in got:
                cells += s.cells() if s else ["-"] * 4
            out.append([axis, str(variants), *cells])
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "mitigation",
            "suite": self.suite,
            "metric_name": self.metric_name,
            "samples": self.samples,
            **self.context,
            "clean": {m: self.clean(m) for m in self.models},
            "spread": {m: {a: s.__dict__ for a, s in per.items()} for m, per in self.spreads.items()},
            "matrices": {m: matrix.describe() for m, matrix in self.matrices.items()},
        }

    def to_markdown(self) -> str:
        lines = [
            f"# Mix training on {self.suite}",
            "",
            f"{self.metric_name} deltas in points against each model's own reference stack, on {self.samples} samples, "
            "per axis over its variants (configuration bugs left out): mean, largest drop, standard deviation, and the mean "
            "number of samples whose prediction changed (flips).",
            "",
            *markdown_table(self.headers, self.rows()),
        ]
        notes = self.context.get("notes", [])
        if notes:
            lines += ["", "## Notes", "", *(f"- {n}" for n in notes)]
        return "\n".join(lines) + "\n"

    def figure(self) -> Figure:
        """One panel per axis, its own scale: each model's mean delta, largest drop and std, in points."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        axes = self.axes
        fig, panels = plt.subplots(1, max(len(axes), 1), figsize=(3.2 * max(len(axes), 1) + 1, 3.4), squeeze=False)
        spread = self.spreads
        measures = ("mean", "max_drop", "std")
        x = np.arange(len(measures))
        width = 0.8 / max(len(self.models), 1)
        for panel, axis in zip(panels[0], axes, strict=False):
            for k, model in enumerate(self.models):
                s = spread[model].get(axis)
                values = [100 * getattr(s, m) for m in measures] if s else [0.0] * 3
                label = f"{model} (clean {100 * self.clean(model):.1f} %)"
                panel.bar(x + (k - (len(self.models) - 1) / 2) * width, values, width, label=label)
            panel.set_xticks(x, ["mean", "largest drop", "std"])
            panel.axhline(0, color="black", linewidth=0.6)
            panel.set_title(axis, fontsize=10)
            panel.set_ylabel("points", fontsize=8)
        if not axes:
            panels[0][0].axis("off")
        else:
            panels[0][0].legend(fontsize=7)
        fig.suptitle(f"{self.suite}: {self.metric_name} delta per axis, reference-stack vs mix training", fontsize=10)
        fig.tight_layout()
        return fig

    def write(self, report_dir: Path) -> list[Path]:
        """mitigate.json, mitigate.md and mitigate.png under `report_dir`."""
        import matplotlib.pyplot as plt

        paths = write_report_files(report_dir, self.describe(), self.to_markdown(), stem="mitigate")
        fig = self.figure()
        fig.savefig(report_dir / "mitigate.png", dpi=110)
        plt.close(fig)
        return [*paths, report_dir / "mitigate.png"]


def with_weights(suite: Suite, weights: Path) -> Suite:
    """The suite with its model's weights replaced (a model trained here)."""
    return replace(suite, model=replace(suite.model, weights=weights))


def run_mitigation(
    suite: Suite,
    weights: dict[str, Path],
    axes: list[str],
    cache: ArtifactCache,
    limit: int | None = None,
    batch_size: int | None = None,
    track: Tracker = no_tracking,
    context: dict[str, Any] | None = None,
) -> MitigationReport:
    """The matrix of `axes` on the suite's reference runtime for each trained model (label -> weights file)."""
    matrices = {}
    for label, path in weights.items():
        trained = with_weights(suite, path)
        run = SuiteRun(trained, cache, limit, track)
        matrices[label] = run_matrix(trained, axes, [suite.run.reference], run, batch_size or suite.run.batch_size)
    first = next(iter(matrices.values()))
    return MitigationReport(suite.name, first.metric_name, first.samples, matrices, context or {})
