"""Per-image input sizes (`[stack] size_divisor`): keep-ratio padded only to a multiple of 32 (Faster R-CNN-style
services), keep-ratio without padding (divisor 1), sides resized to a multiple (DBNet-style) and Ultralytics'
minimal letterbox; each image fed alone at its own size, the outputs that follow the size NaN-padded to their
shape at the stack's largest input with their own shape, so shards, merges and goldens stay bit-identical.
The demo detector (fully convolutional) is exported with dynamic height and width and run on its eval images."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from exporters.cache import ArtifactCache
from harness.core.errors import HarnessError
from harness.data.stack import Geometry, StackSpec, prepare, stack_from
from harness.run.outputs import SHAPE_SUFFIX, RunOutputs, pad_sized
from harness.run.prepared import SuiteRun
from harness.run.sessions import predict
from harness.spec.suite import BUNDLED_DIR, load_suite
from tests.conftest import CliResult

Cli = Callable[..., CliResult]
RUNTIMES = ("--runtime", "ort-fp32", "--runtime", "ov-fp32")
RNG = np.random.default_rng(0)
KEEP_RATIO = StackSpec(resize_mode="keep-ratio", resize_size=128, max_size=160, crop=None, pad_value=0)


def _pixels(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("stack", "want_hw", "content_hw"),
    [
        (replace(KEEP_RATIO, size_divisor=32), (128, 160), (128, 148)),  # 173 x 201 -> 128 x 148.7, padded to 160
        (replace(KEEP_RATIO, size_divisor=1), (128, 149), (128, 149)),  # keep-ratio without padding
        (replace(KEEP_RATIO, size_divisor=32, size_fit="resize"), (128, 160), (128, 160)),  # sides resized to a multiple
        (StackSpec(resize_mode="letterbox", resize_size=160, crop=None, size_divisor=32), (160, 160), (138, 160)),
    ],
)
def test_per_image_sizes_follow_each_image(stack: StackSpec, want_hw: tuple[int, int], content_hw: tuple[int, int]) -> None:
    prepared = prepare(_pixels(173, 201), stack)
    assert prepared.tensor.shape == (3, *want_hw)
    assert prepared.geometry.tensor_hw == want_hw
    assert stack.input_hw is None and stack.per_image
    assert all(side % max(stack.size_divisor, 1) == 0 for side in want_hw) or stack.size_divisor == 1
    assert all(want <= bound for want, bound in zip(want_hw, stack.bound_hw or (), strict=True))
    # the image's corners land where its content ends (padding starts after it): boxes map back through the geometry
    corner = prepared.geometry.to_tensor(np.array([[0.0, 0.0, 201.0, 173.0]]))[0]
    assert corner[3] - corner[1] == pytest.approx(content_hw[0], abs=1) and corner[2] - corner[0] == pytest.approx(content_hw[1], abs=1)


def test_a_tall_image_gets_another_size_than_a_wide_one() -> None:
    stack = replace(KEEP_RATIO, size_divisor=32)
    assert prepare(_pixels(201, 173), stack).tensor.shape == (3, 160, 128)
    assert prepare(_pixels(173, 201), stack).tensor.shape == (3, 128, 160)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"resize_mode": "shorter", "crop": 0, "size_divisor": 32}, "size_divisor with resize_mode = 'shorter'"),
        ({"resize_mode": "keep-ratio", "crop": 0, "size_fit": "resize"}, "size_fit = 'resize' without a keep-ratio size_divisor"),
        ({"resize_mode": "letterbox", "crop": 0, "size_divisor": 32, "size_fit": "resize"}, "without a keep-ratio size_divisor"),
    ],
)
def test_per_image_settings_that_do_not_fit_are_one_line(keys: dict[str, object], message: str) -> None:
    with pytest.raises(HarnessError, match=message):
        stack_from("s", keys, "suite.toml")


@pytest.fixture(scope="module")
def per_image_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled detection suite with its keep-ratio stack (longer side up to 224) padded only to a multiple of 32
    per image: 128 x 160 and 128 x 192 among the first images."""
    folder = tmp_path_factory.mktemp("per-image")
    data = BUNDLED_DIR / "detect" / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"] = {"eval": manifest["splits"]["eval"][:12], "calib": manifest["splits"]["calib"][:8]}
    for entry in (e for entries in manifest["splits"].values() for e in entries):
        (folder / "data" / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data / entry["file"], folder / "data" / entry["file"])
    (folder / "data" / "manifest.json").write_text(json.dumps(manifest))
    text = (BUNDLED_DIR / "detect.toml").read_text()
    text = text.replace('name = "detect"', 'name = "detect-per-image"').replace("pad_value = 0\n", "pad_value = 0\nsize_divisor = 32\n")
    text = text.replace("max_size = 160", "max_size = 224")
    text = text.replace('"detect/data/', '"data/').replace('"detect/', f'"{BUNDLED_DIR / "detect"}/')
    text = text.replace('dir = "../../golden/detect"', 'dir = "golden"')
    text = text[: text.index("[stacks.yolo-service]")] + text[text.index("[export]") :]
    (folder / "suite.toml").write_text(text)
    return folder / "suite.toml"


