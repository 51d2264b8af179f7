"""SysNoise matrix: one axis varied at a time against the reference, then the combined worst case.

Axes: decoder, resize, colour, order (pre-processing stack keys), model
(ONNX rewrite + PyTorch twin), precision (deployment runtimes), suite (the
suite's own `[stacks.<name>]`).  Each variant runs on every matrix runtime and
is compared with the same runtime on the reference stack and model (precision
variants: with the suite's reference runtime).  The combined row stacks the
worst choice of each axis, as the SysNoise study does.

Cost: the samples stream through in chunks (`--chunk`, whole batches), each
decoded once per decoder setting (pixels are shared by every resize, colour
and order variant and every runtime) and once more for the combined row;
each (tensors, model, runtime) is inferred once, on sessions that stay open.
Memory: one chunk's pixels and tensors, and every row's outputs.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporters.rewrites import MODEL_VARIANTS, VariantNotApplicable
from harness.core.files import atomic_write
from harness.data.colour import COLOUR_PATHS
from harness.data.dataset import Sample
from harness.data.decoders import DECODERS, decoder_unavailable
from harness.data.feed import Decoded, DecoderNotApplicable, InputSet, RaggedStack, concat_inputs, decode_all, decode_key, tensors_from
from harness.data.resizers import RESIZERS
from harness.data.stack import PADDED_MODES, StackSpec
from harness.judge.compare import Baseline, Comparison, compare
from harness.judge.verdict import SCHEMA_VERSION
from harness.report.html import figure_page, png_bytes
from harness.report.tables import markdown_table, write_report_files
from harness.run.outputs import Inference
from harness.run.plan import DEFAULT_CHUNK
from harness.run.prepared import SuiteRun
from harness.run.sessions import Sessions, predict
from harness.spec.suite import Suite
from harness.tasks import make_task
from runtimes import get_runtime

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Variant:
    """One change against the reference: stack keys, a model variant, or another runtime."""

    axis: str
    name: str
    overrides: tuple[tuple[str, Any], ...] = ()  # stack keys changed
    model: str | None = None
    runtime: str | None = None  # precision axis: run on this runtime instead of the matrix runtimes
    stack: StackSpec | None = None  # suite axis: a whole named stack
    postprocess: tuple[tuple[str, Any], ...] = ()  # post-processing axis: task flags changed (no new inference)

    def stack_for(self, reference: StackSpec) -> StackSpec:
        if self.stack is not None:
            return self.stack
        return replace(reference, name=f"{self.axis}:{self.name}", **dict(self.overrides)) if self.overrides else reference


def _decoder_axis(suite: Suite) -> list[Variant]:
    ref = suite.stack
    variants = [Variant("decoder", d, (("decoder", d),)) for d in DECODERS if d != ref.decoder]
    return [*variants, Variant("decoder", f"{ref.decoder}-exif-{'off' if ref.exif else 'on'}", (("exif", not ref.exif),))]


def _order_axis(suite: Suite) -> list[Variant]:
    ref = suite.stack
    flips = {"order": ("resize-crop", "crop-resize"), "rounding": ("uint8", "float")}
    if ref.resize_mode not in PADDED_MODES:
        flips["resize_mode"] = ("shorter", "direct")
    variants = []
    for key, (first, second) in flips.items():
        if key == "order" and not ref.crop:
            continue
        other = second if getattr(ref, key) == first else first
        variants.append(Variant("order", f"{key}={other}", ((key, other),)))
    side = ref.input_hw[0] if ref.input_hw and ref.input_hw[0] == ref.input_hw[1] else None
    if side is None:
        return variants
    # The same square input, filled the other ways deployments fill it: letterbox (YOLO-style services), keep-ratio
    # (FPN detectors), stretch.
    if ref.resize_mode != "letterbox":
        variants.append(Variant("order", "resize_mode=letterbox", (("resize_mode", "letterbox"), ("resize_size", side), ("crop", 0))))
    if ref.resize_mode == "letterbox":
        short = round(side * 0.8)
        variants.append(
            Variant("order", "resize_mode=keep-ratio", (("resize_mode", "keep-ratio"), ("resize_size", short), ("max_size", side)))
        )
    if ref.resize_mode in PADDED_MODES:
        variants.append(Variant("order", "resize_mode=direct", (("resize_mode", "direct"), ("resize_size", side), ("crop", 0))))
    return variants


def _postprocess_axis(suite: Suite) -> list[Variant]:
    """The task's post-processing variants (box decoding, NMS, thresholds): outputs re-used, predictions recomputed."""
    task = make_task(suite.task)  # a task may leave out variants its configuration does not read (detection: per decoder)
    variants = task.applicable_variants() if hasattr(task, "applicable_variants") else task.postprocess_variants
    return [Variant("postprocess", name, postprocess=tuple(flags.items())) for name, flags in variants.items()]


