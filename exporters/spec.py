"""What the exporters are handed: export settings, the PyTorch model to export, calibration data.

Small types and protocols of their own, so the exporters never see a suite or an input set: whoever
prepares a run (`harness.run.prepared`) hands over the parts that fit them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from exporters.nms_graph import NMS_PLACES, GraphNms
from harness.core.errors import HarnessError

if TYPE_CHECKING:
    import torch

# What the FP16 range audit's findings do (`exporters.fp16_audit`): keep their nodes in FP32, fail the build, or only say so.
Fp16OutOfRange = Literal["keep-fp32", "fail", "report"]


# `[export] exporter`: torch.export (`dynamo`), TorchScript tracing (`torchscript`), or torch.export falling back to
# tracing when torch.export refuses the model (`auto`, e.g. a detector's data-dependent post-processing)
EXPORTERS = ("dynamo", "torchscript", "auto")


@dataclass(frozen=True)
class ExportSpec:
    """How the model becomes files: ONNX export, precision variants, engines."""

    exporter: str = "dynamo"  # one of EXPORTERS
    opset: int = 18
    atol: float = 1e-4
    parity_samples: int = 32
    fp16_op_block_list: tuple[str, ...] = ()
    fp16_keep_fp32: tuple[str, ...] = ()  # layers (PyTorch module names) kept in FP32 in the FP16 model
    fp16_out_of_range: Fp16OutOfRange = "keep-fp32"  # values beyond FP16's range, found by the FP16 range audit
    int8_keep_fp32: tuple[str, ...] = ()  # layers kept in float in the Q/DQ model (`harness export --keep-fp32 auto` finds them)
    int8_calibration: str = "minmax"
    int8_per_channel: bool = True
    int8_reduce_range: bool = True  # 7-bit weights: no 16-bit saturation on x86 CPUs without VNNI
    trt_workspace_mb: int = 1024
    trt_batch: tuple[int, int, int] = (1, 32, 64)
    nms: str = "python"  # one of NMS_PLACES: the task's NMS on raw outputs, or NMS appended to the graph (`exporters.nms_graph`)
    graph_nms: GraphNms | None = None  # with nms = "graph": what the appended graph does (built from the suite's [postprocess])

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise HarnessError(f"unknown exporter '{self.exporter}'", f"choose one of {', '.join(EXPORTERS)}")
        if self.nms not in NMS_PLACES:
            raise HarnessError(f"[export] nms = '{self.nms}'", f"choose one of {', '.join(NMS_PLACES)}")

    def keep_for(self, precision: str) -> tuple[str, ...]:
        return {"fp16": self.fp16_keep_fp32, "int8": self.int8_keep_fp32}.get(precision, ())


class TorchSource(Protocol):
    """A PyTorch model as trained: what identifies it (builder, kwargs, weights) and how to build it."""

    @property
    def builder(self) -> str: ...

    @property
    def weights(self) -> Path: ...

    @property
    def kwargs(self) -> dict[str, Any]: ...

    @property
    def input_name(self) -> str: ...

    @property
    def output_names(self) -> tuple[str, ...]: ...

    def build(self) -> torch.nn.Module:
        """The eval-mode module with its weights loaded."""
        ...


class CalibrationSet(Protocol):
    """INT8 calibration data: sample ids and their input tensors, row for row (`sample(row)`: one sample's own
    tensor, which may differ in size from row to row)."""

    @property
    def ids(self) -> Sequence[str]: ...

    def sample(self, row: int) -> np.ndarray: ...
