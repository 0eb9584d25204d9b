"""Images/s and latency of ResNet-50 and ResNet-152 on one CUDA GPU: torch eager, torch.compile, AOTInductor, TensorRT.

Usage: ``PYTHONPATH=. python3 bench/gpu.py [--models resnet50,resnet152] [--batches 1,32,256]
[--precisions fp32,fp16] [--backends eager,compile,aoti,trt] [--seconds 2] [--json results.json]``.

Every backend is specialised to each batch size (``torch.compile(dynamic=False)``, a fixed-batch
AOTInductor package, a fixed-batch TensorRT engine), and the aoti and trt artefacts are made by
``resdsl compile`` so they are verified against the module before being timed. fp16 runs take and
return float16 on every backend. TF32 is off unless ``--tf32`` (TensorRT's fp32 engines are built
without it too). Timing uses CUDA events: throughput is ``iters * batch`` over the time of
``iters`` back-to-back calls; latency is the median and p99 of single calls, each bracketed by
events and synchronised. ``TrtRunner`` synchronises its own stream and copies the logits to the
host inside each call (at most 1 MB), so its throughput includes that. Builds take minutes each
(12 AOTInductor packages and 12 engines for the full grid); restrict the grid with the options.

Without a CUDA GPU it says so and exits with status 3.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPECS = {"resnet50": ROOT / "specs" / "torchvision" / "resnet50.yaml",
         "resnet152": ROOT / "specs" / "torchvision" / "resnet152.yaml"}
BACKENDS = ("eager", "compile", "aoti", "trt")
#: H100 SXM dense FP16 tensor-core peak (NVIDIA's datasheet; 1979 TFLOPS is with 2:4 sparsity).
H100_FP16_TFLOPS = 989.0
#: ResNet-50 v1.5 at 224x224: 4.1 GMACs = 8.2 GFLOPs per image.
RESNET50_GFLOPS = 8.2
#: MLPerf Inference (datacenter, offline): ResNet-50 on one H100 SXM, INT8, TensorRT with custom plugins.
MLPERF_H100_IMAGES_S = 88_700.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Needs an NVIDIA GPU with a CUDA build of torch; trt also needs TensorRT.")
    csv = lambda s: [p.strip() for p in s.split(",") if p.strip()]  # noqa: E731
    ap.add_argument("--models", type=csv, default=list(SPECS), help="comma list of: " + ", ".join(SPECS))
    ap.add_argument("--batches", type=lambda s: [int(b) for b in csv(s)], default=[1, 32, 256])
    ap.add_argument("--precisions", type=csv, default=["fp32", "fp16"], help="comma list of: fp32, fp16")
    ap.add_argument("--backends", type=csv, default=list(BACKENDS), help="comma list of: " + ", ".join(BACKENDS))
    ap.add_argument("--seconds", type=float, default=2.0, help="time spent in each throughput measurement")
    ap.add_argument("--warmup", type=int, default=10, help="untimed calls before measuring")
    ap.add_argument("--latency-iters", type=int, default=100, help="single calls timed for the latency figures")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode: default, reduce-overhead "
                    "(CUDA graphs: lower batch-1 latency), max-autotune (much longer compiles)")
    ap.add_argument("--channels-last", action="store_true", help="eager and torch.compile in channels_last")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 in fp32 torch convs and matmuls")
    ap.add_argument("--workspace", type=int, default=8192, metavar="MIB", help="TensorRT workspace limit")
    ap.add_argument("--work", type=Path, help="where artefacts are compiled (default: a temporary directory)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    for name, got, allowed in (("--models", a.models, SPECS), ("--precisions", a.precisions, ("fp32", "fp16")),
                               ("--backends", a.backends, BACKENDS)):
        bad = [g for g in got if g not in allowed]
        if bad or not got:
            ap.error(f"{name}: {', '.join(bad) or 'empty'}; choose from {', '.join(allowed)}")
    if not a.batches or min(a.batches) < 1:
        ap.error("--batches: give positive batch sizes, e.g. 1,32,256")
    return a


def measure(fn: Callable[[Any], Any], x: Any, seconds: float, warmup: int, latency_iters: int) -> dict[str, float]:
    """Throughput of back-to-back calls and latency of single calls, timed with CUDA events."""
    import torch

    for _ in range(warmup):
        fn(x)
    torch.cuda.synchronize()
    # Single calls first: they also give the iteration count for the throughput run.
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
             for _ in range(latency_iters)]
    lat = []
    for start, end in pairs:
        start.record()
        fn(x)
        end.record()
        end.synchronize()
        lat.append(start.elapsed_time(end))
    median = statistics.median(lat)
    iters = max(10, min(10_000, int(seconds * 1000 / max(median, 1e-3))))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn(x)
    end.record()
    end.synchronize()
    total_ms = start.elapsed_time(end)
    lat.sort()
    return {"images_s": iters * x.shape[0] / (total_ms / 1000), "latency_ms": median,
            "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))], "iters": iters}


def artefact(spec: Path, target: str, precision: str, batch: int, work: Path, a: argparse.Namespace) -> Path:
    """A verified aoti or trt artefact for one batch size, made by ``resdsl compile``."""
    from resdsl.options import AotiOptions, TrtOptions
    from resdsl.pipeline import CompileOptions, compile_spec

    out = work / f"{spec.stem}-{target}-{precision}-b{batch}"
    trt = TrtOptions(workspace_mib=a.workspace, timing_cache=work / "timing-cache") if target == "trt" else None
    compile_spec(spec, CompileOptions(target=target, out=out, precision=precision,
                                      io="fp16" if precision == "fp16" else "fp32", batch=str(batch), force=True,
                                      trt=trt, aoti=AotiOptions("cuda") if target == "aoti" else None))
    return out


def runner(backend: str, spec: Path, precision: str, batch: int, work: Path, a: argparse.Namespace
           ) -> tuple[Callable[[Any], Any], Any]:
    """(callable on a CUDA tensor, the module or engine to keep alive) for one configuration."""
    import torch

    from resdsl import build

    dtype = torch.float16 if precision == "fp16" else torch.float32
    if backend in ("eager", "compile"):
        model = build(spec, seed=0).eval().to("cuda", dtype)
        if a.channels_last:
            model = model.to(memory_format=torch.channels_last)
        fn = model if backend == "eager" else torch.compile(model, mode=a.compile_mode, dynamic=False)
        return fn, model
    from resdsl.manifest import read as read_manifest

    d = artefact(spec, backend, precision, batch, work, a)
    manifest = read_manifest(d)
    if backend == "aoti":
        from resdsl.backends import aoti

        aoti.check_compatible(manifest, d / "model.pt2")
        package = torch._inductor.aoti_load_package(str(d / "model.pt2"))
        return package, package
    from resdsl.backends import trt

    engine = trt.TrtRunner(d / "model.engine", sha256=manifest.files["model.engine"].sha256)
    return engine, engine


def run(a: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    work = a.work or Path(tempfile.mkdtemp(prefix="resdsl-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for model_name in a.models:
        spec = SPECS[model_name]
        for precision in a.precisions:
            for backend in a.backends:
                for batch in a.batches:
                    row: dict[str, Any] = {"model": model_name, "precision": precision, "backend": backend,
                                           "batch": batch}
                    t = time.perf_counter()
                    try:
                        fn, keep = runner(backend, spec, precision, batch, work, a)
                        x = torch.randn(batch, 3, 224, 224, device="cuda").to(
                            torch.float16 if precision == "fp16" else torch.float32)
                        if a.channels_last and backend in ("eager", "compile"):
                            x = x.contiguous(memory_format=torch.channels_last)
                        with torch.inference_mode():
                            fn(x)  # torch.compile compiles here
                            row["build_s"] = time.perf_counter() - t
                            row.update(measure(fn, x, a.seconds, a.warmup, a.latency_iters))
                        del fn, keep, x
                    except torch.cuda.OutOfMemoryError:
                        row["error"] = "out of GPU memory"
                    except Exception as e:  # a missing backend (TensorRT) or a failed build: report it, go on
                        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"
                    torch.cuda.empty_cache()
                    results.append(row)
                    print(format_row(row), flush=True)
    return results


HEADER = f"{'model':<10} {'prec':<5} {'backend':<8} {'batch':>5} {'images/s':>10} {'lat ms':>8} {'p99 ms':>8} " \
         f"{'build s':>8}"


def format_row(r: dict[str, Any]) -> str:
    head = f"{r['model']:<10} {r['precision']:<5} {r['backend']:<8} {r['batch']:>5}"
    if "error" in r:
        return f"{head}   -- {r['error']}"
    return (f"{head} {r['images_s']:>10,.0f} {r['latency_ms']:>8.3f} {r['p99_ms']:>8.3f} "
            f"{r.get('build_s', 0.0):>8.1f}")


def roofline(results: list[dict[str, Any]], device: str) -> list[str]:
    """The best fp16 ResNet-50 batch-256 figure against the compute limit and MLPerf's H100 result."""
    limit = H100_FP16_TFLOPS * 1e12 / (RESNET50_GFLOPS * 1e9)
    rows = [r for r in results if r["model"] == "resnet50" and r["precision"] == "fp16" and r["batch"] == 256
            and "images_s" in r]
    lines = [f"compute limit: {H100_FP16_TFLOPS:.0f} TFLOPS dense fp16 (H100 SXM) / {RESNET50_GFLOPS} GFLOPs per "
             f"ResNet-50 image = {limit:,.0f} images/s; MLPerf Inference, H100 SXM, INT8, TensorRT with custom "
             f"plugins: {MLPERF_H100_IMAGES_S:,.0f} images/s"]
    if "H100" not in device:
        lines.append(f"(both figures are for an H100 SXM; this GPU is {device})")
    if not rows:
        return [*lines, "no fp16 ResNet-50 batch-256 figure was measured (run with the defaults to get one)"]
    for r in sorted(rows, key=lambda r: -r["images_s"]):
        tflops = r["images_s"] * RESNET50_GFLOPS / 1e3
        lines.append(f"resnet50 fp16 batch 256 {r['backend']:<8} {r['images_s']:>9,.0f} images/s = {tflops:6.1f} "
                     f"TFLOPS: {r['images_s'] / limit:6.1%} of the compute limit, "
                     f"{r['images_s'] / MLPERF_H100_IMAGES_S:6.1%} of MLPerf's INT8 figure")
    return lines


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"bench/gpu.py: no CUDA GPU: this torch {torch.__version__} (CUDA build: "
              f"{torch.version.cuda or 'none, a CPU-only build'}) sees none. Run it on a machine with an NVIDIA GPU "
              "and a CUDA build of torch (TensorRT too, for the trt rows).", file=sys.stderr)
        return 3
    sys.path.insert(0, str(ROOT))
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    device = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    try:
        from resdsl.backends import trt

        trt_version = trt.environment().trt_version
    except Exception as e:  # BackendUnavailable, or a broken install: report it and go on
        trt_version = f"unavailable ({str(e).splitlines()[0][:80]})"
    print(f"device: {device} (sm {major}.{minor}), torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"cuDNN {torch.backends.cudnn.version()}, TensorRT {trt_version}, TF32 {'on' if a.tf32 else 'off'}, "
          f"torch.compile mode {a.compile_mode}")
    print(HEADER)
    results = run(a)
    print()
    print(HEADER)
    for r in results:
        print(format_row(r))
    print()
    for line in roofline(results, device):
        print(line)
    if a.json:
        a.json.write_text(json.dumps({"device": device, "torch": torch.__version__, "tensorrt": trt_version,
                                      "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
