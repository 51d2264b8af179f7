"""Colour paths: RGB uint8 pixels -> the pixels the model is fed.

The reference is plain RGB; each alternative (a channel-order slip, a YUV
round trip, ...) is one registry entry.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ColourPath = Callable[[np.ndarray], np.ndarray]
COLOUR_PATHS: dict[str, ColourPath] = {
    "rgb": lambda img: img,
    "bgr": lambda img: np.ascontiguousarray(img[..., ::-1]),
}