def _registry_axis(axis: str, key: str, registry: dict[str, Any]) -> Callable[[Suite], list[Variant]]:
    return lambda suite: [Variant(axis, name, ((key, name),)) for name in registry if name != getattr(suite.stack, key)]


AXES: dict[str, Callable[[Suite], list[Variant]]] = {
    "decoder": _decoder_axis,
    "resize": _registry_axis("resize", "resize", RESIZERS),
    "colour": _registry_axis("colour", "colour", COLOUR_PATHS),
    "order": _order_axis,
    "model": lambda suite: [Variant("model", name, model=name) for name in MODEL_VARIANTS],
    "precision": lambda suite: [Variant("precision", r, runtime=r) for r in suite.run.runtimes if r != suite.run.reference],
    "suite": lambda suite: [Variant("suite", name, stack=stack) for name, stack in suite.stacks.items()],
    "postprocess": _postprocess_axis,
}
DEFAULT_AXES = ("decoder", "resize", "colour", "order", "model", "postprocess", "precision", "suite")
COMBINED_AXES = ("decoder", "resize", "colour", "order", "model", "postprocess")  # the suite axis holds whole stacks
# Configuration bugs, not deployment choices: shown on their own rows, left out of the combined worst case.
CATASTROPHIC = {("colour", "bgr")}


@dataclass
class MatrixRow:
    axis: str
    variant: str
    comparison: Comparison

    @property
    def severity(self) -> tuple[float, int, float]:
        """Larger is worse: metric drop, then flips, then logit error."""
        return (-self.comparison.metric_delta, len(self.comparison.flips), self.comparison.worst.max_abs)

    def describe(self) -> dict[str, Any]:
        comp = self.comparison
        return {
            "axis": self.axis,
            "variant": self.variant,
            "runtime": comp.runtime,
            "against": str(comp.against),
            "metric": comp.metric,
            "metric_baseline": comp.metric_baseline,
            "metric_delta": comp.metric_delta,
            "flips": len(comp.flips),
            "flipped": comp.flips,
            "max_abs": comp.worst.max_abs,
            "mean_abs": comp.worst.mean_abs,
        }


@dataclass(frozen=True)
class NotApplicable:
    """A variant that cannot be compared on one runtime: the model has no op it changes, a decoder cannot read the
    dataset, its PyTorch twin fails, or it changes an output's shape."""

    axis: str
    variant: str
    runtime: str
    reason: str

    def cells(self) -> list[str]:
        return [self.axis, self.variant, self.runtime, self.reason]


@dataclass(frozen=True)
class AxisSummary:
    axis: str
    runtime: str
    variants: int
    mean_delta: float
    max_drop: float  # most negative delta
    mean_flips: float
    max_flips: int
    max_abs: float
    worst: str


def summarise(rows: list[MatrixRow]) -> list[AxisSummary]:
    """Per axis and baseline runtime (precision rows sit with the reference runtime they are measured against)."""
    groups: dict[tuple[str, str], list[MatrixRow]] = {}
    for row in rows:
        groups.setdefault((row.axis, str(row.comparison.against.runtime)), []).append(row)
    summaries = []
    for (axis, runtime), members in groups.items():
        deltas = [r.comparison.metric_delta for r in members]
        flips = [len(r.comparison.flips) for r in members]
        summaries.append(
            AxisSummary(
                axis=axis,
                runtime=runtime,
                variants=len(members),
                mean_delta=float(np.mean(deltas)),
                max_drop=min(deltas),
                mean_flips=float(np.mean(flips)),
                max_flips=max(flips),
                max_abs=max(r.comparison.worst.max_abs for r in members),
                worst=max(members, key=lambda r: r.severity).variant,
            )
        )
    return summaries


BUGS = "configuration bugs"  # the picture's panel of CATASTROPHIC rows


def changes_geometry(axis: str, variant: str) -> bool:
    """An order variant that fills the input another way (direct, letterbox, keep-ratio): a geometric mode."""
    return axis == "order" and variant.startswith("resize_mode=")


