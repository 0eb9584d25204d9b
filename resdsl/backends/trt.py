"""The trt target: ``model.onnx`` plus ``model.engine``, a TensorRT engine built from it (see
:mod:`resdsl.backends.base`). Building an engine is :mod:`resdsl.backends.trt_build`, running one
:mod:`resdsl.backends.trt_runtime`; this module re-exports their public names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Plan, Written, refuse_providers
from .trt_build import (
    INPUT,
    OUTPUT,
    TRT_API,
    TRT_OBJECTS,
    TrtEnvironment,
    build_engine,
    environment,
    installed_versions,
    timing_cache_key,
)
from .trt_runtime import TrtRunner, check_engine_compatible

if TYPE_CHECKING:
    import numpy as np

    from ..manifest import Manifest
    from ..options import CompileOptions
    from ..progress import Progress
    from ..spec import Spec

__all__ = ["INPUT", "OUTPUT", "TRT_API", "TRT_OBJECTS", "TrtEnvironment", "TrtRunner", "build_engine",
           "check_engine_compatible", "environment", "installed_versions", "timing_cache_key"]


# --------------------------------------------------------------------------- the trt target
# model.onnx (the onnx target's artefact, verified in ONNX Runtime first) plus model.engine, verified on the GPU
# against the module on CUDA (TF32 off unless the engine was built with it) at the profile's min, opt and max.

NAME, BASE, PRECISIONS = "trt", "onnx", ("fp32", "fp16", "int8")
ENGINE = "model.engine"


def check_environment(options: CompileOptions) -> None:
    """TensorRT and a CUDA GPU, before minutes of export (BackendUnavailable says how to get them)."""
    environment()


def write(stage: Path, model: Any, spec: Spec, options: CompileOptions, progress: Progress) -> Written:
    """Build ``model.engine`` from the ``model.onnx`` the onnx target wrote and verified in ``stage``."""
    b = options.batch
    size = f", size {options.size}" if options.size is not None and options.size.dynamic else ""
    with progress.step(f"building the TensorRT engine (profile {b}{size})"):
        info = build_engine(stage / "model.onnx", stage / ENGINE, b, options.trt_options,
                            precision=options.precision, io=options.io,
                            size=options.size if options.size is not None and options.size.dynamic else None)
    return Written((ENGINE,), sections={"trt": info},
                   versions={**installed_versions(), "tensorrt_runtime": info["trt_version"]})


class Runner:
    """An engine opened after :func:`check_engine_compatible`."""

    backend = "tensorrt"

    def __init__(self, runner: TrtRunner) -> None:
        self._runner = runner

    def __call__(self, x: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        return self._runner(x)

    def device_timer(self, x: np.ndarray, cuda_graph: bool = False) -> tuple[Any, Any, Any]:
        """For ``resdsl bench``: see :meth:`TrtRunner.device_timer`."""
        return self._runner.device_timer(x, cuda_graph=cuda_graph)


def open(directory: Path, manifest: Manifest, threads: int | None = None, providers: Sequence[str] | None = None
         ) -> Runner:
    """Check the engine's TensorRT version and GPU against this machine, then deserialize it."""
    refuse_providers(NAME, providers)
    info = manifest.section("trt")
    check_engine_compatible(info, environment())
    return Runner(TrtRunner(directory / ENGINE, sha256=manifest.files[ENGINE].sha256,
                            allow_host_code=bool(info.get("options", {}).get("version_compatible"))))


def plan(manifest: Manifest) -> Plan:
    """On CUDA, at the profile's min, opt and max; TF32 only where the engine was allowed it."""
    b = manifest.batch
    return Plan(device="cuda", batches=tuple(sorted({b.min, b.opt, b.max})),
                tf32=bool(manifest.section("trt").get("options", {}).get("tf32")))


def localiser(directory: Path, manifest: Manifest) -> None:
    return None
