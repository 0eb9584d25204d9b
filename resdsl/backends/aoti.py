"""AOTInductor target: ``model.pt2``, the module exported with ``torch.export`` and compiled ahead of time.

:func:`aoti_target` is the ``aoti`` entry of :data:`resdsl.targets.RUNNERS`; :func:`load` is what
:mod:`resdsl.runtime` calls to open such an artefact. The package holds a shared library generated
by Inductor for one device (``cpu`` or ``cuda``; for CUDA, for the GPU architecture it was compiled
on) and one torch version, so :func:`load` checks both against the manifest before opening it.

The package's interface is the manifest's: it takes ``input`` in the manifest's input dtype and
returns ``logits`` in its output dtype. With ``--precision fp16 --io fp32`` the casts to and from
half are compiled into the package, so C++ callers (``examples/cpp/aoti``) need no extra step.

Dynamic batch: ``torch.export`` specialises dimensions of size 0 or 1 in the example input, so the
example batch is always at least 2; the ``Dim``'s lower bound may still be 1 (torch >= 2.3), which
keeps batch 1 inside the compiled range.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, InputError

PACKAGE = "model.pt2"


def resolve_device(requested: str | None) -> str:
    """``--device`` or, by default, ``cuda`` when torch sees a GPU, else ``cpu``; BackendUnavailable without one."""
    import torch

    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}: the aoti target compiles for cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable("--device cuda: this PyTorch (CUDA build: "
                                 f"{torch.version.cuda or 'none, a CPU-only build'}) sees no NVIDIA GPU; install a "
                                 "CUDA build of torch and the NVIDIA driver, or compile with --device cpu")
    return device


def _gpu() -> dict[str, str]:
    """Name and compute capability (``"9.0"``) of the current CUDA device."""
    import torch

    dev = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(dev)
    return {"gpu": torch.cuda.get_device_name(dev), "compute_capability": f"{major}.{minor}"}


def _check_toolchain() -> None:
    """AOTInductor needs ``aoti_compile_and_package`` (torch >= 2.6) and a C++ compiler; say so up front."""
    import torch
    import torch._inductor

    if not hasattr(torch._inductor, "aoti_compile_and_package"):
        raise BackendUnavailable(f"the aoti target needs torch >= 2.6 (torch._inductor.aoti_compile_and_package); "
                                 f"this is torch {torch.__version__}: upgrade torch, or use --target onnx")
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        from torch._inductor.exc import InvalidCxxCompiler
    except ImportError:  # private API moved: let Inductor report it itself
        return
    try:
        get_cpp_compiler()
    except InvalidCxxCompiler:
        raise BackendUnavailable("the aoti target compiles C++ and found no C++ compiler; install g++ or clang++ "
                                 "(e.g. `apt-get install g++`) or set CXX, or use --target onnx") from None


def boundary(model: Any, precision: str, io: str) -> Any:
    """A copy of ``model`` computing in ``precision``, taking and returning tensors of dtype ``io``."""
    import torch
    from torch import nn

    compute = torch.float16 if precision == "fp16" else torch.float32
    outer = torch.float16 if io == "fp16" else torch.float32
    inner = copy.deepcopy(model).to(dtype=compute).eval()
    if compute == outer:
        return inner

    class Cast(nn.Module):
        """Casts at the package boundary: ``io`` outside, ``precision`` inside."""

        def __init__(self) -> None:
            super().__init__()
            self.net = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y: torch.Tensor = self.net(x.to(compute))
            return y.to(outer)

    return Cast().eval()


def export(module: Any, chw: tuple[int, ...], batch: tuple[int, int, int], dtype: Any, device: str) -> Any:
    """``torch.export`` with a dynamic batch dimension ``batch[0]..batch[2]`` when the two differ."""
    import torch
    import torch._dynamo.exc

    dynamic = batch[0] != batch[2]
    example = torch.zeros(max(2, batch[0]) if dynamic else batch[0], *chw, dtype=dtype, device=device)
    shapes = ({0: torch.export.Dim("batch", min=batch[0], max=batch[2])},) if dynamic else None
    try:
        with torch.no_grad():
            return torch.export.export(module, (example,), dynamic_shapes=shapes)
    except torch._dynamo.exc.UserError as e:  # constraint violations: the batch range cannot stay dynamic
        raise InputError(f"--batch {batch[0]}:{batch[1]}:{batch[2]}: torch.export cannot keep the batch dimension "
                         f"dynamic over this range ({str(e).splitlines()[0]}); compile a fixed --batch N") from None


def aoti_target(model: Any, spec: Any, opts: Any, batch: tuple[int, int, int], tmp: Path, progress: Any
                ) -> tuple[dict[str, Any], Any]:
    """model.pt2: an AOTInductor package for cpu or cuda, verified by loading it back as :func:`load` does."""
    import torch
    import torch._inductor

    from ..manifest import file_entry, versions
    from ..runtime import open_artefact
    from ..targets import run_checks, verify_batches

    device = resolve_device(opts.extra.get("device"))
    _check_toolchain()
    if opts.precision == "fp16" and device == "cpu":
        # Inductor generates fp16 CPU kernels (computing in fp32 registers) and oneDNN runs fp16 convs; slow without
        # AVX512-FP16/AMX but correct, and verified below like any other artefact.
        progress.note("fp16 on cpu: supported by Inductor but emulated on most CPUs (slow); it is meant for cuda")
    dynamic = batch[0] != batch[2]
    io_dtype = torch.float16 if opts.io == "fp16" else torch.float32
    path = tmp / PACKAGE
    module = boundary(model, opts.precision, opts.io).to(device)
    what = f"batch {batch[0]}..{batch[2]}" if dynamic else f"batch {batch[0]}"
    with progress.step(f"exporting with torch.export ({what}, {opts.precision}, {device})"):
        program = export(module, (spec.in_channels, *spec.in_size), batch, io_dtype, device)
    with progress.step(f"compiling with AOTInductor for {device} (a minute or more: Inductor runs a C++ build)"):
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    del module, program
    if device == "cuda":
        torch.cuda.empty_cache()
    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "dynamic_batch": dynamic,
                            "batch_range": [batch[0], batch[2]]}
    if device == "cuda":
        info.update(_gpu(), cuda=str(torch.version.cuda))
    manifest: dict[str, Any] = {"files": {PACKAGE: file_entry(path)}, "aoti": info,
                                "versions": versions("torch", "numpy")}
    art = open_artefact(tmp, {**manifest, "target": "aoti", "precision": opts.precision,
                              "inputs": [{"dtype": "float16" if opts.io == "fp16" else "float32"}]})
    b = verify_batches({"min": batch[0], "max": batch[2]}, opts.verify_batches)
    with progress.step(f"verifying model.pt2 on {device} at batch {', '.join(map(str, b))}"):
        report = run_checks(model, spec, opts.precision, b, {art.backend: art}, opts.seed)
    return manifest, report


def _base(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: CPU and CUDA wheels of one release share the AOTI runtime ABI."""
    return version.split("+", 1)[0]


