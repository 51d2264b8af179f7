"""YUV round trips against the BT.601 equations computed by hand, NV12
subsampling, and the OpenCV decoder against Pillow on real JPEGs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from harness.data.colour import COLOUR_PATHS, rgb_to_yuv, subsample_nv12, yuv_to_rgb_float, yuv_to_rgb_int
from harness.data.dataset import load_dataset, read_sample
from harness.data.decoders import DECODERS, DecodeError
from harness.spec.suite import Suite

# (R, G, B) -> (Y, U, V), computed by hand from the SysNoise equations.
HAND = {
    (255, 0, 0): (81, 90, 240),  # Y = round(65.48094) + 16, U = round(-37.79687) + 128, V = round(112.00008) + 128
    (0, 255, 0): (145, 54, 34),  # Y = round(128.55290) + 16, U = round(-74.20322) + 128, V = round(-93.78594) + 128
    (0, 0, 255): (41, 240, 110),  # Y = round(24.96603) + 16, U = round(112.00008) + 128, V = round(-18.21389) + 128
    (128, 128, 128): (126, 128, 128),  # Y = round(109.92934) + 16, U = round(0.0) + 128
}


def test_rgb_to_yuv_matches_hand_computation() -> None:
    pixels = np.array([list(HAND)], dtype=np.uint8)
    assert rgb_to_yuv(pixels)[0].tolist() == [list(v) for v in HAND.values()]


def test_back_conversions_by_hand() -> None:
    yuv = np.array([[[82, 90, 240]]], dtype=np.int32)
    # float: R = 76.849278 + 1.596027*112 = 255.60 -> 255 (clipped); G = 76.849278 + 14.886956 - 91.052416 = 0.68 -> 1;
    #        B = 76.849278 - 2.017232*38 = 0.19 -> 0
    assert yuv_to_rgb_float(yuv)[0, 0].tolist() == [255, 1, 0]
    # int: R = (298*66 + 409*112 + 128) >> 8 = 257 -> 255; G = (19668 + 3800 - 23296 + 128) >> 8 = 1; B = (19668 - 19608 + 128) >> 8 = 0
    assert yuv_to_rgb_int(yuv)[0, 0].tolist() == [255, 1, 0]


def test_nv12_averages_chroma_over_2x2_blocks() -> None:
    yuv = np.zeros((3, 3, 3), dtype=np.int32)
    yuv[..., 0] = np.arange(9).reshape(3, 3)
    yuv[..., 1] = [[100, 102, 50], [104, 106, 50], [10, 10, 10]]
    out = subsample_nv12(yuv)
    assert np.array_equal(out[..., 0], yuv[..., 0])  # luma untouched
    assert out[0, 0, 1] == out[1, 1, 1] == 103  # mean of 100, 102, 104, 106
    assert out[0, 2, 1] == 50 and out[2, 0, 1] == 10  # odd edges replicate their own block


@pytest.mark.parametrize("name", ["yuv444-float", "yuv444-int", "nv12-float", "nv12-int"])
def test_yuv_round_trips_are_close_but_lossy(name: str, demo_suite: Suite) -> None:
    sample = load_dataset(demo_suite.data.manifest, "eval").samples[1]
    pixels = DECODERS["pillow"](read_sample(sample), True)
    out = COLOUR_PATHS[name](pixels)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - pixels.astype(int))
    assert 0 < diff.mean() < (8 if name.startswith("nv12") else 2)


def test_opencv_decoder_agrees_with_pillow_and_honours_exif(demo_suite: Suite) -> None:
    samples = load_dataset(demo_suite.data.manifest, "eval").samples
    rotated = next(s for s in samples if Image.open(s.path).getexif().get(0x0112) in (6, 8))
    data = read_sample(rotated)
    upright, stored = DECODERS["opencv"](data, True), DECODERS["opencv"](data, False)
    assert upright.shape[:2] == stored.shape[1::-1]
    baseline = next(s for s in samples if not Image.open(s.path).info.get("progressive"))
    pillow, opencv = DECODERS["pillow"](read_sample(baseline), True), DECODERS["opencv"](read_sample(baseline), True)
    assert pillow.shape == opencv.shape
    assert np.abs(pillow.astype(int) - opencv.astype(int)).max() <= 2  # both libjpeg-turbo


def test_opencv_decoder_rejects_garbage() -> None:
    with pytest.raises(DecodeError):
        DECODERS["opencv"](b"\xff\xd8 not really a jpeg", True)
