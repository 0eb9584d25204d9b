"""AOTInductor target: ``model.pt2``, the module exported with ``torch.export`` and compiled ahead of time.

The ``aoti`` target (see :mod:`resdsl.backends.base`); :func:`open` is what :mod:`resdsl.runtime` calls to
open such an artefact. The package holds a shared library generated
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

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendUnavailable, InputError
from .base import Plan, Written, refuse_providers

if TYPE_CHECKING:
    from ..manifest import Manifest
    from ..options import CompileOptions, SizeProfile
    from ..progress import Progress

PACKAGE = "model.pt2"
#: torch's notice about its own internals (torch.utils._pytree), raised while Inductor pickles the program;
#: nothing a resdsl user can act on, so export and compile run without it. Other warnings still show.
_TORCH_INTERNAL_WARNINGS = (
    (FutureWarning, r".*isinstance\(treespec, LeafSpec\)`? is deprecated"),
)


@contextlib.contextmanager
def _without_torch_internal_warnings() -> Iterator[None]:
    """Silence :data:`_TORCH_INTERNAL_WARNINGS`, and only those, for the duration of the block."""
    with warnings.catch_warnings():
        for category, message in _TORCH_INTERNAL_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def resolve_device(requested: str | None) -> str:
    """``--device`` or, by default, ``cuda`` when torch sees a GPU, else ``cpu``; BackendUnavailable without one."""
    import torch

    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from .base import no_gpu_reason

        raise BackendUnavailable(f"--device cuda: {no_gpu_reason()}; or compile with --device cpu")
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

        def forward(self, x: torch.Tensor) -> Any:
            y = self.net(x.to(compute))
            return {k: v.to(outer) for k, v in y.items()} if isinstance(y, dict) else y.to(outer)

    return Cast().eval()


def export(module: Any, chw: tuple[int, ...], batch: tuple[int, int, int], dtype: Any, device: str,
           size: SizeProfile | None = None) -> Any:
    """``torch.export`` with a dynamic batch dimension ``batch[0]..batch[2]`` when the two differ, and dynamic
    height and width over ``size`` (a :class:`resdsl.options.SizeProfile` range; the example at its opt size)."""
    import torch
    import torch._dynamo.exc

    dynamic = batch[0] != batch[2]
    ranged = size if size is not None and size.dynamic else None
    c, h, w = chw if ranged is None else (chw[0], *ranged.opt)
    example = torch.zeros(max(2, batch[0]) if dynamic else batch[0], c, h, w, dtype=dtype, device=device)
    dims: dict[int, Any] = {}
    if dynamic:
        dims[0] = torch.export.Dim("batch", min=batch[0], max=batch[2])
    if ranged is not None:
        dims[2] = torch.export.Dim("height", min=ranged.min[0], max=ranged.max[0])
        dims[3] = torch.export.Dim("width", min=ranged.min[1], max=ranged.max[1])
    try:
        with torch.no_grad(), _without_torch_internal_warnings():
            return torch.export.export(module, (example,), dynamic_shapes=(dims,) if dims else None)
    except torch._dynamo.exc.UserError as e:  # constraint violations: the range cannot stay dynamic
        what = "the batch and size ranges" if ranged is not None else "the batch range"
        raise InputError(f"--batch {batch[0]}:{batch[1]}:{batch[2]}{f' --size {ranged}' if ranged else ''}: "
                         f"torch.export cannot keep {what} dynamic ({str(e).splitlines()[0]}); compile a fixed "
                         "--batch N (and --size HxW)") from None


NAME, BASE, PRECISIONS = "aoti", None, ("fp32", "fp16")


def check_environment(options: CompileOptions) -> None:
    """The device must exist, and AOTInductor needs torch >= 2.6 and a C++ compiler."""
    resolve_device(options.aoti_options.device)
    _check_toolchain()


def write(stage: Path, model: Any, spec: Any, options: CompileOptions, progress: Progress) -> Written:
    """model.pt2: an AOTInductor package for cpu or cuda."""
    import torch
    import torch._inductor

    device = resolve_device(options.aoti_options.device)
    if options.precision == "fp16" and device == "cpu":
        # Inductor generates fp16 CPU kernels (computing in fp32 registers) and oneDNN runs fp16 convs; slow without
        # AVX512-FP16/AMX but correct, and verified like any other artefact.
        progress.note("fp16 on cpu: supported by Inductor but emulated on most CPUs (slow); it is meant for cuda")
    b = options.batch
    io_dtype = torch.float16 if options.io == "fp16" else torch.float32
    path = stage / PACKAGE
    module = boundary(model, options.precision, options.io).to(device)
    what = f"batch {b.min}..{b.max}" if b.dynamic else f"batch {b.min}"
    if options.size is not None and options.size.dynamic:
        what += f", size {options.size}"
    with progress.step(f"exporting with torch.export ({what}, {options.precision}, {device})"):
        program = export(module, (spec.in_channels, *spec.in_size), (b.min, b.opt, b.max), io_dtype, device,
                         options.size)
    step = f"compiling with AOTInductor for {device} (a minute or more: Inductor runs a C++ build)"
    with progress.step(step), _without_torch_internal_warnings():
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    del module, program
    if device == "cuda":
        torch.cuda.empty_cache()
    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "dynamic_batch": b.dynamic,
                            "batch_range": [b.min, b.max]}
    if options.size is not None and options.size.dynamic:
        info["size_range"] = [list(options.size.min), list(options.size.max)]
    if device == "cuda":
        info.update(_gpu(), cuda=str(torch.version.cuda))
    return Written((PACKAGE,), sections={"aoti": info}, packages=("torch", "numpy"))


class Runner:
    """A loaded AOTInductor package."""

    backend = "aoti"

    def __init__(self, fn: Callable[[np.ndarray], Any]) -> None:
        self._fn = fn

    def __call__(self, x: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        return self._fn(x)  # type: ignore[no-any-return]


def open(directory: Path, manifest: Manifest, threads: int | None = None, providers: Sequence[str] | None = None
         ) -> Runner:
    """Load ``model.pt2`` after checking the torch release and device it was compiled for."""
    refuse_providers(NAME, providers)
    return Runner(load(directory / PACKAGE, manifest))


def plan(manifest: Manifest) -> Plan:
    """The package runs on its device; the reference module runs there too."""
    return Plan(device=str(manifest.section("aoti").get("device", "cpu")))


def localiser(directory: Path, manifest: Manifest) -> None:
    return None


def _base(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: CPU and CUDA wheels of one release share the AOTI runtime ABI."""
    return version.split("+", 1)[0]


