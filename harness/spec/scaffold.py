"""A new suite for a user's own model: `harness init` writes the suite file and the image folder's manifest.

The suite is an ordinary suite file, commented, with the usual ImageNet-style reference stack for the input
size; the manifest lists every image of the folder (torchvision ImageFolder layout) with its sha256, so a
replaced or corrupted photo is caught.  Nothing is written over an existing file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import HarnessError
from harness.core.files import atomic_write
from harness.data.dataset import image_folder


@dataclass(frozen=True)
class NewSuite:
    """What `harness init` was told: the model (builder, weights, kwargs; or a ready ONNX file: builder None,
    weights the file), the images, the input size."""

    name: str
    builder: str | None
    weights: Path
    images: Path
    kwargs: dict[str, Any]
    input_size: int = 224
    calibration: str | None = None  # a split of the image folder to calibrate INT8 on ("calib" when it exists)


def _toml(value: Any) -> str:
    """A TOML value of the few kinds a suite needs (JSON's strings, numbers, booleans and lists are TOML's)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def _relative(path: Path, folder: Path) -> str:
    """`path` as the suite file writes it: relative to the suite's folder when inside it, else absolute."""
    path = path.resolve()
    return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else str(path)


def _model_table(new: NewSuite, folder: Path) -> str:
    if new.builder is None:
        return f"""onnx = {_toml(_relative(new.weights, folder))}   # a ready ONNX file; input and output names: the file's"""
    return f"""builder = {_toml(new.builder)}      # a registry name, or package.module:function (a module beside this file works)
weights = {_toml(_relative(new.weights, folder))}
kwargs = {_toml(new.kwargs)}
input_name = "input"
output_names = ["logits"]"""


def suite_text(new: NewSuite, manifest: str, folder: Path, classes: int) -> str:
    runtimes = (
        ["ort-fp32", "ort-fp16", "ov-fp32", "ov-fp16"]
        if new.builder is None
        else ["torch-fp32", "ort-fp32", "ort-fp16", "ov-fp32", "ov-fp16"]
    )
    if new.calibration:
        runtimes += ["ort-int8", "ov-int8"]
    resize = round(new.input_size / 0.875)
    calibration = (
        f"calibration_split = {_toml(new.calibration)}\n"
        if new.calibration
        else '# calibration_split = "calib"   # int8 runtimes need one\n'
    )
    return f"""# Written by `harness init`: a suite for your own model. Paths are relative to this file.
# Check the reference stack below against your training pre-processing: it is the usual ImageNet one.
name = {_toml(new.name)}
task = "classification"
description = "{new.builder or new.weights.name} on {classes} classes of {_relative(new.images, folder)}"

[model]
{_model_table(new, folder)}

[data]
manifest = {_toml(manifest)}   # or: image_folder = "..." (read directly, one sub-folder per class)
split = "eval"
{calibration}
[stack]
decoder = "pillow"
exif = true
colour = "rgb"
resize = "pillow-bilinear"
resize_size = {resize}
resize_mode = "shorter"
crop = {new.input_size}
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
layout = "nchw"

[golden]
dir = "golden/{new.name}"

[run]
reference = {_toml(runtimes[0])}
runtimes = {_toml(runtimes)}
batch_size = 16
"""


def write_new_suite(new: NewSuite, folder: Path) -> tuple[Path, Path]:
    """Write `<folder>/<name>.toml` and `<folder>/<name>.manifest.json`; returns their paths.  The manifest lists
    the images relative to the image folder's parent (manifest paths never leave their folder)."""
    folder = folder.resolve()
    suite_path, manifest_path = folder / f"{new.name}.toml", new.images.resolve().parent / f"{new.name}.manifest.json"
    for path in (suite_path, manifest_path):
        if path.exists():
            raise HarnessError(f"{path} exists", "choose another --name, or remove the file to write it anew")
    if not new.weights.is_file():
        what = "ONNX model" if new.builder is None else "weights file"
        raise HarnessError(f"{what} not found: {new.weights}", "pass --onnx FILE" if new.builder is None else "pass --weights FILE")
    splits: dict[str, list[dict[str, Any]]] = {}
    names: tuple[str, ...] = ()
    for split in ("eval", *([new.calibration] if new.calibration else [])):
        classes, entries = image_folder(new.images, split)
        if names and classes != names:
            raise HarnessError(f"{new.images}: split '{split}' has other classes than 'eval'", "give every split the same class folders")
        names = classes
        prefix = new.images.resolve().name
        splits[split] = [entry | {"file": f"{prefix}/{entry['file']}"} for entry in entries]
    manifest = {"schema_version": 1, "name": new.name, "classes": list(names), "splits": splits}
    atomic_write(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())
    atomic_write(suite_path, suite_text(new, _relative(manifest_path, folder), folder, len(names)).encode())
    return suite_path, manifest_path
