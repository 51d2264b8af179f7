"""Datasets: a JSON manifest listing each file with its label and sha256.

The sha256 catches a corrupt or replaced file before it silently changes a
number; a file without one is still decoded, and a decode failure names it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import HarnessError

TargetParser = Callable[[dict[str, Any], int], np.ndarray]


def class_label(entry: dict[str, Any], classes: int) -> np.ndarray:
    """A classification entry's target: its integer `label`."""
    label = entry.get("label")
    if isinstance(label, bool) or not isinstance(label, int):
        raise ValueError("needs an integer 'label'")
    if not 0 <= label < classes:
        raise ValueError(f"has label {label} outside 0..{classes - 1}")
    return np.array(label, dtype=np.int64)


@dataclass(frozen=True)
class Sample:
    """One annotated file of a split; `id` is its manifest path, `index` its position in the split, `target` what the
    task parsed from its entry (a class label, a padded box list)."""

    id: str
    path: Path
    target: np.ndarray
    sha256: str | None
    index: int = 0

    @property
    def label(self) -> int:
        """The class label of a classification sample."""
        return int(self.target)


@dataclass(frozen=True)
class Dataset:
    manifest: Path
    manifest_sha256: str
    classes: tuple[str, ...]
    split: str
    samples: tuple[Sample, ...]


def load_dataset(manifest: Path, split: str, target: TargetParser = class_label) -> Dataset:
    """Read one split of a manifest; each entry's target is parsed by the task (`target`); every problem names
    the manifest or the file."""
    if not manifest.is_file():
        raise HarnessError(f"dataset manifest not found: {manifest}", "fix [data] manifest in the suite")
    raw = manifest.read_bytes()
    try:
        data = json.loads(raw)
        classes = tuple(str(c) for c in data["classes"])
        entries = data["splits"][split]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{manifest}: not valid JSON: {exc}", "fix or regenerate the manifest") from exc
    except KeyError as exc:
        raise HarnessError(f"{manifest}: missing key {exc}", "a manifest needs 'classes' and 'splits' with the requested split") from exc
    except TypeError as exc:
        raise HarnessError(f"{manifest}: malformed manifest ({exc})", "'classes' is a list of names, 'splits' maps names to lists") from exc
    if not isinstance(entries, list):
        raise HarnessError(f"{manifest}: split '{split}' is not a list of entries", "each split is a list of {file, label, sha256?}")
    root = manifest.parent.resolve()
    samples = []
    for index, entry in enumerate(entries):
        try:
            rel, sha256 = entry["file"], entry.get("sha256")
            if not isinstance(rel, str) or not isinstance(sha256, str | None):
                raise TypeError
        except (KeyError, TypeError, AttributeError) as exc:
            raise HarnessError(
                f"{manifest}: bad entry {entry!r}"[:300], "entries need a string 'file' and an optional string 'sha256'"
            ) from exc
        try:
            parsed = target(entry, len(classes))
        except ValueError as exc:
            raise HarnessError(f"{manifest}: {rel} {exc}", "fix the entry's annotation in the manifest") from exc
        samples.append(Sample(id=rel, path=confined(root, rel, manifest), target=parsed, sha256=sha256, index=index))
    if not samples:
        raise HarnessError(f"{manifest}: split '{split}' is empty")
    return Dataset(
        manifest=manifest,
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
        classes=classes,
        split=split,
        samples=tuple(samples),
    )


def confined(root: Path, rel: str, manifest: Path) -> Path:
    """`root / rel`, refused when it is absolute or leaves the dataset folder (`..`, or a symlink pointing out)."""
    path = root / rel
    try:
        inside = not Path(rel).is_absolute() and path.resolve().is_relative_to(root)
    except (OSError, ValueError):  # a NUL byte, a symlink loop
        inside = False
    if not inside:
        raise HarnessError(
            f"{manifest}: entry '{rel}' points outside the dataset folder {root}",
            "manifest paths must be relative and stay inside the manifest's folder",
        )
    return path


def read_sample(sample: Sample) -> bytes:
    """The file's bytes, checked against the manifest's sha256 when it has one."""
    try:
        data = sample.path.read_bytes()
    except OSError as exc:
        raise HarnessError(f"cannot read {sample.path}: {exc.strerror}", "restore the file or remove it from the manifest") from exc
    if sample.sha256 and hashlib.sha256(data).hexdigest() != sample.sha256:
        raise HarnessError(
            f"{sample.path}: sha256 differs from the manifest (file corrupt or replaced)",
            "restore the original file, or update its sha256 in the manifest if the change is intended",
        )
    return data
