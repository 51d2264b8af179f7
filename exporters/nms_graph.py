"""NMS inside the graph: a recipe step that appends a detector's decode and ONNX `NonMaxSuppression` to its ONNX file.

Deployed detectors often carry their post-processing in the engine: the runtime, not the serving code, runs NMS.
`[export] nms = "graph"` makes every ONNX-based artifact such a model: after the precision steps (so decode and NMS
run in FP32 on every precision, as the runtime's own NMS kernel does) the graph gains

    decode (the suite's `fcos` or `yolov8` head, as `harness.tasks.decoders` decodes it) -> class probabilities
    -> the `pre_nms_top_k` best (location, class) scores -> NonMaxSuppression (per class, score > score_threshold
    in ONNX Runtime, >= in OpenVINO; IoU > nms_iou; at most max_detections per class)
    -> TopK to a fixed K = max_detections across classes -> num_dets [N, 1] int32, det_boxes [N, K, 4],
       det_scores [N, K], det_labels [N, K] int32 (rows past num_dets: zero boxes and scores, label -1)

which is TensorRT's EfficientNMS output layout; the task reads it with the `final` decoder.  Ties keep the
lower (location, class) index first, as the task's Python NMS orders its candidates.  The PyTorch twin
(`GraphNmsTwin`, what `torch-*` runtimes run) does the same in PyTorch with torchvision's `batched_nms`: the
reference's NMS is torchvision's, each runtime's its own, and where they differ is what a run judges.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.core.errors import HarnessError

if TYPE_CHECKING:
    import onnx
    import torch

GRAPH_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_labels")
GRAPH_DECODERS = ("fcos", "yolov8")
NMS_PLACES = ("python", "graph")  # `[export] nms`: the task's Python NMS on raw outputs, or NMS inside the exported graph
GRAPH_VERSION = 1  # bump when the appended graph changes (it is in the artifact's cache key)


@dataclass(frozen=True)
class GraphNms:
    """What the appended decode and NMS do: the suite's decoder and its flags, the NMS thresholds and caps."""

    decoder: str  # one of GRAPH_DECODERS
    inputs: tuple[str, ...]  # the model outputs the decoder reads (fcos: class logits, box log-distances; yolov8: the head)
    input_hw: tuple[int, int]
    strides: tuple[int, ...] = (8, 16, 32)
    clamp: float = 0.0  # fcos: bound the log-distances before exp (0: none)
    decode_plus_one: bool = False
    score_threshold: float = 0.05
    iou_threshold: float = 0.5
    pre_nms_top_k: int = 1000
    max_detections: int = 100
    # fcos: each location's centre (L, 2: x, y) and stride (L,), from `harness.tasks.boxes.locations` (whoever builds
    # this from a suite computes them; they follow from input_hw and strides, which identify them)
    centres: np.ndarray | None = field(default=None, compare=False, repr=False)
    location_strides: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.decoder not in GRAPH_DECODERS:
            raise HarnessError(
                f"[export] nms = 'graph' appends the decode of {', '.join(GRAPH_DECODERS)} heads; the suite's decoder is '{self.decoder}'",
                "use [export] nms = 'python' for this decoder",
            )
        if len(self.inputs) != (2 if self.decoder == "fcos" else 1):
            raise HarnessError(f"[export] nms = 'graph': the {self.decoder} decode reads {list(self.inputs)}", "list its outputs in order")

    def describe(self) -> dict[str, Any]:
        kept = {f.name: getattr(self, f.name) for f in fields(self) if f.compare}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in kept.items()} | {"graph_version": GRAPH_VERSION}

    def fcos_constants(self) -> tuple[np.ndarray, np.ndarray]:
        """(L, 4) centres as corners (cx, cy, cx, cy; the far corner + 1 with decode_plus_one) and (L, 4) signed
        strides: box = corners + exp(log-distances) * signed strides."""
        assert self.centres is not None and self.location_strides is not None
        corners = np.concatenate([self.centres, self.centres], axis=1) + (np.array([0, 0, 1, 1]) if self.decode_plus_one else 0)
        return corners.astype(np.float32), (self.location_strides[:, None] * np.array([-1, -1, 1, 1])).astype(np.float32)


# -- the ONNX graph ------------------------------------------------------------------------


