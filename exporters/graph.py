"""ONNX graph surgery for layer-level work: which PyTorch layer each node came from, which tensors can be
probed, exposing intermediate tensors as outputs, and keeping layers of a Q/DQ model in float.

Every derived graph (FP16, Q/DQ INT8) keeps the node and tensor names of the FP32 export it came from, so
the FP32 export's metadata (the exporter's name scopes and the parameter names) labels the nodes of all of
them: the answer is `stages.2.conv1`, not `node_Conv_192`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import helper, numpy_helper

from harness.core.errors import HarnessError

# Ops that only move, reshape or re-type data: never a probe, never a layer of their own.
DATA_MOVEMENT_OPS = frozenset(
    {"Constant", "ConstantOfShape", "Shape", "Size", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast", "CastLike",
     "Transpose", "Gather", "Slice", "Concat", "Split", "Expand", "Range", "QuantizeLinear", "DequantizeLinear"}
)  # fmt: skip
SURGERY_VERSION = 2  # part of the cache key of every file made here: bump when a rule below changes
SCOPE_KEY = "pkg.torch.onnx.name_scopes"
CLASS_KEY = "pkg.torch.onnx.class_hierarchy"


@dataclass(frozen=True)
class Probe:
    """One tensor of the FP32 graph that can be compared across runtimes, in topological order."""

    index: int
    tensor: str
    layer: str  # the PyTorch module (or `module/op` for a functional call) that computes it
    op: str


def _metadata(node: onnx.NodeProto, key: str) -> str | None:
    return next((p.value for p in node.metadata_props if p.key == key), None)


def node_layer(node: onnx.NodeProto, parameters: set[str]) -> str:
    """The PyTorch module a node belongs to: the owner of the parameter it reads (a folded Conv+BN reads
    `stages.0.conv1.weight`), else the innermost module of the exporter's name scope (a functional call
    inside a user module becomes `module/op`), else the node's own name (graphs from other exporters)."""
    owners = [name.rsplit(".", 1)[0] for name in node.input if name in parameters and "." in name]
    if owners:
        return owners[0]
    scopes_text = _metadata(node, SCOPE_KEY)
    if not scopes_text:
        return node.name or node.op_type
    scopes = [s for s in ast.literal_eval(scopes_text) if isinstance(s, str)]
    classes = (_metadata(node, CLASS_KEY) or "").strip("[]").replace("'", "").split(", ")
    module = scopes[-2] if len(scopes) >= 2 else ""
    module_class = classes[-2] if len(classes) >= 2 else ""
    if module and module_class.startswith("torch.nn.modules."):
        return module  # a built-in leaf module (ReLU, MaxPool2d, ...)
    op = re.sub(r"_\d+$", "", scopes[-1]) if scopes else node.op_type.lower()
    return f"{module}/{op}" if module else op


