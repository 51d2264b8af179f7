"""PyTorch -> ONNX, then parity against PyTorch on real pre-processed inputs.

Like optimum's export validation: every output gets a `[✓]/[x]` line with
its max abs diff, and the export fails as a whole when any exceeds the
suite's tolerance.
"""

from __future__ import annotations

import io
import re
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from harness.core.errors import HarnessError, first_line


@dataclass(frozen=True)
class OutputParity:
    name: str
    max_abs: float  # inf when the shapes differ
    atol: float
    shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # (ONNX, PyTorch) when they differ

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.atol

    def line(self) -> str:
        mark = "✓" if self.ok else "x"
        if self.shapes:  # a detector keeping another number of boxes, say
            return f"[{mark}] {self.name}: shape {self.shapes[0]}, PyTorch {self.shapes[1]}"
        return f"[{mark}] {self.name}: max abs diff {self.max_abs:.3e} (atol {self.atol:.0e})"


def output_parity(name: str, got: np.ndarray, expected: np.ndarray, atol: float) -> OutputParity:
    if got.shape != expected.shape:
        return OutputParity(name, float("inf"), atol, (got.shape, expected.shape))
    return OutputParity(name, float(np.max(np.abs(got - expected), initial=0.0)), atol)  # initial: no boxes kept


# Node metadata that records where the exporter ran, not what the model is: the stack traces name the checkout's
# and the environment's absolute paths, so the file's bytes (and every hash of it) would depend on the folder.
VOLATILE_NODE_METADATA = ("pkg.torch.onnx.stack_trace",)


def strip_volatile(graph: onnx.GraphProto) -> None:
    """Drop path-bearing metadata and doc strings from every node (subgraphs too), keeping the name scopes that
    label layers (`exporters.graph`): an export is byte-identical wherever the project lives."""
    for node in graph.node:
        node.ClearField("doc_string")
        kept = [(p.key, p.value) for p in node.metadata_props if p.key not in VOLATILE_NODE_METADATA]
        del node.metadata_props[:]
        for key, value in kept:
            node.metadata_props.add(key=key, value=value)
        for attribute in node.attribute:
            for subgraph in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
                strip_volatile(subgraph)
    graph.ClearField("doc_string")


# What each exporter is, as the cache key and the provenance name it (the dynamo name is the one recorded before the
# choice existed, so those artifacts keep their provenance).
EXPORT_CALLS = {"dynamo": "torch.onnx.export(dynamo=True)", "torchscript": "torch.onnx.export(dynamo=False)"}
BATCH_AXIS = "batch"  # the dynamic first axis of the input, named alike by both exporters
SPATIAL_AXES = ("height", "width")  # an image input's dynamic sides, when each image has its own size


def spatial_axes(shape: tuple[int, ...]) -> tuple[int, int]:
    """The height and width axes of a batch of images: NCHW unless the last axis is the short one (NHWC)."""
    return (1, 2) if len(shape) == 4 and shape[3] <= 4 < shape[1] else (2, 3)


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class ExportFailed(HarnessError):
    """An exporter refused the model; `reason` is the first line of the root cause."""

    reason = ""


def _by_torch_export(
    model: torch.nn.Module, args: tuple[torch.Tensor], input_name: str, output_names: tuple[str, ...], opset: int, dynamic_hw: bool
) -> onnx.ModelProto:
    dims: dict[int, Any] = {0: torch.export.Dim(BATCH_AXIS, min=1, max=4096)}
    if dynamic_hw:  # torch.export works out the sizes the model takes (a stride's multiple, say)
        dims |= dict.fromkeys(spatial_axes(tuple(args[0].shape)), torch.export.Dim.AUTO)
    program = torch.onnx.export(
        model,
        args,
        input_names=[input_name],
        output_names=list(output_names),
        opset_version=opset,
        dynamic_shapes=(dims,),
        dynamo=True,
        verbose=False,
    )
    return program.model_proto


def _by_tracing(
    model: torch.nn.Module, args: tuple[torch.Tensor], input_name: str, output_names: tuple[str, ...], opset: int, dynamic_hw: bool
) -> onnx.ModelProto:
    """TorchScript tracing: Python control flow is frozen as the example input takes it (parity on the suite's samples
    checks the result)."""
    axes = {0: BATCH_AXIS} | (dict(zip(spatial_axes(tuple(args[0].shape)), SPATIAL_AXES, strict=True)) if dynamic_hw else {})
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        args,
        buffer,
        input_names=[input_name],
        output_names=list(output_names),
        opset_version=opset,
        dynamic_axes={input_name: axes},
        dynamo=False,
    )
    return onnx.load_model_from_string(buffer.getvalue())


EXPORTS = {"dynamo": _by_torch_export, "torchscript": _by_tracing}
FIXES = {
    "dynamo": 'set [export] exporter = "auto" in the suite to fall back to the TorchScript exporter (or "torchscript")',
    "torchscript": "the model must be traceable by torch.jit.trace",
}


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain (torch.onnx wraps torch.export's reason in a page of advice), or a Ctrl-C
    met on the way."""
    seen = {id(exc)}
    while not isinstance(exc, KeyboardInterrupt) and (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc


def export_onnx(
    model: torch.nn.Module,
    example: np.ndarray,
    out: Path,
    input_name: str,
    output_names: tuple[str, ...],
    opset: int,
    metadata: dict[str, str],
    exporter: str = "dynamo",
    dynamic_hw: bool = False,
) -> None:
    """ONNX export by torch.export (`dynamo`) or TorchScript tracing (`torchscript`), with a dynamic batch axis (and
    dynamic sides with `dynamic_hw`: each image fed at its own size), checked by `onnx.checker`; the bytes depend on
    the model alone (`strip_volatile`)."""
    args = (torch.from_numpy(example),)
    chatter = io.StringIO()
    try:
        with warnings.catch_warnings(), redirect_stdout(chatter), redirect_stderr(chatter):
            warnings.simplefilter("ignore")
            proto = EXPORTS[exporter](model, args, input_name, output_names, opset, dynamic_hw)
    except Exception as exc:
        cause = root_cause(exc)
        if isinstance(cause, KeyboardInterrupt):  # torch.onnx wraps a Ctrl-C: it stays one, not a fallback
            raise cause from None
        reason = ANSI_ESCAPE.sub("", first_line(cause))
        reason = reason if reason.startswith(type(cause).__name__) else f"{type(cause).__name__}: {reason}"
        failure = ExportFailed(f"ONNX export by {EXPORT_CALLS[exporter]} failed: {reason}", FIXES[exporter])
        failure.reason = reason
        raise failure from exc
    strip_volatile(proto.graph)
    for key, value in sorted(metadata.items()):
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(out))


def check_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    inputs: np.ndarray,
    input_name: str,
    atol: float,
) -> list[OutputParity]:
    """Max abs diff per output between PyTorch and ONNX Runtime (CPU) on `inputs`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = model(torch.from_numpy(inputs))
    expected_outs = expected if isinstance(expected, (tuple, list)) else (expected,)
    got = session.run(None, {input_name: inputs})
    return [output_parity(meta.name, g, e.numpy(), atol) for meta, g, e in zip(session.get_outputs(), got, expected_outs, strict=True)]
