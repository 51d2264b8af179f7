"""Image intake: one policy, applied before any decoder, for what a dataset file may be.

Decoders disagree silently on anything but 8-bit RGB or grayscale images
(Pillow clips 16-bit grayscale to 255, OpenCV divides it by 256; their CMYK
conversions differ by a level), so the harness reads the header once and:

| source | rule | counted in the report as |
| --- | --- | --- |
| 8-bit RGB/YCbCr or grayscale (JPEG, PNG, ...) | decoded by the stack's decoder | - |
| over `max_pixels` pixels (default Pillow's 89,478,485) | refused before any decoder allocates it | - |
| a side under `min_side` pixels (default 2: a 1x1 tracking pixel) | refused | - |
| 16 bits per channel (grayscale or RGB PNG/TIFF) | value x 255 / 65535, rounded | `16-bit` |
| alpha (LA, RGBA, palette with transparency) | alpha dropped, colour channels kept | `alpha` |
| palette (P) without transparency | palette expanded | `palette` |
| CMYK (and YCCK) JPEG | Pillow's CMYK to RGB | `cmyk` |
| 1-bit | 0 -> 0, 1 -> 255 | `1-bit` |
| several frames (GIF, TIFF, APNG) | first frame | `multi-frame` |

Converted images bypass the stack's decoder (every decoder setting gives the
same pixels for them); EXIF orientation is honoured as the stack says.  A
format the stack's decoder cannot read (a PNG for `simplejpeg`) is
`DecoderNotApplicable`: an error for `harness run`, a note in `harness matrix`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from harness.core.errors import first_line
from harness.core.lazy import lazy_import
from harness.data.decoders import DecodeError, upright

cv2 = lazy_import("cv2")  # OpenCV loads when an image is first decoded or resized with it

Image.MAX_IMAGE_PIXELS = None  # sizes are checked here, by the policy, for every decoder alike

SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}


@dataclass(frozen=True)
class IntakePolicy:
    max_pixels: int = 89_478_485  # Pillow's default decompression-bomb limit
    min_side: int = 2


@dataclass(frozen=True)
class Header:
    format: str
    mode: str
    width: int
    height: int
    frames: int
    sixteen_bit: bool
    transparency: bool


def read_header(data: bytes) -> Header:
    """Format, mode, size and frame count from the file header (no pixels decoded)."""
    return open_header(data)[0]


REOPENABLE = frozenset({"JPEG", "PNG"})  # formats whose header read leaves the opened image as fresh (no frame seeks)


def open_header(data: bytes) -> tuple[Header, Image.Image | None]:
    """The header of the bytes in memory, and the opened Pillow image when a decoder may go on from it
    (`decoders.FROM_OPENED`; None for formats whose frame count moved it)."""
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(first_line(exc)) from exc
    rawmode = image.tile[0][3] if image.tile and isinstance(image.tile[0][3], str) else ""
    header = Header(
        format=image.format or "unknown",
        mode=image.mode,
        width=image.width,
        height=image.height,
        frames=int(getattr(image, "n_frames", 1)),
        sixteen_bit=image.mode in SIXTEEN_BIT_MODES or ";16" in rawmode,
        transparency="transparency" in image.info,
    )
    return header, image if header.format in REOPENABLE else None


def conversion(header: Header) -> str | None:
    """The intake rule for this image, or None when the stack's decoder reads it as it is."""
    if header.frames > 1:
        return "multi-frame"
    if header.sixteen_bit:
        return "16-bit"
    if header.mode in ALPHA_MODES or (header.mode == "P" and header.transparency):
        return "alpha"
    return {"P": "palette", "CMYK": "cmyk", "1": "1-bit"}.get(header.mode)


def check(header: Header, policy: IntakePolicy) -> str | None:
    """Why the policy refuses this image, or None."""
    pixels = header.width * header.height
    if pixels > policy.max_pixels:
        return f"{header.width}x{header.height} = {pixels:,} pixels is over the limit of {policy.max_pixels:,}"
    if min(header.width, header.height) < policy.min_side:
        return f"{header.width}x{header.height} pixels is smaller than {policy.min_side} px on a side"
    return None


def convert(data: bytes, kind: str, exif: bool) -> np.ndarray:
    """RGB uint8 pixels of an image that needs an intake rule (see the module table)."""
    if kind == "16-bit":
        raw = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        if raw is None:
            raise DecodeError("OpenCV could not decode the 16-bit image")
        if raw.ndim == 2:
            raw = raw[:, :, None].repeat(3, axis=2)
        raw = cv2.cvtColor(raw[:, :, :3], cv2.COLOR_BGR2RGB)
        scaled = np.rint(raw.astype(np.float64) * (255.0 / 65535.0)) if raw.dtype == np.uint16 else raw
        return upright(np.clip(scaled, 0, 255).astype(np.uint8), data, exif)
    try:
        image = Image.open(io.BytesIO(data))
        image.seek(0)
        image.load()
        if exif:
            image = ImageOps.exif_transpose(image)
        rgb = image.convert("RGBA").convert("RGB") if kind == "alpha" else image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(first_line(exc)) from exc
    return np.asarray(rgb)
