"""FP32 ONNX -> INT8 Q/DQ ONNX by static post-training quantization.

Calibration data is the suite's calibration split fed through the suite's
reference stack (never the eval split).  Weights per channel, activations
and weights symmetric, so the same Q/DQ file is valid for ONNX Runtime,
OpenVINO and TensorRT's explicit quantization: all three run on identical
quantization parameters.  Weights use 7 bits by default (`int8_reduce_range`):
x86 CPUs without VNNI multiply unsigned 8-bit activations by signed 8-bit
weights and add the products in pairs into saturating 16-bit lanes
(VPMADDUBSW); full-range weights overflow them, and the same file scores
points lower there than on a VNNI CPU (the demo classifier: 97.0% -> 80.8%).
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from exporters.spec import CalibrationSet, ExportSpec
from harness.core.errors import HarnessError, first_line

QDQ_OPSET = 13  # DequantizeLinear's `axis` (per-channel weights) arrived in opset 13; TensorRT's explicit quantization needs it
CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}


def calibration_hash(inputs: CalibrationSet) -> str:
    """Identity of the calibration data: sample ids and tensor bytes."""
    digest = hashlib.sha256("\n".join(inputs.ids).encode())
    for row in range(len(inputs.ids)):  # row after row: the bytes of the whole batch when the rows share a shape
        digest.update(np.ascontiguousarray(inputs.sample(row)).tobytes())
    return digest.hexdigest()


class CalibrationReader(CalibrationDataReader):
    """Feeds the calibration tensors and remembers which samples it fed.

    Batches of one by default: the histogram calibrators (entropy, percentile)
    cannot merge batches of different sizes."""

    def __init__(self, inputs: CalibrationSet, input_name: str, batch_size: int = 1) -> None:
        count = len(inputs.ids)
        self._batches = iter([slice(start, min(start + batch_size, count)) for start in range(0, count, batch_size)])
        self.inputs = inputs
        self._input_name = input_name
        self.fed_ids: list[str] = []

    def get_next(self) -> dict[str, np.ndarray] | None:
        rows = next(self._batches, None)
        if rows is None:
            return None
        self.fed_ids.extend(self.inputs.ids[rows])
        return {self._input_name: np.stack([self.inputs.sample(row) for row in range(rows.start, rows.stop)])}


def quantize_int8(source: Path, out: Path, reader: CalibrationReader, export: ExportSpec) -> dict[str, Any]:
    """Write the Q/DQ model; returns provenance (method, samples, data hash)."""
    method, per_channel = export.int8_calibration, export.int8_per_channel
    if method not in CALIBRATION_METHODS:
        raise HarnessError(f"unknown calibration method '{method}'", f"choose one of {sorted(CALIBRATION_METHODS)}")
    with tempfile.TemporaryDirectory() as tmp, redirect_stdout(io.StringIO()):  # the calibrators print progress
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        upgraded = _qdq_opset(prepared)
        quantize_static(
            str(prepared),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=export.int8_reduce_range,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[method],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    return {
        "quantizer": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "calibration_method": method,
        "per_channel": per_channel,
        "reduce_range": export.int8_reduce_range,
        "calibration_samples": len(reader.fed_ids),
        "calibration_sha256": calibration_hash(reader.inputs),
        "calibration_ids_sha256": hashlib.sha256("\n".join(reader.fed_ids).encode()).hexdigest(),
    } | ({"opset_upgraded": upgraded} if upgraded else {})


def _qdq_opset(path: Path) -> str | None:
    """A model of an older opset (a ready file, e.g. opset 12) is converted to QDQ_OPSET in place first; returns
    'old -> new' when it was."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), QDQ_OPSET)
    if opset >= QDQ_OPSET:
        return None
    try:
        converted = version_converter.convert_version(model, QDQ_OPSET)
    except Exception as exc:
        raise HarnessError(
            f"{path.name}: opset {opset} has no per-channel Q/DQ, and converting it to opset {QDQ_OPSET} failed ({first_line(exc)})",
            "export the model at opset 13 or newer, or set [export] int8_per_channel = false",
        ) from exc
    onnx.save(converted, str(path))
    return f"{opset} -> {QDQ_OPSET}"