@dataclass
class Panel:
    """One panel of the matrix picture: an axis's rows, the combined rows, or the configuration bugs."""

    name: str
    rows: list[MatrixRow]

    def label(self, row: MatrixRow) -> str:
        return f"{row.axis}: {row.variant}" if self.name == BUGS else row.variant

    def labels(self) -> list[str]:
        return list(dict.fromkeys(self.label(r) for r in self.rows))

    def runtimes(self) -> list[str]:
        return list(dict.fromkeys(str(r.comparison.against.runtime) for r in self.rows))

    def height(self) -> float:
        """Inches: the title and axis, and per variant its bars or its wrapped label, whichever is taller."""
        lines = [_wrap(label).count("\n") + 1 for label in self.labels()]
        return 0.75 + sum(max(0.2 * len(self.runtimes()), 0.15 * n) for n in lines)

    def draw(self, ax: Axes, colours: dict[str, Any]) -> None:
        labels, present = self.labels(), self.runtimes()
        width = 0.8 / len(present)
        values = []
        for row in self.rows:
            runtime = str(row.comparison.against.runtime)
            y = labels.index(self.label(row)) + (present.index(runtime) - (len(present) - 1) / 2) * width
            delta = 100 * row.comparison.metric_delta + 0.0
            geometric = changes_geometry(row.axis, row.variant)
            ax.barh(y, delta, 0.9 * width, color=colours[runtime], hatch="///" if geometric else None,
                    edgecolor="black" if geometric else colours[runtime], linewidth=0.5)  # fmt: skip
            flips = len(row.comparison.flips)
            text = (f"{delta:+.1e}" if 0 < abs(delta) < 0.005 else f"{delta:+.2f}") + (f" ({flips})" if flips else "")
            ax.annotate(text, (delta, y), xytext=(3 if delta >= 0 else -3, 0), textcoords="offset points",
                        ha="left" if delta >= 0 else "right", va="center", fontsize=7)  # fmt: skip
            values.append(delta)
        lo, hi = min(0.0, *values), max(0.0, *values)
        span = (hi - lo) or 1.0
        ax.set_xlim(lo - 0.3 * span, hi + 0.3 * span)  # room for the labels
        ax.set_yticks(range(len(labels)), [_wrap(label) for label in labels], fontsize=8)
        ax.set_ylim(len(labels) - 0.5, -0.5)  # the first variant on top
        ax.axvline(0, color="black", linewidth=0.6)
        ax.tick_params(axis="x", labelsize=7)
        if self.name == "combined":
            title, face = "combined worst case: the worst variant of each axis together", "#fdecea"
        elif self.name == BUGS:
            title, face = "configuration bugs (left out of the combined rows)", "0.93"
        else:
            title, face = f"{self.name} ({len(labels)} variant{'s' if len(labels) > 1 else ''})", "white"
        ax.set_title(title, fontsize=9, loc="left", color="#b00000" if self.name == "combined" else "black")
        ax.set_facecolor(face)


def _wrap(label: str) -> str:
    """A variant label on lines of at most 34 characters, broken at spaces (combined rows: at the ' + ')."""
    return textwrap.fill(label, 34, break_on_hyphens=False)


def _columns(heights: list[float], count: int) -> list[list[int]]:
    """Panels in reading order split into `count` (1 or 2) columns, the taller column as short as it can be."""
    if count == 1 or len(heights) < 2:
        return [list(range(len(heights)))]
    split = min(range(1, len(heights)), key=lambda k: max(sum(heights[:k]), sum(heights[k:])))
    return [list(range(split)), list(range(split, len(heights)))]


