"""Datasets: a JSON manifest listing each file with its label and sha256 (or an image folder; COCO and YOLO
annotations are read by `harness.data.formats` into the same `Dataset`).

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
from harness.core.hashing import read_hashed, sha256_file

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
    """One annotated file of a split; `id` is its path relative to the dataset folder (a manifest's path), `index` its
    position in the split, `target` what the task parsed from its entry (a class label, a padded box list)."""

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
    manifest: Path  # the annotation file: a manifest, an image folder, a COCO instances file, a YOLO data.yaml
    manifest_sha256: str
    classes: tuple[str, ...]
    split: str
    samples: tuple[Sample, ...]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _split_folder(root: Path, split: str) -> Path:
    """The folder of one split of an image folder: `root/<split>/` when it exists, else `root` itself."""
    return root / split if (root / split).is_dir() else root


def _class_folders(base: Path) -> tuple[str, ...]:
    """The class names of a split's folder: its sub-folders (hidden ones aside), sorted; index = label."""
    return tuple(sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")))


def image_folder(root: Path, split: str) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """The classes and manifest entries ({file, label, sha256}, files relative to `root`) of an image folder in
    torchvision's ImageFolder layout: one sub-folder per class.  `root/<split>/` is the split when it exists;
    otherwise a folder of class folders alone is the `eval` split (and no other: INT8 never calibrates on it)."""
    if not root.is_dir():
        raise HarnessError(f"image folder not found: {root}", "fix [data] image_folder in the suite")
    base = _split_folder(root, split)
    if base == root and split != "eval":
        raise HarnessError(f"{root}: no folder '{split}' with one sub-folder per class", f"add {root / split}/<class>/<image> files")
    classes = _class_folders(base)
    entries = [
        {"file": path.relative_to(root).as_posix(), "label": label, "sha256": sha256_file(path)}
        for label, name in enumerate(classes)
        for path in sorted((base / name).rglob("*"))
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not entries:
        raise HarnessError(f"{base}: no images ({', '.join(IMAGE_SUFFIXES)}) in class sub-folders", "one sub-folder per class")
    return classes, entries


def class_names(manifest: Path) -> tuple[str, ...]:
    """The class names of a manifest (or image folder) without reading its splits or hashing its files; () when
    it has none to give."""
    if manifest.is_dir():
        return _class_folders(_split_folder(manifest, "eval"))
    try:
        return tuple(str(c) for c in json.loads(manifest.read_bytes())["classes"])
    except (OSError, ValueError, KeyError, TypeError):
        return ()


def load_dataset(manifest: Path, split: str, target: TargetParser = class_label) -> Dataset:
    """Read one split of a manifest (or of an image folder, `image_folder`); each entry's target is parsed by the
    task (`target`); every problem names the manifest or the file."""
    if manifest.is_dir():
        classes, entries = image_folder(manifest, split)
        listing = json.dumps({"classes": classes, "splits": {split: entries}}, sort_keys=True).encode()
        return dataset_of(manifest, listing, classes, split, entries, target, manifest.resolve())
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
    return dataset_of(manifest, raw, classes, split, entries, target, manifest.parent.resolve())


def dataset_of(
    manifest: Path, raw: bytes, classes: tuple[str, ...], split: str, entries: list[Any], target: TargetParser, root: Path
) -> Dataset:
    """The samples of `entries` ({file, sha256?, the task's annotation keys}), files relative to `root`; the dataset's
    identity is the sha256 of `raw` (the annotations as read)."""
    samples = []
    seen: dict[str, int] = {}  # file -> its first entry: a sample's id is its file, goldens and attribution key on it
    for index, entry in enumerate(entries):
        try:
            rel, sha256 = entry["file"], entry.get("sha256")
            if not isinstance(rel, str) or not isinstance(sha256, str | None):
                raise TypeError
        except (KeyError, TypeError, AttributeError) as exc:
            raise HarnessError(
                f"{manifest}: bad entry {entry!r}"[:300], "entries need a string 'file' and an optional string 'sha256'"
            ) from exc
        if rel in seen:
            raise HarnessError(
                f"{manifest}: split '{split}' lists {rel} twice (entries {seen[rel]} and {index})",
                "list each file once (the sample would count twice and two samples would share one id)",
            )
        seen[rel] = index
        try:
            parsed = target(entry, len(classes))
        except ValueError as exc:
            raise HarnessError(f"{manifest}: {rel} {exc}", f"fix its annotation in {manifest.name}") from exc
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
    return read_sample_hashed(sample)[0]


def read_sample_hashed(sample: Sample) -> tuple[bytes, str]:
    """The file's bytes and their `digest` (the encoded stage's hash), both hashes taken in the one read;
    checked against the manifest's sha256 when it has one."""
    try:
        data, sha256, short = read_hashed(sample.path, sha256=bool(sample.sha256))
    except OSError as exc:
        raise HarnessError(f"cannot read {sample.path}: {exc.strerror}", "restore the file or remove it from the manifest") from exc
    if sample.sha256 and sha256 != sample.sha256:
        raise HarnessError(
            f"{sample.path}: sha256 differs from the manifest (file corrupt or replaced)",
            "restore the original file, or update its sha256 in the manifest if the change is intended",
        )
    return data, short
