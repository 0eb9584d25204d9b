"""ONNX Runtime against torch eager, and compile-and-verify against a bare export.

1. Latency of the compiled resnet50 (torchvision layout) in ONNX Runtime against
   torch eager on the same module, batch 1 and 8, both on 2 threads.
   Goal: ORT at most 0.55x of eager at batch 1.
2. Whole-process time of ``resdsl compile specs/resnet152.yaml --target onnx``
   (build, export, check, verify, manifest) against a process that builds the
   same module and calls ``torch.onnx.export`` bare. Goal: at most 1.5x.

Run: ``python bench/ort_vs_torch.py [--threads 2] [--repeat 20] [--skip-compile]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

BARE_EXPORT = """
import sys, torch
from resdsl import build
model = build(sys.argv[1]).eval()
torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), sys.argv[2], input_names=["input"],
                  output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
"""


def latency(fn, x: np.ndarray, repeat: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        fn(x)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def runtime_ratio(threads: int, repeat: int, tmp: Path) -> None:
    import torch

    from resdsl import build
    from resdsl.backends import onnx as ob
    from resdsl.pipeline import CompileOptions, compile_spec

    torch.set_num_threads(threads)
    spec = ROOT / "specs" / "torchvision" / "resnet50.yaml"
    out, _ = compile_spec(spec, CompileOptions(target="onnx", out=tmp / "r50", batch="1:1:8"))
    sess = ob.session(out / "model.onnx", threads=threads)
    model = build(spec).eval()

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    print(f"resnet50 (torchvision layout), 224x224, {threads} threads, median of {repeat}")
    for b in (1, 8):
        x = np.random.default_rng(0).standard_normal((b, 3, 224, 224), dtype=np.float32)
        t_ort, t_eager = latency(lambda a: ob.run(sess, a), x, repeat), latency(eager, x, repeat)
        goal = "  (goal <= 0.55x: " + ("met)" if t_ort / t_eager <= 0.55 else "NOT met)") if b == 1 else ""
        print(f"  batch {b}: onnxruntime {t_ort * 1e3:7.1f} ms, torch eager {t_eager * 1e3:7.1f} ms, "
              f"ratio {t_ort / t_eager:.2f}x{goal}")


def compile_ratio(tmp: Path, repeat: int) -> None:
    spec = "specs/resnet152.yaml"

    def timed(cmd: list[str]) -> float:
        t = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t

    ours = [timed([sys.executable, "cli.py", "compile", spec, "--target", "onnx", "-o", str(tmp / "c152"),
                   "--force"]) for _ in range(repeat)]
    bare = [timed([sys.executable, "-c", BARE_EXPORT, spec, str(tmp / "bare.onnx")]) for _ in range(repeat)]
    o, b = statistics.median(ours), statistics.median(bare)
    print(f"resnet152: resdsl compile --target onnx {o:.1f} s (export, check, verify at 2 batch sizes, manifest); "
          f"bare torch.onnx.export {b:.1f} s; ratio {o / b:.2f}x (goal <= 1.5x: {'met' if o / b <= 1.5 else 'NOT met'})"
          f"; whole processes, median of {repeat}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--compile-repeat", type=int, default=3)
    ap.add_argument("--skip-compile", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        runtime_ratio(a.threads, a.repeat, Path(d))
        if not a.skip_compile:
            compile_ratio(Path(d), a.compile_repeat)


if __name__ == "__main__":
    main()
