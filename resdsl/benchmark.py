"""``resdsl bench DIR``: latency and throughput of a compiled artefact, reported the way trtexec reports an engine.

The artefact is opened as :func:`resdsl.runtime.load` opens it (manifest and hashes checked first). For each batch
size, ``warmup`` untimed runs, then timed runs of one batch each: by default from host memory to host memory
(what an application calling ``art(x)`` sees). A TensorRT engine is timed on the GPU as trtexec does: the input
already in device memory, one stream, optionally replayed from a captured CUDA graph, with the host-to-device and
device-to-host copies timed on their own.

Each result carries what it measured: the machine (CPU model and the flags int8/fp16 kernels use, or the GPU),
the runtime's version, the artefact's name, target, precision and GMACs, and the achieved multiply-add rate
against the device's dense peak where it is known (NVIDIA data-sheet figures for common GPUs; none for CPUs).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from . import manifest as mf
from .errors import OptionError
from .options import BenchOptions
from .progress import Progress

#: Dense peak (no sparsity) in tera-ops/s: fp32 (non-tensor), fp16 and int8 tensor cores; NVIDIA's data sheets.
#: Matched against the device name, most specific first.
GPU_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"fp32": 67.0, "fp16": 989.0, "int8": 1979.0}),
    ("H100 PCIe", {"fp32": 51.0, "fp16": 756.0, "int8": 1513.0}),
    ("H100 NVL", {"fp32": 60.0, "fp16": 835.0, "int8": 1671.0}),
    ("H100", {"fp32": 67.0, "fp16": 989.0, "int8": 1979.0}),  # SXM
    ("A100", {"fp32": 19.5, "fp16": 312.0, "int8": 624.0}),
    ("L40S", {"fp32": 91.6, "fp16": 362.0, "int8": 733.0}),
    ("L4", {"fp32": 30.3, "fp16": 121.0, "int8": 242.0}),
    ("A10", {"fp32": 31.2, "fp16": 125.0, "int8": 250.0}),
    ("T4", {"fp32": 8.1, "fp16": 65.0, "int8": 130.0}),
)
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile",
              "amx_int8", "amx_bf16", "asimd", "sve")


@dataclass(frozen=True)
class Latency:
    """One batch size's figures: milliseconds per batch, images per second."""

    batch: int
    runs: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    images_per_s: float
    h2d_ms: float | None = None  # TensorRT: host-to-device copy of the input, timed on its own
    d2h_ms: float | None = None  # TensorRT: device-to-host copy of the output
    peak_fraction: float | None = None  # achieved multiply-adds / the device's dense peak


@dataclass
class BenchResult:
    directory: str
    artefact: dict[str, Any]
    backend: str
    timing: str  # what one timed run covers
    machine: dict[str, Any]
    versions: dict[str, str]
    peak: dict[str, Any]
    results: list[Latency] = field(default_factory=list)
    input_size: list[int] = field(default_factory=list)  # the height and width timed at
    gmacs: float | None = None  # per image at that size (the manifest's figure is for the spec's own size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """The human-readable report: a header saying what was measured, then a row per batch size."""
        a, m = self.artefact, self.machine
        device = m.get("gpu") or f"{m['cpu']} ({m['cores']} cores; {', '.join(m['cpu_flags']) or 'no SIMD flags'})"
        size = f" at {self.input_size[0]}x{self.input_size[1]}" if self.input_size else ""
        gmacs = self.gmacs if self.gmacs is not None else a["gmacs"]
        lines = [f"{self.directory}: {a['name']}, {a['target']}, {a['precision']}, {gmacs} GMACs/image{size}; "
                 f"{self.backend}; {device}",
                 f"timing: {self.timing}",
                 f"{'batch':>5} {'runs':>6} {'mean ms':>9} {'p50':>9} {'p90':>9} {'p99':>9} {'min':>9} {'max':>9} "
                 f"{'img/s':>10}" + ("  h2d ms  d2h ms" if any(r.h2d_ms is not None for r in self.results) else "")
                 + ("  of peak" if any(r.peak_fraction is not None for r in self.results) else "")]
        for r in self.results:
            row = (f"{r.batch:>5} {r.runs:>6} {r.mean_ms:>9.3f} {r.p50_ms:>9.3f} {r.p90_ms:>9.3f} {r.p99_ms:>9.3f} "
                   f"{r.min_ms:>9.3f} {r.max_ms:>9.3f} {r.images_per_s:>10.1f}")
            if r.h2d_ms is not None and r.d2h_ms is not None:
                row += f"  {r.h2d_ms:>6.3f}  {r.d2h_ms:>6.3f}"
            if r.peak_fraction is not None:
                row += f"  {100 * r.peak_fraction:>6.2f}%"
            lines.append(row)
        lines.append(f"peak: {self.peak['note']}")
        return "\n".join(lines)


