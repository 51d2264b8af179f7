"""FP16 range audit: what in an FP32 ONNX model lies outside FP16's range, found on a machine that cannot run FP16.

A CPU's FP16 check mostly runs in fp32 or bf16 (ONNX Runtime casts around ops without FP16 kernels, OpenVINO
runs an f16 request in bf16), so a model that overflows on a GPU's FP16 engine passes here. The audit answers
"will FP16 break on the target?" without executing FP16:

- static: initializers and constant tensors (Constant nodes, tensor attributes) holding values beyond FP16's
  largest, 65504 (the converter clamps them to 65504, an engine that converts them itself makes them inf), and
  nonzero values below its smallest subnormal, 2^-24 (a note with their share: they lose all precision);
- activations: one ONNX Runtime FP32 session with every float intermediate tensor exposed, fed the audit inputs
  (the calibration split) in batches, recording each tensor's largest |x|; one beyond 65504 overflows wherever
  FP16 really executes.

Findings name the layer (`exporters.graph.node_layer`), the tensor and the value. What happens to them is the
policy (`[export] fp16_out_of_range`): `keep-fp32` keeps the nodes that hold, compute or read them in FP32 in the
FP16 file, `fail` refuses to build it, `report` only says what would overflow. Only numpy is imported at the top:
the report's notes are written from the recorded audit (`audit_lines`) without loading ONNX.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.core.errors import HarnessError

if TYPE_CHECKING:
    import onnx

FP16_MAX = 65504.0
FP16_SMALLEST = 2.0**-24  # the smallest subnormal: nonzero values below it are not representable
AUDIT_VERSION = 1  # part of the FP16 file's cache key: bump when a rule below changes
AUDIT_BUDGET_BYTES = 512 * 2**20  # intermediate tensors one audit batch may hold at once
AUDIT_MAX_BATCH = 32
FLOAT = 1  # onnx.TensorProto.FLOAT: the only type the FP16 converter converts
CONSEQUENCES = {"keep-fp32": "kept in FP32", "report": 'would overflow (fp16_out_of_range = "report")', "fail": "the FP16 build fails"}


@dataclass(frozen=True)
class Finding:
    """Values of one tensor beyond FP16's largest finite value."""

    kind: str  # "initializer", "constant" (a node's tensor attribute) or "activation"
    layer: str  # the layer that holds (reads) or computes it
    tensor: str
    value: float  # the largest |x|
    count: int  # values beyond FP16_MAX (activations: over every audited sample)
    nodes: tuple[str, ...]  # nodes that must run in FP32 so that it never becomes FP16


@dataclass
class Fp16Audit:
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    inputs: str | None = None  # where the activation audit's inputs came from
    samples: int = 0  # samples the activation audit ran (0: static audit only)
    tensors: int = 0  # float tensors it recorded

    @property
    def kept_nodes(self) -> list[str]:
        return sorted({node for finding in self.findings for node in finding.nodes})

    def describe(self, policy: str) -> dict[str, Any]:
        """The audit as recorded in the FP16 artifact's info.json."""
        return {
            "version": AUDIT_VERSION,
            "policy": policy,
            "inputs": self.inputs,
            "samples": self.samples,
            "tensors": self.tensors,
            "findings": [{k: v for k, v in asdict(f).items() if k != "nodes"} for f in self.findings],
            "notes": self.notes,
            "kept_fp32_nodes": self.kept_nodes if policy == "keep-fp32" else [],
        }

    def failure(self, model: str) -> HarnessError:
        """The error of policy `fail`: which layers hold or compute what."""
        worst = _by_layer([asdict(f) for f in self.findings])
        listed = "; ".join(f"layer `{layer}` {_verb(f['kind'])} {f['value']:.3g}" for layer, f in worst.items())
        return HarnessError(
            f"{model}: {len(worst)} layer(s) beyond FP16's range (65504): {listed}",
            'set [export] fp16_out_of_range = "keep-fp32" to keep them in FP32 (or "report"), or rescale those layers',
        )


def _verb(kind: str) -> str:
    return "computes" if kind == "activation" else "holds"


