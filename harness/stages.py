"""Stage attribution: which step of the data flow changed a sample.

Every sample is hashed after each stage (encoded bytes, decoded pixels,
pre-processed tensor, raw outputs, predictions) and goldens keep those
hashes.  When a run differs from its golden, the first stage whose hashes
differ is the cause ("decoded pixels differ for 37/500 samples: the decoder
changed; inference identical"); each later stage is blamed only for samples
whose input to that stage was still identical.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

STAGES = ("encoded", "decoded", "tensor", "outputs", "predictions")
LABELS = {
    "encoded": "encoded bytes",
    "decoded": "decoded pixels",
    "tensor": "pre-processed tensors",
    "outputs": "raw outputs",
    "predictions": "predictions",
}
CAUSES = {
    "encoded": "the dataset files changed",
    "decoded": "the decoder changed",
    "tensor": "the pre-processing stack changed",
    "outputs": "inference changed (model, runtime, precision or library)",
    "predictions": "post-processing changed",
}
SHORT = {"encoded": "dataset", "decoded": "decoder", "tensor": "pre-processing", "outputs": "inference", "predictions": "post-processing"}


def digest(value: bytes | np.ndarray) -> str:
    """Short content hash; arrays include dtype and shape, so a reshaped or recast array differs."""
    h = hashlib.blake2b(digest_size=8)
    if isinstance(value, np.ndarray):
        h.update(f"{value.dtype.str}{value.shape}".encode())
        value = np.ascontiguousarray(value).tobytes()
    h.update(value)
    return h.hexdigest()


def sample_digests(arrays: dict[str, np.ndarray]) -> tuple[str, ...]:
    """One hash per sample (row) over every array, in name order."""
    names = sorted(arrays)
    count = len(arrays[names[0]]) if names else 0
    return tuple(digest(b"".join(digest(arrays[name][i]).encode() for name in names)) for i in range(count))


@dataclass(frozen=True)
class Attribution:
    """Per stage: samples whose hash differs from the golden's, and those newly changed at that stage."""

    samples: int
    changed: dict[str, int]
    introduced: dict[str, int]
    missing: tuple[str, ...]  # stages the golden did not record

    @property
    def first(self) -> str | None:
        return next((s for s in STAGES if self.changed.get(s)), None)

    def message(self) -> str:
        if self.missing and not self.changed:
            return "the golden has no stage hashes: re-record it to get stage attribution"
        first = self.first
        if first is None:
            return f"all recorded stages identical for {self.samples} samples"
        later = [s for s in STAGES[STAGES.index(first) + 1 :] if s in self.introduced]
        tail = [f"{SHORT[s]} identical" if not self.introduced[s] else f"{SHORT[s]} changed {self.introduced[s]} more" for s in later]
        return f"{LABELS[first]} differ for {self.changed[first]}/{self.samples} samples: {CAUSES[first]}" + "".join(f"; {t}" for t in tail)

    def describe(self) -> dict[str, Any]:
        return {
            "first_changed_stage": self.first,
            "changed": self.changed,
            "introduced": self.introduced,
            "missing": list(self.missing),
            "message": self.message(),
        }


def attribute(recorded: dict[str, Sequence[str]], now: dict[str, Sequence[str]], samples: int) -> Attribution:
    """Compare per-sample stage hashes (same sample order on both sides)."""
    changed: dict[str, int] = {}
    introduced: dict[str, int] = {}
    previous: np.ndarray | None = None
    missing = []
    for stage in STAGES:
        if stage not in recorded or stage not in now:
            missing.append(stage)
            previous = None
            continue
        diff = np.array(recorded[stage]) != np.array(now[stage])
        changed[stage] = int(diff.sum())
        introduced[stage] = int((diff & ~previous).sum()) if previous is not None else changed[stage]
        previous = diff
    return Attribution(samples, changed, introduced, tuple(missing))
