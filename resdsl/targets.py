"""Per-target steps of ``compile`` and the checks shared by ``compile`` and ``verify``.

Each runner writes its artefact into the staging directory, opens it the way
:mod:`resdsl.runtime` will, and verifies it against the reference module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .expand import expand
from .flops import count
from .manifest import file_entry, now, versions
from .progress import Progress
from .spec import Spec
from .verify import TOLERANCES, Report, compare, flop_check, inputs, localise

Batch = tuple[int, int, int]


def common_manifest(spec: Spec, source: str, opts: Any, batch: Batch, weights: dict[str, Any]) -> dict[str, Any]:
    """Manifest keys every target shares."""
    r = count(expand(spec))
    dynamic = batch[0] != batch[2]
    io = "float16" if opts.io == "fp16" else "float32"
    b: Any = "batch" if dynamic else batch[0]
    return {
        "name": spec.name, "target": opts.target, "created": now(),
        "spec": {"source": source, "sha256": spec.digest(), "resolved": spec.resolved},
        "weights": weights,
        "inputs": [{"name": "input", "shape": [b, spec.in_channels, *spec.in_size], "dtype": io}],
        "outputs": [{"name": "logits", "shape": [b, spec.classes], "dtype": io}],
        "batch": {"min": batch[0], "opt": batch[1], "max": batch[2], "dynamic": dynamic},
        "precision": opts.precision,
        "counts": {"macs": r.macs, "gmacs": round(r.macs / 1e9, 4), "params": r.params, "depth": r.depth},
    }


def verify_batches(manifest_batch: dict[str, Any], requested: tuple[int, ...] = ()) -> tuple[int, ...]:
    from .pipeline import default_verify_batches

    return requested or default_verify_batches(manifest_batch["min"], manifest_batch["max"])


def run_checks(model: Any, spec: Spec, precision: str, batches: tuple[int, ...],
               backends: dict[str, Callable[[np.ndarray], np.ndarray]], seed: int = 0,
               localisers: dict[str, Callable[[list[str], np.ndarray], dict[str, np.ndarray]]] | None = None
               ) -> Report:
    """Feed seeded inputs at each batch size through the module and every backend; compare."""
    import torch

    tol = TOLERANCES[precision]
    report = Report(precision, tol, flops=flop_check(model, spec, count(model.graph).macs))
    shape = (spec.in_channels, *spec.in_size)
    for b in batches:
        x = inputs(shape, b, seed)
        device = next(model.parameters()).device
        with torch.no_grad():
            ref = model(torch.from_numpy(x).to(device)).float().cpu().numpy()
        if not np.isfinite(ref).all():
            from .errors import InputError

            raise InputError(f"{spec.name}: the PyTorch module's own logits overflow to inf/NaN under these weights "
                             "(very deep nets with random weights and untrained BN statistics do), so there is "
                             "nothing to verify against; compile with trained --weights")
        for name, fn in backends.items():
            check = compare(np.asarray(fn(x), dtype=np.float32), ref, tol, name)
            report.checks.append(check)
            if not check.passed and report.divergence is None and localisers and name in localisers:
                report.divergence = localise(model.graph, _torch_intermediates(model), localisers[name],
                                             [n.name for n in model.graph.nodes], x[:1], tol)
    return report


def _torch_intermediates(model: Any) -> Callable[[list[str], np.ndarray], dict[str, np.ndarray]]:
    import torch

    def run(names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = model.forward_intermediates(torch.from_numpy(x), names)
        return {k: v.numpy() for k, v in out.items()}

    return run


def torch_target(model: Any, spec: Spec, opts: Any, batch: Batch, tmp: Path, progress: Progress
                 ) -> tuple[dict[str, Any], Report]:
    """model.pt: a resdsl checkpoint; verified by loading it back into a fresh module."""
    from .runtime import open_artefact
    from .weights import save_checkpoint

    with progress.step("saving model.pt"):
        save_checkpoint(model, tmp / "model.pt", {"spec": spec.resolved, "name": spec.name})
    manifest = {"files": {"model.pt": file_entry(tmp / "model.pt")},
                "versions": versions("torch", "numpy", "pyyaml")}
    art = open_artefact(tmp, {**manifest, "target": "torch", "spec": {"resolved": spec.resolved},
                              "precision": opts.precision, "inputs": [{"dtype": "float32"}]})
    b = verify_batches({"min": batch[0], "max": batch[2]}, opts.verify_batches)
    with progress.step("verifying model.pt against the module"):
        report = run_checks(model, spec, "fp32", b, {"torch-reloaded": art}, opts.seed)
    return manifest, report


def onnx_target(model: Any, spec: Spec, opts: Any, batch: Batch, tmp: Path, progress: Progress
                ) -> tuple[dict[str, Any], Report]:
    """model.onnx (float32, or float16 inside with --precision fp16), verified in ONNX Runtime."""
    from .backends import onnx as ob
    from .runtime import open_artefact

    dynamic = batch[0] != batch[2]
    path = tmp / "model.onnx"
    with progress.step(f"exporting ONNX (opset {opts.opset})"):
        fp32 = path if opts.precision == "fp32" else tmp / ".fp32.onnx"
        info = ob.export(model, fp32, opset=opts.opset, dynamic_batch=dynamic,
                         batch=None if dynamic else batch[0])
        if opts.precision == "fp16":
            ob.convert_fp16(fp32, path, keep_io_fp32=opts.io == "fp32")
            fp32.unlink()
    manifest: dict[str, Any] = {
        "files": {"model.onnx": file_entry(path)},
        "export": {"opset": opts.opset, "exporter": info.exporter, "layers": info.tensor_of},
        "versions": versions("torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript"),
    }
    partial = {**manifest, "target": "onnx", "precision": opts.precision,
               "inputs": [{"dtype": "float16" if opts.io == "fp16" else "float32"}]}
    art = open_artefact(tmp, partial)
    b = verify_batches({"min": batch[0], "max": batch[2]}, opts.verify_batches)
    with progress.step(f"verifying in ONNX Runtime at batch {', '.join(map(str, b))}"):
        report = run_checks(model, spec, opts.precision, b, {art.backend: art}, opts.seed,
                            localisers={art.backend: onnx_localiser(path, info.tensor_of, opts.io)})
    return manifest, report


def onnx_localiser(path: Path, tensor_of: dict[str, str], io: str
                   ) -> Callable[[list[str], np.ndarray], dict[str, np.ndarray]]:
    """Intermediate outputs of the ONNX model, keyed by module path."""
    from .backends import onnx as ob

    def run(names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
        wanted = {n: tensor_of[n] for n in names if n in tensor_of}
        feed = x.astype(np.float16) if io == "fp16" else x
        got = ob.intermediates(path, list(wanted.values()), feed)
        return {n: got[t] for n, t in wanted.items() if t in got}

    return run


def trt_target(model: Any, spec: Spec, opts: Any, batch: Batch, tmp: Path, progress: Progress
               ) -> tuple[dict[str, Any], Report]:
    """model.onnx (verified in ONNX Runtime first), then model.engine, verified on the GPU.

    The engine is checked against the module on CUDA with TF32 off (so an fp32
    engine is held to fp32 tolerance) and against ONNX Runtime, at the
    profile's min, opt and max batch.
    """
    import torch

    from .backends import trt as tb
    from .runtime import open_artefact

    manifest, report = onnx_target(model, spec, opts, batch, tmp, progress)
    if not report.passed:
        return manifest, report
    ex = opts.extra
    options = tb.BuildOptions(profile=tb.BatchProfile(*batch), workspace_mib=ex.get("workspace") or 4096,
                              opt_level=3 if ex.get("opt_level") is None else ex["opt_level"],
                              timing_cache=ex.get("timing_cache"), tf32=bool(ex.get("tf32")),
                              version_compatible=bool(ex.get("version_compatible")), precision=opts.precision)
    with progress.step(f"building the TensorRT engine (profile {batch[0]}:{batch[1]}:{batch[2]})"):
        info = tb.build_engine(tmp / "model.onnx", tmp / "model.engine", options)
    manifest["files"]["model.engine"] = file_entry(tmp / "model.engine")
    manifest["trt"] = info
    manifest["versions"] = {**manifest["versions"], **versions("tensorrt", "tensorrt_cu13_bindings"),
                            "tensorrt_runtime": info["trt_version"]}
    partial = {**manifest, "target": "trt", "precision": opts.precision,
               "inputs": [{"dtype": "float16" if opts.io == "fp16" else "float32"}]}
    engine = open_artefact(tmp, partial)
    ort = open_artefact(tmp, {**partial, "target": "onnx"})
    cuda = torch.device("cuda")
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(ex.get("tf32"))
    try:
        with progress.step(f"verifying the engine at batch {batch[0]}, {batch[1]}, {batch[2]}"):
            gpu = run_checks(model.to(cuda), spec, opts.precision, tuple(sorted(set(batch))),
                             {"tensorrt": engine, ort.backend: ort}, opts.seed)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
        model.to("cpu")
    report.checks += gpu.checks
    report.divergence = report.divergence or gpu.divergence
    return manifest, report


def aoti_target(*args: Any) -> tuple[dict[str, Any], Report]:
    """model.pt2 from torch's AOTInductor; see :mod:`resdsl.backends.aoti`."""
    from .backends import aoti

    return aoti.aoti_target(*args)


RUNNERS: dict[str, Callable[..., tuple[dict[str, Any], Report]]] = {"torch": torch_target, "onnx": onnx_target,
                                                                   "trt": trt_target, "aoti": aoti_target}
