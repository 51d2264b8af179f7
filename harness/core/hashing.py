"""Content hashes: files (sha256, the identity of weights, manifests and artifacts) and arrays (XXH3, every
sample's bytes after each stage of the data flow)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import xxhash


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_hashed(path: Path, sha256: bool = True, chunk: int = 1 << 18) -> tuple[bytes, str | None, str]:
    """A file's bytes with, in the same pass over each chunk while it is in cache, its sha256 (None unless asked)
    and its `digest`: the same hex strings as `sha256_file(path)` and `digest(bytes)` computed separately."""
    strong = hashlib.sha256() if sha256 else None
    short = xxhash.xxh3_64()
    parts = []
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            short.update(block)
            if strong is not None:
                strong.update(block)
            parts.append(block)
    return b"".join(parts) if len(parts) != 1 else parts[0], strong.hexdigest() if strong else None, short.hexdigest()


def digest(value: bytes | np.ndarray) -> str:
    """Short content hash (XXH3, 64 bits: every sample's decoded pixels are hashed, so it must cost next to
    nothing); arrays include dtype and shape, so a reshaped or recast array differs."""
    if isinstance(value, np.ndarray):  # the bytes, not a copy of them
        return array_digest(value.dtype.str, value.shape, np.ascontiguousarray(value).reshape(-1).view(np.uint8))
    return xxhash.xxh3_64_hexdigest(value)


def array_digest(dtype: str, shape: tuple[int, ...], data: bytes | np.ndarray) -> str:
    """`digest` of an array given as its dtype string, shape and C-order bytes (pixels still in an image object)."""
    h = xxhash.xxh3_64()
    h.update(f"{dtype}{shape}".encode())
    h.update(data)
    return h.hexdigest()


def sample_digests(arrays: dict[str, np.ndarray]) -> tuple[str, ...]:
    """One hash per sample (row) over every array, in name order."""
    names = sorted(arrays)
    count = len(arrays[names[0]]) if names else 0
    return tuple(digest(b"".join(digest(arrays[name][i]).encode() for name in names)) for i in range(count))
