"""ONNX -> TensorRT engine, and running that engine.

Written against the documented Python API shared by TensorRT 10 and 11:
strongly typed networks only (reduced precision lives in the ONNX graph), the
tensor-address execution API, ``build_serialized_network`` and timing caches.
``tensorrt`` is imported lazily, so the rest of resdsl works without it.
Every TensorRT name used here is listed in :data:`TRT_API`; the test suite
checks that list against the real TensorRT 11 bindings and against this
file's source (``trt.X.Y`` chains, and attributes of the variables named in
:data:`TRT_OBJECTS`), so keep to those variable names.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import BackendUnavailable, InputError

TRT_API: tuple[str, ...] = (
    "__version__", "ILogger", "ILogger.__init__", "ILogger.log", "ILogger.Severity.ERROR",
    "ILogger.Severity.INTERNAL_ERROR", "ILogger.Severity.WARNING",
    "Builder", "Builder.create_network", "Builder.create_builder_config", "Builder.create_optimization_profile",
    "Builder.build_serialized_network", "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
    "OnnxParser", "OnnxParser.parse", "OnnxParser.num_errors", "OnnxParser.get_error",
    "INetworkDefinition.num_inputs", "INetworkDefinition.num_outputs", "INetworkDefinition.get_input",
    "INetworkDefinition.get_output", "ITensor.name", "ITensor.shape", "ITensor.dtype",
    "IBuilderConfig.set_memory_pool_limit", "MemoryPoolType.WORKSPACE", "IBuilderConfig.builder_optimization_level",
    "IBuilderConfig.clear_flag", "IBuilderConfig.set_flag", "BuilderFlag.TF32", "BuilderFlag.VERSION_COMPATIBLE",
    "IBuilderConfig.add_optimization_profile", "IOptimizationProfile.set_shape",
    "IBuilderConfig.create_timing_cache", "IBuilderConfig.set_timing_cache", "IBuilderConfig.get_timing_cache",
    "ITimingCache.serialize", "IHostMemory.nbytes",
    "Runtime", "Runtime.engine_host_code_allowed", "Runtime.deserialize_cuda_engine",
    "ICudaEngine.create_execution_context", "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name",
    "ICudaEngine.get_tensor_mode", "ICudaEngine.get_tensor_dtype", "ICudaEngine.get_tensor_profile_shape",
    "TensorIOMode.INPUT", "DataType.FLOAT", "DataType.HALF", "DataType.BF16",
    "IExecutionContext.set_input_shape", "IExecutionContext.get_tensor_shape",
    "IExecutionContext.set_tensor_address", "IExecutionContext.execute_async_v3",
)
# Variables (or ``self._<name>`` attributes) that hold TensorRT objects, and their classes.
TRT_OBJECTS: dict[str, str] = {
    "builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser", "config": "IBuilderConfig",
    "opt_profile": "IOptimizationProfile", "cache": "ITimingCache", "plan": "IHostMemory", "tensor": "ITensor",
    "runtime": "Runtime", "engine": "ICudaEngine", "context": "IExecutionContext",
}
INPUT, OUTPUT = "input", "logits"
_INSTALL = ("install it with `pip install 'resdsl[trt]' --extra-index-url https://pypi.nvidia.com` "
            "on a Linux machine with an NVIDIA GPU and driver")
# Version-compatible engines run on newer runtimes of the same major version, plus these documented pairs.
_CROSS_MAJOR = {(8, 10), (10, 11)}


def _import_trt() -> Any:
    """Import TensorRT (``tensorrt``, else the standalone ``tensorrt_bindings``) or raise BackendUnavailable."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError:
        try:
            import tensorrt_bindings as trt  # the bindings package: adds __version__ and helpers to the .so
        except ModuleNotFoundError:
            raise BackendUnavailable(f"the TensorRT backend needs TensorRT, which is not installed; "
                                     f"{_INSTALL}.") from None
        except (ImportError, OSError) as exc:
            raise BackendUnavailable(f"TensorRT's Python bindings are installed but could not load its libraries "
                                     f"({exc}); {_INSTALL}.") from None
    except (ImportError, OSError) as exc:  # e.g. the tensorrt_libs wheel failed to load its shared libraries
        raise BackendUnavailable(f"TensorRT is installed but could not load its libraries ({exc}); "
                                 f"{_INSTALL}.") from None
    return trt


