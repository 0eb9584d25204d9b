"""A stand-in for the ``tensorrt`` module's build path, so :func:`resdsl.backends.trt_build.build_engine` runs here.

It implements only the names in :data:`resdsl.backends.trt_build.TRT_API` that building uses, with the
behaviour TensorRT documents for them: the ONNX parser reads the real file (with ``onnx``: input and
output names, shapes with -1 for a dynamic axis, and the ONNX inputs' and outputs' own element types, as
TensorRT's parser gives them to the network) and reports errors through ``num_errors`` / ``get_error``; a
builder config records workspace, optimisation level, flags (TF32 on by default) and profiles;
``build_serialized_network`` returns ``None`` when a profile does not cover the network's input, or when
the workspace limit is below :data:`MIN_WORKSPACE`, and adds one timing entry per input shape to the
config's timing cache. A timing cache serialises with a header naming the device and TensorRT version;
``set_timing_cache(cache, ignore_mismatch=False)`` returns False for a cache made on another device, and
``ITimingCache.combine(input_cache, ignore_mismatch)`` appends the input's entries, skipping conflicting
ones, and returns False without combining when the input comes from another TensorRT version, or from
another device unless ``ignore_mismatch``. The "engine" is JSON of what the builder was given, so a test
can read back exactly which options reached TensorRT. Nothing here computes; the real API surface is
checked against TensorRT 10's and 11's own bindings by ``test_trt_api_exists_in_tensorrt_bindings``.
"""

from __future__ import annotations

import enum
import json
from typing import Any

__version__ = "11.4.0.106"
DEVICE = "NVIDIA H100 80GB HBM3 sm90"
MIN_WORKSPACE = 16 << 20
CACHE_MAGIC = b"FAKE-TRT-TIMING-CACHE\n"


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    BF16 = "bfloat16"
    INT64 = "int64"


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 5


class BuilderFlag(enum.Enum):
    TF32 = "tf32"
    VERSION_COMPATIBLE = "version_compatible"


class MemoryPoolType(enum.Enum):
    WORKSPACE = "workspace"


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3

    def __init__(self) -> None:
        pass

    def log(self, severity: Any, msg: str) -> None:
        raise NotImplementedError


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, i: int) -> ITensor:
        return self.inputs[i]

    def get_output(self, i: int) -> ITensor:
        return self.outputs[i]


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self.network, self.logger, self.errors = network, logger, []  # type: ignore[var-annotated]

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> str:
        return str(self.errors[i])

    def parse(self, model: bytes, path: str = "") -> bool:
        import onnx

        types = {onnx.TensorProto.FLOAT: DataType.FLOAT, onnx.TensorProto.FLOAT16: DataType.HALF,
                 onnx.TensorProto.BFLOAT16: DataType.BF16, onnx.TensorProto.INT64: DataType.INT64}
        try:
            proto = onnx.load_model_from_string(bytes(model))
            onnx.checker.check_model(proto)
        except Exception as e:  # TensorRT reports a protobuf failure as a parser error, not an exception
            self.errors.append(f"ModelImporter.cpp: Failed to parse ONNX model from file {path}: {e}")
            return False

        def tensor(v: Any) -> ITensor:
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
            return ITensor(v.name, dims, types[v.type.tensor_type.elem_type])

        inits = {i.name for i in proto.graph.initializer}
        self.network.inputs = [tensor(v) for v in proto.graph.input if v.name not in inits]
        self.network.outputs = [tensor(v) for v in proto.graph.output]
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, min: tuple[int, ...], opt: tuple[int, ...],
                  max: tuple[int, ...]) -> None:
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class ITimingCache:
    def __init__(self, device: str, entries: dict[str, Any], version: str = __version__) -> None:
        self.device, self.entries, self.version = device, entries, version

    def serialize(self) -> bytes:
        return CACHE_MAGIC + json.dumps({"device": self.device, "version": self.version,
                                         "entries": self.entries}).encode()

    def combine(self, input_cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if input_cache.version != self.version or (input_cache.device != self.device and not ignore_mismatch):
            return False
        for key, value in input_cache.entries.items():
            self.entries.setdefault(key, value)  # conflicting entries are skipped
        return True


def read_cache(blob: bytes) -> ITimingCache:
    """A serialized timing cache read back (what ``create_timing_cache`` does), for tests to inspect."""
    if not blob.startswith(CACHE_MAGIC):
        raise RuntimeError("Error Code 1: Serialization (invalid timing cache)")
    data = json.loads(blob[len(CACHE_MAGIC):])
    return ITimingCache(data["device"], data["entries"], data["version"])


class IHostMemory(bytes):
    @property
    def nbytes(self) -> int:
        return len(self)


class IBuilderConfig:
    def __init__(self) -> None:
        self.pools: dict[str, int] = {}
        self.builder_optimization_level = 3
        self.flags = {BuilderFlag.TF32}  # TensorRT enables TF32 by default
        self.profiles: list[IOptimizationProfile] = []
        self.cache: ITimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[pool.value] = size

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.flags.discard(flag)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized: bytes) -> ITimingCache:
        blob = bytes(serialized)
        if not blob:
            return ITimingCache(DEVICE, {})
        return read_cache(blob)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if cache.version != __version__ or (cache.device != DEVICE and not ignore_mismatch):
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self.cache


class Builder:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def create_network(self, flags: int) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        inp = network.get_input(0)
        dynamic = [i for i, d in enumerate(inp.shape) if d == -1]
        if dynamic and not config.profiles:
            self.logger.log(ILogger.Severity.ERROR, "Network has dynamic or shape inputs, but no optimization "
                                                    "profile has been defined.")
            return None
        for lo, opt, hi in (p.shapes[inp.name] for p in config.profiles):
            fits = all(d == -1 or lo[i] == opt[i] == hi[i] == d for i, d in enumerate(inp.shape))
            if not (fits and all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True))):
                self.logger.log(ILogger.Severity.ERROR, f"IOptimizationProfile: {inp.name} profile {lo}/{opt}/{hi} "
                                                        f"does not fit the network's shape {inp.shape}")
                return None
        if config.pools.get("workspace", 1 << 40) < MIN_WORKSPACE:
            self.logger.log(ILogger.Severity.ERROR, "Internal Error: no tactic fits the workspace limit")
            return None
        if config.cache is not None:
            config.cache.entries[f"conv-{inp.shape}"] = "tactic-0"
        return IHostMemory(json.dumps({
            "flags": network.flags, "strongly_typed": bool(network.flags & (1 << NetworkDefinitionCreationFlag
                                                                               .STRONGLY_TYPED)),
            "pools": config.pools, "opt_level": config.builder_optimization_level,
            "builder_flags": sorted(f.value for f in config.flags),
            "profiles": [{k: [list(s) for s in v] for k, v in p.shapes.items()} for p in config.profiles],
            "io": [[t.name, list(t.shape), t.dtype.value] for t in (*network.inputs, *network.outputs)],
        }).encode())
