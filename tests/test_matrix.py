"""`harness matrix` on a small subset: every axis present, the combined worst case, decode-once, files."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from exporters.cache import ArtifactCache
from exporters.rewrites import MODEL_VARIANTS
from harness.analysis.matrix import AXES, BUGS, CATASTROPHIC, MatrixReport, run_matrix
from harness.analysis.mitigate import MitigationReport
from harness.data.decoders import DECODERS, decoder_unavailable
from harness.judge.compare import Baseline, compare
from harness.run.prepared import SuiteRun
from harness.spec.suite import Suite, load_suite
from tests.conftest import CliResult
from tests.planted import ceil_pools_suite

LIMIT = 34  # the demo's first EXIF-rotated eval image is its 33rd


@pytest.fixture(scope="module")
def report(demo_suite: Suite, cache: ArtifactCache) -> MatrixReport:
    run = SuiteRun(demo_suite, cache, limit=LIMIT)
    return run_matrix(demo_suite, ["decoder", "colour", "order", "model", "suite"], ["torch-fp32", "ort-fp32"], run, 16)


def test_every_axis_and_the_combined_row_are_present(report: MatrixReport) -> None:
    axes = {row.axis for row in report.rows}
    assert axes == {"decoder", "colour", "order", "model", "suite", "combined"}
    combined = [row for row in report.rows if row.axis == "combined"]
    assert {row.comparison.runtime for row in combined} == {"torch-fp32", "ort-fp32"}
    assert "maxpool-ceil" in combined[0].variant and "bgr" not in combined[0].variant  # a configuration bug, not a choice
    assert any(n.startswith("the combined rows leave out configuration bugs (colour:bgr)") for n in report.notes)


def test_combined_is_at_least_as_bad_as_each_single_axis(report: MatrixReport) -> None:
    for runtime in ("torch-fp32", "ort-fp32"):
        rows = [r for r in report.rows if r.comparison.runtime == runtime]
        combined = next(r for r in rows if r.axis == "combined")
        singles = [r for r in rows if r.axis in ("decoder", "colour", "order", "model") and (r.axis, r.variant) not in CATASTROPHIC]
        assert combined.comparison.metric_delta <= min(r.comparison.metric_delta for r in singles)
        assert len(combined.comparison.flips) >= max(len(r.comparison.flips) for r in singles)


def test_the_picture_has_one_panel_per_axis_and_the_bugs_apart(report: MatrixReport) -> None:
    panels = report.panels()
    assert [p.name for p in panels] == ["decoder", "colour", "order", "model", "suite", "combined", BUGS]
    assert [(r.axis, r.variant) for r in panels[-1].rows] == [("colour", "bgr")] * 2  # on both runtimes, nowhere else
    assert all((r.axis, r.variant) not in CATASTROPHIC for p in panels[:-1] for r in p.rows)
    figure = report.figure()
    assert len(figure.axes) == len(panels)
    titles = [ax.get_title(loc="left") for ax in figure.axes]
    assert titles[0] == f"decoder ({len({r.variant for r in report.rows if r.axis == 'decoder'})} variants)"
    assert "combined worst case" in titles[-2] and titles[-1].startswith("configuration bugs")
    bars = {ax.get_title(loc="left").split(" (")[0]: len(ax.patches) for ax in figure.axes}
    assert bars["order"] == len([r for r in report.rows if r.axis == "order"])  # a bar per variant and runtime
    plt.close(figure)
    spread = MitigationReport(report.suite, report.metric_name, report.samples, {"reference": report, "mix": report})
    figure = spread.figure()
    assert [ax.get_title() for ax in figure.axes] == spread.axes == ["decoder", "colour", "order", "model", "suite", "combined"]
    plt.close(figure)


def test_each_image_is_decoded_once_per_decoder_setting(report: MatrixReport) -> None:
    decoders = [d for d in DECODERS if not decoder_unavailable(d)]
    # Pillow with EXIF (the reference) and every other decoder, plus Pillow without EXIF; the suite's own
    # stacks reuse the Pillow and OpenCV pixels; the combined row decodes once more, with the worst decoder.
    assert report.decodes == LIMIT * (len(decoders) + 2)


def test_the_matrix_streamed_in_chunks_equals_one_chunk(demo_suite: Suite, cache: ArtifactCache, report: MatrixReport) -> None:
    run = SuiteRun(demo_suite, cache, limit=LIMIT)
    chunked = run_matrix(demo_suite, ["decoder", "colour", "order", "model", "suite"], ["torch-fp32", "ort-fp32"], run, 16, chunk=16)

    def rows(matrix: MatrixReport) -> list[tuple[object, ...]]:
        return [(r.axis, r.variant, r.comparison.runtime, r.comparison.flips, r.comparison.worst.max_abs) for r in matrix.rows]

    assert rows(chunked) == rows(report) and chunked.decodes == report.decodes
    assert chunked.decoder_pairs == report.decoder_pairs and chunked.notes == report.notes


def test_rows_made_on_reused_tensor_buffers_equal_stand_alone_runs(demo_suite: Suite, cache: ArtifactCache, report: MatrixReport) -> None:
    """The matrix hands each stack's tensor buffer to the next stack of that shape: every colour, order and model row
    is the comparison of a stand-alone run of its variant (its own decode, tensors and session) with the reference's."""
    variants = {(v.axis, v.name): v for axis in ("colour", "order", "model") for v in AXES[axis](demo_suite)}
    reference_run = SuiteRun(demo_suite, cache, limit=LIMIT)
    reference = reference_run.infer("torch-fp32", 16)
    checked = 0
    for row in report.rows:
        if (row.axis, row.variant) not in variants or row.comparison.runtime != "torch-fp32":
            continue
        variant = variants[(row.axis, row.variant)]
        run = SuiteRun(demo_suite, cache, limit=LIMIT, stack=variant.stack_for(demo_suite.stack))
        outputs = run.infer("torch-fp32", 16, variant=variant.model)
        alone = compare("torch-fp32", Baseline.reference("torch-fp32"), run.inputs.ids, run.inputs.labels, outputs, reference, run.task)
        assert (alone.flips, alone.worst.max_abs, alone.metric) == (
            row.comparison.flips,
            row.comparison.worst.max_abs,
            row.comparison.metric,
        )
        checked += 1
    assert checked >= 6


