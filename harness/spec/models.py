"""Model builders: a suite names a builder and a weights file; this makes the
eval-mode `torch.nn.Module`.

Builders are an import path (`package.module:function`) for a user's own model, or a
registry name: one registered from Python (`register_model`), or an alias of an import
path (the bundled demos' `demo-resnet`, `demo-detector`, in `harness.demo`).  Weights load without
executing code: safetensors, or a state dict through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import importlib
import pickle
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
}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def add(fn: ModelBuilder) -> ModelBuilder:
        MODEL_BUILDERS[name] = fn
        return fn

    return add


def resolve_builder(name: str) -> ModelBuilder:
    found = MODEL_BUILDERS.get(name, name)
    if callable(found):
        return found
    module_name, _, attr = found.partition(":")
    if not attr:
        raise HarnessError(f"unknown model builder '{name}'", f"use one of {sorted(MODEL_BUILDERS)} or 'package.module:function'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise HarnessError(f"cannot import model builder '{name}': {exc}", "check the [model] builder path in the suite") from exc


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


def build_model(builder: str, weights: Path, kwargs: dict[str, object]) -> nn.Module:
    """Build the model, load its weights strictly, and put it in eval mode."""
    model = resolve_builder(builder)(**kwargs)
    try:
        model.load_state_dict(load_state_dict(weights), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise HarnessError(f"weights {weights} do not fit builder '{builder}': {first}", "check [model] builder and weights") from exc
    return model.eval()
