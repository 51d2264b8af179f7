"""A ready ONNX file, read once: is it a model, are its external data files inside its folder, and what are
its inputs and outputs (names, element types, dims; a symbolic or unknown dim is None).

Read without loading the external data, so a large model costs only its graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import HarnessError, first_line


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy's name: float32, float16, int64, ...
    dims: tuple[int | None, ...] | None  # None: no shape declared

    def shape_text(self) -> str:
        return "[?]" if self.dims is None else "[" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"


@dataclass(frozen=True)
class OnnxSignature:
    path: Path
    inputs: tuple[TensorInfo, ...]  # graph inputs that are not initializers
    outputs: tuple[TensorInfo, ...]
    opset: int

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def output(self, name: str) -> TensorInfo | None:
        return next((o for o in self.outputs if o.name == name), None)


def _info(value: object) -> TensorInfo:
    import onnx

    tensor = value.type.tensor_type  # type: ignore[attr-defined]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "unknown"
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim) if tensor.HasField("shape") else None
    return TensorInfo(value.name, dtype, dims)  # type: ignore[attr-defined]


def read_onnx(path: Path, key: str = "[model] onnx") -> OnnxSignature:
    """The signature of the ONNX file at `path`; a missing, unreadable or invalid file, or external data outside
    its folder, is one HarnessError line naming the file and `key` (what to fix)."""
    import onnx

    if not path.is_file():
        raise HarnessError(f"ONNX model not found: {path}", f"fix {key} (paths are relative to the suite file)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise HarnessError(f"{path}: not a readable ONNX file ({first_line(exc)})", f"re-export the model or fix {key}") from exc
    folder = path.resolve().parent
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        where = (folder / location).resolve()
        if not where.is_relative_to(folder):
            raise HarnessError(
                f"{path}: initializer '{tensor.name}' keeps its data outside the model's folder ({location})",
                "move the external data file beside the .onnx file (onnx.save_model(..., location='model.data'))",
            )
        if not where.is_file():
            raise HarnessError(f"{path}: external data file {where.name} of '{tensor.name}' is missing", "copy it beside the .onnx file")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise HarnessError(f"{path}: not a valid ONNX model ({first_line(exc)})", "re-export the model") from exc
    initializers = {i.name for i in model.graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxSignature(
        path, tuple(_info(i) for i in model.graph.input if i.name not in initializers), tuple(_info(o) for o in model.graph.output), opset
    )