@dataclass
class MatrixReport:
    suite: str
    metric_name: str
    samples: int
    runtimes: list[str]
    axes: list[str]
    rows: list[MatrixRow]
    notes: list[str]
    decodes: int
    seconds: float
    inference_seconds: float = 0.0  # of `seconds`: the runtimes' sessions fed (each tensors, model, runtime once)
    decoder_pairs: dict[str, dict[str, int]] = field(default_factory=dict)  # images whose decoded pixels differ, per decoder pair
    context: dict[str, Any] = field(default_factory=dict)
    not_applicable: list[NotApplicable] = field(default_factory=list)

    @property
    def summaries(self) -> list[AxisSummary]:
        return summarise(self.rows)

    def describe(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "matrix",
            "suite": self.suite,
            "metric_name": self.metric_name,
            "samples": self.samples,
            "runtimes": self.runtimes,
            "axes": self.axes,
            "decodes": self.decodes,
            "seconds": round(self.seconds, 2),
            "inference_seconds": round(self.inference_seconds, 2),
            **self.context,
            "summary": [s.__dict__ for s in self.summaries],
            "rows": [r.describe() for r in self.rows],
            "not_applicable": [n.__dict__ for n in self.not_applicable],
            "decoder_pairs": self.decoder_pairs,
            "notes": self.notes,
        }

    SUMMARY_HEADERS = ("axis", "runtime", "variants", "mean (max) delta pts", "mean (max) flips", "max logit err", "worst variant")
    SUMMARY_DROP = ("max logit err", "variants", "mean (max) flips")  # left out first to last on narrow terminals
    ROW_HEADERS = ("axis", "variant", "runtime", "metric %", "delta pts", "flips", "max abs", "mean abs")
    ROW_DROP = ("mean abs", "max abs", "metric %")
    NOT_APPLICABLE_HEADERS = ("axis", "variant", "runtime", "not applicable: why")

    def summary_rows(self) -> list[list[str]]:
        return [
            [
                s.axis,
                s.runtime,
                str(s.variants),
                f"{100 * s.mean_delta:+.2f} ({100 * s.max_drop:+.2f})",
                f"{s.mean_flips:.1f} ({s.max_flips})",
                f"{s.max_abs:.2e}",
                s.worst,
            ]
            for s in self.summaries
        ]

    def variant_rows(self) -> list[list[str]]:
        return [
            [
                r.axis,
                r.variant,
                r.comparison.runtime,
                f"{100 * r.comparison.metric:.2f}",
                f"{100 * r.comparison.metric_delta:+.2f}",
                str(len(r.comparison.flips)),
                f"{r.comparison.worst.max_abs:.2e}",
                f"{r.comparison.worst.mean_abs:.2e}",
            ]
            for r in self.rows
        ]

    @property
    def intro(self) -> str:
        return (
            f"{self.metric_name} on {self.samples} samples; deltas in points against the reference stack and model on the same runtime "
            f"(precision: against the reference runtime). {self.decodes} image decodes, {self.seconds:.1f} s "
            f"(inference {self.inference_seconds:.1f} s)."
        )

    def tables(self) -> list[tuple[str, tuple[str, ...], list[list[str]]]]:
        """(heading, headers, rows) of matrix.md and matrix.html; an empty table is left out."""
        names = list(self.decoder_pairs)
        tables = [
            ("Per axis", self.SUMMARY_HEADERS, self.summary_rows()),
            ("Every variant", self.ROW_HEADERS, self.variant_rows()),
            ("Not applicable", self.NOT_APPLICABLE_HEADERS, [n.cells() for n in self.not_applicable]),
            (
                f"Decoded pixels: images that differ between decoders (of {self.samples})",
                ("decoder", *names),
                [[a, *(str(self.decoder_pairs[a][b]) for b in names)] for a in names],
            ),
        ]
        return [(heading, headers, rows) for heading, headers, rows in tables if rows or heading in ("Per axis", "Every variant")]

    def to_markdown(self) -> str:
        lines = [f"# SysNoise matrix: {self.suite}", "", self.intro]
        for heading, headers, rows in self.tables():
            lines += ["", f"## {heading}", "", *markdown_table(headers, rows)]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_html(self, png: bytes) -> str:
        """matrix.html: the picture (matrix.png's bytes) inline, then the tables of matrix.md."""
        return figure_page(f"SysNoise matrix: {self.suite}", self.intro, png, self.tables(), self.notes)

    def panels(self) -> list[Panel]:
        """The picture's panels: one per axis (combined rows together), configuration bugs in a panel of their own."""
        groups: dict[str, list[MatrixRow]] = {}
        for row in self.rows:
            bug = (row.axis, row.variant) in CATASTROPHIC
            groups.setdefault(BUGS if bug else "combined" if row.axis.startswith("combined") else row.axis, []).append(row)
        bugs = groups.pop(BUGS, [])
        return [Panel(name, rows) for name, rows in groups.items()] + ([Panel(BUGS, bugs)] if bugs else [])

    def figure(self) -> Figure:
        """One panel per axis with its own scale: a bar per variant and runtime, labelled with its delta in points and
        flips; geometric modes hatched, the combined rows in a red panel, configuration bugs in a grey one apart."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch

        panels = self.panels()
        if not panels:
            fig, ax = plt.subplots(figsize=(9, 2.8))
            ax.axis("off")
            why = f"{len(self.not_applicable)} rows not applicable (see matrix.md)" if self.not_applicable else "no variant ran"
            ax.text(0.5, 0.5, f"{self.suite}: no variant to plot: {why}", ha="center", va="center", transform=ax.transAxes)
            return fig
        runtimes = list(dict.fromkeys(str(r.comparison.against.runtime) for r in self.rows))
        colours = dict(zip(runtimes, plt.get_cmap("tab10").colors, strict=False))
        heights = [panel.height() for panel in panels]
        columns = _columns(heights, 2 if sum(heights) > 9 else 1)
        tallest = max(sum(heights[i] for i in column) for column in columns)
        fig = plt.figure(figsize=(6.8 * len(columns), tallest + 1.1), layout="constrained")
        for subfig, column in zip(np.atleast_1d(fig.subfigures(1, len(columns))), columns, strict=True):
            used = [heights[i] for i in column]
            grid = subfig.add_gridspec(len(column) + 1, 1, height_ratios=[*used, max(tallest - sum(used), 1e-3)])
            for k, i in enumerate(column):
                panels[i].draw(subfig.add_subplot(grid[k]), colours)
        against = {str(r.comparison.against.runtime) for r in self.rows if r.axis.endswith("precision")}
        handles = [Patch(color=c, label=f"on {r}" + (" (precision rows: against it)" if r in against else "")) for r, c in colours.items()]
        if any(changes_geometry(r.axis, r.variant) for r in self.rows):
            handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="geometric mode"))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
        fig.suptitle(
            f"{self.suite}: {self.metric_name} delta in points against the reference stack ({self.samples} samples); "
            "each panel its own scale, bars labelled delta (flips)",
            fontsize=10,
        )
        return fig

    def write(self, report_dir: Path) -> list[Path]:
        """matrix.json, matrix.md, matrix.png and matrix.html under `report_dir`."""
        paths = write_report_files(report_dir, self.describe(), self.to_markdown(), stem="matrix")
        png = png_bytes(self.figure(), dpi=110)
        atomic_write(report_dir / "matrix.png", png)
        atomic_write(report_dir / "matrix.html", self.to_html(png).encode())
        return [*paths, report_dir / "matrix.png", report_dir / "matrix.html"]


COMBINED_DECODE, COMBINED_INFER = "decode (combined rows)", "infer (combined rows)"  # the combined rows' own bars


def _decode_bar(stack: StackSpec) -> str:
    return f"decode with {stack.decoder}"


def _infer_bar(runtime: str, model: str | None) -> str:
    return f"infer {runtime}{f' ({model})' if model else ''}"


def _stack_key(stack: StackSpec) -> str:
    data = stack.describe()
    data.pop("name")
    return json.dumps(data, sort_keys=True)


class Buffers:
    """Tensor buffers handed back once inferred and handed out again for the next stack of the same shape: the
    matrix prepares dozens of stacks, and fresh memory for each costs page faults (on a VM, about as much as the
    pre-processing itself)."""

    def __init__(self) -> None:
        self._free: dict[tuple[int, ...], list[np.ndarray]] = {}

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        free = self._free.get(tuple(shape))
        return free.pop() if free else np.empty(shape, dtype=np.float32)

    def give(self, buffer: np.ndarray) -> None:
        """A buffer `take` gave is free again: nothing reads it any more (outputs are copies, never views of it)."""
        self._free.setdefault(buffer.shape, []).append(buffer)


class MatrixRunner:
    """Streams the samples through the matrix chunk by chunk: each chunk decoded once per decoder setting and
    inferred once per (tensors, model, runtime) on sessions that stay open; only outputs are kept across chunks."""

    def __init__(self, run: SuiteRun, batch_size: int) -> None:
        self.run = run
        self.batch_size = batch_size
        self.decodes = 0
        self._sessions = Sessions()
        self.buffers = Buffers()
        self._parts: dict[tuple[str, str, str], dict[int, Inference]] = {}  # (stack, model, runtime) -> chunk start -> part
        self._fed: dict[str, dict[int, InputSet]] = {}  # stack -> chunk start -> the chunk's inputs, tensors dropped
        self._track: dict[str, Callable[[], None]] = {}
        self._passes: Counter[str] = Counter()  # how many times each bar's stage goes over the samples

    def plan(self, passes: Counter[str]) -> None:
        """How many times each progress bar's stage will go over the samples (before the bar is first shown)."""
        self._passes.update(passes)

    def _advance(self, label: str) -> Callable[[], None]:
        if label not in self._track:
            self._track[label] = self.run.track(label, len(self.run.samples) * max(self._passes[label], 1))
        return self._track[label]

    def decode(self, samples: list[Sample], stack: StackSpec, bar: str | None = None) -> Decoded:
        self.decodes += len(samples)
        return decode_all(samples, stack, self._advance(bar or _decode_bar(stack)), self.run.suite.data.intake)

    def infer(self, inputs: InputSet, runtime: str, model: str | None, bar: str | None = None) -> None:
        """One chunk's inputs on `runtime` (once per chunk, stack, model and runtime)."""
        stack, start = _stack_key(inputs.stack), int(inputs.positions[0]) if len(inputs) else 0
        parts = self._parts.setdefault((stack, model or "", runtime), {})
        if start in parts:
            return
        artifacts, task = self.run.artifacts_for(model), self.run.task
        parts[start] = self._sessions.infer((model or "", runtime), runtime, artifacts, inputs, self.batch_size, task, lambda: None)
        advance = self._advance(bar or _infer_bar(runtime, model))  # per sample: bars span the matrix
        for _ in range(len(inputs)):
            advance()
        self._fed.setdefault(stack, {}).setdefault(start, replace(inputs, tensors=inputs.tensors[:0]))

    def inference(self, stack: StackSpec, runtime: str, model: str | None) -> tuple[Inference, InputSet]:
        """Every chunk's outputs of one (stack, model, runtime), joined in sample order, and what was fed."""
        key = _stack_key(stack)
        parts = self._parts[(key, model or "", runtime)]
        starts = sorted(parts)
        first = parts[starts[0]]
        joined = Inference(
            runtime,
            {name: np.concatenate([parts[s].outputs[name] for s in starts]) for name in first.outputs},
            np.concatenate([parts[s].predictions for s in starts]),
            sum(parts[s].seconds for s in starts),
            first.session,
            first.artifacts,
        )
        return joined, concat_inputs([self._fed[key][s] for s in starts])

    def row(self, variant: Variant, stack: StackSpec, runtime: str, baseline: Inference) -> MatrixRow:
        """The variant on `runtime` against `baseline`; raises VariantNotApplicable when it changes an output's shape."""
        got, fed = self.inference(stack, runtime, variant.model)
        changed = [
            f"output '{name}' {_shape(got.outputs[name])} instead of {_shape(want)}"
            for name, want in baseline.outputs.items()
            if got.outputs[name].shape != want.shape
        ]
        if changed:
            raise VariantNotApplicable(
                f"the variant changes the model's output shapes: {'; '.join(changed)}",
                "outputs of other shapes have nothing to compare with",
            )
        if variant.postprocess:
            suite = self.run.suite
            task = make_task(suite.task.with_postprocess(dict(variant.postprocess)))
            got = replace(got, predictions=predict(task, got.outputs, fed.geometry))
        comp = compare(runtime, Baseline.reference(baseline.runtime), fed.ids, fed.labels, got, baseline, self.run.task)
        return MatrixRow(variant.axis, variant.name, comp)

    @property
    def inference_seconds(self) -> float:
        """Seconds the runtimes' sessions spent on every chunk inferred so far."""
        return sum(part.seconds for parts in self._parts.values() for part in parts.values())

    def close(self) -> None:
        self._sessions.close()


