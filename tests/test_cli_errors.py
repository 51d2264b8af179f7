"""Bad input: one line on stderr naming the file or value and the fix, exit 2,
no traceback, nothing written."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.spec.suite import BUNDLED_DIR
from tests.conftest import png_header_only

DEMO_DATA = BUNDLED_DIR / "demo" / "data"


def _dataset(tmp_path: Path, bad_name: str | None, bad_bytes: bytes | None, with_sha: bool) -> Path:
    """A 4-image copy of the demo data plus one bad file; returns its manifest."""
    root = tmp_path / "data"
    (root / "eval").mkdir(parents=True)
    demo = json.loads((DEMO_DATA / "manifest.json").read_text())
    entries = []
    for entry in demo["splits"]["eval"][:4]:
        shutil.copy(DEMO_DATA / entry["file"], root / entry["file"])
        entries.append({"file": entry["file"], "label": entry["label"], **({"sha256": entry["sha256"]} if with_sha else {})})
    if bad_name:
        if bad_bytes is not None:
            (root / "eval" / bad_name).write_bytes(bad_bytes)
        entries.append({"file": f"eval/{bad_name}", "label": 0, **({"sha256": "0" * 64} if with_sha else {})})
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"classes": demo["classes"], "splits": {"eval": entries}}))
    return manifest


def _truncated_jpeg() -> bytes:
    return (DEMO_DATA / "eval" / "0000.jpg").read_bytes()[:1500]


@pytest.mark.parametrize(
    ("bad_name", "bad_bytes", "with_sha", "expected"),
    [
        ("missing.jpg", None, False, "cannot read {root}/eval/missing.jpg"),
        ("truncated.jpg", _truncated_jpeg(), False, "{root}/eval/truncated.jpg: cannot decode image with 'pillow'"),
        ("notes.jpg", b"these are my notes, not a picture\n", False, "{root}/eval/notes.jpg: cannot decode image"),
        ("replaced.jpg", _truncated_jpeg(), True, "{root}/eval/replaced.jpg: sha256 differs from the manifest"),
        ("bomb.png", png_header_only(20000, 20000), False, "{root}/eval/bomb.png: image refused: 20000x20000 = 400,000,000 pixels"),
        ("../../../../etc/passwd", None, False, "entry 'eval/../../../../etc/passwd' points outside the dataset folder"),
    ],
    ids=["missing-file", "truncated-jpeg", "non-image", "sha-mismatch", "decompression-bomb", "path-escape"],
)
def test_bad_images(
    tmp_path: Path,
    make_suite: Callable[..., Path],
    harness_cli: Callable[..., object],
    bad_name: str,
    bad_bytes: bytes | None,
    with_sha: bool,
    expected: str,
) -> None:
    suite = make_suite(manifest=_dataset(tmp_path, bad_name, bad_bytes, with_sha))
    result = harness_cli("run", "--suite", suite, "--no-golden", "--runtime", "ort-fp32", "--report-dir", tmp_path / "reports")
    _assert_one_line_error(result, expected.format(root=tmp_path / "data"))
    assert not (tmp_path / "reports").exists()


def _assert_one_line_error(result: object, fragment: str) -> None:
    assert result.code == 2, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err + result.out
    assert fragment in lines[0], lines[0]


def test_unknown_runtime(harness_cli: Callable[..., object]) -> None:
    result = harness_cli("run", "--suite", "demo", "--runtime", "trt-fp99")
    _assert_one_line_error(result, "unknown runtime 'trt-fp99'")
    assert "harness list" in result.err


def test_unknown_suite(harness_cli: Callable[..., object]) -> None:
    _assert_one_line_error(harness_cli("run", "--suite", "nosuchsuite"), "unknown suite 'nosuchsuite'")


def test_missing_suite_file(harness_cli: Callable[..., object], tmp_path: Path) -> None:
    _assert_one_line_error(harness_cli("export", "--suite", tmp_path / "absent.toml"), f"suite file not found: {tmp_path / 'absent.toml'}")


@pytest.mark.parametrize(
    ("replace", "fragment"),
    [
        ({'task = "classification"': 'task = "classification'}, "malformed suite file"),
        ({"[model]": "[modell]"}, "unknown key 'modell' (did you mean 'model'?)"),
        ({'builder = "demo-resnet"': 'builder = "nowhere"'}, "unknown model builder 'nowhere'"),
        ({'decoder = "pillow"': 'decoder = "libjpeg9000"'}, "[stack] decoder = 'libjpeg9000': unknown decoder 'libjpeg9000'"),
        ({"max_abs = 1e-3": 'max_abs = "small"'}, "[tolerance.fp32] max_abs = 'small': expected a number"),
        ({'colour = "nv12-int"': 'colour = "sepia"'}, "[stacks.camera-nv12] colour = 'sepia': unknown colour 'sepia'"),
        ({"[export]": "[postprocess]\nlabel_offset = 1.5\n\n[export]"}, "[postprocess] label_offset = 1.5: expected an integer"),
        ({"resize_size = 72": 'resize_size = "72"'}, "[stack] resize_size = '72': expected an integer"),
        ({"crop = 64": "crop = -3"}, "[stack] crop = -3: expected a value >= 0"),
        ({"crop = 64": "crop = 80"}, "stack 'reference' crops 80 px out of an image resized to 72 px"),
        ({"exif = true": 'exif = "no"'}, "[stack] exif = 'no': expected true or false"),
        ({'resize = "pillow-bilinear"': 'resiz = "pillow-bilinear"'}, "[stack] unknown key 'resiz' (did you mean 'resize'?)"),
        ({"batch_size = 32": "batch_size = 0"}, "[run] batch_size = 0: expected a value >= 1"),
        ({"trt_batch = [1, 32, 64]": "trt_batch = [64, 32, 1]"}, "[export] trt_batch [64, 32, 1] must be [min, opt, max]"),
        ({'"ort-fp32", "ort-fp16"': '"ort-fp33", "ort-fp16"'}, "[run] runtimes[1] = 'ort-fp33': unknown runtime 'ort-fp33' (did you mean"),
        ({'decoder = "pillow"': 'decoder = "nvjpeg"'}, "decoder 'nvjpeg' cannot run here: nvjpeg needs a CUDA device"),
    ],
    ids=[
        "toml-syntax",
        "unknown-table",
        "unknown-builder",
        "unknown-decoder",
        "bad-tolerance",
        "bad-named-stack",
        "bad-postprocess",
        "string-for-int",
        "negative-crop",
        "crop-larger-than-resize",
        "string-for-bool",
        "typo-key",
        "zero-batch",
        "unordered-trt-batch",
        "typo-runtime",
        "no-cuda",
    ],
)
def test_malformed_suite(
    make_suite: Callable[..., Path], harness_cli: Callable[..., object], replace: dict[str, str], fragment: str
) -> None:
    suite = make_suite(replace)
    _assert_one_line_error(harness_cli("run", "--suite", suite, "--no-golden", "--limit", "4"), fragment)


def test_unknown_stack_name(harness_cli: Callable[..., object]) -> None:
    result = harness_cli("run", "--suite", "demo", "--stack", "gpu-service")
    _assert_one_line_error(result, "no stack named 'gpu-service'")
    assert "[stacks.gpu-service]" in result.err and "camera-nv12" in result.err


def test_merge_of_a_folder_without_outputs(harness_cli: Callable[..., object], tmp_path: Path) -> None:
    _assert_one_line_error(harness_cli("merge", tmp_path, "--suite", "demo"), f"{tmp_path / 'outputs.npz'}: not a run's outputs.npz")


def test_missing_golden(make_suite: Callable[..., Path], harness_cli: Callable[..., object], tmp_path: Path) -> None:
    suite = make_suite()
    result = harness_cli("run", "--suite", suite, "--runtime", "ort-fp32")
    _assert_one_line_error(result, f"no golden for runtime 'ort-fp32' in {tmp_path / 'golden' / 'ort-fp32'}")
    assert f"harness golden update --suite {suite.resolve()} --runtime ort-fp32" in result.err and "--no-golden" in result.err


def test_missing_goldens_are_named_together_with_the_command_that_records_them(
    make_suite: Callable[..., Path], harness_cli: Callable[..., object], tmp_path: Path
) -> None:
    suite = make_suite()
    result = harness_cli("run", "--suite", suite, "--runtime", "ort-fp32", "--runtime", "ov-fp32", "--limit", "8")
    _assert_one_line_error(result, f"no goldens for runtimes ort-fp32, ov-fp32 in {tmp_path / 'golden'}")
    hint = f"harness golden update --suite {suite.resolve()} --runtime ort-fp32 --runtime ov-fp32"
    assert hint in result.err and "--no-golden" in result.err
    recorded = harness_cli(*hint.split()[1:])  # the command it names works as printed
    assert recorded.code == 0, recorded.err


def test_onnx_file_that_fails_to_load(tmp_path: Path, harness_cli: Callable[..., object]) -> None:
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"\x08\x07garbage that is not protobuf" * 10)
    (tmp_path / "data").mkdir()
    result = harness_cli("run", "--onnx", model, "--inputs", tmp_path / "data", "--runtime", "ort-fp32")
    _assert_one_line_error(result, f"{model}: not a valid ONNX model")


def test_missing_onnx_inputs_folder(tmp_path: Path, harness_cli: Callable[..., object]) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    result = harness_cli("run", "--onnx", model, "--inputs", tmp_path / "nope")
    assert result.code == 2 and result.err.startswith("error: ")


def test_missing_weights(make_suite: Callable[..., Path], harness_cli: Callable[..., object], tmp_path: Path) -> None:
    suite = make_suite({"weights.safetensors": "gone.safetensors"})
    _assert_one_line_error(harness_cli("export", "--suite", suite), "weights file not found")


def test_corrupt_weights(make_suite: Callable[..., Path], harness_cli: Callable[..., object], tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(hashlib.sha256(b"x").digest() * 10)
    suite = make_suite({f"{BUNDLED_DIR}/demo/weights.safetensors": str(bad)})
    _assert_one_line_error(harness_cli("export", "--suite", suite), f"cannot read weights {bad}")


def test_a_run_logged_to_a_file_prints_progress_lines(
    harness_cli: Callable[..., object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stderr is no terminal here (as in a CI log): each stage says how far it got, in lines, not bars (every
    PROGRESS_EVERY seconds: here every sample)."""
    monkeypatch.setattr("harness.cli.PROGRESS_EVERY", 0.0)
    result = harness_cli("run", "--suite", "demo", "--runtime", "ort-fp32", "--limit", "40", "--no-golden", "--report-dir", tmp_path)
    assert result.code == 0, result.err
    assert "decode + reference stack: 40/40 (" in result.err and "infer ort-fp32: 2/2 (" in result.err
