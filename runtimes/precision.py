"""Which precision really executed: requested is not executed.

A runtime's name says what was asked for (`ort-fp16`); what ran can differ.
ONNX Runtime's CPU provider has no fp16 kernels for most ops on x86 and runs
an FP16 model in fp32 behind inserted casts; OpenVINO runs an fp16 request in
bf16 (or f32) on a CPU without FP16 arithmetic; an INT8 Q/DQ model keeps the
convolutions it could not fuse in fp32.  Backends count their compute ops by
the precision they execute in (`compute_op_precisions`); `executed` summarises
the counts, `judged_precision` picks the tolerance profile and
`precision_notes` says when a check did not test what its name says.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

# Lowest precision first: a run is judged by the profile of the lowest precision it asked for or executed.
RANK = ("int8", "bf16", "fp16", "fp32")
ALIASES = {"f32": "fp32", "float32": "fp32", "f16": "fp16", "float16": "fp16", "bfloat16": "bf16", "i8": "int8", "u8": "int8"}

# ONNX ops that carry the arithmetic; the integer-quantized ones compute in int8 whatever their output type.
COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul", "Attention", "LSTM", "GRU", "RNN"}
INTEGER_OPS = {
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "ConvInteger",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QAttention",
}
FLOAT_OUTPUT_INTEGER_OPS = {"MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention"}
INDEX_OPS = {"Shape", "Size", "NonZero", "ArgMax", "ArgMin", "NonMaxSuppression"}
FLOAT, UINT8, INT64 = 1, 2, 7  # onnx.TensorProto element types
ONNX_FLOAT_TYPES = {FLOAT: "fp32", 10: "fp16", 16: "bf16", 11: "fp64"}


def normalize(name: str) -> str:
    return ALIASES.get(name.lower(), name.lower())


def executed(counts: dict[str, int]) -> str:
    """'fp32', or 'int8+fp32' when compute ops run in several precisions (lowest first)."""
    present = [p for p in RANK if counts.get(p)] + sorted(p for p in counts if p not in RANK and counts[p])
    return "+".join(present) or "unknown"


def format_counts(counts: dict[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(counts.items()))


def parse_counts(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (item.split(":") for item in text.split(",") if item)}


def judged_precision(requested: str, executed_summary: str) -> str:
    """The lowest of the requested and the executed precisions: its tolerance profile judges the run
    (an fp16 request that ran in bf16 is held to bf16 limits, one that ran in fp32 still to fp16's)."""
    candidates = [requested, *executed_summary.split("+")]
    return min((p for p in candidates if p in RANK), key=RANK.index, default=requested)


def precision_note(runtime: str, requested: str, counts: dict[str, int]) -> str | None:
    """One line when what executed is not what the runtime's name asks for; None when it is."""
    total = sum(counts.values())
    if not total or set(counts) == {requested}:
        return None
    ran = executed(counts)
    share = "compute ops " + ", ".join(f"{counts[p]}/{total} in {p}" for p in ran.split("+"))
    if requested not in counts:
        lower = [p for p in ran.split("+") if p in RANK and RANK.index(p) < RANK.index(requested)] if requested in RANK else []
        if lower:
            return f"{runtime}: {requested} requested, {ran} executed ({share}): judged by the {lower[0]} tolerance profile"
        return (
            f"{runtime}: {requested} requested, {ran} executed ({share}): this check ran at a higher precision "
            f"than its name says and does not test {requested} arithmetic"
        )
    return f"{runtime}: {requested} requested, {ran} executed ({share})"


def onnx_compute_precisions(model: onnx.ModelProto) -> dict[str, int]:
    """Compute ops of an ONNX graph counted by the precision they run in, from the element types
    propagated through the graph (inputs, initializers, Cast, Q/DQ); contrib ops of ONNX Runtime's
    optimized graphs (NCHWc, fused, QLinear) included."""
    types: dict[str, int] = {}
    graph = model.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    types |= {init.name: init.data_type for init in graph.initializer}
    counts: Counter[str] = Counter()
    for node in graph.node:
        inputs = [types.get(name) for name in node.input if name]
        if node.op_type in INTEGER_OPS:
            counts["int8"] += 1
        elif node.op_type in COMPUTE_OPS:
            first = next((t for t in inputs if t in ONNX_FLOAT_TYPES), None)
            counts[ONNX_FLOAT_TYPES[first] if first else "unknown"] += 1
        for name, elem in zip(node.output, _output_types(node, inputs), strict=True):
            if elem is not None and name not in types:
                types[name] = elem
    return dict(counts)


def _output_types(node: onnx.NodeProto, inputs: list[int | None]) -> list[int | None]:
    """Element type of each output of `node`, as far as counting needs it (quantized tensors as uint8)."""
    if node.op_type == "Cast":
        return [next(a.i for a in node.attribute if a.name == "to")]
    if node.op_type == "DequantizeLinear":
        return [inputs[1] if len(inputs) > 1 else FLOAT]
    if node.op_type in FLOAT_OUTPUT_INTEGER_OPS:
        return [FLOAT]
    if node.op_type in INTEGER_OPS or node.op_type.startswith("QLinear") or node.op_type in {"QuantizeLinear", "DynamicQuantizeLinear"}:
        return [UINT8] * len(node.output)
    if node.op_type in INDEX_OPS:
        return [INT64] * len(node.output)
    return [next((t for t in inputs if t is not None), None)] * len(node.output)
