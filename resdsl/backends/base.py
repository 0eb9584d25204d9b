"""The interface every target implements, and the registry that names them.

A target is one module in ``resdsl/backends/`` that provides the members of :class:`Target`, and one line
in :data:`TARGETS`. The pipeline (:mod:`resdsl.pipeline`) drives every target the same way::

    check_environment(options)                       refuse early: a missing library or GPU, an unsupported option
    write(stage, model, spec, options, progress)     the artefact's files in a staging directory -> Written
    open(directory, manifest, threads, providers)    what resdsl.runtime.load returns: a Runner
    plan(manifest)                                   where and at which batch sizes verification runs
    localiser(directory, manifest)                   per-layer outputs, to name the first diverging layer (or None)

``BASE`` names a target whose artefact this one extends: a ``trt`` directory is an ``onnx`` one plus an
engine, so the pipeline writes and verifies the ONNX model first and refuses before a long engine build.
Targets never import each other, the pipeline or the CLI; they import the core (spec, ir, options, manifest)
and the torch lowering.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from ..manifest import Manifest
    from ..options import CompileOptions
    from ..progress import Progress
    from ..spec import Spec

#: target name -> the module under resdsl/backends/ that implements it (imported on first use, so that
#: ``resdsl flops`` never imports torch). Adding a target: its module, and one line here.
TARGETS: dict[str, str] = {
    "torch": "torch",
    "onnx": "onnx",
    "trt": "trt",
    "aoti": "aoti",
}

#: Per-layer outputs of an artefact, keyed by module path: ``(names, x) -> {name: array}``.
Localiser = Callable[[list[str], "np.ndarray"], dict[str, "np.ndarray"]]


class Runner(Protocol):
    """An opened artefact: numpy ``(N, C, H, W)`` in the manifest's input dtype -> numpy logits (the only output),
    or a dict of arrays by output name when the net returns several."""

    backend: str  # what ran it, as verification reports name it: "onnxruntime-cpu", "tensorrt", ...

    def __call__(self, x: np.ndarray) -> np.ndarray | dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Written:
    """What :func:`write` put into the staging directory, for the manifest."""

    files: tuple[str, ...]                                    # file names; the pipeline hashes them
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)  # the target's manifest sections
    packages: tuple[str, ...] = ()                            # distributions whose versions are recorded
    versions: dict[str, str] = field(default_factory=dict)    # versions known only at run time (a runtime's)


@dataclass(frozen=True)
class Plan:
    """Where verification runs: the reference module's device, the batch sizes (None: the default policy),
    and whether TF32 may be used on CUDA (an fp32 artefact is held to fp32 unless it was built with TF32)."""

    device: str = "cpu"
    batches: tuple[int, ...] | None = None
    tf32: bool = False


class Target(Protocol):
    """The members a target module provides."""

    NAME: str
    BASE: str | None
    PRECISIONS: tuple[str, ...]

    def check_environment(self, options: CompileOptions) -> None: ...

    def write(self, stage: Path, model: Any, spec: Spec, options: CompileOptions, progress: Progress) -> Written: ...

    def open(self, directory: Path, manifest: Manifest, threads: int | None = None,
             providers: Sequence[str] | None = None) -> Runner: ...

    def plan(self, manifest: Manifest) -> Plan: ...

    def localiser(self, directory: Path, manifest: Manifest) -> Localiser | None: ...


def no_gpu_reason() -> str:
    """Why torch sees no CUDA GPU, in a user's words: a CPU-only build of torch, or a CUDA build with no usable
    device (no driver, no GPU, or CUDA_VISIBLE_DEVICES hiding them)."""
    import os

    import torch

    if not torch.version.cuda:
        return (f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build of torch and the "
                "NVIDIA driver on a machine with an NVIDIA GPU")
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    why = (f"CUDA_VISIBLE_DEVICES={hidden!r} hides every device" if hidden is not None and not hidden.strip(", ")
           else "no NVIDIA GPU or working driver was found (`nvidia-smi` shows what the driver sees)")
    return f"this torch ({torch.__version__}) is built for CUDA {torch.version.cuda}, but {why}"


def runnable_here() -> str:
    """The targets that need no GPU, for messages that refuse a GPU-only one."""
    return ", ".join(n for n in TARGETS if n != "trt")


def refuse_providers(target: str, providers: Sequence[str] | None) -> None:
    """Execution providers are ONNX Runtime's: any other target refuses them."""
    if providers is not None:
        from ..errors import OptionError

        raise OptionError(f"{{providers}} {', '.join(providers)}: execution providers choose where ONNX Runtime "
                          f"runs an onnx artefact; a {target} artefact runs where it was built to. Drop {{providers}}")


def get(name: str) -> Target:
    """The target called ``name``; InputError listing the registered ones otherwise."""
    if name not in TARGETS:
        raise InputError(f"unknown target {name!r}: resdsl compiles to {', '.join(TARGETS)}")
    module: Target = importlib.import_module(f"{__package__}.{TARGETS[name]}")
    return module


def chain(name: str) -> list[Target]:
    """The target and the targets it extends, base first (``trt`` -> ``[onnx, trt]``)."""
    out = [get(name)]
    while out[0].BASE is not None:
        out.insert(0, get(out[0].BASE))
    return out
