"""Segmentation: masks checked on load, scores mapped back through the geometry, mIoU in both conventions (against
hand-computed masks, torchmetrics and an mmsegmentation-style computation), the argmax order, the resize
coordinate-mode rewrites against their PyTorch twins and ONNX Runtime, and a one-class probability-map suite on a
real DBNet text detector."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

from exporters.onnx_export import export_onnx
from exporters.rewrites import MODEL_VARIANTS, patch_torch, resize_asymmetric, rewrite_onnx
from harness.core.errors import HarnessError
from harness.data.dataset import load_dataset
from harness.data.stack import RESIZE_MODES, StackSpec, prepare
from harness.tasks.base import TaskSpec, make_task, target_parser
from harness.tasks.segmentation import SegmentationTask, class_iou, confusion, image_size, mean_iou

from .conftest import CliResult

SEGMENT_TOML = Path(__file__).resolve().parent.parent / "harness" / "suites" / "segment.toml"


class Side:
    """One side's outputs and predictions (`harness.tasks.base.Observed`)."""

    def __init__(self, predictions: np.ndarray, outputs: dict[str, np.ndarray] | None = None) -> None:
        self.predictions, self.outputs = predictions, outputs or {}


# -- mIoU ------------------------------------------------------------------------------------------------

TRUTH = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 2, 2]], dtype=np.uint8)
PREDICTED = np.array([[0, 0, 1, 0], [0, 1, 1, 1], [2, 2, 0, 1], [2, 2, 2, 0]], dtype=np.uint8)


def test_miou_in_both_conventions_on_constructed_masks() -> None:
    """Class 0: 3 hits of 4 true and 5 predicted pixels (IoU 3/6); class 1: 3 of 4 and 4 (3/5); class 2: 5 of 6 and 5
    (5/6); class 3 is in neither mask; the two ignored pixels count nowhere."""
    ious = [3 / 6, 3 / 5, 5 / 6]
    for convention, expected in (("nanmean", sum(ious) / 3), ("zero", sum(ious) / 4)):
        task = SegmentationTask(("logits",), mask_canvas=4, classes=4, miou=convention)
        assert task.metric(PREDICTED[None], TRUTH[None]) == pytest.approx(expected, abs=1e-12)
        assert task.metric_name == f"mIoU ({convention})"
    agreement = SegmentationTask(("logits",), mask_canvas=4, classes=4).agree(["a"], TRUTH[None], Side(PREDICTED[None]), Side(TRUTH[None]))
    assert agreement.details["miou_nanmean"] == pytest.approx(sum(ious) / 3)
    assert agreement.details["miou_zero"] == pytest.approx(sum(ious) / 4)
    assert agreement.details["pixel_accuracy"] == pytest.approx(11 / 14)
    assert agreement.metric_baseline == 1.0  # the truth as the baseline's prediction
    assert [(c.label, c.samples) for c in agreement.per_class] == [(0, 4), (1, 4), (2, 6)]  # the absent class has no row
    assert agreement.flips == agreement.negative_flips == ["a"] and agreement.details["changed_pixels_max"] == pytest.approx(
        5 / 16
    )  # of the pixels either side labels


def test_pixels_outside_the_tensor_count_as_missed() -> None:
    predicted = np.full_like(TRUTH, 255)
    predicted[:2] = TRUTH[:2]
    matrix = confusion(TRUTH, predicted, 3)
    assert matrix[2].tolist() == [0, 0, 0, 6]  # class 2's pixels predicted as no class
    iou, _ = class_iou(matrix)
    assert iou.tolist() == [1.0, 1.0, 0.0]


