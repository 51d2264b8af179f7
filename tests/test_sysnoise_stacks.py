"""Every decoder, the torchvision resizers, order/crop/rounding variants and named
stacks, on the demo's real JPEGs (progressive, 4:2:0, grayscale, EXIF-rotated)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from harness.core.errors import HarnessError
from harness.data.dataset import Sample, load_dataset, read_sample
from harness.data.decoders import DECODERS, DecodeError, decoder_unavailable
from harness.data.resizers import RESIZERS
from harness.data.stack import StackSpec, decode_and_preprocess, preprocess
from harness.spec.suite import Suite

CPU_DECODERS = [d for d in DECODERS if not decoder_unavailable(d)]
# Decoders sharing Pillow's libjpeg-turbo settings: bit-identical pixels.
IDENTICAL_TO_PILLOW = ("opencv", "simplejpeg")


def _kinds(samples: list[Sample]) -> dict[str, Sample]:
    def first(predicate: object) -> Sample:
        return next(s for s in samples if predicate(Image.open(s.path)))  # type: ignore[operator]

    return {
        "progressive": first(lambda im: im.info.get("progressive") and im.mode == "RGB"),
        "420": first(lambda im: im.mode == "RGB" and JpegImagePlugin.get_sampling(im) == 2),
        "grayscale": first(lambda im: im.mode == "L"),
        "exif-rotated": first(lambda im: im.getexif().get(0x0112) in (6, 8)),
    }


@pytest.fixture(scope="module")
def kinds(demo_suite: Suite) -> dict[str, Sample]:
    return _kinds(load_dataset(demo_suite.data.manifest, "eval").samples)


@pytest.mark.parametrize("decoder", CPU_DECODERS)
@pytest.mark.parametrize("kind", ["progressive", "420", "grayscale", "exif-rotated"])
def test_every_decoder_on_every_kind_of_jpeg(decoder: str, kind: str, kinds: dict[str, Sample]) -> None:
    data = read_sample(kinds[kind])
    reference = DECODERS["pillow"](data, True)
    pixels = DECODERS[decoder](data, True)
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    if decoder == "pillow-draft":
        assert pixels.shape == reference.shape  # no min_side given: full size
    diff = np.abs(pixels.astype(int) - reference.astype(int))
    assert pixels.shape == reference.shape, "EXIF orientation must match Pillow's exif_transpose"
    if decoder in IDENTICAL_TO_PILLOW:
        assert diff.max() == 0
    else:
        assert diff.mean() < 3  # same image, different arithmetic
    if kind == "grayscale":
        assert np.array_equal(pixels[..., 0], pixels[..., 1])


@pytest.mark.parametrize("decoder", CPU_DECODERS)
def test_exif_off_keeps_the_stored_orientation(decoder: str, kinds: dict[str, Sample]) -> None:
    data = read_sample(kinds["exif-rotated"])
    upright, stored = DECODERS[decoder](data, True), DECODERS[decoder](data, False)
    assert upright.shape[:2] == stored.shape[1::-1]


def test_decoders_that_really_differ_from_pillow(kinds: dict[str, Sample]) -> None:
    """FFmpeg's swscale conversion and libjpeg-turbo's fast DCT/upsampling change pixels on chroma-subsampled JPEGs."""
    data = read_sample(kinds["420"])
    reference = DECODERS["pillow"](data, True).astype(int)
    for decoder in ("pyav", "simplejpeg-fast"):
        assert np.abs(DECODERS[decoder](data, True).astype(int) - reference).max() > 5, decoder


def test_pillow_draft_scales_in_the_dct_domain(demo_suite: Suite) -> None:
    samples = load_dataset(demo_suite.data.manifest, "eval").samples
    large = next(s for s in samples if min(Image.open(s.path).size) >= 300)
    full = DECODERS["pillow"](read_sample(large), True)
    small = DECODERS["pillow-draft"](read_sample(large), True, 72)
    assert min(small.shape[:2]) >= 72 and small.shape[0] * 2 <= full.shape[0]


@pytest.mark.parametrize("decoder", CPU_DECODERS)
def test_every_decoder_rejects_garbage(decoder: str) -> None:
    with pytest.raises(DecodeError):
        DECODERS[decoder](b"\xff\xd8\xff\xe0 this is not a jpeg", True)


def test_torchvision_resize_antialias_matters(kinds: dict[str, Sample]) -> None:
    pixels = DECODERS["pillow"](read_sample(kinds["420"]), True)
    with_aa = RESIZERS["torchvision-bilinear"](pixels, (64, 64)).astype(int)
    without = RESIZERS["torchvision-bilinear-noaa"](pixels, (64, 64)).astype(int)
    pillow = RESIZERS["pillow-bilinear"](pixels, (64, 64)).astype(int)
    assert np.abs(with_aa - pillow).max() <= 2  # both antialias: same filter up to rounding
    assert np.abs(without - pillow).mean() > 4 * max(np.abs(with_aa - pillow).mean(), 0.05)


@pytest.mark.parametrize("name", sorted(RESIZERS))
@pytest.mark.parametrize("kind", ["progressive", "420", "grayscale", "exif-rotated"])
def test_every_resizer_on_every_kind_of_jpeg(name: str, kind: str, kinds: dict[str, Sample]) -> None:
    pixels = DECODERS["pillow"](read_sample(kinds[kind]), True)
    out = RESIZERS[name](pixels, (64, 80))
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8
    assert abs(float(out.mean()) - float(pixels.mean())) < 8  # same picture, smaller


@pytest.mark.parametrize("name", sorted(RESIZERS))
def test_every_resizer_keeps_float_precision(name: str) -> None:
    img = np.random.default_rng(0).uniform(0, 255, (50, 70, 3)).astype(np.float32)
    out = RESIZERS[name](img, (20, 30))
    assert out.shape == (20, 30, 3) and out.dtype == np.float32
    assert not np.allclose(out, np.round(out)) or name.endswith("nearest")


def test_crop_then_resize_sees_the_same_field_of_view() -> None:
    # A 160x200 image whose centre 142x142 square is white: resize(72)->crop(64) keeps the centre 64/72 of the
    # shorter side, i.e. 142 source pixels; crop-then-resize cuts exactly those 142 pixels first.
    img = np.zeros((160, 200, 3), dtype=np.uint8)
    img[9:151, 29:171] = 255
    base = StackSpec(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))
    resize_crop = preprocess(img, base)
    crop_resize = preprocess(img, StackSpec(order="crop-resize", mean=base.mean, std=base.std))
    assert resize_crop.shape == crop_resize.shape == (3, 64, 64)
    assert crop_resize.min() == 255  # the whole white square, nothing else
    assert resize_crop.min() < 255  # the resize blurs the dark border into the crop's edge


def test_direct_resize_distorts_and_float_rounding_keeps_fractions(kinds: dict[str, Sample]) -> None:
    data = read_sample(kinds["420"])
    identity = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}
    shorter = decode_and_preprocess(data, StackSpec(**identity))
    direct = decode_and_preprocess(data, StackSpec(resize_mode="direct", **identity))
    floats = decode_and_preprocess(data, StackSpec(rounding="float", **identity))
    assert shorter.shape == direct.shape == floats.shape
    assert np.allclose(shorter, np.round(shorter), atol=1e-3)  # uint8 values, scaled by 1
    assert not np.allclose(floats, np.round(floats), atol=1e-3)
    assert np.abs(floats - shorter).max() <= 1.0 + 1e-3  # only the rounding differs
    assert np.abs(direct - shorter).max() > 0
    ramp = np.broadcast_to(np.linspace(0, 255, 200).astype(np.uint8)[None, :, None], (100, 200, 3)).copy()
    squeezed = preprocess(ramp, StackSpec(resize_mode="direct", **identity))
    kept = preprocess(ramp, StackSpec(**identity))
    assert np.ptp(squeezed[0, 0]) > 1.8 * np.ptp(kept[0, 0])  # direct keeps the whole width in view, squeezed


def test_named_stacks_override_the_reference(demo_suite: Suite) -> None:
    camera = demo_suite.stack_named("camera-nv12")
    assert camera.colour == "nv12-int" and camera.resize == "torchvision-bilinear-noaa"
    assert camera.crop == demo_suite.stack.crop and camera.decoder == demo_suite.stack.decoder
    with pytest.raises(HarnessError, match=r"no stack named 'nope'.*\[stacks.nope\]"):
        demo_suite.stack_named("nope")
