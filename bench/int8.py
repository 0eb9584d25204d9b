"""int8 ONNX against fp32: latency ratios measured in one run, and accuracy on real labelled images.

1. Latency of resnet50 (torchvision layout, 224x224) at batch 1 and 8 on ``--threads`` threads: ONNX Runtime
   int8 (the ``ort`` and ``trt`` schemes) against ONNX Runtime fp32 and torch eager fp32. Each runtime runs in a
   process of its own, in alternating rounds, as bench/ort_vs_torch.py does; the figure is the median of the
   rounds' medians. The int8 scales are calibrated on scikit-learn's digits upsampled to 224x224 with the
   net's head cut to 10 classes and random weights: latency does not depend on the weights.
   Goals: int8 (ort scheme) at most 0.5x of ONNX Runtime fp32 and 0.3x of torch eager, batch 1.
2. Accuracy: top-1 on the digits test split (300 images) of ResNet-20 and ResNet-56 trained here by
   ``resdsl train`` (ResNet-20 from tests/data/digits-resnet20.pt; ResNet-56 trained for the same 150
   iterations), for the fp32 module and the fp32, fp16 and int8 (both schemes) ONNX artefacts.
   Goals: int8 within 1 point of the module, fp16 within 0.2.

The CPU's model and the SIMD flags int8 kernels use (AVX2, AVX-512 VNNI, AMX) are printed first.

Run: ``python bench/int8.py [--threads 2] [--rounds 3] [--repeat 20] [--skip-latency] [--skip-accuracy]``
(needs scikit-learn only to make the digits: ``pip install scikit-learn``; tests/data/digits.npz is used
otherwise).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from bench.ort_vs_torch import round_median  # noqa: E402
from resdsl.benchmark import machine  # noqa: E402

R50_10 = "resdsl: 1\nextends: torchvision/resnet50.yaml\nname: resnet50-tv-10\nhead: {classes: 10}\nexpect: null\n"


def digits(out: Path) -> Path:
    from experiments.degradation import write_digits

    arrays = np.load(ROOT / "tests" / "data" / "digits.npz")
    return write_digits(out, images=arrays["images"], targets=arrays["targets"])


def latency_ratios(tmp: Path, threads: int, repeat: int, rounds: int) -> None:
    from resdsl.options import CompileOptions
    from resdsl.pipeline import compile_spec

    specs = tmp / "specs"
    subprocess.run(["cp", "-r", str(ROOT / "specs"), str(specs)], check=True)
    spec = specs / "r50-10.yaml"  # at the top of its spec tree, so that what it extends lies inside it
    spec.write_text(R50_10)
    data = digits(tmp / "digits")
    arts = {"ort fp32": compile_spec(spec, CompileOptions(out=tmp / "fp32", batch="1:1:8"))[0]}
    for scheme in ("ort", "trt"):
        arts[f"ort int8 ({scheme})"] = compile_spec(spec, CompileOptions(
            out=tmp / scheme, batch="1:1:8", precision="int8", calibration=data, calibration_samples=128,
            quant_scheme=scheme, eval_max_drop=100, random_weights_ok=True, resize=True))[0]  # latency only
    runs = {**{k: ("ort", str(v)) for k, v in arts.items()}, "torch eager fp32": ("eager", str(spec))}
    print(f"resnet50 (torchvision layout, 10-class head), 224x224, {threads} threads; each runtime in its own "
          f"process, {rounds} alternating rounds of {repeat} runs; median of round medians")
    for b in (1, 8):
        med: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(rounds):
            for name, (which, target) in runs.items():
                med[name].append(round_median(which, target, b, threads, repeat))
        t = {k: statistics.median(v) for k, v in med.items()}
        for name in runs:
            print(f"  batch {b}: {name:<18} {t[name] * 1e3:8.1f} ms")
        r_ort, r_eager = t["ort int8 (ort)"] / t["ort fp32"], t["ort int8 (ort)"] / t["torch eager fp32"]
        goal = (f" (goals 0.5x / 0.3x: {'met' if r_ort <= 0.5 else 'NOT met'} / "
                f"{'met' if r_eager <= 0.3 else 'NOT met'})") if b == 1 else ""
        print(f"  batch {b}: int8 (ort scheme) / ORT fp32 {r_ort:.2f}x, / torch eager {r_eager:.2f}x; trt scheme / "
              f"ORT fp32 {t['ort int8 (trt)'] / t['ort fp32']:.2f}x{goal}")


def accuracy_table(tmp: Path) -> None:
    from resdsl.evaluate import evaluate
    from resdsl.options import CompileOptions, EvalOptions
    from resdsl.pipeline import compile_spec
    from resdsl.train import TrainOptions, train

    data = digits(tmp / "digits-acc")
    weights = {"resnet20": ROOT / "tests" / "data" / "digits-resnet20.pt"}
    out = train(TrainOptions(spec=ROOT / "specs" / "cifar" / "resnet56.yaml", data=data, out=tmp / "r56",
                             iterations=150, batch=32, lr=0.05, milestones=(100, 130), eval_every=150,
                             progress=False))
    weights["resnet56"] = Path(out["checkpoint"])
    print("top-1 (%) on the digits test split, 300 images")
    print(f"{'net':<10} {'module':>8} {'fp32':>8} {'fp16':>8} {'int8 ort':>9} {'int8 trt':>9}")
    for net, w in weights.items():
        spec = ROOT / "specs" / "cifar" / f"{net}.yaml"
        cells, module = [], None
        for name, kw in (("fp32", {}), ("fp16", {"precision": "fp16"}),
                         ("ort", {"precision": "int8", "calibration": data, "quant_scheme": "ort"}),
                         ("trt", {"precision": "int8", "calibration": data, "quant_scheme": "trt"})):
            art, _ = compile_spec(spec, CompileOptions(out=tmp / f"{net}-{name}", weights=w,
                                                       eval_max_drop=100 if "calibration" in kw else None, **kw))
            r = evaluate(art, EvalOptions(data=data))
            module = r.module.top1
            cells.append(f"{r.artefact.top1:8.2f}" if name in ("fp32", "fp16") else f"{r.artefact.top1:9.2f}")
        print(f"{net:<10} {module:8.2f} {' '.join(cells)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    a = ap.parse_args()
    m = machine("onnxruntime-cpu")
    print(f"CPU: {m['cpu']}, {m['cores']} cores; SIMD flags: {', '.join(m['cpu_flags']) or 'none known'}")
    with tempfile.TemporaryDirectory() as tmp:
        if not a.skip_latency:
            latency_ratios(Path(tmp), a.threads, a.repeat, a.rounds)
        if not a.skip_accuracy:
            accuracy_table(Path(tmp))


if __name__ == "__main__":
    main()
