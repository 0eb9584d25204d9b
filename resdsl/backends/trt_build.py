"""ONNX -> TensorRT engine: the build, its timing cache, and what the build is tied to.

Written against the documented Python API shared by TensorRT 10 and 11: strongly typed networks only
(reduced precision lives in the ONNX graph), ``build_serialized_network`` and timing caches.
``tensorrt`` is imported lazily, so the rest of resdsl works without it. Every TensorRT name used by
this module and :mod:`resdsl.backends.trt_runtime` is listed in :data:`TRT_API`; the test suite checks
that list against the real TensorRT 10 and 11 bindings and against the source of every
``resdsl/backends/trt*.py`` module (``trt.X.Y`` chains, and attributes of the variables named in
:data:`TRT_OBJECTS`), so keep to those variable names.

The batch profile and the build options are :class:`resdsl.options.BatchProfile` and
:class:`resdsl.options.TrtOptions`, validated (with their defaults) there.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_bytes_atomic
from ..errors import BackendUnavailable, InputError, OptionError
from ..options import BatchProfile, SizeProfile, TrtOptions

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
    "ITimingCache.serialize", "ITimingCache.combine", "IHostMemory.nbytes",
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
    "opt_profile": "IOptimizationProfile", "cache": "ITimingCache", "disk_cache": "ITimingCache",
    "plan": "IHostMemory", "tensor": "ITensor", "runtime": "Runtime", "engine": "ICudaEngine",
    "context": "IExecutionContext",
}
INPUT, OUTPUT = "input", "logits"
_INSTALL = ("install it with `pip install 'resdsl[trt]' --extra-index-url https://pypi.nvidia.com` "
            "on a Linux machine with an NVIDIA GPU and driver")
# NVIDIA's TensorRT distributions (PEP 503 names): the metapackages, per-CUDA wheels, their -bindings and
# -libs halves, and the lean and dispatch runtimes. TensorRT-RTX, TensorRT-LLM and the stubs are other products.
_DISTRIBUTION = re.compile(r"tensorrt(-lean|-dispatch)?(-cu[0-9]+)?(-bindings|-libs)?")


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
            raise BackendUnavailable(_missing_libraries(exc)) from None
    except (ImportError, OSError) as exc:  # e.g. the tensorrt_libs wheel failed to load its shared libraries
        raise BackendUnavailable(_missing_libraries(exc)) from None
    return trt


def _missing_libraries(exc: BaseException) -> str:
    """TensorRT's Python bindings import, its shared libraries do not: what is missing and what runs here."""
    from .base import runnable_here

    lib = re.search(r"lib[\w+.-]+\.so[\w.]*", str(exc))
    return (f"the trt target needs TensorRT's libraries ({lib.group(0) if lib else 'libnvinfer'}), which are not "
            f"installed here: only TensorRT's Python bindings are (resdsl's dev install adds them for API checks). "
            f"Targets that run on this machine: {runnable_here()}. To build engines, {_INSTALL}.")


def _require_gpu() -> tuple[str, str]:
    """The current CUDA device's name and compute capability (``"9.0"``), or BackendUnavailable."""
    import torch

    if not torch.cuda.is_available():
        from .base import no_gpu_reason, runnable_here

        raise BackendUnavailable(f"the trt target needs an NVIDIA GPU: {no_gpu_reason()}. Targets that run without "
                                 f"one: {runnable_here()}.")
    dev = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(dev)
    return torch.cuda.get_device_name(dev), f"{major}.{minor}"


def installed_versions() -> dict[str, str]:
    """The version of every TensorRT distribution installed, by PEP 503 name (``{"tensorrt-cu13": "11.4.0.106"}``).

    Whichever wheels brought TensorRT in (the ``tensorrt`` metapackage, ``tensorrt-cu12``, the bindings
    alone, the lean or dispatch runtime...), the manifest can say which. Where one name is installed twice
    on the path, the first (the one Python imports) wins.
    """
    from importlib import metadata

    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = re.sub(r"[-_.]+", "-", str(dist.metadata["Name"] or "")).lower()
        if _DISTRIBUTION.fullmatch(name) and name not in found:
            found[name] = str(dist.version)
    return dict(sorted(found.items()))


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