def mmseg_style(predicted: np.ndarray, truth: np.ndarray, classes: int, ignore_index: int) -> np.ndarray:
    """mmsegmentation's `intersect_and_union` (torch.histc of the hits, predictions and labels over annotated
    pixels), summed over images, IoU = intersect / union (NaN where the union is 0)."""
    totals = torch.zeros(3, classes, dtype=torch.float64)
    for p, t in zip(torch.from_numpy(predicted.astype(np.int64)), torch.from_numpy(truth.astype(np.int64)), strict=True):
        keep = t != ignore_index
        p, t = p[keep].double(), t[keep].double()
        hits = p[p == t]
        for k, values in enumerate((hits, p, t)):
            totals[k] += torch.histc(values, bins=classes, min=0, max=classes - 1)
    union = totals[1] + totals[2] - totals[0]
    return (totals[0] / union).numpy()


@pytest.mark.parametrize("absent", [False, True])
def test_our_miou_agrees_with_torchmetrics_and_mmseg(absent: bool) -> None:
    """Random masks with ignored pixels; with every class present the conventions coincide, with one class absent
    everywhere `nanmean` is mmseg's nanmean and torchmetrics' macro average, `zero` the mean of torchmetrics'
    per-class IoU with zero_division=0."""
    classes_module = pytest.importorskip("torchmetrics.classification")
    rng = np.random.default_rng(7)
    classes = 6
    truth = rng.integers(0, classes, (5, 24, 24)).astype(np.uint8)
    predicted = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, classes, truth.shape)).astype(np.uint8)
    truth[rng.random(truth.shape) < 0.1] = 255
    if absent:
        truth[truth == 4], predicted[predicted == 4] = 5, 5
    iou, _ = class_iou(confusion(truth, predicted, classes))
    np.testing.assert_allclose(iou, mmseg_style(predicted, truth, classes, 255), equal_nan=True)
    kwargs = {"num_classes": classes, "ignore_index": 255, "zero_division": 0}
    jaccard = classes_module.MulticlassJaccardIndex
    macro = float(
        jaccard(average="macro", **kwargs)(torch.from_numpy(predicted.astype(np.int64)), torch.from_numpy(truth.astype(np.int64)))
    )
    per_class = jaccard(average="none", **kwargs)(torch.from_numpy(predicted.astype(np.int64)), torch.from_numpy(truth.astype(np.int64)))
    assert mean_iou(iou, "nanmean") == pytest.approx(macro, abs=1e-6)
    assert mean_iou(iou, "nanmean") == pytest.approx(float(np.nanmean(mmseg_style(predicted, truth, classes, 255))), abs=1e-12)
    assert mean_iou(iou, "zero") == pytest.approx(float(per_class.mean()), abs=1e-6)
    assert (mean_iou(iou, "zero") < mean_iou(iou, "nanmean")) == absent


# -- geometry -------------------------------------------------------------------------------------------


