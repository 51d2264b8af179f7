"""Image intake and dataset confinement: every odd image is converted by one documented rule or
refused, the same way for every decoder; manifest paths stay inside the dataset folder; a format a
decoder cannot read makes that decoder not applicable (an error for `run`, a not-applicable row in `matrix`)."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from harness.core.errors import HarnessError
from harness.data.dataset import load_dataset
from harness.data.decoders import DECODERS, decoder_unavailable
from harness.data.feed import DecoderNotApplicable, decode_all
from harness.data.intake import IntakePolicy
from harness.data.stack import StackSpec
from harness.spec.suite import BUNDLED_DIR
from tests.conftest import CliResult, png_header_only

DEMO_DATA = BUNDLED_DIR / "demo" / "data"
DECODER_NAMES = [d for d in DECODERS if not decoder_unavailable(d)]
RNG = np.random.default_rng(7)
PHOTO = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)


def _save(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _dataset(tmp_path: Path, files: dict[str, bytes]) -> Path:
    root = tmp_path / "data"
    (root / "eval").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / "eval" / name).write_bytes(data)
    manifest = root / "manifest.json"
    entries = [{"file": f"eval/{name}", "label": 0} for name in files]
    manifest.write_text(json.dumps({"classes": ["a"], "splits": {"eval": entries}}))
    return manifest


DEFAULT = IntakePolicy()


def _decode(tmp_path: Path, name: str, data: bytes, decoder: str, policy: IntakePolicy = DEFAULT) -> tuple[np.ndarray, dict]:
    samples = load_dataset(_dataset(tmp_path, {name: data}), "eval").samples
    decoded = decode_all(samples, StackSpec(decoder=decoder), policy=policy)
    return decoded.pixels[0], decoded.intake


GRAY16 = (np.arange(24 * 32).reshape(24, 32) * 85).astype(np.uint16)
CASES = {
    "gray16.png": (_save(Image.fromarray(GRAY16), "PNG"), "16-bit"),
    "rgba.png": (_save(Image.fromarray(np.dstack([PHOTO, PHOTO[:, :, :1]])), "PNG"), "alpha"),
    "la.png": (_save(Image.fromarray(PHOTO[:, :, 0]).convert("LA"), "PNG"), "alpha"),
    "palette-transparent.png": (_save(Image.fromarray(PHOTO).quantize(16), "PNG", transparency=0), "alpha"),
    "palette.png": (_save(Image.fromarray(PHOTO).quantize(16), "PNG"), "palette"),
    "cmyk.jpg": (_save(Image.fromarray(PHOTO).convert("CMYK"), "JPEG", quality=95), "cmyk"),
    "bilevel.png": (_save(Image.fromarray(PHOTO[:, :, 0] > 128), "PNG"), "1-bit"),
    "frames.gif": (
        _save(Image.fromarray(PHOTO).quantize(16), "GIF", save_all=True, append_images=[Image.new("P", (32, 24))]),
        "multi-frame",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_odd_images_get_one_rule_for_every_decoder(tmp_path: Path, name: str) -> None:
    data, kind = CASES[name]
    results = {decoder: _decode(tmp_path / decoder, name, data, decoder) for decoder in DECODER_NAMES}
    first = next(iter(results.values()))[0]
    assert first.shape == (24, 32, 3) and first.dtype == np.uint8
    for decoder, (pixels, intake) in results.items():
        assert intake == {kind: 1}, decoder
        assert np.array_equal(pixels, first), decoder  # the same pixels whatever the decoder


def test_sixteen_bit_maps_full_range_to_full_range(tmp_path: Path) -> None:
    pixels, _ = _decode(tmp_path, "g.png", CASES["gray16.png"][0], "opencv")
    assert np.array_equal(pixels[:, :, 0], np.rint(GRAY16 * (255 / 65535)).astype(np.uint8))
    assert np.array_equal(pixels[:, :, 0], pixels[:, :, 2])


@pytest.mark.parametrize("decoder", DECODER_NAMES)
def test_oversized_and_degenerate_images_are_refused_by_every_decoder(tmp_path: Path, decoder: str) -> None:
    bomb = png_header_only(20000, 20000)
    assert len(bomb) < 200  # what matters is the header: nothing is allocated before the check
    with pytest.raises(HarnessError, match=r"bomb.png: image refused: 20000x20000 = 400,000,000 pixels is over the limit of 89,478,485"):
        _decode(tmp_path / "a", "bomb.png", bomb, decoder)
    with pytest.raises(HarnessError, match=r"dot.png: image refused: 1x1 pixels is smaller than 2 px"):
        _decode(tmp_path / "b", "dot.png", _save(Image.new("RGB", (1, 1)), "PNG"), decoder)
    with pytest.raises(HarnessError, match="over the limit of 100"):
        _decode(tmp_path / "c", "small.png", _save(Image.fromarray(PHOTO), "PNG"), decoder, IntakePolicy(max_pixels=100))


def test_a_png_for_a_jpeg_only_decoder_is_not_applicable(tmp_path: Path) -> None:
    png = _save(Image.fromarray(PHOTO), "PNG")
    with pytest.raises(DecoderNotApplicable, match=r"decoder 'simplejpeg' cannot read 1/1 samples \(PNG 1; first: .*x.png\)"):
        _decode(tmp_path, "x.png", png, "simplejpeg")
    readers = {d: _decode(tmp_path / d, "x.png", png, d)[0] for d in ("pillow", "opencv", "pyav")}
    assert all(np.array_equal(p, PHOTO) for p in readers.values())  # lossless 8-bit RGB: every reader agrees


@pytest.mark.parametrize("entry", ["../../../../etc/passwd", "/etc/passwd", "eval/../../outside.jpg", "link/passwd"])
def test_manifest_paths_stay_inside_the_dataset(tmp_path: Path, entry: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "link").symlink_to("/etc")
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"classes": ["a"], "splits": {"eval": [{"file": entry, "label": 0}]}}))
    with pytest.raises(HarnessError, match=f"entry '{entry}' points outside the dataset folder"):
        load_dataset(manifest, "eval")


def test_a_symlink_inside_the_dataset_is_fine(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "eval").mkdir(parents=True)
    shutil.copy(DEMO_DATA / "eval" / "0000.jpg", root / "eval" / "real.jpg")
    (root / "eval" / "alias.jpg").symlink_to(root / "eval" / "real.jpg")
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"classes": ["a"], "splits": {"eval": [{"file": "eval/alias.jpg", "label": 0}]}}))
    assert load_dataset(manifest, "eval").samples[0].path.name == "alias.jpg"


def test_pickled_code_in_a_checkpoint_is_one_line_and_never_runs(
    make_suite: Callable[..., Path], harness_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, (f"touch {marker}",))

    import pickle

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": Evil()}))
    suite = make_suite({'weights = "': f'weights = "{tmp_path / "evil.pt"}" #'})
    result = harness_cli("run", "--suite", suite, "--runtime", "torch-fp32", "--no-golden", "--limit", "2")
    assert result.code == 2 and "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "pickles objects other than tensors" in lines[0] and "nothing was executed" in lines[0]
    assert not marker.exists()


def test_matrix_on_mixed_png_and_jpeg_skips_the_decoders_that_cannot_read_png(
    make_suite: Callable[..., Path], harness_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    demo = json.loads((DEMO_DATA / "manifest.json").read_text())
    root = tmp_path / "mixed"
    (root / "eval").mkdir(parents=True)
    entries = []
    for i, entry in enumerate(demo["splits"]["eval"][:12]):
        source = DEMO_DATA / entry["file"]
        if i % 4 == 0:  # every fourth image as a PNG
            name = Path(entry["file"]).with_suffix(".png").name
            cv2.imwrite(str(root / "eval" / name), cv2.imread(str(source)))
        else:
            name = Path(entry["file"]).name
            shutil.copy(source, root / "eval" / name)
        entries.append({"file": f"eval/{name}", "label": entry["label"]})
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"classes": demo["classes"], "splits": {"eval": entries}}))
    suite = make_suite(manifest=manifest)
    result = harness_cli("matrix", "--suite", suite, "--axes", "decoder,resize", "--runtime", "torch-fp32", "--report-dir", tmp_path / "m")
    assert result.code == 0, result.err
    data = json.loads((tmp_path / "m" / "matrix.json").read_text())
    skipped = "decoder 'simplejpeg' cannot read 3/12 samples (PNG 3"
    assert any(n["variant"] == "simplejpeg" and n["reason"].startswith(skipped) for n in data["not_applicable"])
    decoders = {r["variant"] for r in data["rows"] if r["axis"] == "decoder"}
    assert "opencv" in decoders and "pyav" in decoders and "simplejpeg" not in decoders
    assert any(r["axis"] == "combined" for r in data["rows"])  # the matrix finished


def test_the_report_counts_converted_samples(
    make_suite: Callable[..., Path], harness_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    demo = json.loads((DEMO_DATA / "manifest.json").read_text())
    files = {Path(e["file"]).name: (DEMO_DATA / e["file"]).read_bytes() for e in demo["splits"]["eval"][:4]}
    files |= {"gray16.png": CASES["gray16.png"][0], "rgba.png": CASES["rgba.png"][0]}
    suite = make_suite(manifest=_dataset(tmp_path, files))
    result = harness_cli("run", "--suite", suite, "--runtime", "ort-fp32", "--no-golden", "--report-dir", tmp_path / "r")
    assert result.code == 0, result.err
    notes = json.loads((tmp_path / "r" / "report.json").read_text())["notes"]
    assert "image intake converted 2/6 samples (16-bit 1, alpha 1): see README, Image intake" in notes