class _Builder:
    """Nodes and constants appended to one graph, named under a prefix no exported graph uses."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.count = 0

    def name(self) -> str:
        self.count += 1
        return f"graph_nms/{self.count}"

    def const(self, value: np.ndarray | float | int | list[int], dtype: type = np.float32) -> str:
        from onnx import numpy_helper

        name = self.name()
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, out: str | None = None, **attributes: Any) -> Any:
        from onnx import helper

        names = [out] if out else [self.name() for _ in range(outputs)]
        node_name = self.name()
        self.graph.node.append(helper.make_node(op_type, list(inputs), names, name=node_name, **attributes))
        return names[0] if outputs == 1 else names


def _decode(b: _Builder, nms: GraphNms) -> tuple[str, str]:
    """(boxes [N, L, 4], probabilities [N, L, C]) from the decoder's outputs."""
    if nms.decoder == "fcos":
        logits, deltas = nms.inputs
        corners, signed = nms.fcos_constants()
        if nms.clamp:
            deltas = b.op("Min", deltas, b.const(nms.clamp))
        boxes = b.op("Add", b.const(corners), b.op("Mul", b.op("Exp", deltas), b.const(signed)))
        return boxes, b.op("Sigmoid", logits)
    head = b.op("Transpose", nms.inputs[0], perm=[0, 2, 1])  # yolov8 [N, 4 + C, L] -> [N, L, 4 + C]

    def channels(start: int, end: int) -> str:
        return b.op("Slice", head, b.const([start], np.int64), b.const([end], np.int64), b.const([2], np.int64))

    centre, size, scores = channels(0, 2), channels(2, 4), channels(4, 2**62)
    half = b.op("Div", size, b.const(2.0))
    far = b.op("Add", centre, half)
    if nms.decode_plus_one:
        far = b.op("Add", far, b.const(1.0))
    return b.op("Concat", b.op("Sub", centre, half), far, axis=2), scores


def append_nms(source: Path, out: Path, nms: GraphNms) -> dict[str, Any]:
    """Write `source` with `nms`'s decode, NonMaxSuppression and the fixed-K outputs (`GRAPH_OUTPUTS`) appended; the
    graph's own outputs are replaced by them."""
    import onnx

    model = onnx.load(str(source))
    graph = model.graph
    present = {o.name for o in graph.output}
    missing = [name for name in nms.inputs if name not in present]
    if missing:
        raise HarnessError(f"{source.name} has no output {missing[0]!r} for the graph NMS", f"its outputs: {sorted(present)}")
    clash = sorted(present & set(GRAPH_OUTPUTS))
    if clash:
        raise HarnessError(
            f"{source.name} already has an output {clash[0]!r}", "its NMS is in the graph already: use [export] nms = 'python'"
        )
    b = _Builder(graph)
    boxes, probabilities = _decode(b, nms)
    flat = b.op("Flatten", probabilities, axis=1)  # [N, L * C], location-major: the task's candidate order
    flat_shape = b.op("Shape", flat)
    empty = b.op("ConstantOfShape", flat_shape, value=onnx.helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [-1.0]))
    classes = b.op("Gather", b.op("Shape", probabilities), b.const(2, np.int64))
    if nms.pre_nms_top_k:  # only the k best (location, class) scores are candidates; the others read -1
        k = b.op("Min", b.op("Gather", flat_shape, b.const([1], np.int64)), b.const([nms.pre_nms_top_k], np.int64))
        values, indices = b.op("TopK", flat, k, axis=1, largest=1, sorted=1, outputs=2)
        flat = b.op("ScatterElements", empty, indices, values, axis=1)
    per_class = b.op("Transpose", b.op("Reshape", flat, b.op("Shape", probabilities)), perm=[0, 2, 1])  # [N, C, L]
    selected = b.op(
        "NonMaxSuppression",
        boxes,
        per_class,
        b.const([nms.max_detections], np.int64),
        b.const([nms.iou_threshold]),
        b.const([nms.score_threshold]),
        center_point_box=0,
    )  # [M, 3]: image, class, location
    image, label, location = b.op("Split", selected, b.const([1, 1, 1], np.int64), axis=1, outputs=3)
    score = b.op("GatherND", per_class, selected)  # [M]
    position = b.op("Add", b.op("Mul", location, classes), label)  # the flat (location, class) index
    chosen = b.op("ScatterND", empty, b.op("Concat", image, position, axis=1), score)  # selected scores, -1 elsewhere
    k = b.op("Min", b.op("Gather", flat_shape, b.const([1], np.int64)), b.const([nms.max_detections], np.int64))
    top, index = b.op("TopK", chosen, k, axis=1, largest=1, sorted=1, outputs=2)  # [N, K]: ties keep the lower index
    valid = b.op("Greater", top, b.const(-0.5))
    b.op("ReduceSum", b.op("Cast", valid, to=onnx.TensorProto.INT32), b.const([1], np.int64), keepdims=1, out="num_dets")
    kept_boxes = b.op("GatherND", boxes, b.op("Unsqueeze", b.op("Div", index, classes), b.const([2], np.int64)), batch_dims=1)
    b.op("Where", b.op("Unsqueeze", valid, b.const([2], np.int64)), kept_boxes, b.const(0.0), out="det_boxes")
    b.op("Where", valid, top, b.const(0.0), out="det_scores")
    labels = b.op("Where", valid, b.op("Mod", index, classes), b.const(-1, np.int64))
    b.op("Cast", labels, to=onnx.TensorProto.INT32, out="det_labels")
    del graph.output[:]
    for name, kind, dims in (
        ("num_dets", onnx.TensorProto.INT32, ["N", 1]),
        ("det_boxes", onnx.TensorProto.FLOAT, ["N", "K", 4]),
        ("det_scores", onnx.TensorProto.FLOAT, ["N", "K"]),
        ("det_labels", onnx.TensorProto.INT32, ["N", "K"]),
    ):
        graph.output.append(onnx.helper.make_tensor_value_info(name, kind, dims))
    onnx.checker.check_model(model)
    onnx.save_model(model, str(out))
    return {"graph_nms": nms.describe(), "appended_nodes": b.count}


