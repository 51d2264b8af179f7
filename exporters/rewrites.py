"""Model-inference variants: one ONNX graph rewrite and its PyTorch twin each.

Deployment runtimes disagree with training frameworks on a few op settings
(SysNoise): max-pool ceil mode, nearest vs bilinear upsampling, the coordinate
transformation of a resize (half-pixel centres, align-corners, asymmetric:
TensorRT once defaulted to asymmetric where PyTorch uses half-pixel) and the
rounding of a nearest resize (ONNX round_prefer_floor vs floor: PyTorch's
nearest-exact vs nearest).  A variant
rewrites the exported FP32 ONNX once (every runtime then consumes the
rewritten file and its FP16/INT8 derivatives) and patches the PyTorch modules
the same way, so torch runtimes run the variant too and the rewrite is
validated against what PyTorch computes with that setting.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.core.errors import HarnessError

if TYPE_CHECKING:  # onnx and torch are imported when a variant is applied, not when the registry is listed
    import onnx
    from torch import nn


class VariantNotApplicable(HarnessError):
    """The model has no op the variant changes (e.g. no Resize node for an upsample variant)."""


@dataclass(frozen=True)
class ModelVariant:
    name: str
    description: str
    rewrite_node: Callable[[onnx.NodeProto], bool]  # changes one ONNX node in place; True when it did
    patch_module: Callable[[nn.Module], bool]  # changes one PyTorch module in place; True when it did
    # functional calls the twin reroutes: F.interpolate with this mode -> these keyword values
    interpolate: tuple[str, dict[str, Any]] | None = None
    interpolate_as: Callable[..., Any] | None = None  # or -> this function (a resize PyTorch has no mode for)


MODEL_VARIANTS: dict[str, ModelVariant] = {}


def register_variant(variant: ModelVariant) -> ModelVariant:
    MODEL_VARIANTS[variant.name] = variant
    return variant


def _set_attributes(op_type: str, when: dict[str, Any], values: dict[str, Any], node: onnx.NodeProto) -> bool:
    """Set `values` on `node` if it is an `op_type` whose attributes match `when` (ONNX defaults apply when absent)."""
    from onnx import helper

    if node.op_type != op_type:
        return False
    current = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    current = {k: v.decode() if isinstance(v, bytes) else v for k, v in current.items()}
    if any(current.get(k, default) != v for k, (v, default) in when.items()):  # type: ignore[misc]
        return False
    kept = [a for a in node.attribute if a.name not in values]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(k, v) for k, v in values.items()])
    return True


def _set_module(kind: str, when: dict[str, Any], values: dict[str, Any], module: nn.Module) -> bool:
    from torch import nn

    if not isinstance(module, getattr(nn, kind)) or any(getattr(module, k) != v for k, v in when.items()):
        return False
    for key, value in values.items():
        setattr(module, key, value)
    return True


# name, description, (ONNX op, attributes required, attributes set), (torch.nn class name, attributes required, attributes set).
# A required ONNX attribute is (value, the ONNX default when the attribute is absent).
# Upsample variants also reroute functional F.interpolate calls of that mode (most detectors' FPN uses them).
_ATTRIBUTE_VARIANTS: list[tuple[Any, ...]] = [
    (
        "maxpool-ceil",
        "MaxPool with ceil_mode=1 on a floor-mode model (output sizes round up)",
        ("MaxPool", {"ceil_mode": (0, 0)}, {"ceil_mode": 1}),
        ("MaxPool2d", {"ceil_mode": False}, {"ceil_mode": True}),
    ),
    (
        "maxpool-floor",
        "MaxPool with ceil_mode=0 on a ceil-mode model",
        ("MaxPool", {"ceil_mode": (1, 0)}, {"ceil_mode": 0}),
        ("MaxPool2d", {"ceil_mode": True}, {"ceil_mode": False}),
    ),
    (
        "upsample-linear",
        "nearest Resize/Upsample run as bilinear (half-pixel centres, PyTorch align_corners=False)",
        ("Resize", {"mode": ("nearest", "nearest")}, {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}),
        ("Upsample", {"mode": "nearest"}, {"mode": "bilinear", "align_corners": False}),
        ("nearest", {"mode": "bilinear", "align_corners": False}),
    ),
    (
        "upsample-nearest",
        "bilinear Resize/Upsample run as nearest (PyTorch's floor rounding, asymmetric coordinates)",
        (
            "Resize",
            {"mode": ("linear", "nearest")},
            {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
        ),
        ("Upsample", {"mode": "bilinear"}, {"mode": "nearest", "align_corners": None}),
        ("bilinear", {"mode": "nearest", "align_corners": None}),
    ),
]


def resize_asymmetric(x: Any, size: Any = None, scale_factor: Any = None, **_options: Any) -> Any:
    """Bilinear resize with ONNX's `asymmetric` coordinates (source = destination * in / out, no half-pixel shift;
    clamped at the far edge), which PyTorch has no mode for: the twin of `resize-asymmetric`."""
    import torch

    spatial = x.shape[2:]
    if size is None:
        factors = scale_factor if isinstance(scale_factor, tuple | list) else [scale_factor] * len(spatial)
        size = [int(n * f) for n, f in zip(spatial, factors, strict=True)]
    size = [size] * len(spatial) if isinstance(size, int) else list(size)
    out = x
    for axis, (before, after) in enumerate(zip(spatial, size, strict=True)):
        dim = 2 + axis
        source = torch.arange(after, dtype=torch.float64) * (before / after)
        low = source.floor().clamp(max=before - 1).long()
        high = (low + 1).clamp(max=before - 1)
        shape = [1] * x.dim()
        shape[dim] = after
        t = (source - low).clamp(max=1.0).to(x.dtype).reshape(shape)
        out = out.index_select(dim, low) * (1 - t) + out.index_select(dim, high) * t
    return out


@cache
def _asymmetric_upsample_class() -> type:
    from torch import nn

    class AsymmetricUpsample(nn.Upsample):
        """nn.Upsample(mode="bilinear") run with asymmetric coordinates (`resize_asymmetric`)."""

        def forward(self, x: Any) -> Any:
            return resize_asymmetric(x, self.size, self.scale_factor)

    return AsymmetricUpsample


def _asymmetric_upsample(module: nn.Module) -> bool:
    """A bilinear nn.Upsample becomes an `AsymmetricUpsample` (the class swapped: it survives deepcopy and .to())."""
    from torch import nn

    if type(module) is not nn.Upsample or module.mode != "bilinear":
        return False
    module.__class__ = _asymmetric_upsample_class()
    return True


_LINEAR = {"mode": ("linear", "nearest")}
_NEAREST = {"mode": ("nearest", "nearest")}
_ATTRIBUTE_VARIANTS += [
    (
        "resize-half-pixel",
        "bilinear Resize with half_pixel coordinates (ONNX's default; PyTorch align_corners=False)",
        ("Resize", _LINEAR, {"coordinate_transformation_mode": "half_pixel"}),
        ("Upsample", {"mode": "bilinear"}, {"align_corners": False}),
        ("bilinear", {"align_corners": False}),
    ),
    (
        "resize-pytorch-half-pixel",
        "bilinear Resize with pytorch_half_pixel coordinates (half_pixel but a length-1 output samples the first pixel)",
        ("Resize", _LINEAR, {"coordinate_transformation_mode": "pytorch_half_pixel"}),
        ("Upsample", {"mode": "bilinear"}, {"align_corners": False}),
        ("bilinear", {"align_corners": False}),
    ),
    (
        "resize-align-corners",
        "bilinear Resize with align_corners coordinates (corner pixels' centres aligned; PyTorch align_corners=True)",
        ("Resize", _LINEAR, {"coordinate_transformation_mode": "align_corners"}),
        ("Upsample", {"mode": "bilinear"}, {"align_corners": True}),
        ("bilinear", {"align_corners": True}),
    ),
    (
        "resize-asymmetric",
        "bilinear Resize with asymmetric coordinates (source = destination / scale: TensorRT's old default)",
        ("Resize", _LINEAR, {"coordinate_transformation_mode": "asymmetric"}),
        lambda module: _asymmetric_upsample(module),
        ("bilinear", {}),
        resize_asymmetric,
    ),
    (
        "nearest-round-prefer-floor",
        "nearest Resize with half_pixel coordinates, ties rounded down (ONNX's default; PyTorch nearest-exact, which "
        "rounds ties up: the same cells unless a source coordinate falls half-way, which takes an even input side)",
        ("Resize", _NEAREST, {"coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_floor"}),
        ("Upsample", {"mode": "nearest"}, {"mode": "nearest-exact"}),
        ("nearest", {"mode": "nearest-exact"}),
    ),
    (
        "nearest-floor",
        "nearest Resize with asymmetric coordinates, rounded down (PyTorch's nearest, what it exports) on a half-pixel one",
        ("Resize", _NEAREST, {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}),
        ("Upsample", {"mode": "nearest-exact"}, {"mode": "nearest"}),
        ("nearest-exact", {"mode": "nearest"}),
    ),
]
for _name, _description, _onnx, _torch, *_functional in _ATTRIBUTE_VARIANTS:
    register_variant(
        ModelVariant(
            _name,
            _description,
            partial(_set_attributes, *_onnx),
            _torch if callable(_torch) else partial(_set_module, *_torch),
            _functional[0] if _functional else None,
            _functional[1] if len(_functional) > 1 else None,
        )
    )


def get_variant(name: str) -> ModelVariant:
    if name not in MODEL_VARIANTS:
        raise HarnessError(f"unknown model variant '{name}'", f"choose one of {', '.join(MODEL_VARIANTS)}")
    return MODEL_VARIANTS[name]


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Nodes of the main graph, its subgraphs and local functions."""
    import onnx

    graphs = [model.graph]
    for function in model.functions:
        yield from function.node
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            yield node
            graphs += [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
            graphs += list(next((a.graphs for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS), []))


def rewrite_onnx(source: Path, out: Path, variant: ModelVariant) -> dict[str, object]:
    """Write the rewritten model with re-inferred shapes; raises VariantNotApplicable when no node matches."""
    import onnx

    model = onnx.load(str(source))
    changed = [node.name or node.op_type for node in _all_nodes(model) if variant.rewrite_node(node)]
    if not changed:
        raise VariantNotApplicable(f"model variant '{variant.name}' changes nothing in {source.name}", "the model has no such op")
    del model.graph.value_info[:]  # shapes change with ceil mode: infer intermediate and output shapes again
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(out))
    return {"variant": variant.name, "description": variant.description, "rewritten_nodes": changed}