def check_compatible(manifest: dict[str, Any], where: Path) -> str:
    """Refuse, before opening it, a package this torch or machine cannot run; return its device."""
    import torch

    info = manifest.get("aoti")
    if not isinstance(info, dict) or not info.get("device") or not info.get("torch"):
        raise InputError(f"{where}: the manifest's 'aoti' section lacks the device or torch version the package "
                         "was compiled for, so it cannot be checked before loading; compile it again")
    device, built = str(info["device"]), str(info["torch"])
    if _base(built) != _base(torch.__version__):
        raise InputError(f"{where} was compiled by torch {built} but this is torch {torch.__version__}; an "
                         f"AOTInductor package only loads in the torch release that compiled it, so install torch "
                         f"{_base(built)} or compile it again here (nothing was loaded)")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{where} was compiled for cuda ({info.get('gpu', 'a GPU')}) but this torch sees no "
                             "CUDA GPU; run it on a machine with one, or compile with --device cpu")
        here = _gpu()
        if info.get("compute_capability") and info["compute_capability"] != here["compute_capability"]:
            raise InputError(f"{where} holds CUDA kernels for compute capability {info['compute_capability']} "
                             f"({info.get('gpu')}) but this GPU, {here['gpu']}, is {here['compute_capability']}; "
                             "compile it again on this machine")
    elif device != "cpu":
        raise InputError(f"{where}: unknown aoti device {device!r}; this resdsl runs cpu and cuda packages")
    return device


def load(path: str | Path, manifest: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    """Open ``model.pt2`` after :func:`check_compatible`; return numpy (N, C, H, W) -> numpy logits."""
    import torch
    import torch._inductor

    path = Path(path)
    device = check_compatible(manifest, path)
    if not path.is_file():
        raise InputError(f"{path}: no such AOTInductor package; compile one with `resdsl compile --target aoti`")
    compiled = torch._inductor.aoti_load_package(str(path))

    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        with torch.no_grad():
            out = compiled(t)
        out = out[0] if isinstance(out, (list, tuple)) else out
        logits: np.ndarray = out.float().cpu().numpy()
        return logits

    return run