def _require_gpu() -> tuple[str, str]:
    """The current CUDA device's name and compute capability (``"9.0"``), or BackendUnavailable."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("the TensorRT backend needs an NVIDIA GPU with a working driver, and this PyTorch "
                                 f"(CUDA build: {torch.version.cuda or 'none, a CPU-only build'}) sees none; "
                                 "install a CUDA build of torch and the NVIDIA driver, or use another backend.")
    dev = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(dev)
    return torch.cuda.get_device_name(dev), f"{major}.{minor}"


@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile's batch sizes: ``min <= opt <= max``, all >= 1."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        vals = (self.min, self.opt, self.max)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in vals):
            raise InputError(f"batch sizes must be integers >= 1, got {vals}; write --batch N or --batch MIN:OPT:MAX.")
        if not self.min <= self.opt <= self.max:
            raise InputError(f"--batch {self} is out of order: it needs MIN <= OPT <= MAX, e.g. --batch 1:8:32.")

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


def parse_batch(text: str) -> BatchProfile:
    """Parse ``--batch``: ``N`` (meaning ``N:N:N``) or ``MIN:OPT:MAX``."""
    parts = text.strip().split(":")
    if len(parts) not in (1, 3) or not all(re.fullmatch(r"[0-9]+", p.strip()) for p in parts):
        raise InputError(f"--batch {text!r} is not a batch size: write N (one fixed batch size) or MIN:OPT:MAX "
                         "with positive integers, e.g. --batch 8 or --batch 1:8:32.")
    nums = [int(p) for p in parts]
    return BatchProfile(*(nums * 3 if len(nums) == 1 else nums))


@dataclass(frozen=True)
class BuildOptions:
    """How to build an engine. ``timing_cache`` is a directory; the file in it is named by :func:`timing_cache_key`."""

    profile: BatchProfile
    workspace_mib: int = 4096
    opt_level: int = 3
    timing_cache: Path | None = None
    tf32: bool = False
    version_compatible: bool = False
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if not isinstance(self.profile, BatchProfile):
            raise InputError(f"the batch profile must be a BatchProfile (see parse_batch), got {self.profile!r}.")
        if self.precision not in ("fp32", "fp16"):
            raise InputError(f"--precision {self.precision!r} is not supported by the TensorRT backend; "
                             "use fp32 or fp16 (export the ONNX model at the same precision).")
        if isinstance(self.workspace_mib, bool) or not isinstance(self.workspace_mib, int) or self.workspace_mib < 1:
            raise InputError(f"--workspace {self.workspace_mib!r} must be a whole number of MiB >= 1, e.g. 4096.")
        if isinstance(self.opt_level, bool) or not isinstance(self.opt_level, int) or not 0 <= self.opt_level <= 5:
            raise InputError(f"--opt-level {self.opt_level!r} must be an integer from 0 (fastest build) to 5 "
                             "(slowest build, fastest engine); TensorRT's default is 3.")
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))


@dataclass(frozen=True)
class TrtEnvironment:
    """What an engine is tied to: the TensorRT version and the GPU."""

    trt_version: str
    gpu_name: str
    compute_capability: str


def environment() -> TrtEnvironment:
    """The installed TensorRT and the current CUDA GPU; BackendUnavailable if either is missing."""
    trt = _import_trt()
    gpu, cc = _require_gpu()
    return TrtEnvironment(str(trt.__version__), gpu, cc)


def timing_cache_key(options: BuildOptions, trt_version: str, gpu_name: str, compute_capability: str) -> str:
    """A file-name-safe key naming the timing cache that builds with these options may share.

    TensorRT documents a timing cache as specific to the device, the CUDA and TensorRT versions, and the
    builder flags that change layer implementations (TF32, version compatibility's lean-runtime tactics),
    so those are in the key; the GPU's name too, as SKUs of one compute capability time differently.
    Precision is in the graph's types, which TensorRT's per-layer keys already see, but separate files cost
    nothing. Left out: the workspace limit and optimisation level only decide which tactics are tried and
    the batch profile's shapes are part of TensorRT's per-layer keys, so a timing measured under one is
    valid under another and sharing only saves time. CUDA is fixed by the TensorRT build, and TensorRT
    checks the cache's header anyway (a mismatched cache is dropped, see :func:`build_engine`).
    """
    gpu = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    ver = re.sub(r"[^A-Za-z0-9.]+", "-", trt_version)
    return (f"trt{ver}-{gpu}-sm{compute_capability.replace('.', '')}-{options.precision}-"
            f"{'tf32' if options.tf32 else 'notf32'}-{'vc' if options.version_compatible else 'novc'}")


def _make_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps warnings and errors, so failures can say what TensorRT said."""
    class _Logger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR,
                            trt.ILogger.Severity.WARNING):
                self.messages.append(msg)

    return _Logger()


def _said(logger: Any) -> str:
    return ("; TensorRT said: " + " | ".join(logger.messages[-5:])) if logger.messages else ""