# -- the PyTorch twin ------------------------------------------------------------------------


def twin(model: torch.nn.Module, nms: GraphNms) -> torch.nn.Module:
    """`model` followed by the same decode, top-k and torchvision's `batched_nms`, with the appended graph's outputs."""
    import torch
    from torchvision.ops import batched_nms

    class GraphNmsTwin(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            if nms.decoder == "fcos":
                corners, signed = nms.fcos_constants()
                self.register_buffer("corners", torch.from_numpy(corners), persistent=False)
                self.register_buffer("signed", torch.from_numpy(signed), persistent=False)

        def decode(self, outputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
            if nms.decoder == "fcos":
                logits, deltas = outputs
                deltas = deltas.clamp(max=nms.clamp) if nms.clamp else deltas
                return self.corners + deltas.exp() * self.signed, logits.sigmoid()
            head = outputs[0].transpose(1, 2)
            centre, half = head[..., :2], head[..., 2:4] / 2
            far = centre + half + (1.0 if nms.decode_plus_one else 0.0)
            return torch.cat([centre - half, far], dim=2), head[..., 4:]

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            raw = self.model(x)
            boxes, probabilities = self.decode(raw if isinstance(raw, tuple | list) else (raw,))
            n, _, classes = probabilities.shape
            k = nms.max_detections
            out_boxes, out_scores = boxes.new_zeros((n, k, 4)), boxes.new_zeros((n, k))
            out_labels, counts = torch.full((n, k), -1, dtype=torch.int32), torch.zeros((n, 1), dtype=torch.int32)
            for i in range(n):
                flat = probabilities[i].reshape(-1)
                order = torch.sort(flat, descending=True, stable=True).indices[: nms.pre_nms_top_k or None]
                order = order[flat[order] > nms.score_threshold]
                location, label = order // classes, order % classes
                keep = batched_nms(boxes[i][location], flat[order], label, nms.iou_threshold)[:k]
                counts[i, 0] = len(keep)
                out_boxes[i, : len(keep)] = boxes[i][location[keep]]
                out_scores[i, : len(keep)] = flat[order[keep]]
                out_labels[i, : len(keep)] = label[keep].to(torch.int32)
            return counts, out_boxes, out_scores, out_labels

    return GraphNmsTwin().eval()