def test_bit_identical_decoders_show_zero_error(report: MatrixReport) -> None:
    rows = {(r.variant, r.comparison.runtime): r.comparison for r in report.rows if r.axis == "decoder"}
    assert rows[("opencv", "torch-fp32")].worst.max_abs == 0.0
    assert rows[("simplejpeg", "torch-fp32")].worst.max_abs == 0.0
    assert rows[("pyav", "torch-fp32")].worst.max_abs > 0.0


def test_decoder_pairs_say_which_decoders_are_bit_identical(demo_suite: Suite, report: MatrixReport) -> None:
    pairs = report.decoder_pairs
    manifest = json.loads(demo_suite.data.manifest.read_text())
    rotated = sum(entry["exif_orientation"] != 1 for entry in manifest["splits"]["eval"][:LIMIT])
    assert pairs["pillow"]["opencv"] == pairs["pillow"]["simplejpeg"] == pairs["opencv"]["simplejpeg"] == 0
    assert pairs["pillow"]["pyav"] == LIMIT  # FFmpeg's colour conversion touches every image
    assert 0 < pairs["pillow"]["pillow (EXIF off)"] == rotated < LIMIT  # only the EXIF-rotated images
    assert all(pairs[a][b] == pairs[b][a] for a in pairs for b in pairs)


def test_unapplicable_model_variants_become_not_applicable_rows(report: MatrixReport) -> None:
    skipped = {(n.variant, n.runtime): n.reason for n in report.not_applicable if n.axis == "model"}
    assert skipped[("upsample-linear", "ort-fp32")] == "model variant 'upsample-linear' has no PyTorch module to patch"
    assert {runtime for variant, runtime in skipped if variant == "upsample-linear"} == {"torch-fp32", "ort-fp32"}
    assert [r.variant for r in report.rows if r.axis == "model"] == ["maxpool-ceil", "maxpool-ceil"]


def test_the_matrix_continues_past_a_shape_changing_variant(make_suite: Callable[..., Path], tmp_path: Path, cache: ArtifactCache) -> None:
    """maxpool-floor shrinks the proposal map of a fully-convolutional net with ceil-mode pools (MTCNN's PNet)."""
    suite = load_suite(str(ceil_pools_suite(make_suite, tmp_path, "map")))
    skip = {"yuv444-float", "yuv444-int", "nv12-float"}
    report = run_matrix(suite, ["model", "colour"], ["torch-fp32", "ort-fp32"], SuiteRun(suite, cache, limit=8), 8, skip)
    floor = [n for n in report.not_applicable if n.variant == "maxpool-floor"]
    assert [n.runtime for n in floor] == ["torch-fp32", "ort-fp32"]
    assert (
        floor[0].reason == "the variant changes the model's output shapes: output 'map' 12x14x14 per sample instead of 12x15x15 per sample"
    )
    assert not [r for r in report.rows if r.axis == "model"]
    assert {r.variant for r in report.rows if r.axis == "colour"} == {"bgr", "nv12-int"}
    assert {r.comparison.runtime for r in report.rows if r.axis == "combined"} == {"torch-fp32", "ort-fp32"}  # the matrix finished
    markdown = report.to_markdown()
    assert "## Not applicable" in markdown and "| model | maxpool-floor | ort-fp32 | the variant changes" in markdown


