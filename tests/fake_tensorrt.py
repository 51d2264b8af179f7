"""A faithful fake of the `tensorrt` Python module, at the API boundary the
harness uses: Builder / network / OnnxParser / builder config / optimization
profile / timing cache on the build side; Runtime / ICudaEngine /
IExecutionContext on the run side.

Strict like the real bindings: objects have fixed attributes (`__slots__`),
so touching an API the fake does not expose fails; the TensorRT 11 variant
has no FP16/INT8 builder flags and no INT8 calibrator.  The "engine" it
serializes names the ONNX file, and executing it runs that file through ONNX
Runtime on buffers held by `FakeDeviceMemory`, so a fake run produces real
numbers.
"""

from __future__ import annotations

import importlib.machinery
import json
import types
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort


class FakeDeviceMemory:
    """Host arrays standing in for device buffers; an address is a registry key."""

    stream_handle = 1234

    def __init__(self) -> None:
        self.buffers: dict[int, np.ndarray] = {}
        self.synchronized = 0

    def _register(self, array: np.ndarray) -> tuple[Any, int]:
        address = 0x1000 + 0x100 * len(self.buffers)
        self.buffers[address] = array
        return address, address

    def upload(self, array: np.ndarray) -> tuple[Any, int]:
        return self._register(np.ascontiguousarray(array).copy())

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[Any, int]:
        return self._register(np.full(shape, np.nan, dtype))

    def download(self, buffer: Any) -> np.ndarray:
        return self.buffers[buffer]

    def synchronize(self) -> None:
        self.synchronized += 1


def make_fake_tensorrt(version: str, memory: FakeDeviceMemory | None = None) -> types.ModuleType:
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # find_spec() callers (torch, the harness) see it installed
    trt.__version__ = version
    calls: list[tuple[str, Any]] = []
    trt.calls = calls  # type: ignore[attr-defined]

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 0  # deprecated and ignored in 11.x, still exposed

    flags = {"TF32": "TF32", "FP16": "FP16", "INT8": "INT8", "OBEY_PRECISION_CONSTRAINTS": "OBEY"} if major == 10 else {"TF32": "TF32"}
    BuilderFlag = type("BuilderFlag", (), flags)

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class TensorIOMode:
        INPUT = "INPUT"
        OUTPUT = "OUTPUT"

    class Tensor:
        __slots__ = ("name", "shape")

        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class Network:
        __slots__ = ("flags", "inputs", "outputs", "source")

        def __init__(self, flags: int) -> None:
            self.flags, self.inputs, self.outputs, self.source = flags, [], [], None

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, index: int) -> Tensor:
            return self.inputs[index]

    class OnnxParser:
        __slots__ = ("network",)

        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            graph = onnx.load(path).graph
            init = {i.name for i in graph.initializer}
            for value in graph.input:
                if value.name not in init:
                    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
                    self.network.inputs.append(Tensor(value.name, dims))
            self.network.outputs = [o.name for o in graph.output]
            self.network.source = path
            return True

        @property
        def num_errors(self) -> int:
            return 0

    class TimingCache:
        __slots__ = ("data",)

        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+timing"

    class Profile:
        __slots__ = ("shapes",)

        def __init__(self) -> None:
            self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, name: str, low: tuple[int, ...], opt: tuple[int, ...], high: tuple[int, ...]) -> None:
            self.shapes[name] = (low, opt, high)

    class Config:
        __slots__ = ("cleared", "pools", "profiles", "set_flags", "timing_cache")

        def __init__(self) -> None:
            self.cleared, self.set_flags, self.pools, self.profiles, self.timing_cache = [], [], {}, [], None

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            self.pools[pool] = size

        def clear_flag(self, flag: str) -> None:
            self.cleared.append(flag)

        def set_flag(self, flag: str) -> None:
            self.set_flags.append(flag)

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> TimingCache:
            calls.append(("create_timing_cache", data))
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.timing_cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.timing_cache

    class Builder:
        __slots__ = ("logger",)

        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            calls.append(("build", config))
            spec = {"onnx": network.source, "inputs": [t.name for t in network.inputs], "outputs": network.outputs}
            spec["profile"] = {name: shapes for p in config.profiles for name, shapes in p.shapes.items()}
            return json.dumps(spec).encode()

    class Context:
        __slots__ = ("addresses", "engine", "shapes")

        def __init__(self, engine: Engine) -> None:
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            low, _, high = self.engine.spec["profile"][name]
            if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True)):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            zeros = {n: np.zeros(s, np.float32) for n, s in self.shapes.items()}
            index = self.engine.spec["outputs"].index(name)
            return self.engine.session.run(None, zeros)[index].shape

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            assert memory is not None and stream_handle == memory.stream_handle
            feeds = {n: memory.buffers[self.addresses[n]] for n in self.engine.spec["inputs"]}
            for name, value in zip(self.engine.spec["outputs"], self.engine.session.run(None, feeds), strict=True):
                memory.buffers[self.addresses[name]][...] = value
            return True

    class Engine:
        __slots__ = ("session", "spec")

        def __init__(self, spec: dict[str, Any]) -> None:
            self.spec = spec
            self.session = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])

        @property
        def num_io_tensors(self) -> int:
            return len(self.spec["inputs"]) + len(self.spec["outputs"])

        def get_tensor_name(self, index: int) -> str:
            return (self.spec["inputs"] + self.spec["outputs"])[index]

        def get_tensor_mode(self, name: str) -> str:
            return TensorIOMode.INPUT if name in self.spec["inputs"] else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> str:
            return "float32"

        def create_execution_context(self) -> Context:
            return Context(self)

    class Runtime:
        __slots__ = ("logger",)

        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            try:
                return Engine(json.loads(data))
            except ValueError:
                return None

    for item in (Logger, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType, TensorIOMode, Builder, OnnxParser, Runtime):
        setattr(trt, item.__name__, item)
    trt.nptype = np.dtype  # type: ignore[attr-defined]
    return trt
