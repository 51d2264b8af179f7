"""PyTorch -> ONNX, then parity against PyTorch on real pre-processed inputs.

Like optimum's export validation: every output gets a `[✓]/[x]` line with
its max abs diff, and the export fails as a whole when any exceeds the
suite's tolerance.
"""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from harness.core.errors import HarnessError


@dataclass(frozen=True)
class OutputParity:
    name: str
    max_abs: float
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.atol

    def line(self) -> str:
        mark = "✓" if self.ok else "x"
        return f"[{mark}] {self.name}: max abs diff {self.max_abs:.3e} (atol {self.atol:.0e})"


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


def export_onnx(
    model: torch.nn.Module,
    example: np.ndarray,
    out: Path,
    input_name: str,
    output_names: tuple[str, ...],
    opset: int,
    metadata: dict[str, str],
) -> None:
    """torch.export-based ONNX export with a dynamic batch axis, checked by `onnx.checker`."""
    args = (torch.from_numpy(example),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    chatter = io.StringIO()
    try:
        with warnings.catch_warnings(), redirect_stdout(chatter), redirect_stderr(chatter):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                args,
                input_names=[input_name],
                output_names=list(output_names),
                opset_version=opset,
                dynamic_shapes=({0: batch},),
                dynamo=True,
                verbose=False,
            )
    except Exception as exc:
        raise HarnessError(f"ONNX export failed: {str(exc).splitlines()[0]}", "the model must be traceable by torch.export") from exc
    proto = program.model_proto
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
    return [
        OutputParity(name=meta.name, max_abs=float(np.max(np.abs(g - e.numpy()))), atol=atol)
        for meta, g, e in zip(session.get_outputs(), got, expected_outs, strict=True)
    ]
