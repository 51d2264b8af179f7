"""Decoders: encoded image bytes -> HxWx3 uint8 RGB pixels.

One registry entry per decoder; a stack names its decoder.  `exif` says
whether the EXIF orientation tag is applied (what a photo viewer shows) or
ignored (what many deployment pipelines do).  Pillow and OpenCV both use
libjpeg-turbo; where they differ is EXIF handling and colour conversion
details, which is what a stack comparison measures.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

Decoder = Callable[[bytes, bool], np.ndarray]
DECODERS: dict[str, Decoder] = {}


class DecodeError(ValueError):
    """The bytes are not a decodable image; the caller adds the file name."""


def register_decoder(name: str) -> Callable[[Decoder], Decoder]:
    def add(fn: Decoder) -> Decoder:
        DECODERS[name] = fn
        return fn

    return add


@register_decoder("pillow")
def decode_pillow(data: bytes, exif: bool) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(str(exc) or type(exc).__name__) from exc
    if exif:
        image = ImageOps.exif_transpose(image)
    return np.asarray(image.convert("RGB"))


@register_decoder("opencv")
def decode_opencv(data: bytes, exif: bool) -> np.ndarray:
    flags = cv2.IMREAD_COLOR if exif else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if pixels is None:
        raise DecodeError("OpenCV could not decode the bytes")
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
