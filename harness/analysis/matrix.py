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
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from exporters.rewrites import MODEL_VARIANTS, VariantNotApplicable
from harness.data.colour import COLOUR_PATHS
from harness.data.dataset import Sample
from harness.data.decoders import DECODERS, decoder_unavailable
from harness.data.feed import Decoded, DecoderNotApplicable, InputSet, RaggedStack, concat_inputs, decode_all, decode_key, tensors_from
from harness.data.resizers import RESIZERS
from harness.data.stack import PADDED_MODES, StackSpec
from harness.judge.compare import Baseline, Comparison, compare
from harness.judge.verdict import SCHEMA_VERSION
from harness.report.tables import markdown_table, write_report_files
from harness.run.outputs import Inference
from harness.run.plan import DEFAULT_CHUNK
from harness.run.prepared import SuiteRun
from harness.run.sessions import Sessions
from harness.spec.suite import Suite
from harness.tasks import make_task
from runtimes import get_runtime


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

    def to_markdown(self) -> str:
        lines = [
            f"# SysNoise matrix: {self.suite}",
            "",
            f"{self.metric_name} on {self.samples} samples; deltas in points against the reference stack and model on the same runtime "
            f"(precision: against the reference runtime). {self.decodes} image decodes, {self.seconds:.1f} s "
            f"(inference {self.inference_seconds:.1f} s).",
            "",
            "## Per axis",
            "",
            *markdown_table(self.SUMMARY_HEADERS, self.summary_rows()),
            "",
            "## Every variant",
            "",
            *markdown_table(self.ROW_HEADERS, self.variant_rows()),
        ]
        if self.not_applicable:
            lines += ["", "## Not applicable", "", *markdown_table(self.NOT_APPLICABLE_HEADERS, [n.cells() for n in self.not_applicable])]
        if self.decoder_pairs:
            names = list(self.decoder_pairs)
            lines += ["", f"## Decoded pixels: images that differ between decoders (of {self.samples})", ""]
            lines += markdown_table(("decoder", *names), [[a, *(str(self.decoder_pairs[a][b]) for b in names)] for a in names])
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> Path:
        """Per-axis bars (mean delta and largest drop, in points) per runtime, combined worst case in red."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        by_runtime: dict[str, list[AxisSummary]] = {}
        for summary in self.summaries:
            by_runtime.setdefault(summary.runtime, []).append(summary)
        if not by_runtime:
            fig, ax = plt.subplots(figsize=(9, 2.8))
            ax.axis("off")
            why = f"{len(self.not_applicable)} rows not applicable (see matrix.md)" if self.not_applicable else "no variant ran"
            ax.text(0.5, 0.5, f"{self.suite}: no variant to plot: {why}", ha="center", va="center", transform=ax.transAxes)
            fig.savefig(path, dpi=110)
            plt.close(fig)
            return path
        fig, axes = plt.subplots(len(by_runtime), 1, figsize=(9, 2.8 * len(by_runtime)), squeeze=False)
        for ax, (runtime, summaries) in zip(axes[:, 0], by_runtime.items(), strict=True):
            x = np.arange(len(summaries))
            colours = ["tab:red" if s.axis.startswith("combined") else "tab:blue" for s in summaries]
            ax.bar(x - 0.2, [100 * s.mean_delta for s in summaries], 0.4, color=colours, alpha=0.45, label="mean delta")
            ax.bar(x + 0.2, [100 * s.max_drop for s in summaries], 0.4, color=colours, label="largest drop")
            ax.set_xticks(x, [s.axis.replace("+", "+\n") for s in summaries])
            ax.axhline(0, color="black", linewidth=0.6)
            ax.set_ylabel(f"{self.metric_name} delta (points)")
            ax.set_title(f"{self.suite} on {runtime}", fontsize=10)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def write(self, report_dir: Path) -> list[Path]:
        """matrix.json, matrix.md and matrix.png under `report_dir`."""
        paths = write_report_files(report_dir, self.describe(), self.to_markdown(), stem="matrix")
        return [*paths, self.plot(report_dir / "matrix.png")]


def _stack_key(stack: StackSpec) -> str:
    data = stack.describe()
    data.pop("name")
    return json.dumps(data, sort_keys=True)


class MatrixRunner:
    """Streams the samples through the matrix chunk by chunk: each chunk decoded once per decoder setting and
    inferred once per (tensors, model, runtime) on sessions that stay open; only outputs are kept across chunks."""

    def __init__(self, run: SuiteRun, batch_size: int) -> None:
        self.run = run
        self.batch_size = batch_size
        self.decodes = 0
        self._sessions = Sessions()
        self._parts: dict[tuple[str, str, str], dict[int, Inference]] = {}  # (stack, model, runtime) -> chunk start -> part
        self._fed: dict[str, dict[int, InputSet]] = {}  # stack -> chunk start -> the chunk's inputs, tensors dropped
        self._track: dict[str, Callable[[], None]] = {}

    def _advance(self, label: str) -> Callable[[], None]:
        if label not in self._track:
            self._track[label] = self.run.track(label, len(self.run.samples))
        return self._track[label]

    def decode(self, samples: list[Sample], stack: StackSpec) -> Decoded:
        self.decodes += len(samples)
        return decode_all(samples, stack, self._advance(f"decode with {stack.decoder}"), self.run.suite.data.intake)

    def infer(self, inputs: InputSet, runtime: str, model: str | None) -> None:
        """One chunk's inputs on `runtime` (once per chunk, stack, model and runtime)."""
        stack, start = _stack_key(inputs.stack), int(inputs.positions[0]) if len(inputs) else 0
        parts = self._parts.setdefault((stack, model or "", runtime), {})
        if start in parts:
            return
        artifacts, task = self.run.artifacts_for(model), self.run.task
        parts[start] = self._sessions.infer((model or "", runtime), runtime, artifacts, inputs, self.batch_size, task, lambda: None)
        advance = self._advance(f"infer {runtime}{f' ({model})' if model else ''}")  # per sample: bars span the matrix
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
            got = replace(got, predictions=task.predictions(got.outputs, fed.geometry))
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
            tensors = {_stack_key(reference): tensors_from(samples, pixels, reference)} if key == ref_key else {}
            for runtime in baselines if key == ref_key else ():
                runner.infer(tensors[_stack_key(reference)], runtime, None)
            for variant in (v for v in members if v not in inapplicable):
                stack = variant.stack_for(reference)
                try:
                    inputs = tensors.get(_stack_key(stack)) or tensors.setdefault(_stack_key(stack), tensors_from(samples, pixels, stack))
                except RaggedStack as exc:  # e.g. resize_mode 'shorter' without the reference's crop: images keep their ratio
                    inapplicable[variant] = exc.what
                    continue
                try:
                    for runtime, _baseline in _targets(variant, runtimes, suite.run.reference):
                        runner.infer(inputs, runtime, variant.model)
                except VariantNotApplicable as exc:
                    inapplicable[variant] = exc.what
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
    for samples in _chunks(run, runner.batch_size, chunk):
        inputs = tensors_from(samples, runner.decode(samples, stack), stack)
        for variant, runtime, _baseline in targets:
            if runtime in failed:
                continue
            try:
                runner.infer(inputs, runtime, variant.model)
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
