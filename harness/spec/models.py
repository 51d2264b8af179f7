"""Model builders: a suite names a builder and a weights file; this makes the
eval-mode `torch.nn.Module`.

Builders are an import path (`package.module:function`) for a user's own model, or a
registry name: one registered from Python (`register_model`), or an alias of an import
path (the bundled demos' `demo-resnet`, `demo-detector`, `demo-yolo`, `demo-segmenter`, in `harness.demo`).  Weights load without
executing code: safetensors, or a state dict through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import importlib
import pickle
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from harness.core.errors import HarnessError, first_line

ModelBuilder = Callable[..., nn.Module]
MODEL_BUILDERS: dict[str, ModelBuilder | str] = {  # a builder, or the import path of one (imported when a suite names it)
    "demo-resnet": "harness.demo.models:build_demo_resnet",
    "demo-detector": "harness.demo.models:build_demo_detector",
    "demo-yolo": "harness.demo.models:build_demo_yolo",
    "demo-segmenter": "harness.demo.models:build_demo_segmenter",
}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def add(fn: ModelBuilder) -> ModelBuilder:
        MODEL_BUILDERS[name] = fn
        return fn

    return add


def resolve_builder(name: str, folder: Path | None = None) -> ModelBuilder:
    """The builder a suite names; a `module:function` path is looked up in `folder` (the suite file's) first."""
    found = MODEL_BUILDERS.get(name, name)
    if callable(found):
        return found
    module_name, _, attr = found.partition(":")
    if not attr:
        raise HarnessError(f"unknown model builder '{name}'", f"use one of {sorted(MODEL_BUILDERS)} or 'package.module:function'")
    searched = [str(folder)] if folder is not None and str(folder) not in sys.path else []
    sys.path[:0] = searched
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        where = f" beside the suite ({folder})" if folder is not None else ""
        raise HarnessError(
            f"cannot import model builder '{name}': {first_line(exc)}",
            f"put {module_name.split('.')[0]}.py{where}, or install its package (pip install -e), or fix [model] builder",
        ) from exc
    finally:
        for entry in searched:
            sys.path.remove(entry)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise HarnessError(f"weights file not found: {path}", "fix [model] weights in the suite")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's protocol warnings on files it then refuses anyway
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise HarnessError(
            f"cannot read weights {path}: it pickles objects other than tensors (code, classes); refused, nothing was executed",
            "save a plain state dict (torch.save(model.state_dict())) or safetensors from a trusted environment",
        ) from exc
    except Exception as exc:
        raise HarnessError(
            f"cannot read weights {path}: {first_line(exc)}", "re-export the weights as safetensors or a plain state dict"
        ) from exc


def mismatch(model: nn.Module, state: dict[str, torch.Tensor], shown: int = 3) -> str:
    """How a state dict differs from a model's: the first keys missing, unexpected or of another shape, with shapes."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    given = {key: tuple(value.shape) for key, value in state.items()}
    parts = []
    for what, keys in (
        ("shape differs", [k for k in expected if k in given and expected[k] != given[k]]),
        ("missing in the weights", [k for k in expected if k not in given]),
        ("not in the model", [k for k in given if k not in expected]),
    ):
        if keys:
            listed = ", ".join(
                f"{k} {list(given[k])} in the weights vs {list(expected[k])} in the model"
                if what == "shape differs"
                else f"{k} {list(expected.get(k) or given[k])}"
                for k in keys[:shown]
            )
            more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
            parts.append(f"{len(keys)} {what}: {listed}{more}")
    return "; ".join(parts)


def build_model(builder: str, weights: Path, kwargs: dict[str, object], folder: Path | None = None) -> nn.Module:
    """Build the model, load its weights strictly, and put it in eval mode."""
    model = resolve_builder(builder, folder)(**kwargs)
    state = load_state_dict(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        reason = mismatch(model, state) or first_line(exc)
        raise HarnessError(
            f"weights {weights} do not fit builder '{builder}': {reason}", "check [model] builder, kwargs and weights"
        ) from exc
    return model.eval()