def build_engine(onnx_path: str | Path, engine_path: str | Path, options: BuildOptions) -> dict[str, Any]:
    """Build a TensorRT engine from the ONNX model; return the build facts for the manifest."""
    trt = _import_trt()
    env = environment()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if options.timing_cache is not None and options.timing_cache.exists() and not options.timing_cache.is_dir():
        raise InputError(f"--timing-cache {options.timing_cache} is a file; it names a directory that holds one "
                         "cache per TensorRT version, GPU and precision, so pass a directory.")
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: no such ONNX file; export the model first (resdsl compile SPEC --target onnx).")
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"
        raise InputError(f"{onnx_path}: TensorRT could not parse this ONNX model: {errors}{_said(logger)}")
    ios = [network.get_input(i) for i in range(network.num_inputs)]
    ios += [network.get_output(i) for i in range(network.num_outputs)]
    if [tensor.name for tensor in ios] != [INPUT, OUTPUT] or len(ios[0].shape) != 4:
        raise InputError(f"{onnx_path}: expected input '{INPUT}' [batch, C, H, W] and output '{OUTPUT}', found "
                         f"{[(tensor.name, list(tensor.shape)) for tensor in ios]}; export the model with resdsl.")
    tensor = network.get_input(0)
    shape = tuple(tensor.shape)
    want = trt.DataType.HALF if options.precision == "fp16" else trt.DataType.FLOAT
    if tensor.dtype != want:
        got = {trt.DataType.FLOAT: "fp32", trt.DataType.HALF: "fp16"}.get(tensor.dtype, str(tensor.dtype))
        raise InputError(f"{onnx_path}: the model's input is {got}, not {options.precision}; precision is "
                         f"set in the ONNX graph, so export it with --precision {options.precision} first.")
    prof = options.profile
    if shape[0] != -1 and (prof.min, prof.max) != (shape[0], shape[0]):
        raise InputError(f"{onnx_path}: the batch size is fixed at {shape[0]} in this model, so --batch {prof} "
                         f"cannot be served; use --batch {shape[0]} or export with a dynamic batch.")
    chw = shape[1:]
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.builder_optimization_level = options.opt_level
    if not options.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default in TensorRT; fp32 means fp32 unless asked
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT, (prof.min, *chw), (prof.opt, *chw), (prof.max, *chw))
    config.add_optimization_profile(opt_profile)

    key = timing_cache_key(options, env.trt_version, env.gpu_name, env.compute_capability)
    cache_file = options.timing_cache / f"{key}.timing-cache" if options.timing_cache else None
    cache_status = "off"
    if cache_file is not None:
        blob = cache_file.read_bytes() if cache_file.is_file() else b""
        try:
            cache = config.create_timing_cache(blob)
        except (RuntimeError, TypeError, ValueError):  # not a timing cache at all
            cache = None
        cache_status = "reused" if blob else "new"
        if cache is None or not config.set_timing_cache(cache, False):  # unreadable or from another device
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)
            cache_status = "discarded"
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        raise InputError(f"{onnx_path}: TensorRT failed to build an engine (batch {prof}, workspace "
                         f"{options.workspace_mib} MiB){_said(logger)}; a larger --workspace may help.")
    data = memoryview(plan)
    write_bytes_atomic(engine_path, data)
    if cache_file is not None:
        cache = config.get_timing_cache()
        write_bytes_atomic(cache_file, memoryview(cache.serialize()))
    opts = asdict(options)
    opts["profile"] = str(options.profile)
    opts["timing_cache"] = str(cache_file) if cache_file else None
    return {"trt_version": env.trt_version, "gpu": env.gpu_name, "compute_capability": env.compute_capability,
            "options": opts, "timing_cache_key": key, "timing_cache_status": cache_status,
            "input_chw": list(chw), "build_seconds": round(seconds, 3),
            "engine_bytes": plan.nbytes, "engine_sha256": hashlib.sha256(data).hexdigest()}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:4])