def test_each_image_is_fed_at_its_own_size_and_decoded_there(per_image_suite: Path, cache: ArtifactCache) -> None:
    run = SuiteRun(load_suite(per_image_suite), cache, limit=8)
    inputs = run.inputs
    sizes = {g.tensor_hw for g in inputs.geometry}
    assert len(sizes) > 1 and all(h % 32 == 0 and w % 32 == 0 and max(h, w) <= 224 for h, w in sizes)
    got = run.infer("torch-fp32", 4)
    model = run.artifacts.torch_model()
    for row in range(len(inputs)):
        with torch.inference_mode():
            want = model(torch.from_numpy(np.ascontiguousarray(inputs.sample(row)[None])))
        for name, value in zip(("scores", "boxes"), want, strict=True):
            shape = tuple(got.outputs[name + SHAPE_SUFFIX][row])
            assert shape == value.shape[1:]
            np.testing.assert_array_equal(got.outputs[name][row][tuple(slice(0, s) for s in shape)], value[0].numpy())
            assert np.isnan(got.outputs[name][row][shape[0] :]).all()
    onnx = run.infer("ort-fp32", 4)  # exported with dynamic sides: the same detections within float noise
    assert np.nanmax(np.abs(onnx.outputs["scores"] - got.outputs["scores"])) < 1e-3
    found = ~np.isnan(got.predictions[..., 4])
    assert found.sum() > 8 and (~np.isnan(onnx.predictions[..., 4]) == found).mean() > 0.95


def _run(harness_cli: Cli, suite: Path, folder: Path, *extra: str) -> RunOutputs:
    result = harness_cli("run", "--suite", suite, *RUNTIMES, "--limit", "6", "--report-dir", folder, "--no-golden", *extra)
    assert result.code in (0, 1), result.err
    return RunOutputs.load(folder)


def test_per_image_runs_are_bit_identical_across_shards_and_goldens(harness_cli: Cli, per_image_suite: Path, tmp_path: Path) -> None:
    full = _run(harness_cli, per_image_suite, tmp_path / "full")
    for i in (1, 2):
        _run(harness_cli, per_image_suite, tmp_path / f"shard{i}", "--shard", f"{i}/2")
    merged = harness_cli(
        "merge", tmp_path / "shard1", tmp_path / "shard2", "--suite", per_image_suite, "--no-golden", "--report-dir", tmp_path / "m"
    )
    assert merged.code in (0, 1), merged.err
    together = RunOutputs.load(tmp_path / "m")
    assert together.stages == full.stages
    for runtime, inference in full.inferences.items():
        assert set(inference.outputs) == {"scores", "boxes", "scores" + SHAPE_SUFFIX, "boxes" + SHAPE_SUFFIX}
        for name, value in inference.outputs.items():
            np.testing.assert_array_equal(together.inferences[runtime].outputs[name], value)
        np.testing.assert_array_equal(together.inferences[runtime].predictions, inference.predictions)
    golden = tmp_path / "golden"
    update = harness_cli("golden", "update", "--suite", per_image_suite, *RUNTIMES, "--golden-dir", golden)
    assert update.code == 0, update.err
    again = harness_cli("run", "--suite", per_image_suite, *RUNTIMES, "--golden-dir", golden, "--report-dir", tmp_path / "r")
    assert again.code in (0, 1), again.err
    report = (tmp_path / "r" / "report.md").read_text()
    assert report.count("| golden") >= 2


