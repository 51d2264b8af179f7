"""ONNX -> OpenVINO IR (xml + bin).

fp32 and fp16 IR come from the FP32 ONNX (fp16 = weights compressed to FP16);
int8 IR comes from the Q/DQ ONNX, not from a separate NNCF run, so that
OpenVINO executes the very quantization parameters ONNX Runtime and TensorRT
execute, and an int8 difference between runtimes is a runtime difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def convert_ir(source: Path, out_xml: Path, compress_to_fp16: bool) -> dict[str, Any]:
    import openvino as ov

    model = ov.convert_model(str(source))
    ov.save_model(model, str(out_xml), compress_to_fp16=compress_to_fp16)
    return {"converter": "openvino.convert_model", "compress_to_fp16": compress_to_fp16, "openvino": ov.get_version()}