def collect_variants(suite: Suite, axes: list[str], skip: set[str]) -> tuple[list[Variant], list[str]]:
    """Every variant of the chosen axes that can run here; notes say what was left out and why."""
    variants, notes = [], []
    for axis in axes:
        for variant in AXES[axis](suite):
            if variant.name in skip or f"{axis}:{variant.name}" in skip:
                notes.append(f"{axis}:{variant.name} skipped (--skip)")
                continue
            stack = variant.stack_for(suite.stack)
            reason = decoder_unavailable(stack.decoder) or (get_runtime(variant.runtime).unavailable_reason() if variant.runtime else None)
            if stack.per_image and not suite.stack.per_image:
                reason = "per-image sizes need the model exported with dynamic sides (make the reference [stack] per-image too)"
            if reason:
                notes.append(f"{axis}:{variant.name} not run: {reason}")
                continue
            variants.append(variant)
    return variants, notes


def combine(worst: dict[str, Variant]) -> Variant:
    """The reference with the worst choice of each axis applied together."""
    overrides: dict[str, Any] = {}
    postprocess: dict[str, Any] = {}
    for variant in worst.values():
        overrides |= dict(variant.overrides)
        postprocess |= dict(variant.postprocess)
    model = worst["model"].model if "model" in worst else None
    name = " + ".join(v.name for v in worst.values()) or "reference"
    return Variant("combined", name, tuple(overrides.items()), model=model, postprocess=tuple(postprocess.items()))


