"""Decoders: encoded image bytes -> HxWx3 uint8 RGB pixels.

One registry entry per decoder; a stack names its decoder.  `exif` says
whether the EXIF orientation tag is applied (what a photo viewer shows) or
ignored (what many deployment pipelines do).  `min_side` is the shorter side
the rest of the stack needs; only DCT-domain scaling (Pillow draft) uses it.

Pillow, OpenCV and simplejpeg (accurate mode) all wrap libjpeg-turbo with the
same settings and give bit-identical pixels; the real differences come from
FFmpeg's colour conversion (PyAV), libjpeg-turbo's fast DCT / fast chroma
upsampling, DCT-domain downscaling, nvJPEG, and EXIF handling.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable
from functools import partial
from typing import Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from harness.core.devices import device_missing
from harness.core.lazy import lazy_import

cv2 = lazy_import("cv2")  # OpenCV loads when an image is first decoded or resized with it


class Decoder(Protocol):
    def __call__(self, data: bytes, exif: bool, min_side: int = 0) -> np.ndarray: ...


DECODERS: dict[str, Decoder] = {}
# Decoders that need hardware or an optional library: name -> probe giving the reason it cannot run, or None.
DECODER_PROBES: dict[str, Callable[[], str | None]] = {}
# Decoders that read only some formats (Pillow's format names); the others read whatever Pillow identifies.
DECODER_FORMATS: dict[str, frozenset[str]] = {}
EXIF_ORIENTATION = 0x0112


class DecodeError(ValueError):
    """The bytes are not a decodable image; the caller adds the file name."""


def register_decoder(
    name: str, probe: Callable[[], str | None] | None = None, formats: frozenset[str] | None = None
) -> Callable[[Decoder], Decoder]:
    def add(fn: Decoder) -> Decoder:
        DECODERS[name] = fn
        if probe:
            DECODER_PROBES[name] = probe
        if formats:
            DECODER_FORMATS[name] = formats
        return fn

    return add


def decoder_unavailable(name: str) -> str | None:
    """Why decoder `name` cannot run on this machine, or None when it can."""
    probe = DECODER_PROBES.get(name)
    return probe() if probe else None


def _open_pillow(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(str(exc) or type(exc).__name__) from exc


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1-8; 1 = upright) read from the header without decoding pixels."""
    return int(_open_pillow(data).getexif().get(EXIF_ORIENTATION, 1))


# Orientation tag -> numpy transform giving the upright image (same result as PIL.ImageOps.exif_transpose).
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def upright(pixels: np.ndarray, data: bytes, exif: bool) -> np.ndarray:
    """Apply the EXIF orientation of `data` to pixels decoded without it (decoders that ignore EXIF)."""
    if not exif:
        return pixels
    transform = _UPRIGHT.get(exif_orientation(data))
    return np.ascontiguousarray(transform(pixels)) if transform else pixels


def _load_pillow(image: Image.Image, exif: bool) -> Image.Image:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(str(exc) or type(exc).__name__) from exc
    if exif:
        ImageOps.exif_transpose(image, in_place=True)
    return image if image.mode == "RGB" else image.convert("RGB")


def _pillow_opened(image: Image.Image, exif: bool, min_side: int = 0) -> Image.Image:
    return _load_pillow(image, exif)


def _pillow_draft_opened(image: Image.Image, exif: bool, min_side: int = 0) -> Image.Image:
    if min_side:
        image.draft("RGB", (min_side, min_side))
    return _load_pillow(image, exif)


# Decoders that can start from the Pillow image the intake already opened on the bytes (header read once); they
# return the decoded RGB image as Pillow holds it, so a Pillow resize takes it without a copy to numpy and back.
FROM_OPENED: dict[str, Callable[[Image.Image, bool, int], Image.Image]] = {"pillow": _pillow_opened, "pillow-draft": _pillow_draft_opened}


@register_decoder("pillow")
def decode_pillow(data: bytes, exif: bool, min_side: int = 0) -> np.ndarray:
    return np.asarray(_pillow_opened(_open_pillow(data), exif, min_side))


@register_decoder("pillow-draft")
def decode_pillow_draft(data: bytes, exif: bool, min_side: int = 0) -> np.ndarray:
    """JPEG DCT-domain downscaling by 1/2, 1/4 or 1/8 while both sides stay >= min_side (a fast-thumbnail path)."""
    return np.asarray(_pillow_draft_opened(_open_pillow(data), exif, min_side))


@register_decoder("opencv")
def decode_opencv(data: bytes, exif: bool, min_side: int = 0) -> np.ndarray:
    """cv2.imdecode applies EXIF orientation itself unless told to ignore it."""
    flags = cv2.IMREAD_COLOR if exif else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if pixels is None:
        raise DecodeError("OpenCV could not decode the bytes")
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def _module_missing(module: str, package: str) -> Callable[[], str | None]:
    """A probe: why a decoder that imports `module` (pip package `package`) cannot run, or None when it is installed."""

    def probe() -> str | None:
        return None if importlib.util.find_spec(module) else f"python module {module} not installed (pip install {package})"

    return probe


@register_decoder("pyav", probe=_module_missing("av", "av"))
def decode_pyav(data: bytes, exif: bool, min_side: int = 0) -> np.ndarray:
    """FFmpeg's decoder through PyAV: YUV planes converted to RGB by swscale (its own chroma upsampling and rounding)."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            frame = next(container.decode(video=0))
            pixels = frame.to_ndarray(format="rgb24")
    except av.error.ExitError as exc:  # FFmpeg's interrupt callback saw a pending Ctrl-C: not a bad file
        raise KeyboardInterrupt from exc
    except (av.FFmpegError, StopIteration, ValueError) as exc:
        raise DecodeError(f"FFmpeg could not decode the bytes ({exc})") from exc
    return upright(pixels, data, exif)


def _decode_simplejpeg(data: bytes, exif: bool, min_side: int = 0, fast: bool = False) -> np.ndarray:
    import simplejpeg

    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=fast, fastupsample=fast)
    except ValueError as exc:
        raise DecodeError(f"libjpeg-turbo could not decode the bytes ({exc})") from exc
    return upright(pixels, data, exif)


JPEG_ONLY = frozenset({"JPEG", "MPO"})
register_decoder("simplejpeg", _module_missing("simplejpeg", "simplejpeg"), JPEG_ONLY)(partial(_decode_simplejpeg, fast=False))
register_decoder("simplejpeg-fast", _module_missing("simplejpeg", "simplejpeg"), JPEG_ONLY)(partial(_decode_simplejpeg, fast=True))


def _cuda_missing() -> str | None:
    missing = device_missing("cuda")
    if missing:
        return f"nvjpeg needs a CUDA device: {missing}"
    import torch

    return None if torch.cuda.is_available() else "nvjpeg needs a CUDA device (PyTorch sees none)"


@register_decoder("nvjpeg", probe=_cuda_missing, formats=JPEG_ONLY)
def decode_nvjpeg(data: bytes, exif: bool, min_side: int = 0) -> np.ndarray:
    """nvJPEG on the GPU through torchvision.io.decode_jpeg(device='cuda')."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB, device="cuda")
    except RuntimeError as exc:
        raise DecodeError(f"nvJPEG could not decode the bytes ({str(exc).splitlines()[0]})") from exc
    return upright(image.permute(1, 2, 0).cpu().numpy(), data, exif)