def timing_cache_key(options: TrtOptions, precision: str, env: TrtEnvironment) -> str:
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
    gpu = re.sub(r"[^a-z0-9]+", "-", env.gpu_name.lower()).strip("-") or "gpu"
    ver = re.sub(r"[^A-Za-z0-9.]+", "-", env.trt_version)
    return (f"trt{ver}-{gpu}-sm{env.compute_capability.replace('.', '')}-{precision}-"
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


def _check_io(trt: Any, network: Any, onnx_path: Path, profile: BatchProfile, io: str,
              size: SizeProfile | None = None) -> tuple[int, ...]:
    """Refuse a network that is not resdsl's: one ``input`` [batch, C, H, W] and its outputs (the ``logits``, or a
    backbone's feature maps), all at ``io`` dtype, serving ``profile`` and ``size``; return the input's C, H, W
    (H and W are -1 where the model leaves them symbolic, and ``size`` then gives their range)."""
    ins = [network.get_input(i) for i in range(network.num_inputs)]
    outs = [network.get_output(i) for i in range(network.num_outputs)]
    ios = ins + outs
    if [tensor.name for tensor in ins] != [INPUT] or len(ins[0].shape) != 4 or not outs:
        raise InputError(f"{onnx_path}: expected input '{INPUT}' [batch, C, H, W] and at least one output, found "
                         f"{[(tensor.name, list(tensor.shape)) for tensor in ios]}; export the model with resdsl.")
    # TensorRT's parser gives the network's inputs and outputs the ONNX model's types; --precision fp16 keeps
    # them float32 (casting at the edges) unless --io fp16, so they are checked against the I/O dtype.
    names = {trt.DataType.FLOAT: "fp32", trt.DataType.HALF: "fp16"}
    got = [names.get(tensor.dtype, str(tensor.dtype)) for tensor in ios]
    if any(g != io for g in got):
        own = f"give {{io}} {got[0]} for this model, or " if len(set(got)) == 1 and got[0] in names.values() else ""
        raise OptionError(f"{{io}} {io}: {onnx_path} takes '{INPUT}' as {got[0]} and gives "
                          f"{', '.join(f'{t.name!r} as {g}' for t, g in zip(outs, got[1:], strict=True))}, "
                          f"so it cannot make an engine with {io} inputs and outputs; the I/O dtype is fixed when the "
                          f"ONNX model is exported, so {own}export it again with {{io}} {io}")
    shape = tuple(ins[0].shape)
    if shape[0] != -1 and (profile.min, profile.max) != (shape[0], shape[0]):
        raise OptionError(f"{{batch}} {profile}: {onnx_path} fixes the batch size at {shape[0]}, so this profile "
                          f"cannot be served; give {{batch}} {shape[0]}, or export the model with a dynamic batch")
    hw = shape[2:]
    if -1 in hw and (size is None or not size.dynamic):
        raise OptionError(f"{{size}} {size or 'not given'}: {onnx_path} has symbolic height and width, so TensorRT "
                          "needs their range; give {size} MINHxMINW:OPTHxOPTW:MAXHxMAXW")
    if -1 not in hw and size is not None and (size.min, size.max) != (hw, hw):
        raise OptionError(f"{{size}} {size}: {onnx_path} fixes the input at {hw[0]}x{hw[1]}, so this range cannot "
                          f"be served; give {{size}} {hw[0]}x{hw[1]}, or export the model with a size range")
    return shape[1:]


def _configure(trt: Any, builder: Any, options: TrtOptions, profile: BatchProfile, chw: tuple[int, ...],
               size: SizeProfile | None = None) -> Any:
    """The builder config: workspace, optimisation level, TF32 and version-compatibility flags, and the one
    optimisation profile, over the batch range and, for symbolic height and width, the size range."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.builder_optimization_level = options.opt_level
    if not options.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default in TensorRT; fp32 means fp32 unless asked
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    c, h, w = chw
    lo, opt, hi = (size.min, size.opt, size.max) if size is not None and (h, w) == (-1, -1) else ((h, w),) * 3
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT, (profile.min, c, *lo), (profile.opt, c, *opt), (profile.max, c, *hi))
    config.add_optimization_profile(opt_profile)
    return config


def _read_cache(config: Any, blob: bytes) -> Any:
    """The timing cache serialized in ``blob``, or None when it is empty or TensorRT cannot read it."""
    if not blob:
        return None
    try:
        return config.create_timing_cache(blob)
    except (RuntimeError, TypeError, ValueError):  # not a timing cache at all
        return None


def _load_cache(config: Any, cache_file: Path) -> str:
    """Hand the stored timing cache to the builder (a fresh one when unusable); return what happened."""
    blob = cache_file.read_bytes() if cache_file.is_file() else b""
    cache = _read_cache(config, blob)
    if cache is not None and config.set_timing_cache(cache, False):
        return "reused"
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return "discarded" if blob else "new"  # discarded: unreadable, or from another device or version


@contextmanager
def _locked(cache_file: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``NAME.lock`` beside ``cache_file``. The lock file stays (removing it
    would let a waiter lock an unlinked inode); the kernel drops the lock if the process dies."""
    fd = os.open(cache_file.with_name(cache_file.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _save_cache(config: Any, cache_file: Path) -> None:
    """Write the builder's timing cache back, merged with what other builds wrote since this one read it.

    Under the lock, the file is read again and TensorRT's ``ITimingCache.combine`` adds its entries to this
    build's cache (entries both have keep this build's timing); a file TensorRT cannot combine (unreadable,
    another device or version) is replaced.
    """
    cache = config.get_timing_cache()
    with _locked(cache_file):
        disk_cache = _read_cache(config, cache_file.read_bytes() if cache_file.is_file() else b"")
        if disk_cache is not None:
            cache.combine(disk_cache, False)
        write_bytes_atomic(cache_file, memoryview(cache.serialize()))


def _cache_file(options: TrtOptions, precision: str, env: TrtEnvironment) -> Path | None:
    if options.timing_cache is None:
        return None
    cache_file = options.timing_cache / f"{timing_cache_key(options, precision, env)}.timing-cache"
    try:  # fail now, not after a build of minutes
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with _locked(cache_file):
            pass
    except OSError as exc:
        raise OptionError(f"{{timing_cache}} {options.timing_cache}: cannot write the timing cache there "
                          f"({exc.strerror or exc}); give a writable directory, or none") from None
    return cache_file


def build_engine(onnx_path: str | Path, engine_path: str | Path, profile: BatchProfile, options: TrtOptions, *,
                 precision: str, io: str, size: SizeProfile | None = None) -> dict[str, Any]:
    """Build a TensorRT engine from the ONNX model; return the build facts for the manifest.

    ``precision`` is the computation inside the ONNX graph (``"fp32"``, ``"fp16"``, or ``"int8"``: Q/DQ nodes,
    which a strongly typed network turns into int8 layers, no builder flag needed) and ``io`` the dtype of its
    input and outputs (``"fp32"`` or ``"fp16"``); the network's input and outputs must be of the ``io`` dtype.
    ``size``: the range of input heights and widths, for a model whose height and width are symbolic.
    """
    if precision not in ("fp32", "fp16", "int8") or io not in ("fp32", "fp16"):
        raise OptionError(f"{{precision}} {precision!r}, {{io}} {io!r}: the TensorRT backend builds fp32, fp16 or "
                          "int8 (Q/DQ) graphs with fp32 or fp16 inputs and outputs")
    trt = _import_trt()
    env = environment()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: no such ONNX file; export the model first (resdsl compile SPEC --target onnx).")
    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"
        raise InputError(f"{onnx_path}: TensorRT could not parse this ONNX model: {errors}{_said(logger)}")
    chw = _check_io(trt, network, onnx_path, profile, io, size)
    config = _configure(trt, builder, options, profile, chw, size)
    cache_file = _cache_file(options, precision, env)
    cache_status = "off" if cache_file is None else _load_cache(config, cache_file)
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        raise InputError(f"{onnx_path}: TensorRT failed to build an engine (batch {profile}"
                         f"{f', size {size}' if size is not None else ''}, workspace "
                         f"{options.workspace_mib} MiB){_said(logger)}; a larger workspace limit (--workspace, "
                         "TrtOptions.workspace_mib) may help.")
    data = memoryview(plan)
    write_bytes_atomic(engine_path, data)
    if cache_file is not None:
        _save_cache(config, cache_file)
    opts = {**asdict(options), "profile": str(profile), "precision": precision, "io": io,
            "timing_cache": str(cache_file) if cache_file else None}
    if size is not None:
        opts["size"] = str(size)
    return {"trt_version": env.trt_version, "gpu": env.gpu_name, "compute_capability": env.compute_capability,
            "options": opts, "timing_cache_key": timing_cache_key(options, precision, env),
            "timing_cache_status": cache_status, "input_chw": list(chw), "build_seconds": round(seconds, 3),
            "engine_bytes": plan.nbytes, "engine_sha256": hashlib.sha256(data).hexdigest()}
