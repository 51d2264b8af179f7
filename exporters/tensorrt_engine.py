"""ONNX -> serialized TensorRT engine, one path for TensorRT 10 and 11.

Precision comes from the ONNX file (FP16 tensors, Q/DQ nodes), never from
builder flags: TensorRT 11 removed BuilderFlag.FP16/INT8 and the INT8
calibrator, and TensorRT 10 supports the same strongly typed build.  TF32 is
cleared so `trt-fp32` is real FP32.  The timing cache is persisted between
builds.  Needs an NVIDIA GPU; everything here is imported lazily.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.core import devices
from harness.core.devices import import_tensorrt, tensorrt_major
from harness.core.errors import HarnessError
from harness.core.files import atomic_write


@dataclass(frozen=True)
class EngineOptions:
    input_name: str
    batch: tuple[int, int, int]  # min, opt, max of the optimization profile
    workspace_mb: int
    input_hw: tuple[int, int] | None = None  # the stack's tensor size, for an NCHW input whose H and W the ONNX leaves dynamic
    min_hw: tuple[int, int] | None = None  # per-image sizes: the profile spans min_hw (its minimum) to input_hw (opt and max)


def engine_fields(source_sha256: str, options: EngineOptions) -> dict[str, Any]:
    """Cache key of an engine: source model, options, TensorRT version, GPU."""
    trt = import_tensorrt()
    return {"source_sha256": source_sha256, "tensorrt": str(trt.__version__), **devices.gpu_identity(), **asdict(options)}


def _profile_shape(shape: tuple[int, ...], batch: int, input_hw: tuple[int, int] | None = None) -> tuple[int, ...]:
    """The profile's shape at `batch`: H and W left dynamic by the ONNX (a ready file) take the stack's size."""
    rest = list(shape[1:])
    if len(rest) == 3 and input_hw is not None:
        rest[1:] = [size if dim < 0 else dim for dim, size in zip(rest[1:], input_hw, strict=True)]
    if any(d < 0 for d in rest):
        raise HarnessError(f"TensorRT input shape {shape} has dynamic non-batch dimensions", "export with a fixed input size")
    return (batch, *rest)


def build_engine(source: Path, out: Path, options: EngineOptions, timing_cache: Path) -> dict[str, Any]:
    trt = import_tensorrt()
    major = tensorrt_major(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10: strong typing is opt-in.  TensorRT 11: always on; the flag is deprecated and ignored.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if major == 10 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise HarnessError(f"TensorRT cannot parse {source}: {errors}", "check the ONNX opset and ops against TensorRT's support matrix")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
    if tf32_flag is not None:
        config.clear_flag(tf32_flag)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = tuple(tensor.shape)
        sides = (options.min_hw or options.input_hw, options.input_hw, options.input_hw)
        low, opt, high = (_profile_shape(shape, b, hw) for b, hw in zip(options.batch, sides, strict=True))
        profile.set_shape(tensor.name, low, opt, high)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise HarnessError(f"TensorRT engine build failed for {source}", "see the TensorRT log above")
    out.write_bytes(bytes(serialized))
    atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return {
        "builder": "tensorrt.Builder.build_serialized_network",
        "tensorrt": str(trt.__version__),
        "strongly_typed": True,
        "tf32": False,
        "workspace_mb": options.workspace_mb,
        "batch_profile": list(options.batch),
    }
