"""Geometry follows the tensor: for every resize mode, boxes map source -> tensor -> source exactly,
and a white box drawn in the source lands where the geometry says in the tensor."""

from __future__ import annotations

import numpy as np
import pytest

from harness.core.errors import HarnessError
from harness.data.stack import StackSpec, prepare, stack_from

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255), "layout": "nhwc", "resize": "opencv-nearest"}
MODES = {
    "shorter+crop": StackSpec(resize_size=72, crop=64, **IDENTITY),
    "crop-resize": StackSpec(resize_size=72, crop=64, order="crop-resize", **IDENTITY),
    "direct": StackSpec(resize_mode="direct", resize_size=64, crop=0, **IDENTITY),
    "letterbox": StackSpec(resize_mode="letterbox", resize_size=96, crop=0, pad_value=0, **IDENTITY),
    "keep-ratio": StackSpec(resize_mode="keep-ratio", resize_size=80, max_size=120, crop=0, pad_value=0, **IDENTITY),
}
BOX = np.array([[60.0, 40.0, 140.0, 100.0]])  # x1, y1, x2, y2 in a 160 x 200 (h x w) image


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("shape", [(160, 200), (200, 160)])
def test_boxes_round_trip(mode: str, shape: tuple[int, int]) -> None:
    geometry = prepare(np.zeros((*shape, 3), dtype=np.uint8), MODES[mode]).geometry
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 1, (20, 4)) * [shape[1], shape[0], shape[1], shape[0]]
    boxes = np.concatenate([np.minimum(corners[:, :2], corners[:, 2:]), np.maximum(corners[:, :2], corners[:, 2:])], axis=1)
    np.testing.assert_allclose(geometry.to_source(geometry.to_tensor(boxes)), boxes, atol=1e-9)
    assert geometry.source_hw == shape


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_drawn_box_lands_where_the_geometry_says(mode: str) -> None:
    image = np.zeros((160, 200, 3), dtype=np.uint8)
    x1, y1, x2, y2 = BOX[0].astype(int)
    image[y1:y2, x1:x2] = 255
    prepared = prepare(image, MODES[mode])
    assert prepared.tensor.shape[:2] == prepared.geometry.tensor_hw
    white = np.argwhere(prepared.tensor[:, :, 0] > 127)
    found = [white[:, 1].min(), white[:, 0].min(), white[:, 1].max() + 1, white[:, 0].max() + 1]
    expected = prepared.geometry.to_tensor(BOX)[0]
    expected = np.clip(expected, 0, [prepared.geometry.tensor_hw[1], prepared.geometry.tensor_hw[0]] * 2)
    np.testing.assert_allclose(found, expected, atol=1.0)  # nearest resize: within a pixel


def test_padded_modes_keep_the_ratio_and_pad() -> None:
    letterbox = prepare(np.full((100, 200, 3), 255, dtype=np.uint8), MODES["letterbox"])
    assert letterbox.tensor.shape[:2] == (96, 96) and letterbox.geometry.scale == (0.48, 0.48)
    assert letterbox.geometry.offset == (24.0, 0.0)  # 48 rows of image, centred
    assert letterbox.tensor[:24].max() == 0 and letterbox.tensor[24:72].min() == 255
    keep = prepare(np.full((100, 300, 3), 255, dtype=np.uint8), MODES["keep-ratio"])
    assert keep.tensor.shape[:2] == (120, 120) and keep.geometry.scale == (0.4, 0.4)  # the longer side hits max_size
    assert keep.geometry.offset == (0.0, 0.0) and keep.tensor[40:].max() == 0


def test_padded_modes_take_no_crop_and_keep_ratio_needs_room() -> None:
    with pytest.raises(HarnessError, match="crops a letterbox image"):
        stack_from("s", {"resize_mode": "letterbox", "crop": 32}, "suite.toml")
    with pytest.raises(HarnessError, match="max_size 50 < resize_size 72"):
        stack_from("s", {"resize_mode": "keep-ratio", "crop": 0, "max_size": 50}, "suite.toml")