def check_engine_compatible(manifest_trt: dict[str, Any], env: TrtEnvironment) -> None:
    """Refuse, before deserializing, an engine this TensorRT and GPU cannot run.

    The compute capability must match (engines are built without hardware compatibility, so they are tied
    to the GPU architecture; another GPU of the same capability runs them, maybe at another speed). The
    TensorRT version must match exactly, unless the engine was built version-compatible: then any newer
    runtime of the same major version, or of the next major where NVIDIA documents it (10 -> 11), is
    accepted, and an older runtime never is.
    """
    missing = [k for k in ("trt_version", "compute_capability") if not manifest_trt.get(k)]
    if missing:
        raise InputError(f"the manifest's TensorRT section lacks {', '.join(missing)}, so the engine cannot be "
                         "checked before loading it; rebuild it with `resdsl compile SPEC --target trt`.")
    built, cc = str(manifest_trt["trt_version"]), str(manifest_trt["compute_capability"])
    gpu = manifest_trt.get("gpu", "an unrecorded GPU")
    if cc != env.compute_capability:
        raise InputError(f"the engine was built for compute capability {cc} ({gpu}) but this GPU, {env.gpu_name}, "
                         f"is {env.compute_capability}; TensorRT engines are tied to the GPU architecture, so "
                         "rebuild it on this machine with `resdsl compile SPEC --target trt`.")
    if built == env.trt_version:
        return
    if not manifest_trt.get("options", {}).get("version_compatible", False):
        raise InputError(f"the engine was built with TensorRT {built} but TensorRT {env.trt_version} is installed; "
                         f"engines only load in the TensorRT version that built them, so rebuild it here, install "
                         f"TensorRT {built}, or build with --version-compatible.")
    b, r = _version(built), _version(env.trt_version)
    if not b or not r or r < b or (b[0] != r[0] and (b[0], r[0]) not in _CROSS_MAJOR):
        raise InputError(f"the version-compatible engine was built with TensorRT {built}, which TensorRT "
                         f"{env.trt_version} cannot load (only newer runtimes of the same major version, or "
                         f"10 -> 11, can); rebuild it with `resdsl compile SPEC --target trt`.")


class TrtRunner:
    """Deserialize an engine and run it on CUDA buffers owned by torch, on a torch CUDA stream.

    Deserializing an engine runs code from it, so only load engines you trust: ``sha256`` (from the
    manifest) is checked before deserializing, and ``allow_host_code`` (needed by version-compatible
    engines, which embed TensorRT's lean runtime) is off unless asked.
    """

    def __init__(self, engine_path: str | Path, *, sha256: str | None = None, allow_host_code: bool = False) -> None:
        import torch

        trt = _import_trt()
        _require_gpu()
        path = Path(engine_path)
        if not path.is_file():
            raise InputError(f"{path}: no such engine file; build it with `resdsl compile SPEC --target trt`.")
        blob = path.read_bytes()
        if sha256 is not None and hashlib.sha256(blob).hexdigest() != sha256:
            raise InputError(f"{path}: the engine's SHA-256 does not match the manifest; it changed after the build, "
                             "so it is not loaded; rebuild it.")
        self._logger = _make_logger(trt)
        runtime = trt.Runtime(self._logger)
        runtime.engine_host_code_allowed = allow_host_code
        engine = runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise InputError(f"{path}: TensorRT could not load this engine{_said(self._logger)}; it may come from "
                             "another TensorRT version or GPU (rebuild it here), or be version-compatible "
                             "(load it with allow_host_code=True if you trust it).")
        self._runtime, self._engine = runtime, engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                  trt.DataType.BF16: torch.bfloat16}
        io = [dtypes.get(engine.get_tensor_dtype(n)) for n in names]
        if inputs != [INPUT] or sorted(names) != sorted([INPUT, OUTPUT]) or None in io:
            raise InputError(f"{path}: expected an fp32/fp16/bf16 input '{INPUT}' and output '{OUTPUT}', found "
                             f"{names}; rebuild the engine with resdsl.")
        self._in_dtype, self._out_dtype = (dtypes[engine.get_tensor_dtype(n)] for n in (INPUT, OUTPUT))
        lo, _, hi = (tuple(d) for d in engine.get_tensor_profile_shape(INPUT, 0))
        self.chw, self.batch_range = lo[1:], (lo[0], hi[0])
        self._stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]

    def __call__(self, x: np.ndarray | Any) -> np.ndarray:
        """Run a batch ``[N, C, H, W]``; returns the logits ``[N, classes]`` as float32."""
        import torch

        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        lo, hi = self.batch_range
        if t.dim() != 4 or tuple(t.shape[1:]) != self.chw or not lo <= t.shape[0] <= hi:
            raise InputError(f"the engine takes [N, {', '.join(map(str, self.chw))}] with N in {lo}..{hi}, got "
                             f"{list(t.shape)}; rebuild it with a wider --batch if needed.")
        context = self._context
        self._stream.wait_stream(torch.cuda.current_stream())  # x may come from work on the caller's stream
        with torch.cuda.stream(self._stream):
            xin = t.to(device="cuda", dtype=self._in_dtype).contiguous()
            if not context.set_input_shape(INPUT, tuple(xin.shape)):
                raise InputError(f"TensorRT rejected the input shape {list(xin.shape)}{_said(self._logger)}.")
            out = torch.empty(tuple(context.get_tensor_shape(OUTPUT)), dtype=self._out_dtype, device="cuda")
            context.set_tensor_address(INPUT, xin.data_ptr())
            context.set_tensor_address(OUTPUT, out.data_ptr())
            ok = context.execute_async_v3(self._stream.cuda_stream)
        self._stream.synchronize()
        if not ok:
            raise RuntimeError(f"TensorRT failed to run the engine{_said(self._logger)}")
        return out.float().cpu().numpy()
