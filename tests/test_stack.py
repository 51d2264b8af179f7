"""Decoders, resizers and the reference stack on real JPEG files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from harness.data.dataset import load_dataset, read_sample
from harness.data.decoders import DECODERS, DecodeError
from harness.data.resizers import RESIZERS
from harness.data.stack import StackSpec, decode_and_preprocess
from harness.spec.suite import Suite


def _jpeg(pixels: np.ndarray, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def test_reference_stack_normalises_a_flat_image_exactly() -> None:
    colour = np.array([200, 100, 50], dtype=np.uint8)
    data = _jpeg(np.broadcast_to(colour, (90, 150, 3)).copy(), quality=100, subsampling=0)
    spec = StackSpec()
    tensor = decode_and_preprocess(data, spec)
    assert tensor.shape == (3, 64, 64) and tensor.dtype == np.float32
    decoded = DECODERS["pillow"](data, True)[45, 75].astype(np.float32)  # JPEG may shift a flat colour by 1
    expected = (decoded / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(tensor[:, 32, 32], expected, atol=1e-5)


def test_exif_orientation_is_applied_or_ignored(demo_suite: Suite) -> None:
    dataset = load_dataset(demo_suite.data.manifest, "eval")
    rotated = next(s for s in dataset.samples if Image.open(s.path).getexif().get(0x0112) in (6, 8))
    data = read_sample(rotated)
    upright = DECODERS["pillow"](data, True)
    stored = DECODERS["pillow"](data, False)
    assert upright.shape[:2] == stored.shape[1::-1]
    assert np.array_equal(np.rot90(stored, 1), upright) or np.array_equal(np.rot90(stored, -1), upright)


def test_grayscale_jpeg_decodes_to_three_equal_channels(demo_suite: Suite) -> None:
    dataset = load_dataset(demo_suite.data.manifest, "eval")
    gray = next(s for s in dataset.samples if Image.open(s.path).mode == "L")
    pixels = DECODERS["pillow"](read_sample(gray), True)
    assert pixels.shape[2] == 3 and np.array_equal(pixels[..., 0], pixels[..., 2])


@pytest.mark.parametrize("name", sorted(RESIZERS))
def test_every_resizer_hits_the_target_shape(name: str, demo_suite: Suite) -> None:
    sample = load_dataset(demo_suite.data.manifest, "eval").samples[0]
    pixels = DECODERS["pillow"](read_sample(sample), True)
    out = RESIZERS[name](pixels, (37, 53))
    assert out.shape == (37, 53, 3) and out.dtype == np.uint8


def test_resizers_really_differ_on_fine_stripes() -> None:
    stripes = np.zeros((200, 200, 3), dtype=np.uint8)
    stripes[:, ::3] = 255
    nearest = RESIZERS["opencv-nearest"](stripes, (64, 64)).astype(int)
    antialiased = RESIZERS["pillow-bilinear"](stripes, (64, 64)).astype(int)
    assert np.abs(nearest - antialiased).max() > 50


def test_decoder_rejects_garbage() -> None:
    with pytest.raises(DecodeError):
        DECODERS["pillow"](b"not an image at all", True)
    truncated = _jpeg(np.zeros((64, 64, 3), dtype=np.uint8) + 128)[:200]
    with pytest.raises(DecodeError):
        DECODERS["pillow"](truncated, True)