def _by_layer(findings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each layer's largest finding, and how many tensors of it are beyond FP16, in order of appearance."""
    worst: dict[str, dict[str, Any]] = {}
    for finding in findings:
        layer = finding["layer"]
        current = worst.get(layer)
        tensors = 1 + (current["tensors"] if current else 0)
        if current is None or finding["value"] > current["value"]:
            current = finding
        worst[layer] = current | {"tensors": tensors}
    return worst


def audit_lines(audit: dict[str, Any]) -> list[str]:
    """The audit recorded in an FP16 artifact's provenance as lines for the log, `harness export` and a report's notes:
    "layer `batch_norm_0` holds 9.79e+07 (...): beyond FP16; kept in FP32"."""
    consequence = CONSEQUENCES[audit["policy"]]
    lines = []
    for layer, finding in _by_layer(audit["findings"]).items():
        more = f", +{finding['tensors'] - 1} more tensor(s)" if finding["tensors"] > 1 else ""
        if finding["kind"] == "activation":
            where = f"tensor `{finding['tensor']}` on {audit['samples']} samples of the {audit['inputs']}{more}"
        else:
            where = f"{finding['count']} values of {finding['kind']} `{finding['tensor']}`{more}"
        lines.append(f"fp16 audit: layer `{layer}` {_verb(finding['kind'])} {finding['value']:.3g} ({where}): beyond FP16; {consequence}")
    return lines + [f"fp16 audit: {note}" for note in audit["notes"]]


def audit_fp16(model: onnx.ModelProto, inputs: np.ndarray | None, input_name: str, origin: str | None) -> Fp16Audit:
    """Audit an FP32 model whose nodes all have names (`exporters.fp16.load_named`): its constants, and with
    `inputs` (rows of `input_name`, from `origin`) its activations."""
    from exporters.graph import node_layer

    graph = model.graph
    parameters = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    layers = {node.name: node_layer(node, parameters) for node in graph.node}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    audit = Fp16Audit(inputs=origin)
    _audit_constants(model, layers, consumers, audit)
    if inputs is None or len(inputs) == 0:
        audit.notes.append("activations not audited: no calibration split or parity inputs (initializers and constants only)")
    else:
        _audit_activations(model, inputs, input_name, layers, consumers, audit)
    return audit


def _readers(tensor: str, consumers: dict[str, list[onnx.NodeProto]]) -> list[onnx.NodeProto]:
    """The nodes that read `tensor`, and those that read it on through data-movement nodes (a reshaped weight)."""
    from exporters.graph import DATA_MOVEMENT_OPS

    found = []
    for node in consumers.get(tensor, []):
        found.append(node)
        if node.op_type in DATA_MOVEMENT_OPS:
            found += [reader for out in node.output for reader in _readers(out, consumers)]
    return found


def _constant_tensors(model: onnx.ModelProto) -> list[tuple[str, str, np.ndarray, onnx.NodeProto | None]]:
    """(kind, tensor name, values, node holding it) of every FP32 initializer and tensor attribute."""
    from onnx import AttributeProto, numpy_helper

    found: list[tuple[str, str, np.ndarray, onnx.NodeProto | None]] = [
        ("initializer", i.name, numpy_helper.to_array(i), None) for i in model.graph.initializer if i.data_type == FLOAT
    ]
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.type == AttributeProto.TENSOR and attribute.t.data_type == FLOAT:
                found.append(("constant", node.output[0], numpy_helper.to_array(attribute.t), node))
            elif node.op_type == "Constant" and attribute.name in ("value_float", "value_floats"):
                values = np.asarray(attribute.f if attribute.name == "value_float" else attribute.floats, dtype=np.float32)
                found.append(("constant", node.output[0], values, node))
    return found


def _audit_constants(model: onnx.ModelProto, layers: dict[str, str], consumers: dict[str, list[onnx.NodeProto]], audit: Fp16Audit) -> None:
    tiny_total = nonzero_total = 0
    tiny_tensors: list[tuple[float, str]] = []
    for kind, name, values, holder in _constant_tensors(model):
        magnitude = np.abs(values.astype(np.float32, copy=False))
        beyond = int(np.count_nonzero(magnitude > FP16_MAX))
        nonzero = int(np.count_nonzero(magnitude))
        tiny = int(np.count_nonzero((magnitude > 0) & (magnitude < FP16_SMALLEST)))
        nonzero_total += nonzero
        if tiny:
            tiny_total += tiny
            tiny_tensors.append((tiny / nonzero, name))
        if not beyond:
            continue
        readers = _readers(name, consumers)
        nodes = [node.name for node in readers] + ([holder.name] if holder is not None else [])
        layer = layers[readers[0].name] if readers else layers[holder.name] if holder is not None else name
        audit.findings.append(Finding(kind, layer, name, float(magnitude.max()), beyond, tuple(dict.fromkeys(nodes))))
    if tiny_total:
        share, name = max(tiny_tensors)
        audit.notes.append(
            f"{tiny_total} of {nonzero_total} nonzero weight values ({_percent(tiny_total / nonzero_total)}) in {len(tiny_tensors)} "
            f"tensor(s) lie below FP16's smallest subnormal (2^-24 = 5.96e-08) and keep no precision in FP16 (most: `{name}`, "
            f"{_percent(share)})"
        )


def _percent(share: float) -> str:
    return f"{100 * share:.2g}%"


def _activation_sizes(model: onnx.ModelProto, input_name: str, shape: tuple[int, ...]) -> dict[str, int]:
    """Float tensors computed by nodes (not Constant ones, audited statically) -> elements, for inputs of `shape`
    (0 where shape inference cannot tell)."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for value in probe.graph.input:
        if value.name == input_name:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, shape, strict=False):
                dim.ClearField("dim_param")
                dim.dim_value = size
    inferred = onnx.shape_inference.infer_shapes(probe)
    computed = {o for node in model.graph.node if node.op_type != "Constant" for o in node.output}
    sizes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = value.type.tensor_type
        if value.name in computed and tensor_type.elem_type == FLOAT:
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor_type.shape.dim]
            sizes[value.name] = math.prod(dims) if tensor_type.HasField("shape") else 0
    return sizes


def _audit_activations(
    model: onnx.ModelProto,
    inputs: np.ndarray,
    input_name: str,
    layers: dict[str, str],
    consumers: dict[str, list[onnx.NodeProto]],
    audit: Fp16Audit,
) -> None:
    import onnx
    import onnxruntime as ort

    from harness.core.environment import compute_threads

    sizes = _activation_sizes(model, input_name, (1, *inputs.shape[1:]))
    per_sample = 4 * sum(sizes.values())
    if per_sample > AUDIT_BUDGET_BYTES:
        audit.notes.append(
            f"activations not audited: one sample's {len(sizes)} float tensors take {per_sample / 2**20:.0f} MB, "
            f"over the audit's budget of {AUDIT_BUDGET_BYTES / 2**20:.0f} MB (initializers and constants only)"
        )
        return
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    outputs = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(onnx.helper.make_tensor_value_info(name, FLOAT, None) for name in sizes if name not in outputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the FP32 graph's own tensors, unfused
    options.intra_op_num_threads = compute_threads()
    session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = list(sizes)
    batch = max(1, min(AUDIT_MAX_BATCH, AUDIT_BUDGET_BYTES // max(per_sample, 1)))
    stop = len(inputs)
    first_dim = next(i for i in model.graph.input if i.name == input_name).type.tensor_type.shape.dim[0]
    if first_dim.HasField("dim_value") and first_dim.dim_value > 0:  # a fixed batch: feed whole batches of it
        batch = first_dim.dim_value
        stop = len(inputs) - batch + 1
    largest = dict.fromkeys(names, 0.0)
    beyond = dict.fromkeys(names, 0)
    fed = 0
    for start in range(0, stop, batch):
        rows = inputs[start : start + batch]
        for name, values in zip(names, session.run(names, {input_name: rows}), strict=True):
            magnitude = np.abs(values)
            top = float(magnitude.max(initial=0.0))
            largest[name] = max(largest[name], top)
            if top > FP16_MAX:
                beyond[name] += int(np.count_nonzero(magnitude > FP16_MAX))
        fed += len(rows)
    audit.samples, audit.tensors = fed, len(names)
    if not fed:
        audit.notes.append(f"activations not audited: the model takes batches of {batch}, the {audit.inputs} has {len(inputs)} samples")
    producers = {o: node for node in model.graph.node for o in node.output}
    for name in names:
        if largest[name] > FP16_MAX:
            producer = producers[name]
            nodes = tuple(dict.fromkeys([producer.name, *(node.name for node in consumers.get(name, []))]))
            audit.findings.append(Finding("activation", layers[producer.name], name, largest[name], beyond[name], nodes))