def _targets(variant: Variant, runtimes: list[str], reference_runtime: str) -> list[tuple[str, str]]:
    """(runtime, baseline runtime) pairs a variant runs on: precision variants against the reference runtime."""
    return [(variant.runtime, reference_runtime)] if variant.runtime else [(r, r) for r in runtimes]


def run_matrix(
    suite: Suite,
    axes: list[str],
    runtimes: list[str],
    run: SuiteRun,
    batch_size: int,
    skip: set[str] | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> MatrixReport:
    """Every variant of `axes` on every runtime in `runtimes`, then the combined worst case, streamed over chunks
    of `chunk` samples (rounded up to whole batches): memory holds one chunk's pixels and tensors, and outputs."""
    start = time.perf_counter()
    for runtime in [*runtimes, suite.run.reference]:
        get_runtime(runtime).require_available()
    variants, notes = collect_variants(suite, axes, skip or set())
    runner = MatrixRunner(run, batch_size)
    not_applicable: list[NotApplicable] = []
    try:
        rows, decoded = _single_axis_rows(suite, runtimes, run, runner, variants, not_applicable, chunk)
        rows += _combined(suite, axes, runtimes, run, runner, variants, rows, notes, not_applicable, chunk)
    finally:
        runner.close()
    order = [*AXES, "combined", "combined+precision"]
    rows.sort(key=lambda r: order.index(r.axis))  # stable: variants keep their registry order within an axis
    not_applicable.sort(key=lambda r: order.index(r.axis))
    return MatrixReport(
        suite=suite.name,
        metric_name=run.task.metric_name,
        samples=len(run.samples),
        runtimes=runtimes,
        axes=axes,
        rows=rows,
        notes=notes,
        decodes=runner.decodes,
        inference_seconds=runner.inference_seconds,
        decoder_pairs={a: {b: sum(x != y for x, y in zip(ha, hb, strict=True)) for b, hb in decoded.items()} for a, ha in decoded.items()},
        seconds=time.perf_counter() - start,
        context={k: v for k, v in run.context().items() if k != "stack"} | {"reference_stack": suite.stack.describe()},
        not_applicable=not_applicable,
    )


def _chunks(run: SuiteRun, batch_size: int, chunk: int) -> list[list[Sample]]:
    step = -(-max(chunk, 1) // batch_size) * batch_size  # whole batches of the split's grid
    return [run.samples[a : a + step] for a in range(0, len(run.samples), step)]


def _single_axis_rows(
    suite: Suite,
    runtimes: list[str],
    run: SuiteRun,
    runner: MatrixRunner,
    variants: list[Variant],
    not_applicable: list[NotApplicable],
    chunk: int,
) -> tuple[list[MatrixRow], dict[str, tuple[str, ...]]]:
    """Every chunk decoded once per decoder setting (stack variants grouped by what they decode to, the reference
    group first), every variant inferred; then one row per variant and runtime over the whole sample set."""
    reference = suite.stack
    ref_key = decode_key(reference)
    groups: dict[tuple[str, bool, int], list[Variant]] = {ref_key: []}
    for variant in variants:
        groups.setdefault(decode_key(variant.stack_for(reference)), []).append(variant)
    baselines = list(dict.fromkeys([suite.run.reference, *runtimes]))
    unreadable: dict[tuple[str, bool, int], str] = {}  # decoder settings that cannot read the dataset: why
    inapplicable: dict[Variant, str] = {}  # model variants that change nothing in this model or break its PyTorch twin: why
    hashes: dict[str, list[str]] = {}  # decoder setting -> per-image hash of its pixels
    inferred = {(_stack_key(reference), None, runtime) for runtime in baselines}  # each (stack, model, runtime) once
    for variant in variants:
        stack = _stack_key(variant.stack_for(reference))
        inferred |= {(stack, variant.model, runtime) for runtime, _ in _targets(variant, runtimes, suite.run.reference)}
    decoders = [reference if key == ref_key else members[0].stack_for(reference) for key, members in groups.items()]
    runner.plan(Counter(map(_decode_bar, decoders)) + Counter(_infer_bar(runtime, model) for _, model, runtime in inferred))
    for samples in _chunks(run, runner.batch_size, chunk):
        for key, members in groups.items():
            if key in unreadable:
                continue
            try:
                pixels = runner.decode(samples, reference if key == ref_key else members[0].stack_for(reference))
            except DecoderNotApplicable as exc:  # e.g. a JPEG-only decoder on a dataset with PNGs: skip, say why
                if key == ref_key:
                    raise
                unreadable[key] = exc.what
                continue
            hashes.setdefault(_decode_label(key), []).extend(pixels.stages["decoded"])
            own = tensors_from(samples, pixels, reference, runner.buffers.take) if key == ref_key else None
            for runtime in baselines if own is not None else ():
                runner.infer(own, runtime, None)
            by_stack: dict[str, list[Variant]] = {}  # each stack's tensors made once, inferred, and their buffer reused
            for variant in members:
                by_stack.setdefault(_stack_key(variant.stack_for(reference)), []).append(variant)
            for stack_key, same in by_stack.items():
                live = [v for v in same if v not in inapplicable]
                shared = own is not None and stack_key == _stack_key(reference)
                if not live:
                    continue
                try:
                    inputs = own if shared else tensors_from(samples, pixels, live[0].stack_for(reference), runner.buffers.take)
                except RaggedStack as exc:  # e.g. resize_mode 'shorter' without the reference's crop: images keep their ratio
                    inapplicable |= dict.fromkeys(live, exc.what)
                    continue
                for variant in live:
                    try:
                        for runtime, _baseline in _targets(variant, runtimes, suite.run.reference):
                            runner.infer(inputs, runtime, variant.model)
                    except VariantNotApplicable as exc:
                        inapplicable[variant] = exc.what
                if not shared:
                    runner.buffers.give(inputs.tensors)
            if own is not None:
                runner.buffers.give(own.tensors)
    reference_outputs = {r: runner.inference(reference, r, None)[0] for r in baselines}
    rows: list[MatrixRow] = []
    for key, members in groups.items():
        for variant in members:
            reason = unreadable.get(key) or inapplicable.get(variant)
            for runtime, baseline in _targets(variant, runtimes, suite.run.reference):
                if reason:
                    not_applicable.append(NotApplicable(variant.axis, variant.name, runtime, reason))
                else:
                    _add_row(runner, variant, variant.stack_for(reference), runtime, reference_outputs[baseline], rows, not_applicable)
    decoded = {label: tuple(h) for label, h in hashes.items() if not any(_decode_label(k) == label for k in unreadable)}
    return rows, decoded


def _combined(
    suite: Suite,
    axes: list[str],
    runtimes: list[str],
    run: SuiteRun,
    runner: MatrixRunner,
    variants: list[Variant],
    rows: list[MatrixRow],
    notes: list[str],
    not_applicable: list[NotApplicable],
    chunk: int,
) -> list[MatrixRow]:
    """The worst choice of each axis applied together, on every matrix runtime and once more on the worst precision
    runtime.  The worst decoder is known only once every row is, so each chunk is decoded once more, with the
    combined stack's decoder setting (keeping every setting's pixels instead would not fit in memory)."""
    worst: dict[str, Variant] = {}
    for axis in COMBINED_AXES:
        axis_rows = [r for r in rows if r.axis == axis and (axis, r.variant) not in CATASTROPHIC]
        if axis in axes and axis_rows:
            worst[axis] = _variant_named(variants, max(axis_rows, key=lambda r: r.severity))
    left_out = sorted({f"{r.axis}:{r.variant}" for r in rows if (r.axis, r.variant) in CATASTROPHIC})
    if left_out:
        notes.append(f"the combined rows leave out configuration bugs ({', '.join(left_out)}): see their own rows")
    if not worst:
        return []
    combined = combine(worst)
    stack = replace(combined.stack_for(suite.stack), name="combined")
    targets = [(combined, r, r) for r in runtimes]
    precision_rows = [r for r in rows if r.axis == "precision"]
    if precision_rows:
        worst_runtime = max(precision_rows, key=lambda r: r.severity).comparison.runtime
        with_precision = replace(combined, axis="combined+precision", name=f"{combined.name} + {worst_runtime}")
        targets.append((with_precision, worst_runtime, suite.run.reference))
    failed: set[str] = set()
    runner.plan(Counter({COMBINED_DECODE: 1, COMBINED_INFER: len(targets)}))
    for samples in _chunks(run, runner.batch_size, chunk):
        inputs = tensors_from(samples, runner.decode(samples, stack, COMBINED_DECODE), stack, runner.buffers.take)
        for variant, runtime, _baseline in targets:
            if runtime in failed:
                continue
            try:
                runner.infer(inputs, runtime, variant.model, COMBINED_INFER)
            except VariantNotApplicable as exc:
                not_applicable.append(NotApplicable(variant.axis, variant.name, runtime, exc.what))
                failed.add(runtime)
    reference_outputs = {r: runner.inference(suite.stack, r, None)[0] for r in {b for _v, _r, b in targets}}
    combined_rows: list[MatrixRow] = []
    for variant, runtime, baseline in targets:
        if runtime not in failed:
            _add_row(runner, variant, stack, runtime, reference_outputs[baseline], combined_rows, not_applicable)
    return combined_rows


def _add_row(
    runner: MatrixRunner,
    variant: Variant,
    stack: StackSpec,
    runtime: str,
    baseline: Inference,
    rows: list[MatrixRow],
    not_applicable: list[NotApplicable],
) -> None:
    """The variant's row on `runtime`, or its not-applicable row when it changes an output's shape."""
    try:
        rows.append(runner.row(variant, stack, runtime, baseline))
    except VariantNotApplicable as exc:
        not_applicable.append(NotApplicable(variant.axis, variant.name, runtime, exc.what))


def _shape(array: np.ndarray) -> str:
    return "x".join(map(str, array.shape[1:])) + " per sample"


def _decode_label(key: tuple[str, bool, int]) -> str:
    decoder, exif, min_side = key
    return decoder + ("" if exif else " (EXIF off)") + (f" (min side {min_side})" if min_side else "")


def _variant_named(variants: list[Variant], row: MatrixRow) -> Variant:
    return next(v for v in variants if v.axis == row.axis and v.name == row.variant)