def check_compatible(manifest: Manifest, where: Path) -> str:
    """Refuse, before opening it, a package this torch or machine cannot run; return its device."""
    import torch

    info = manifest.section("aoti")
    if not info.get("device") or not info.get("torch"):
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


def load(path: str | Path, manifest: Manifest) -> Callable[[np.ndarray], Any]:
    """Open ``model.pt2`` after :func:`check_compatible`; return numpy (N, C, H, W) -> numpy logits, or a dict of
    arrays by output name when the net has several outputs."""
    import torch
    import torch._inductor

    path = Path(path)
    device = check_compatible(manifest, path)
    if not path.is_file():
        raise InputError(f"{path}: no such AOTInductor package; compile one with `resdsl compile --target aoti`")
    compiled = torch._inductor.aoti_load_package(str(path))
    names = [t.name for t in manifest.outputs]

    def run(x: np.ndarray) -> Any:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        with torch.no_grad():
            out = compiled(t)
        if isinstance(out, dict):
            out = [out[n] for n in names]
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        if len(outs) != len(names):
            raise InputError(f"{path}: the package returned {len(outs)} outputs, its manifest lists {names}; "
                             "compile the artefact again")
        arrays = [o.float().cpu().numpy() for o in outs]
        return arrays[0] if len(names) == 1 else dict(zip(names, arrays, strict=True))

    return run