def test_a_fixed_size_onnx_file_refuses_a_per_image_stack(harness_cli: Cli, per_image_suite: Path, tmp_path: Path) -> None:
    torch.onnx.export(
        torch.nn.Conv2d(3, 2, 3), (torch.zeros(1, 3, 160, 160),), str(tmp_path / "fixed.onnx"), input_names=["images"], dynamo=False
    )
    text = per_image_suite.read_text()
    model = text[text.index("[model]") : text.index("[data]")]
    (tmp_path / "suite.toml").write_text(text.replace(model, '[model]\nonnx = "fixed.onnx"\n\n'))
    result = harness_cli("run", "--suite", tmp_path / "suite.toml", "--runtime", "ort-fp32", "--no-golden")
    assert result.code == 2 and "Traceback" not in result.err
    assert "takes a fixed 160x160, [stack] makes sizes that follow each image" in result.err


class _Recording:
    """A task that records what each predictions call was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[tuple[int, int], ...], tuple[int, ...]]] = []

    def predictions(self, outputs: dict[str, np.ndarray], geometry: tuple[Geometry, ...]) -> np.ndarray:
        self.calls.append((tuple(g.tensor_hw for g in geometry), outputs["head"].shape))
        return np.full((len(geometry), 1), float(geometry[0].tensor_hw[0]))


def test_a_tall_and_a_wide_image_are_decoded_apart_though_their_heads_match() -> None:
    """128 x 160 and 160 x 128 inputs give a stride-8 head as many locations (320): each is decoded on its own grid."""
    sizes = [(128, 160), (160, 128), (128, 160), (96, 128)]
    bound = {"head": (1, 320, 6)}
    rows = [pad_sized({"head": np.zeros((1, h * w // 64, 6), dtype=np.float32)}, bound) for h, w in sizes]
    outputs = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
    geometry = tuple(Geometry((h, w), (h, w)) for h, w in sizes)
    task = _Recording()
    predicted = predict(task, outputs, geometry)  # type: ignore[arg-type]
    assert sorted(task.calls) == [
        (((96, 128),), (1, 192, 6)),
        (((128, 160), (128, 160)), (2, 320, 6)),
        (((160, 128),), (1, 320, 6)),
    ]
    assert predicted[:, 0].tolist() == [128, 160, 128, 96]


def test_localize_compares_per_image_tensors_without_their_padding(harness_cli: Cli, per_image_suite: Path, tmp_path: Path) -> None:
    """Graph tensors of images of different sizes, NaN-padded to the largest: the padding is left out of the errors,
    so an fp32 runtime's tensors are finite and within float noise of the reference's."""
    result = harness_cli(
        "localize", "--suite", per_image_suite, "--runtime", "ov-fp32", "--samples", "6", "--per-round", "4",
        "--report-dir", tmp_path,
    )  # fmt: skip
    assert result.code in (0, 1), result.err
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    (found,) = report["runtimes"]
    errors = [tensor["rel_l2"] for tensor in found["tensors"]]
    assert len(errors) > 4 and all(np.isfinite(e) and e < 1e-4 for e in errors) and found["first_divergent"] is None


def test_a_fixed_size_stack_records_no_per_image_keys() -> None:
    """Goldens and work units recorded before per-image sizes existed describe their stacks as they still are."""
    assert "size_divisor" not in KEEP_RATIO.describe() and "size_fit" not in KEEP_RATIO.describe()
    per_image = replace(KEEP_RATIO, size_divisor=32)
    assert per_image.describe()["size_divisor"] == 32 and StackSpec(**per_image.describe() | {"mean": (0.5,) * 3}).per_image


class SizedCellDetector(nn.Module):
    """test_ragged's cell detector on any input size: a cell per 16 x 16 pixels of the image it is given (boxes 24
    pixels wide), scored by its mean brightness, through torchvision's nms: ragged detections [K, 4], [K], [K]."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat = nn.functional.avg_pool2d(x, 16)[0]  # [3, h, w]
        rows, cols = torch.meshgrid(torch.arange(feat.shape[1]), torch.arange(feat.shape[2]), indexing="ij")
        cells = torch.stack([cols, rows, cols + 1.5, rows + 1.5], -1).reshape(-1, 4).float() * 16
        feat = feat.flatten(1)
        scores, labels = (feat.mean(0) * 4).sigmoid(), feat.argmax(0)
        keep = torch.nonzero(scores > 0.5).flatten()
        boxes, scores, labels = cells[keep], scores[keep], labels[keep]
        kept = torchvision.ops.nms(boxes, scores, 0.3)
        return boxes[kept], scores[kept], labels[kept]


