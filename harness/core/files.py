"""Atomic file writes (a reader sees the old file or the new one, never half of one) and npz archives written fast
and reproducibly."""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

NPZ_LEVEL = 1  # `npz_bytes`'s default deflate level: a run's float outputs shrink little more at numpy's 6, at 4x the time
NPZ_TIME = (1980, 1, 1, 0, 0, 0)  # every member's timestamp, as numpy's writer sets it: the same arrays give the same bytes


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def npz_bytes(arrays: dict[str, np.ndarray], level: int = NPZ_LEVEL) -> bytes:
    """`numpy.savez_compressed`'s format (read back by `numpy.load`), deflated at `level` with fixed member
    timestamps: a run's 72 MB of detection outputs took 4.7 s at numpy's level 6, 1.1 s at 1, for 37 MB instead of
    35 (files kept in git, goldens, are worth level 6)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", NPZ_TIME), member.getvalue(), zipfile.ZIP_DEFLATED, level)
    return buffer.getvalue()