def node_layers(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> layer for every node of the main graph."""
    parameters = {i.name for i in model.graph.initializer}
    return {node.name: node_layer(node, parameters) for node in model.graph.node}


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.output)
    return {v.name for v in values if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def probes(model: onnx.ModelProto) -> list[Probe]:
    """Float activations computed by arithmetic nodes, in the graph's (topological) order."""
    layers = node_layers(model)
    floats = _float_tensors(model)
    found: list[Probe] = []
    for node in model.graph.node:
        if node.op_type in DATA_MOVEMENT_OPS:
            continue
        for tensor in node.output:
            if tensor in floats:
                found.append(Probe(len(found), tensor, layers[node.name], node.op_type))
    return found


def _in_layer(label: str, layer: str) -> bool:
    """Is a node labelled `label` part of `layer` (the module itself, a sub-module or a functional call in it)?"""
    return label == layer or label.startswith((f"{layer}.", f"{layer}/"))


def layer_nodes(model: onnx.ModelProto, layers: tuple[str, ...]) -> list[str]:
    """Names of the nodes of these layers (a layer also names its sub-modules: `stages.3` keeps the whole stage)."""
    by_node = node_layers(model)
    unknown = [layer for layer in layers if not any(_in_layer(label, layer) for label in by_node.values())]
    if unknown:
        known = ", ".join(dict.fromkeys(by_node.values()))
        raise HarnessError(f"no layer named {', '.join(unknown)} in the model", f"layers: {known}")
    return [node for node, label in by_node.items() if any(_in_layer(label, layer) for layer in layers)]


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _dequantized(tensor: str, consumers: dict[str, list[onnx.NodeProto]]) -> list[onnx.NodeProto]:
    """The DequantizeLinear nodes that give `tensor` back after its QuantizeLinear (empty when it is not quantized)."""
    return [
        dq
        for q in consumers.get(tensor, [])
        if q.op_type == "QuantizeLinear"
        for dq in consumers.get(q.output[0], [])
        if dq.op_type == "DequantizeLinear"
    ]


def mark_outputs(source: Path, out: Path, tensors: tuple[str, ...]) -> dict[str, object]:
    """Expose `tensors` as extra graph outputs. A quantized tensor is exposed after its DequantizeLinear, so
    the engine under test keeps its Q/DQ pairs (and the fusions they drive); returns tensor -> output name."""
    model = onnx.load(str(source))
    graph = model.graph
    consumers = _consumers(graph)
    produced = {name for node in graph.node for name in node.output}
    missing = [t for t in tensors if t not in produced]
    if missing:
        raise ValueError(f"{source.name} computes no tensor named {', '.join(missing)}")
    inferred = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    existing = {o.name for o in graph.output}
    exposed: dict[str, str] = {}
    for tensor in tensors:
        after = _dequantized(tensor, consumers)
        name = after[0].output[0] if after else tensor
        exposed[tensor] = name
        if name not in existing:
            graph.output.append(helper.make_tensor_value_info(name, inferred.get(name, onnx.TensorProto.FLOAT), None))
            existing.add(name)
    onnx.save_model(model, str(out))
    return {"marked": exposed}


def keep_float(qdq_source: Path, float_source: Path, out: Path, nodes: list[str]) -> dict[str, object]:
    """Run `nodes` of a Q/DQ model in float: their weights become the FP32 export's again and their outputs
    lose the Q/DQ pair after them (every consumer reads the float tensor). Their inputs stay as their
    producers leave them (but the model's own inputs, which no layer produces, are read in float), so keeping
    the layer whose activation range ruins INT8 is what fixes it."""
    model = onnx.load(str(qdq_source))
    reference = onnx.load(str(float_source))
    float_inputs = {node.name: list(node.input) for node in reference.graph.node}
    float_weights = {i.name: i for i in reference.graph.initializer}
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    producers = {name: node for node in graph.node for name in node.output}
    consumers = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    graph_inputs = {i.name for i in graph.input}
    kept = set(nodes)
    absent = sorted(kept - {node.name for node in graph.node})
    if absent:
        raise ValueError(f"{qdq_source.name} has no node named {', '.join(absent)}")
    kept |= _float_followers(graph, kept, producers)
    for node in graph.node:
        if node.name not in kept:
            continue
        for index, name in enumerate(node.input):
            producer = producers.get(name)
            source = producers.get(producer.input[0]) if producer is not None and producer.op_type == "DequantizeLinear" else None
            if source is not None and source.op_type == "QuantizeLinear" and source.input[0] in graph_inputs:
                node.input[index] = source.input[0]  # the model's input, which no layer produces: read in float
                continue
            is_weight = producer is not None and producer.op_type == "DequantizeLinear" and producer.input[0] in initializers
            if is_weight and index < len(float_inputs.get(node.name, [])):
                original = float_inputs[node.name][index]
                if original in float_weights:
                    name = original if original not in producers else f"{original}_float"  # ORT names a bias DQ output so
                    if name not in initializers:
                        weight = onnx.TensorProto()
                        weight.CopyFrom(float_weights[original])
                        weight.name = name
                        graph.initializer.append(weight)
                        initializers.add(name)
                    node.input[index] = name
        for tensor in node.output:
            for dq in _dequantized(tensor, consumers):
                for consumer in consumers.get(dq.output[0], []):
                    consumer.input[:] = [tensor if i == dq.output[0] else i for i in consumer.input]
                if dq.output[0] in graph_outputs:  # a model output: keep its name, now a float copy
                    dq.op_type, dq.domain = "Identity", ""
                    dq.input[:] = [tensor]
                    del dq.attribute[:]
    _drop_unused(graph)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(out))
    return {"kept_float_nodes": sorted(kept)}


def _float_followers(graph: onnx.GraphProto, kept: set[str], producers: dict[str, onnx.NodeProto]) -> set[str]:
    """Data-movement nodes (Reshape, Flatten, ...) that only pass on kept nodes' outputs: they stay float too."""
    followers: set[str] = set()
    for node in graph.node:  # topological order
        if node.op_type not in DATA_MOVEMENT_OPS or node.name in kept:
            continue
        sources = []
        for name in node.input:
            producer = producers.get(name)
            while producer is not None and producer.op_type in ("QuantizeLinear", "DequantizeLinear"):
                producer = producers.get(producer.input[0])
            if producer is not None:
                sources.append(producer.name)
        if sources and all(s in kept or s in followers for s in sources):
            followers.add(node.name)
    return followers


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove Q/DQ nodes and initializers nothing reads any more."""
    while True:
        read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in read for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input}
    unused = [i for i in graph.initializer if i.name not in read]
    for initializer in unused:
        graph.initializer.remove(initializer)


def initializer_bytes(path: Path) -> int:
    """Bytes of the weights stored in a model (what keeping layers in float costs)."""
    model = onnx.load(str(path))
    return sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)