def test_ragged_detections_at_per_image_sizes_map_back_to_each_image(
    harness_cli: Cli, per_image_suite: Path, tmp_path: Path, cache: ArtifactCache
) -> None:
    """A Faster R-CNN-style file: its own NMS (ragged outputs, batch 1) on images of their own sizes (multiples of 32):
    ONNX Runtime and OpenVINO give what the PyTorch model gives on each image, mapped back through its geometry."""
    torch.onnx.export(
        SizedCellDetector().eval(), (torch.zeros(1, 3, 128, 160),), str(tmp_path / "cells.onnx"), input_names=["images"],
        output_names=["boxes", "scores", "labels"], opset_version=18, dynamo=False,
        dynamic_axes={"images": {2: "height", 3: "width"}},
    )  # fmt: skip
    text = per_image_suite.read_text()
    model = text[text.index("[model]") : text.index("[data]")]
    ragged = '[model]\nonnx = "cells.onnx"\noutput_names = ["boxes", "scores", "labels"]\nragged_outputs = ["boxes", "scores", "labels"]\n'
    text = text.replace(model, ragged + "ragged_rows = 200\n\n").replace("[postprocess]\n", '[postprocess]\ndecoder = "final"\n')
    text = text.replace('reference = "torch-fp32"', 'reference = "ort-fp32"').replace("score_threshold = 0.05", "score_threshold = 0.5")
    text = text.replace('"ort-fp32", "ort-int8", "ov-fp16", "ov-int8"', '"ov-fp32"')
    (tmp_path / "suite.toml").write_text(text.replace('"data/', f'"{per_image_suite.parent}/data/'))
    run = SuiteRun(load_suite(str(tmp_path / "suite.toml")), cache, limit=6)
    assert len({g.tensor_hw for g in run.inputs.geometry}) > 1
    detections = 0
    for runtime in ("ort-fp32", "ov-fp32"):
        got = run.infer(runtime, 1)
        for row, geometry in enumerate(run.inputs.geometry):
            with torch.inference_mode():
                boxes, scores, _ = SizedCellDetector()(torch.from_numpy(np.ascontiguousarray(run.inputs.sample(row)[None])))
            want = geometry.to_source(boxes.numpy()[np.argsort(-scores.numpy(), kind="stable")][:100])
            found = got.predictions[row][~np.isnan(got.predictions[row][:, 0])]
            assert len(found) == len(want) and np.allclose(np.sort(found[:, :4], axis=0), np.sort(want, axis=0), atol=1e-3)
            detections += len(found)
    assert detections > 12


def test_an_output_beyond_its_shape_at_the_largest_input_is_one_line() -> None:
    with pytest.raises(HarnessError, match=r"output 'head' is \[1, 400, 6\], beyond its \[1, 320, 6\] at the stack's largest input"):
        pad_sized({"head": np.zeros((1, 400, 6), dtype=np.float32)}, {"head": (1, 320, 6)})