def stats(batch: int, seconds: list[float]) -> Latency:
    """Mean, percentiles (linear interpolation), extremes in ms and throughput of one batch size's runs."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    mean = float(ms.mean())
    return Latency(batch, len(ms), mean, p50, p90, p99, float(ms.min()), float(ms.max()), batch * 1e3 / mean)


def timed(fn: Callable[[], Any], warmup: int, iterations: int | None, duration: float | None) -> list[float]:
    """``warmup`` untimed calls, then the seconds of each timed call: ``iterations`` of them, or as many as fit
    in ``duration`` seconds (default 3; at least one)."""
    for _ in range(warmup):
        fn()
    budget = 3.0 if iterations is None and duration is None else duration
    out: list[float] = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
        if (iterations is not None and len(out) >= iterations) or (
                budget is not None and time.perf_counter() - start >= budget):
            return out


def bench(directory: str | Path, options: BenchOptions, progress: Progress | None = None) -> BenchResult:
    """Measure the artefact in ``directory`` at each batch size of ``options``."""
    from .runtime import load

    progress = progress or Progress(quiet=True)
    art = load(directory, threads=options.threads, providers=options.providers)
    m = art.manifest
    batches = options.batches or (m.batch.opt,)
    outside = [b for b in batches if not m.batch.min <= b <= m.batch.max]
    if outside:
        raise OptionError(f"{{batches}} {','.join(map(str, outside))}: outside {directory}'s batch range "
                          f"{m.batch.min}..{m.batch.max}; choose sizes within it or compile with a wider "
                          "--batch MIN:OPT:MAX")
    device_timer = getattr(art.runner, "device_timer", None)
    if options.cuda_graph and device_timer is None:
        raise OptionError(f"{{cuda_graph}}: CUDA graphs replay a TensorRT engine; {directory} is a {m.target} "
                          "artefact. Drop {cuda_graph}")
    timing = ("GPU compute of one batch already in device memory (one stream"
              f"{', replayed from a CUDA graph' if options.cuda_graph else ''}); copies timed apart"
              if device_timer is not None else "one call from host memory to host memory, as art(x)")
    peak = _peak(art.backend, m.precision)
    result = BenchResult(str(directory), _summary(m), art.backend, timing, machine(art.backend),
                         _versions(art.backend), peak)
    rng = np.random.default_rng(0)
    chw = [int(m.input.shape[1]), *_size(m, options.bench_size, directory)]
    result.input_size = chw[1:]
    macs = _macs_at(m, (chw[1], chw[2]))
    result.gmacs = round(macs / 1e9, 4)
    for b in batches:
        x = rng.standard_normal((b, *chw), dtype=np.float32)
        with progress.step(f"timing batch {b}"):
            if device_timer is not None:
                compute, h2d, d2h = device_timer(x, cuda_graph=options.cuda_graph)
                lat = stats(b, timed(compute, options.warmup, options.iterations, options.duration))
                lat = replace(lat, h2d_ms=1e3 * float(np.median(timed(h2d, 3, 20, None))),
                            d2h_ms=1e3 * float(np.median(timed(d2h, 3, 20, None))))
            else:
                lat = stats(b, timed(partial(art, x), options.warmup, options.iterations, options.duration))
        if peak.get("tops"):
            lat = replace(lat, peak_fraction=lat.images_per_s * macs * 2 / (peak["tops"] * 1e12))
        result.results.append(lat)
    return result


def _size(m: mf.Manifest, size: tuple[int, int] | None, directory: str | Path) -> tuple[int, int]:
    """The input height and width to time at: ``size`` (within the artefact's range), else its opt size."""
    lo, opt, hi = m.size_range()
    if size is None:
        return opt
    if not (lo[0] <= size[0] <= hi[0] and lo[1] <= size[1] <= hi[1]):
        raise OptionError(f"{{bench_size}} {size[0]}x{size[1]}: outside {directory}'s input sizes {lo[0]}x{lo[1]} to "
                          f"{hi[0]}x{hi[1]}; choose a size within them or compile with a wider --size MIN:OPT:MAX")
    return size


def _macs_at(m: mf.Manifest, size: tuple[int, int]) -> int:
    """Multiply-adds per image at ``size``: the manifest's count at the spec's own size, else counted anew."""
    from dataclasses import replace as replaced

    from .expand import expand
    from .flops import count
    from .spec import from_resolved

    spec = from_resolved(m.spec["resolved"], m.spec.get("source", "<manifest>"))
    return m.counts.macs if spec.in_size == size else count(expand(replaced(spec, in_size=size))).macs


def _summary(m: mf.Manifest) -> dict[str, Any]:
    return {"name": m.name, "target": m.target, "precision": m.precision, "gmacs": m.counts.gmacs,
            "params": m.counts.params, "batch": [m.batch.min, m.batch.opt, m.batch.max],
            "input": m.input.dtype}


def machine(backend: str) -> dict[str, Any]:
    """The CPU (model, cores, the SIMD flags that int8/fp16 kernels use) and, for a GPU backend, the GPU."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags.update(value.split())
    except OSError:
        pass
    out: dict[str, Any] = {"cpu": model, "cores": os.cpu_count(), "cpu_flags": [f for f in _CPU_FLAGS if f in flags],
                           "os": platform.platform()}
    if _on_gpu(backend):
        out["gpu"] = _gpu_name()
    return out


def _on_gpu(backend: str) -> bool:
    return backend in ("tensorrt", "onnxruntime-cuda", "onnxruntime-tensorrt") or backend.endswith("cuda")


def _gpu_name() -> str | None:
    try:
        import torch

        return str(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    except Exception:
        return None


def _peak(backend: str, precision: str) -> dict[str, Any]:
    if not _on_gpu(backend):
        return {"tops": None, "note": "the CPU's peak is not known to resdsl, so no fraction of it is given"}
    name = _gpu_name() or ""
    for key, peaks in GPU_PEAKS:
        if key in name:
            kind = precision if precision in peaks else "fp32"
            return {"tops": peaks[kind], "device": name, "kind": kind,
                    "note": f"{name}: dense {kind} peak {peaks[kind]:g} tera-ops/s (data sheet); the fraction counts "
                            "2 ops per multiply-add"}
    return {"tops": None, "note": f"{name or 'this GPU'}: peak not in resdsl's table, so no fraction is given"}


def _versions(backend: str) -> dict[str, str]:
    packages = {"tensorrt": ("tensorrt", "tensorrt_cu13", "tensorrt_cu12", "torch"), "torch": ("torch",),
                "aoti": ("torch",)}.get(backend, ("onnxruntime", "onnxruntime-gpu"))
    return mf.versions("numpy", *packages)