def blocks_mask(height: int, width: int) -> np.ndarray:
    """Four classes in large blocks and a disc: boundaries, but most pixels deep inside a region."""
    yy, xx = np.mgrid[0:height, 0:width]
    mask = (yy >= height // 2).astype(np.uint8) * 2 + (xx >= width // 3).astype(np.uint8)
    mask[(yy - height * 0.3) ** 2 + (xx - width * 0.7) ** 2 < (min(height, width) * 0.18) ** 2] = 4
    return mask


def mask_on_tensor(mask: np.ndarray, geometry: object) -> np.ndarray:
    """The source mask at each tensor pixel's centre (nearest source pixel), 255 on padding."""
    ys, xs = geometry.source_centres()  # type: ignore[attr-defined]
    rows, cols = np.floor(ys).astype(int), np.floor(xs).astype(int)
    inside = ((rows >= 0) & (rows < mask.shape[0]))[:, None] & ((cols >= 0) & (cols < mask.shape[1]))[None, :]
    return np.where(inside, mask[np.clip(rows, 0, mask.shape[0] - 1)][:, np.clip(cols, 0, mask.shape[1] - 1)], 255)


STACKS = {
    "shorter+crop": StackSpec(resize_mode="shorter", resize_size=72, crop=64),
    "crop-resize": StackSpec(resize_mode="shorter", resize_size=72, crop=64, order="crop-resize"),
    "direct": StackSpec(resize_mode="direct", resize_size=80, crop=0),
    "letterbox": StackSpec(resize_mode="letterbox", resize_size=96, crop=0),
    "keep-ratio": StackSpec(resize_mode="keep-ratio", resize_size=64, max_size=100, crop=0),
}


@pytest.mark.parametrize("name", list(STACKS))
@pytest.mark.parametrize("stride", [1, 4])
def test_a_mask_survives_the_round_trip_through_every_resize_mode(name: str, stride: int) -> None:
    """Source mask -> the tensor (through the stack's geometry) -> one-hot scores on a grid of 1/stride -> back to
    the source: the mask again, but at boundaries; source pixels the tensor does not show are ignore_index."""
    assert {s.resize_mode for s in STACKS.values()} == set(RESIZE_MODES)
    source = blocks_mask(70, 110)
    geometry = prepare(np.zeros((70, 110, 3), dtype=np.uint8), STACKS[name]).geometry
    on_tensor = mask_on_tensor(source, geometry)
    one_hot = (on_tensor[None] == np.arange(5)[:, None, None]).astype(np.float32)
    height, width = geometry.tensor_hw
    scores = one_hot.reshape(5, height // stride, stride, width // stride, stride).mean(axis=(2, 4))
    task = SegmentationTask(("logits",), mask_canvas=128, classes=5)
    labels = task.predictions({"logits": scores[None]}, [geometry])[0, :70, :110]
    ys, xs = geometry.tensor_centres()
    shown = ((ys >= 0) & (ys < height))[:, None] & ((xs >= 0) & (xs < width))[None, :]
    assert np.array_equal(labels == 255, ~shown)
    assert shown.mean() > (0.45 if "crop" in name else 0.999)  # a centre crop of a wide image keeps about half
    agree = np.mean(labels[shown] == source[shown])
    assert agree > (0.97 if stride == 1 else 0.93), agree


# -- argmax order and interpolation -------------------------------------------------------------------------


def test_argmax_order_changes_only_what_it_should() -> None:
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(1, 4, 6, 8)).astype(np.float32)
    geometry = prepare(np.zeros((30, 40, 3), dtype=np.uint8), StackSpec(resize_mode="direct", resize_size=24, crop=0)).geometry
    upsample_first = SegmentationTask(("logits",), mask_canvas=40, classes=4)
    argmax_first = SegmentationTask(("logits",), mask_canvas=40, classes=4, argmax="before-resize")
    nearest = SegmentationTask(("logits",), mask_canvas=40, classes=4, interpolation="nearest")
    after, before = (t.predictions({"logits": scores}, [geometry])[0, :30, :40] for t in (upsample_first, argmax_first))
    expected = nn.functional.interpolate(torch.from_numpy(scores), size=(30, 40), mode="bilinear", align_corners=False)[0].argmax(0)
    assert np.array_equal(after, expected.numpy())  # the logits upsampled (as PyTorch does), then argmaxed
    grid = scores[0].argmax(axis=0)
    cell_rows, cell_cols = (np.arange(30) + 0.5) * 6 // 30, (np.arange(40) + 0.5) * 8 // 40
    assert np.array_equal(before, grid[cell_rows.astype(int)][:, cell_cols.astype(int)])  # each pixel: its cell's label
    assert np.array_equal(before, nearest.predictions({"logits": scores}, [geometry])[0, :30, :40])  # argmax commutes with nearest
    assert 0 < np.mean(after != before) < 0.5
    canvas = [np.full((1, 40, 40), 255, np.uint8) for _ in range(2)]
    canvas[0][0, :30], canvas[1][0, :30] = before, after
    agreement = upsample_first.agree(["x"], canvas[1], Side(canvas[0]), Side(canvas[1]))
    assert agreement.details["changed_pixels_max"] == pytest.approx(np.mean(after != before))
    assert agreement.flips == agreement.negative_flips == ["x"]  # against labels equal to the upsample-first ones


@pytest.mark.parametrize(("interpolation", "torch_mode", "align_corners"), [("bicubic", "bicubic", False), ("bilinear", "bilinear", True)])
def test_resize_back_matches_pytorch(interpolation: str, torch_mode: str, align_corners: bool) -> None:
    scores = np.random.default_rng(5).normal(size=(1, 3, 5, 7)).astype(np.float32)
    geometry = prepare(np.zeros((20, 28, 3), dtype=np.uint8), StackSpec(resize_mode="direct", resize_size=20, crop=0)).geometry
    task = SegmentationTask(("logits",), mask_canvas=28, classes=3, interpolation=interpolation, align_corners=align_corners)
    expected = nn.functional.interpolate(torch.from_numpy(scores), size=(20, 28), mode=torch_mode, align_corners=align_corners)
    assert np.array_equal(task.predictions({"logits": scores}, [geometry])[0, :20, :28], expected[0].argmax(0).numpy())


# -- masks checked on load ----------------------------------------------------------------------------------


def write_dataset(folder: Path, masks: dict[str, bytes], size: tuple[int, int] = (40, 30), extra: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, blob in masks.items():
        Image.new("RGB", size, (90, 120, 150)).save(folder / f"{name}.jpg")
        (folder / f"{name}.png").write_bytes(blob)
        entries.append({"file": f"{name}.jpg", "mask": f"{name}.png"} | (extra or {}))
    (folder / "manifest.json").write_text(json.dumps({"classes": ["background", "thing", "other"], "splits": {"eval": entries}}))
    return folder / "manifest.json"


def png_of(array: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array, mode="L").convert(mode) if mode != "L" else Image.fromarray(array, mode="L")
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_masks_load_onto_the_canvas_with_ignore_index(tmp_path: Path) -> None:
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[5:10, 5:20], mask[0, 0] = 2, 255
    palette = Image.fromarray(mask, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    manifest = write_dataset(tmp_path, {"grey": png_of(mask), "palette": buf.getvalue()})
    task = make_task(TaskSpec("segmentation", ("logits",), {"mask_canvas": 48}, classes=3))
    samples = load_dataset(manifest, "eval", target_parser(task, manifest)).samples
    for sample in samples:
        assert sample.target.shape == (48, 48) and sample.target.dtype == np.uint8
        assert np.array_equal(sample.target[:30, :40], mask) and (sample.target[30:] == 255).all() and (sample.target[:, 40:] == 255).all()


@pytest.mark.parametrize(
    ("mask", "extra", "message"),
    [
        (png_of(np.zeros((31, 40), np.uint8)), {}, "m.png is 40x31, the image 40x30"),
        (png_of(np.full((30, 40), 3, np.uint8)), {}, "m.png holds index 3: no class 0..2 nor ignore_index 255"),
        (b"not a png", {}, "mask m.png is unreadable"),
        (png_of(np.zeros((30, 40), np.uint8), "RGB"), {}, "mask m.png is a RGB image, not one class index per pixel"),
        (png_of(np.zeros((30, 40), np.uint8)), {"mask_sha256": "0" * 64}, "m.png: sha256 differs from the manifest"),
        (png_of(np.zeros((30, 40), np.uint8)), {"mask": "../m.png"}, "mask '../m.png' points outside the dataset folder"),
    ],
)
def test_a_bad_mask_is_one_line_naming_it(tmp_path: Path, mask: bytes, extra: dict, message: str) -> None:
    manifest = write_dataset(tmp_path / "data", {"m": mask}, extra=extra)
    task = SegmentationTask(("logits",), mask_canvas=64, classes=3)
    with pytest.raises(HarnessError) as info:
        load_dataset(manifest, "eval", target_parser(task, manifest))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def segment_suite(tmp_path: Path, manifest: Path | None = None, extra: str = "") -> Path:
    """The bundled segmentation suite with absolute paths, goldens in tmp_path (and another manifest, keys)."""
    folder = SEGMENT_TOML.parent
    text = SEGMENT_TOML.read_text().replace('weights = "segment/', f'weights = "{folder}/segment/')
    text = text.replace('manifest = "segment/data/manifest.json"', f'manifest = "{manifest or folder / "segment/data/manifest.json"}"')
    text = text.replace('dir = "../../golden/segment"', f'dir = "{tmp_path / "golden"}"')
    path = tmp_path / "segment.toml"
    path.write_text(text + extra)
    return path


def test_harness_run_refuses_a_mask_larger_than_the_canvas(tmp_path: Path, harness_cli: Callable[..., CliResult]) -> None:
    manifest = write_dataset(tmp_path / "data", {"big": png_of(np.zeros((130, 140), np.uint8))}, size=(140, 130))
    result = harness_cli("run", "--suite", segment_suite(tmp_path, manifest), "--runtime", "torch-fp32", "--no-golden")
    assert result.code == 2
    assert "big.png is 140x130, larger than [postprocess] mask_canvas = 128" in result.err and "Traceback" not in result.err


# -- resize coordinate-mode rewrites ------------------------------------------------------------------------


class Resizes(nn.Module):
    """Bilinear resizes by a functional call (to a size no integer factor reaches) and an nn.Upsample, nearest ones
    likewise: every Resize flavour the variants rewrite."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 1, 1)
        self.up_bilinear = nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False)
        self.up_nearest = nn.Upsample(scale_factor=2.0, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        linear = nn.functional.interpolate(y, size=(13, 17), mode="bilinear", align_corners=False)
        linear = linear + nn.functional.interpolate(self.up_bilinear(y), size=(13, 17), mode="bilinear", align_corners=False)
        nearest = nn.functional.interpolate(y, size=(13, 17), mode="nearest") + self.up_nearest(y)[:, :, :13, :14].mean()
        return linear.flatten(2) + nearest.flatten(2)


# variant -> the variant applied first (PyTorch exports no half-pixel nearest Resize: nearest-floor rewrites one back),
# and whether the variant computes what its source computes already
RESIZE_VARIANTS = {
    "resize-half-pixel": (None, True),
    "resize-pytorch-half-pixel": (None, True),
    "resize-align-corners": (None, False),
    "resize-asymmetric": (None, False),
    "nearest-round-prefer-floor": (None, False),
    "nearest-floor": ("nearest-round-prefer-floor", False),
}


@pytest.fixture(scope="module")
def resizes_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module, np.ndarray]:
    folder = tmp_path_factory.mktemp("resizes")
    torch.manual_seed(0)
    model = Resizes().eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)  # odd sides: no half-way nearest ties
    export_onnx(model, x, folder / "m.onnx", "x", ("y",), 18, {})
    return folder / "m.onnx", model, x


@pytest.mark.parametrize("name", list(RESIZE_VARIANTS))
def test_each_resize_rewrite_matches_its_pytorch_twin_and_onnx_runtime(
    name: str, resizes_onnx: tuple[Path, nn.Module, np.ndarray], tmp_path: Path
) -> None:
    """ONNX Runtime on the rewritten file = the PyTorch twin; the variant moves the outputs unless it is what the
    export computes already.  nearest-floor runs on a round-prefer-floor rewrite and gives back PyTorch's nearest
    (its twin, nearest-exact -> nearest, patches modules; the first rewrite's functional reroute stays)."""
    prior, same_as_source = RESIZE_VARIANTS[name]
    source, model, x = resizes_onnx
    with torch.inference_mode():
        exported = model(torch.from_numpy(x)).numpy()
    if prior:
        rewrite_onnx(source, tmp_path / "prior.onnx", MODEL_VARIANTS[prior])
        source, model = tmp_path / "prior.onnx", copy.deepcopy(model)
        assert patch_torch(model, MODEL_VARIANTS[prior])
    variant = MODEL_VARIANTS[name]
    rewritten = tmp_path / "r.onnx"
    assert rewrite_onnx(source, rewritten, variant)["rewritten_nodes"]
    twin = copy.deepcopy(model)
    assert patch_torch(twin, variant)
    with torch.inference_mode():
        before, patched = model(torch.from_numpy(x)).numpy(), copy.deepcopy(twin)(torch.from_numpy(x)).numpy()
    got, got_before = (ort.InferenceSession(str(path)).run(None, {"x": x})[0] for path in (rewritten, source))
    np.testing.assert_allclose(got_before, before, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got, exported if prior else patched, atol=1e-4, rtol=1e-4)
    assert np.allclose(got, got_before, atol=1e-5) == same_as_source


def test_the_asymmetric_twin_is_onnx_asymmetric_bilinear() -> None:
    """source = destination * in / out, clamped at the far edge: checked against a hand computation on one axis."""
    x = torch.arange(4, dtype=torch.float32).reshape(1, 1, 1, 4) ** 2  # 0, 1, 4, 9
    got = resize_asymmetric(x, size=(1, 6))[0, 0, 0].tolist()
    positions = [d * 4 / 6 for d in range(6)]  # 0, 0.667, 1.333, 2, 2.667, 3.333 -> clamped at 3
    values = [0, 1, 4, 9]
    expected = [values[int(p)] + (values[min(int(p) + 1, 3)] - values[int(p)]) * (p - int(p)) if p < 3 else 9 for p in positions]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_resize_rewrites_on_the_demo_segmenter(tmp_path: Path) -> None:
    """The demo segmenter's decoder (bilinear F.interpolate): align-corners and asymmetric move its logits, the twins
    follow; it has no nearest resize to round."""
    from harness.demo.models import DemoSegmenter

    torch.manual_seed(0)
    model = DemoSegmenter().eval()
    x = np.random.default_rng(1).standard_normal((1, 3, 48, 48)).astype(np.float32)
    export_onnx(model, x, tmp_path / "m.onnx", "images", ("logits",), 18, {})
    with torch.inference_mode():
        reference = model(torch.from_numpy(x)).numpy()
    for name in ("resize-align-corners", "resize-asymmetric"):
        twin = copy.deepcopy(model)
        assert patch_torch(twin, MODEL_VARIANTS[name]) == ["DemoSegmenter.forward: F.interpolate(mode='bilinear')"]
        rewrite_onnx(tmp_path / "m.onnx", tmp_path / f"{name}.onnx", MODEL_VARIANTS[name])
        with torch.inference_mode():
            patched = twin(torch.from_numpy(x)).numpy()
        got = ort.InferenceSession(str(tmp_path / f"{name}.onnx")).run(None, {"images": x})[0]
        np.testing.assert_allclose(got, patched, atol=1e-4)
        assert not np.allclose(patched, reference, atol=1e-3)


# -- a one-class probability map: DBNet ------------------------------------------------------------------


def test_a_thresholded_probability_map_suite_on_a_real_dbnet(tmp_path: Path, harness_cli: Callable[..., CliResult], cache: object) -> None:
    """rapidocr's PP-OCRv4 text detector (one sigmoid map) as a segmentation suite with `threshold = 0.3`.  The masks
    are pseudo-truth: ort-fp32's own map, thresholded and brought back through the geometry on this machine, so
    ort-fp32 scores mIoU 1 exactly and OpenVINO's fp32 map is judged against it pixel by pixel."""
    import sys

    from harness.run.prepared import SuiteRun
    from harness.spec.suite import load_suite

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import real_models

    if not real_models.available("dbnet"):
        pytest.skip("rapidocr_onnxruntime is not installed (make install puts it in)")
    suite_file = real_models.write_suites(tmp_path, ("dbnet",))["dbnet"]
    folder = suite_file.parent
    text = suite_file.read_text().replace('task = "raw"', 'task = "segmentation"').replace('"ort-fp16", "ort-int8"', '"ov-fp32"')
    suite_file.write_text(text + '\n[postprocess]\nthreshold = 0.3\nmask_canvas = 640\n\n[golden]\ndir = "golden"\n')
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["classes"] = ["background", "text"]
    for entries in manifest["splits"].values():
        for entry in entries:
            with Image.open(folder / entry["file"]) as image:
                size = image.size
            entry["mask"] = entry["file"].rsplit(".", 1)[0] + ".png"
            (folder / entry["mask"]).write_bytes(png_of(np.zeros(size[::-1], np.uint8)))
    (folder / "manifest.json").write_text(json.dumps(manifest))

    run = SuiteRun(load_suite(suite_file), cache)  # type: ignore[arg-type]
    inference = run.infer("ort-fp32", 4)
    task = run.task
    for sample, predicted in zip(run.samples, inference.predictions, strict=True):
        height, width = image_size(sample.path)
        (folder / sample.id).with_suffix(".png").write_bytes(png_of(predicted[:height, :width]))
    foreground = float(np.mean(inference.predictions == 1))
    stricter = make_task(TaskSpec("segmentation", task.output_names, {"threshold": 0.5, "mask_canvas": 640}))
    assert 0.001 < float(np.mean(stricter.predictions(inference.outputs, run.inputs.geometry) == 1)) < foreground < 0.5

    result = harness_cli("run", "--suite", suite_file, "--no-golden", "--report-dir", tmp_path / "report")
    assert result.code in (0, 1), result.err  # the verdict is OpenVINO's to earn; nothing may crash
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["task"] == "segmentation" and report["metric_name"] == "mIoU (nanmean)"
    by_runtime = {r["runtime"]: r for r in report["results"]}
    assert by_runtime["ort-fp32"]["metric"] == 1.0
    openvino = by_runtime["ov-fp32"]["comparisons"][0]
    assert openvino["changed_pixels_mean"] < 0.01 and openvino["miou_nanmean"] > 0.9
    assert "<figure>" in (tmp_path / "report" / "report.html").read_text() or not openvino["flips"]


# -- the bundled suite and its report -------------------------------------------------------------------------


def test_overlay_panels_mark_the_changed_pixels() -> None:
    from harness.report.html import CHANGED, overlay_panels

    image = np.full((6, 5, 3), 100, dtype=np.uint8)
    truth, baseline = np.zeros((6, 5), np.uint8), np.ones((6, 5), np.uint8)
    runtime = baseline.copy()
    runtime[2:4, 1:3] = 0
    truth[0, 0] = 255  # ignored: left bare
    panels = overlay_panels(image, [truth, baseline, runtime], classes=2)
    assert panels.shape == (6, 3 * 5 + 2 * 2, 3)
    third = panels[:, 14:]
    assert (np.all(third == CHANGED, axis=-1) == (runtime != baseline)).all()
    assert (panels[0, 0] == 100).all() and not (panels[1, 0] == 100).all()


def test_the_segment_suite_against_its_goldens(harness_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    result = harness_cli("run", "--suite", "segment", "--runtime", "torch-fp32", "--runtime", "ort-fp32", "--limit", "40",
                         "--report-dir", tmp_path)  # fmt: skip
    assert result.code == 0, result.out + result.err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["task"] == "segmentation" and report["metric_name"] == "mIoU (nanmean)"
    ort_vs_torch = next(r for r in report["results"] if r["runtime"] == "ort-fp32")["comparisons"][0]
    assert ort_vs_torch["changed_pixels_max"] <= 0.01 and {"miou_zero", "pixel_accuracy"} <= set(ort_vs_torch)
    for runtime in report["results"]:
        assert runtime["comparisons"][-1]["attribution"]["first_changed_stage"] is None


def test_the_html_report_draws_the_flipped_masks(harness_cli: Callable[..., CliResult], tmp_path: Path) -> None:
    """ort-int8 moves masks: the flipped images (the largest change first) get their truth, reference and runtime panels."""
    result = harness_cli("run", "--suite", "segment", "--runtime", "torch-fp32", "--runtime", "ort-int8", "--limit", "24",
                         "--no-golden", "--report-dir", tmp_path)  # fmt: skip
    assert result.code in (0, 1), result.err
    comparison = next(r for r in json.loads((tmp_path / "report.json").read_text())["results"] if r["runtime"] == "ort-int8")
    flips = comparison["comparisons"][0]["flips"]
    page = (tmp_path / "report.html").read_text()
    assert page.count("changed pixels magenta") == min(len(flips), 12)
    assert all(f"{sample_id}: " in page for sample_id in flips[:12])
