"""FP32 ONNX -> FP16 ONNX with float32 I/O, through ONNX Runtime's maintained
float16 converter.  Ops in the block list stay FP32; which nodes those were is
recorded beside the artifact.

Nodes kept in FP32 really run in FP32 end to end: the converter casts the output
of each FP32 node to FP16 and back before the next FP32 node reads it, and shares
a weight of FP32 and FP16 nodes in FP16, so a value beyond FP16's range (the
reason to keep a node) would still reach it as 65504 or inf; those reads take the
FP32 tensor instead (`_skip_fp16_round_trips`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16


def load_named(source: Path) -> onnx.ModelProto:
    """The model with a name on every node (a node without one is named after its first output), so that nodes can
    be kept in FP32 by name."""
    model = onnx.load(str(source))
    for node in model.graph.node:
        if not node.name:
            node.name = f"{node.op_type}:{node.output[0]}"
    return model


def convert_fp16(source: Path, out: Path, op_block_list: tuple[str, ...], node_block_list: list[str] | None = None) -> dict[str, Any]:
    """Write the FP16 model (the nodes of `node_block_list` stay FP32: kept layers); returns provenance
    (block list, nodes kept in FP32, casts added)."""
    model = load_named(source)
    original = {node.name for node in model.graph.node}
    weights = {i.name: i for i in model.graph.initializer}  # the converter works on a copy (of its shape inference)
    blocked = sorted(set(op_block_list) | set(DEFAULT_OP_BLOCK_LIST))
    nodes = set(node_block_list or ())
    kept = [node.name for node in model.graph.node if node.op_type in blocked or node.name in nodes]
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked, node_block_list=sorted(nodes))
    inserted = {node.name for node in converted.graph.node if node.name not in original}
    skipped = _skip_fp16_round_trips(converted.graph, inserted, weights)
    _sort_topologically(converted.graph)  # the converter appends its input casts after their consumers
    onnx.checker.check_model(converted)
    onnx.save_model(converted, str(out))
    casts = sum(1 for node in converted.graph.node if node.op_type == "Cast")
    return {
        "converter": "onnxruntime.transformers.float16",
        "op_block_list": list(op_block_list),
        "kept_fp32_nodes": kept,
        "casts_added": casts,
        "fp16_round_trips_skipped": skipped,
    }


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def _skip_fp16_round_trips(graph: onnx.GraphProto, inserted: set[str], weights: dict[str, onnx.TensorProto]) -> int:
    """Let the converter's casts back to FP32 (`inserted` nodes) read the FP32 tensor they came from: the output of
    an FP32 node or the model's input, before its cast to FP16, or an FP32 copy of a weight it stored in FP16
    (`weights`: the FP32 model's values). Such a cast becomes an Identity; casts nothing reads any more are
    dropped. Returns how many reads were changed."""
    producers = {name: node for node in graph.node for name in node.output}
    fp16_weights = {i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT16}
    initializers = {i.name for i in graph.initializer}
    changed = 0
    for node in graph.node:
        if node.name not in inserted or _cast_to(node) != TensorProto.FLOAT:
            continue
        source = producers.get(node.input[0])
        if source is not None and source.name in inserted and _cast_to(source) == TensorProto.FLOAT16:
            fp32 = source.input[0]
        elif node.input[0] in fp16_weights and weights.get(node.input[0], TensorProto()).data_type == TensorProto.FLOAT:
            fp32 = f"{node.input[0]}_fp32"
            if fp32 not in initializers:
                weight = graph.initializer.add()
                weight.CopyFrom(weights[node.input[0]])
                weight.name = fp32
                initializers.add(fp32)
        else:
            continue
        node.op_type, node.input[0] = "Identity", fp32
        del node.attribute[:]
        changed += 1
    while True:
        read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        unread = [n for n in graph.node if n.name in inserted and n.op_type == "Cast" and not any(o in read for o in n.output)]
        if not unread:
            break
        for cast in unread:
            graph.node.remove(cast)
    read = {name for node in graph.node for name in node.input}
    for weight in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(weight)
    return changed


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
