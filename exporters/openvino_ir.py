"""ONNX -> OpenVINO IR (xml + bin).

fp32 and fp16 IR come from the FP32 ONNX (fp16 = weights compressed to FP16);
int8 IR comes from the Q/DQ ONNX, not from a separate NNCF run, so that
OpenVINO executes the very quantization parameters ONNX Runtime and TensorRT
execute, and an int8 difference between runtimes is a runtime difference.

OpenVINO names the nodes it creates (constants, folded subgraphs) `<Type>_<n>` from a counter global to the
process, so the same ONNX converted after another conversion would give another xml; those names are renumbered
in graph order, and the IR is byte-identical however many conversions the process ran before.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import onnx

GENERATED = re.compile(r"([A-Za-z]\w*?)_\d+")  # OpenVINO's own `<Type>_<counter>` names


def _renumber_generated(model: Any, source: Path) -> None:
    graph = onnx.load(str(source), load_external_data=False).graph
    named = {node.name for node in graph.node} | {name for node in graph.node for name in node.output}
    for index, op in enumerate(model.get_ordered_ops()):
        name = op.get_friendly_name()
        match = GENERATED.fullmatch(name)
        if match and name not in named:
            op.set_friendly_name(f"{match.group(1)}_ir{index}")


def convert_ir(source: Path, out_xml: Path, compress_to_fp16: bool) -> dict[str, Any]:
    import openvino as ov

    model = ov.convert_model(str(source))
    _renumber_generated(model, source)
    ov.save_model(model, str(out_xml), compress_to_fp16=compress_to_fp16)
    return {"converter": "openvino.convert_model", "compress_to_fp16": compress_to_fp16, "openvino": ov.get_version()}
