"""Self-contained HTML report: the verdict table, notes, and plots inline
(per-sample error histograms per runtime, per-class delta bars, thumbnails
of flipped samples: segmentation's with the truth, baseline and runtime
masks over the image and the changed pixels marked, the largest change first),
one file to attach to a CI run."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from harness.judge.compare import per_sample_max_abs
from harness.judge.verdict import RunReport
from harness.report.tables import REPORT_HEADERS, report_rows
from harness.run.outputs import RunOutputs
from harness.tasks.detection import confident, valid_rows

THUMBNAILS = 12
STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,td:nth-child(2){text-align:left}
tr.fail{background:#fdd}.pass{color:#070}.fail-v{color:#b00}figure{display:inline-block;margin:4px;font-size:11px;text-align:center}
img.plot{max-width:100%}"""


def png_bytes(fig: object, dpi: int = 90) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return buf.getvalue()


def _inline(png: bytes) -> str:
    return f'<img class="plot" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _png(fig: object) -> str:
    return _inline(png_bytes(fig))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure_page(
    title: str, intro: str, png: bytes, tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[str]]]], notes: Sequence[str] = ()
) -> str:
    """A self-contained page of an analysis (the SysNoise matrix): its picture (PNG bytes) inline, then its tables
    (heading, headers, rows) and notes."""
    sections = "".join(f"<h2>{html.escape(heading)}</h2>{_table(headers, rows)}" for heading, headers, rows in tables if rows)
    listed = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(intro)}</p>
{_inline(png)}
{sections}
<h2>Notes</h2><ul>{listed or "<li>none</li>"}</ul>
</body></html>
"""


def _error_histograms(report: RunReport, measured: RunOutputs) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = measured.inferences[report.reference]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for name, inference in measured.inferences.items():
        if name == report.reference:
            continue
        errors = sum(per_sample_max_abs(inference.outputs[k], ref.outputs[k]) for k in ref.outputs)
        ax.hist(np.log10(np.maximum(errors, 1e-9)), bins=40, histtype="step", linewidth=1.4, label=name)
    ax.set_xlabel(f"log10 per-sample max abs error vs {report.reference}")
    ax.set_ylabel("samples")
    if len(measured.inferences) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _name(label: object, classes: Sequence[str]) -> str:
    """A class index as its name (the index when the manifest names no classes)."""
    index = int(label)  # type: ignore[call-overload]
    return classes[index] if 0 <= index < len(classes) else str(index)


def _class_deltas(report: RunReport, classes: Sequence[str]) -> str:
    """Heat map: one row per comparison that moved some class, one column per class (by name), delta in points,
    with a colour bar; a cell's number is white on the dark colours."""
    import matplotlib.pyplot as plt

    comps = [(f"{r.runtime} vs {c.against}", c) for r in report.results for c in r.comparisons if any(d.delta for d in c.per_class)]
    if not comps:
        return "<p>no class changed accuracy</p>"
    labels = [d.label for d in comps[0][1].per_class]
    grid = np.array([[100 * d.delta for d in comp.per_class] for _, comp in comps])
    limit = max(float(np.abs(grid).max()), 1e-9)
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.35 * len(comps)))
    shown = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for (row, col), value in np.ndenumerate(grid):
        if value:
            colour = "white" if abs(value) > 0.6 * limit else "black"
            ax.text(col, row, f"{value:+.1f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(labels)), [_name(label, classes) for label in labels], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(comps)), [name for name, _ in comps], fontsize=8)
    ax.set_xlabel("class")
    fig.colorbar(shown, ax=ax, fraction=0.03, pad=0.02).set_label("delta, points", fontsize=8)
    fig.tight_layout()
    return _png(fig)


BOX_COLOURS = {"truth": (0, 200, 0), "baseline": (40, 90, 255), "runtime": (255, 40, 40)}


def _thumbnail(path: Path, boxes: dict[str, np.ndarray] | None = None) -> str:
    """A small JPEG of the sample; detection samples get their box sets drawn (truth green, baseline blue, runtime red)."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            side = 160 if boxes else 96
            scale = min(side / image.width, side / image.height, 1.0)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
            draw = ImageDraw.Draw(image)
            for kind, rows in (boxes or {}).items():
                for row in rows:
                    draw.rectangle([float(v) * scale for v in row[:4]], outline=BOX_COLOURS[kind])
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=85)
    except OSError:
        return "(unreadable)"
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}">'


CHANGED = np.array([255, 0, 255], dtype=np.float32)  # magenta: pixels whose class changed


def overlay_panels(image: np.ndarray, masks: list[np.ndarray], classes: int, alpha: float = 0.55) -> np.ndarray:
    """The RGB image once per mask (truth, baseline, runtime), each mask's classes blended over it in tab20 colours
    (values past the classes, ignore_index, left bare); in the third panel on, the pixels whose class differs from
    the panel before are magenta."""
    from matplotlib import colormaps

    colours = np.array(colormaps["tab20"].colors, dtype=np.float32)[np.arange(max(classes, 1)) % 20] * 255
    panels = []
    for k, mask in enumerate(masks):
        shown = mask < classes
        blended = image.astype(np.float32)
        blended[shown] = (1 - alpha) * blended[shown] + alpha * colours[mask[shown]]
        if k > 1:
            blended[mask != masks[k - 1]] = CHANGED
        panels += [blended.astype(np.uint8), np.full((image.shape[0], 2, 3), 255, dtype=np.uint8)]
    return np.concatenate(panels[:-1], axis=1)


def _mask_panels(path: Path, masks: list[np.ndarray], classes: int) -> str:
    """The image with each mask over it side by side and the changed pixels marked, as an inline PNG."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except OSError:
        return "(unreadable)"
    panel = Image.fromarray(overlay_panels(pixels, masks, classes))
    scale = min(1.0, 480 / panel.width)
    panel = panel.resize((max(1, round(panel.width * scale)), max(1, round(panel.height * scale))), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    panel.save(buf, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


LEGEND = " ".join(
    f'<span style="color:rgb{colour}">&#9632; {kind}</span>' for kind, colour in BOX_COLOURS.items()
)  # the box colours of detection thumbnails


def _source_hw(path: Path, canvas: tuple[int, ...]) -> tuple[int, int]:
    """The image's size (the mask's part of the canvas), from its header."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except OSError:
        return int(canvas[0]), int(canvas[1])


def _flipped(report: RunReport, measured: RunOutputs, image_root: Path, classes: Sequence[str]) -> str:
    index = {sample_id: i for i, sample_id in enumerate(measured.ids)}
    parts = []
    for result in report.results:
        predictions = measured.inferences[result.runtime].predictions
        for comp in result.comparisons:
            if not comp.flips:
                continue
            figures = []
            baseline = measured.inferences.get(comp.against.runtime or "")
            for sample_id in comp.flips[:THUMBNAILS]:
                i = index[sample_id]
                if predictions.size == 0:  # raw outputs: no predictions, the sample's outputs left the profile
                    caption, boxes = f"outputs outside the profile: max abs {comp.sample_max_abs[i]:.3g}", None
                elif report.task == "segmentation":  # masks over the image; flips come largest change first
                    height, width = _source_hw(image_root / sample_id, predictions.shape[1:])
                    masks = {"truth": measured.labels[i, :height, :width]}
                    if baseline is not None:
                        masks[str(comp.against)] = baseline.predictions[i, :height, :width]
                    masks[result.runtime] = predictions[i, :height, :width]
                    panels = list(masks.values())
                    changed = f"{100 * np.mean(panels[-1] != panels[-2]):.1f}% of pixels changed; " if baseline is not None else ""
                    figures.append(
                        f"<figure>{_mask_panels(image_root / sample_id, panels, len(classes))}<figcaption>{html.escape(sample_id)}: "
                        f"{changed}{' | '.join(map(html.escape, masks))}, changed pixels magenta</figcaption></figure>"
                    )
                    continue
                elif predictions.ndim == 1:  # one label per sample
                    was = f"{comp.against}: {_name(baseline.predictions[i], classes)}<br>" if baseline is not None else ""
                    now = f"{result.runtime}: {_name(predictions[i], classes)}"
                    caption, boxes = f"truth {html.escape(_name(measured.labels[i], classes))}<br>{html.escape(was + now)}", None
                else:  # box lists: draw them
                    boxes = {"truth": valid_rows(measured.labels[i]), "runtime": confident(predictions[i])}
                    if baseline is not None:
                        boxes["baseline"] = confident(baseline.predictions[i])
                    caption = f"{len(boxes['truth'])} objects, {len(boxes['runtime'])} detections"
                image = _thumbnail(image_root / sample_id, boxes)
                figures.append(f"<figure>{image}<figcaption>{html.escape(sample_id)}<br>{caption}</figcaption></figure>")
            more = f" (first {THUMBNAILS} of {len(comp.flips)})" if len(comp.flips) > THUMBNAILS else ""
            legend = f"<p>boxes: {LEGEND}</p>" if predictions.ndim > 1 and predictions.size and report.task != "segmentation" else ""
            parts.append(f"<h3>{html.escape(result.runtime)} vs {html.escape(str(comp.against))}{more}</h3>{legend}" + "".join(figures))
    return "".join(parts) or "<p>no flipped samples</p>"


def html_report(report: RunReport, measured: RunOutputs, image_root: Path, classes: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in REPORT_HEADERS)
    rows = "".join(
        f'<tr class="{"fail" if row[-1].startswith("FAIL") else ""}">' + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        for row in report_rows(report)
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    env = report.context.get("environment", {})
    libraries = ", ".join(f"{k} {v}" for k, v in env.get("libraries", {}).items())
    verdict = '<span class="pass">PASS</span>' if report.passed else '<span class="fail-v">FAIL</span>'
    reference = f"<code>{html.escape(report.reference)}</code>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(report.suite)} report</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(report.suite)}: {verdict}</h1>
<p>{html.escape(report.metric_name)} on {report.samples} samples through the <code>{html.escape(report.stack)}</code> stack,
reference {reference}, {report.created}.<br>
CPU {html.escape(str(env.get("cpu")))} ({html.escape(", ".join(env.get("isa", [])))}), {env.get("threads")} threads,
batch size {report.context.get("batch_size")}; {html.escape(libraries)}</p>
<table><tr>{head}</tr>{rows}</table>
<h2>Notes</h2><ul>{notes or "<li>none</li>"}</ul>
<h2>Per-sample error vs the reference</h2>{_error_histograms(report, measured)}
<h2>Per-class accuracy delta</h2>{_class_deltas(report, classes)}
<h2>Flipped samples</h2>{_flipped(report, measured, image_root, classes)}
</body></html>
"""
