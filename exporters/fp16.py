"""FP32 ONNX -> FP16 ONNX with float32 I/O, through ONNX Runtime's maintained
float16 converter.  Ops in the block list stay FP32; which nodes those were is
recorded beside the artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16


def convert_fp16(source: Path, out: Path, op_block_list: tuple[str, ...], node_block_list: list[str] | None = None) -> dict[str, Any]:
    """Write the FP16 model (the nodes of `node_block_list` stay FP32: kept layers); returns provenance
    (block list, nodes kept in FP32, casts added)."""
    model = onnx.load(str(source))
    blocked = sorted(set(op_block_list) | set(DEFAULT_OP_BLOCK_LIST))
    nodes = set(node_block_list or ())
    kept = [node.name or node.op_type for node in model.graph.node if node.op_type in blocked or node.name in nodes]
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked, node_block_list=sorted(nodes))
    _sort_topologically(converted.graph)  # the converter appends its input casts after their consumers
    onnx.checker.check_model(converted)
    onnx.save_model(converted, str(out))
    casts = sum(1 for node in converted.graph.node if node.op_type == "Cast")
    return {
        "converter": "onnxruntime.transformers.float16",
        "op_block_list": list(op_block_list),
        "kept_fp32_nodes": kept,
        "casts_added": casts,
    }


def _sort_topologically(graph: onnx.GraphProto) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or a dangling input")
        for node in ready:
            available.update(node.output)
            ordered.append(node)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)