def test_a_matrix_whose_every_row_is_not_applicable_writes_its_files(
    make_suite: Callable[..., Path], harness_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """maxpool-floor leaves the Linear after the ceil-mode pools of MTCNN's RNet too few inputs; the other model
    variants change nothing in it."""
    suite = ceil_pools_suite(make_suite, tmp_path, "linear")
    result = harness_cli("matrix", "--suite", suite, "--axes", "model", "--runtime", "torch-fp32", "--runtime", "ort-fp32", "--limit", "8",
                         "--report-dir", tmp_path / "m")  # fmt: skip
    assert result.code == 0, result.err
    data = json.loads((tmp_path / "m" / "matrix.json").read_text())
    assert data["rows"] == [] and data["summary"] == []
    reasons = {(n["variant"], n["runtime"]): n["reason"] for n in data["not_applicable"]}
    assert len(reasons) == 2 * len(MODEL_VARIANTS)
    twin = reasons[("maxpool-floor", "ort-fp32")]
    assert twin.startswith("the PyTorch twin of model variant 'maxpool-floor' fails: mat1 and mat2 shapes cannot be multiplied"), twin
    assert "not applicable" in result.out and "maxpool-floor" in result.out
    assert "## Not applicable" in (tmp_path / "m" / "matrix.md").read_text()
    assert (tmp_path / "m" / "matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_matrix_cli_writes_json_markdown_and_plot(harness_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    result = harness_cli(
        "matrix", "--suite", "demo", "--axes", "resize,precision", "--skip", "ov-int8", "--limit", "16", "--report-dir", tmp_path
    )
    assert result.code == 0, result.err
    data = json.loads((tmp_path / "matrix.json").read_text())
    assert data["kind"] == "matrix" and data["samples"] == 16
    axes = {s["axis"] for s in data["summary"]}
    assert axes == {"resize", "precision", "combined", "combined+precision"}
    assert "ov-int8" not in {r["variant"] for r in data["rows"]}
    assert "## Per axis" in (tmp_path / "matrix.md").read_text()
    png = (tmp_path / "matrix.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    page = (tmp_path / "matrix.html").read_text()
    assert base64.b64encode(png).decode() in page and "<h2>Per axis</h2>" in page  # the same picture, then the tables


def test_matrix_rejects_an_unknown_axis(harness_cli: Callable[..., CliResult]) -> None:
    result = harness_cli("matrix", "--suite", "demo", "--axes", "decoder,weather")
    assert result.code == 2 and "unknown matrix axis weather" in result.err


def test_order_axis_has_a_letterbox_variant_at_the_model_input_size(demo_suite: Suite) -> None:
    variants = {v.name: dict(v.overrides) for v in AXES["order"](demo_suite)}
    assert variants["resize_mode=letterbox"] == {"resize_mode": "letterbox", "resize_size": 64, "crop": 0}
    stack = next(v for v in AXES["order"](demo_suite) if v.name == "resize_mode=letterbox").stack_for(demo_suite.stack)
    assert stack.input_hw == demo_suite.stack.input_hw


def test_combined_row_decodes_again_when_draft_meets_another_size(demo_suite: Suite, cache: ArtifactCache) -> None:
    """pillow-draft's pixels depend on the size the stack needs; the letterbox variant needs another one."""
    run = SuiteRun(demo_suite, cache, limit=8)
    keep = {"decoder:pillow-draft", "order:resize_mode=letterbox"}
    skip = {f"{v.axis}:{v.name}" for axis in ("decoder", "order") for v in AXES[axis](demo_suite)} - keep
    report = run_matrix(demo_suite, ["decoder", "order"], ["torch-fp32"], run, 8, skip)
    combined = next(r for r in report.rows if r.axis == "combined")
    assert combined.variant == "pillow-draft + resize_mode=letterbox"
    assert report.decodes == 8 * 3  # reference, draft at the reference size, draft at the letterbox size


def test_each_progress_bar_ends_at_its_total(demo_suite: Suite, cache: ArtifactCache) -> None:
    """A bar spans every pass its stage makes over the samples (an inference per stack and model, a decode per
    decoder setting; the combined rows their own bars): none runs past its total or stops short of it."""
    bars: dict[str, list[int]] = {}

    def track(description: str, total: int) -> Callable[[], None]:
        bars[description] = [0, total]

        def advance() -> None:
            bars[description][0] += 1

        return advance

    run = SuiteRun(demo_suite, cache, limit=16, track=track)
    run_matrix(demo_suite, ["decoder", "resize", "precision"], ["torch-fp32", "ort-fp32"], run, 16)
    matrix_bars = {name: counts for name, counts in bars.items() if name.startswith(("decode with", "infer", "decode (", "infer ("))}
    assert "infer (combined rows)" in matrix_bars and len(matrix_bars) > 3
    assert all(done == total for done, total in matrix_bars.values()), matrix_bars
