"""Running a TensorRT engine: the checks before loading one, and the runner.

:func:`check_engine_compatible` refuses, from the manifest alone, an engine this TensorRT or GPU cannot
run; :class:`TrtRunner` deserializes an engine and runs it with the tensor-address execution API
(``execute_async_v3``) on CUDA buffers owned by torch. The TensorRT names used here are listed in
:data:`resdsl.backends.trt_build.TRT_API` with the build's, and checked against the real bindings.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .trt_build import INPUT, TrtEnvironment, _import_trt, _make_logger, _require_gpu, _said

# Version-compatible engines run on newer runtimes of the same major version, plus these documented pairs.
_CROSS_MAJOR = {(8, 10), (10, 11)}


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
        if inputs != [INPUT] or len(names) < 2 or None in io:
            raise InputError(f"{path}: expected an fp32/fp16/bf16 input '{INPUT}' and fp32/fp16/bf16 outputs, found "
                             f"{names}; rebuild the engine with resdsl.")
        #: the outputs in the engine's order, which is the ONNX model's: the logits, or a backbone's feature maps
        self.outputs = [n for n in names if n != INPUT]
        self._in_dtype = dtypes[engine.get_tensor_dtype(INPUT)]
        self._out_dtypes = {n: dtypes[engine.get_tensor_dtype(n)] for n in self.outputs}
        lo, _, hi = (tuple(d) for d in engine.get_tensor_profile_shape(INPUT, 0))
        self.chw, self.batch_range = lo[1:], (lo[0], hi[0])
        self.size_range = (lo[2:], hi[2:])  # the profile's smallest and largest height and width
        self._stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]

    def _fits(self, shape: tuple[int, ...]) -> bool:
        (h0, w0), (h1, w1) = self.size_range
        lo, hi = self.batch_range
        return (len(shape) == 4 and shape[1] == self.chw[0] and lo <= shape[0] <= hi and h0 <= shape[2] <= h1
                and w0 <= shape[3] <= w1)

    def _bind(self, xin: Any) -> dict[str, Any]:
        """Set the input's shape and address, and make and bind each output at the shape TensorRT derives."""
        import torch

        context = self._context
        if not context.set_input_shape(INPUT, tuple(xin.shape)):
            raise InputError(f"TensorRT rejected the input shape {list(xin.shape)}{_said(self._logger)}.")
        context.set_tensor_address(INPUT, xin.data_ptr())
        outs = {}
        for name in self.outputs:
            outs[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=self._out_dtypes[name], device="cuda")
            context.set_tensor_address(name, outs[name].data_ptr())
        return outs

    def __call__(self, x: np.ndarray | Any) -> np.ndarray | dict[str, np.ndarray]:
        """Run a batch ``[N, C, H, W]``; returns the logits ``[N, classes]`` as float32, or a dict of float32
        arrays by output name when the engine has several outputs."""
        import torch

        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        if not self._fits(tuple(t.shape)):
            (h0, w0), (h1, w1) = self.size_range
            raise InputError(f"the engine takes [N, {self.chw[0]}, H, W] with N in {self.batch_range[0]}.."
                             f"{self.batch_range[1]}, H in {h0}..{h1} and W in {w0}..{w1}, got {list(t.shape)}; "
                             "rebuild it with a wider --batch or --size if needed.")
        context = self._context
        self._stream.wait_stream(torch.cuda.current_stream())  # x may come from work on the caller's stream
        with torch.cuda.stream(self._stream):
            xin = t.to(device="cuda", dtype=self._in_dtype).contiguous()
            outs = self._bind(xin)
            ok = context.execute_async_v3(self._stream.cuda_stream)
        self._stream.synchronize()
        if not ok:
            raise RuntimeError(f"TensorRT failed to run the engine{_said(self._logger)}")
        got = {name: out.float().cpu().numpy() for name, out in outs.items()}
        return got[self.outputs[0]] if len(got) == 1 else got

    def device_timer(self, x: np.ndarray, cuda_graph: bool = False) -> tuple[Any, Any, Any]:
        """Three calls for timing as trtexec does, each waiting for the GPU: run the engine on ``x`` already in
        device memory (replayed from a captured CUDA graph with ``cuda_graph``), copy ``x`` host -> device
        (from pinned memory), copy the logits device -> host."""
        import torch

        context, stream = self._context, self._stream
        host = torch.from_numpy(np.ascontiguousarray(x)).to(self._in_dtype).pin_memory()
        xin = host.to("cuda")
        outs = self._bind(xin)
        host_outs = {name: torch.empty(out.shape, dtype=out.dtype).pin_memory() for name, out in outs.items()}
        torch.cuda.synchronize()

        def enqueue() -> None:
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to run the engine{_said(self._logger)}")

        enqueue()  # the first enqueue after a shape change does set-up work that must not be captured
        stream.synchronize()
        run: Any = enqueue
        if cuda_graph:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                enqueue()
            run = graph.replay

        def compute() -> None:
            with torch.cuda.stream(stream):
                run()
            stream.synchronize()

        def h2d() -> None:
            with torch.cuda.stream(stream):
                xin.copy_(host, non_blocking=True)
            stream.synchronize()

        def d2h() -> None:
            with torch.cuda.stream(stream):
                for name, out in outs.items():
                    host_outs[name].copy_(out, non_blocking=True)
            stream.synchronize()

        return compute, h2d, d2h
