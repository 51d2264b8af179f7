"""Datasets: a JSON manifest listing each file with its label and sha256.

The sha256 catches a corrupt or replaced file before it silently changes a
number; a file without one is still decoded, and a decode failure names it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError


@dataclass(frozen=True)
class Sample:
    """One labelled file of a split; `id` is its manifest path, `index` its position in the split."""

    id: str
    path: Path
    label: int
    sha256: str | None
    index: int = 0


@dataclass(frozen=True)
class Dataset:
    manifest: Path
    manifest_sha256: str
    classes: tuple[str, ...]
    split: str
    samples: tuple[Sample, ...]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_dataset(manifest: Path, split: str) -> Dataset:
    """Read one split of a manifest; every problem names the manifest or the file."""
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
            rel, label, sha256 = entry["file"], entry["label"], entry.get("sha256")
            if not isinstance(rel, str) or isinstance(label, bool) or not isinstance(label, int) or not isinstance(sha256, str | None):
                raise TypeError
        except (KeyError, TypeError) as exc:
            raise HarnessError(
                f"{manifest}: bad entry {entry!r}"[:300], "entries need a string 'file', an integer 'label', an optional string 'sha256'"
            ) from exc
        if not 0 <= label < len(classes):
            raise HarnessError(f"{manifest}: {rel} has label {label} outside 0..{len(classes) - 1}")
        samples.append(Sample(id=rel, path=confined(root, rel, manifest), label=label, sha256=sha256, index=index))
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