def patch_torch(model: nn.Module, variant: ModelVariant) -> list[str]:
    """Apply the variant to `model` in place: its modules, and (for upsample variants) the functional
    `F.interpolate` calls with that literal mode in its forward methods, rerouted while `model` runs.
    Returns what changed."""
    changed = [name for name, module in model.named_modules() if variant.patch_module(module)]
    if variant.interpolate:
        mode = variant.interpolate[0]
        calls = [name or type(model).__name__ for name, module in model.named_modules() if _calls_interpolate(type(module), mode)]
        if calls:
            _reroute_interpolate(model, *variant.interpolate, variant.interpolate_as)
            changed += [f"{name}.forward: F.interpolate(mode='{variant.interpolate[0]}')" for name in calls]
    return changed


def _calls_interpolate(kind: type, mode: str) -> bool:
    """Does `kind.forward` call F.interpolate with this literal mode?"""
    try:
        source = inspect.getsource(kind.forward)
    except (OSError, TypeError):  # built-in or source-less modules
        return False
    return "interpolate(" in source and (f'mode="{mode}"' in source or f"mode='{mode}'" in source)


def _reroute_interpolate(model: nn.Module, mode: str, values: dict[str, Any], function: Callable[..., Any] | None = None) -> None:
    """Hooks that swap `F.interpolate` for a rerouting wrapper while `model` runs (hooks survive deepcopy and .to()):
    calls of `mode` get `values`, or go to `function` instead."""
    from torch.nn import functional

    saved: list[Callable[..., Any]] = []

    def before(_module: nn.Module, _args: Any) -> None:
        original = functional.interpolate
        saved.append(original)

        def interpolate(*args: Any, **options: Any) -> Any:
            if len(args) > 3:  # mode (and what follows it) given positionally
                names = ("mode", "align_corners", "recompute_scale_factor", "antialias")[: len(args) - 3]
                args, options = args[:3], dict(zip(names, args[3:], strict=True)) | options
            if options.get("mode", "nearest") == mode:
                if function is not None:
                    return function(*args, **options)
                options |= values
            return original(*args, **options)

        functional.interpolate = interpolate

    def after(_module: nn.Module, _args: Any, _output: Any) -> None:
        functional.interpolate = saved.pop()

    model.register_forward_pre_hook(before)
    model.register_forward_hook(after, always_call=True)
