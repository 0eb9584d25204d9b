"""int8 ONNX against fp32: latency ratios measured in one run, and accuracy on real labelled images.

1. Latency of resnet50 (torchvision layout, 224x224) at batch 1 and 8 on ``--threads`` threads: ONNX Runtime
   int8 (the ``ort`` and ``trt`` schemes) against ONNX Runtime fp32 and torch eager fp32. Each runtime runs in a
   process of its own, in alternating rounds, as bench/ort_vs_torch.py does; the figure is the median of the
   rounds' medians. The int8 scales are calibrated on scikit-learn's digits upsampled to 224x224 with the
   net's head cut to 10 classes and random weights: latency does not depend on the weights.
   Goals: int8 (ort scheme) at most 0.5x of ONNX Runtime fp32 and 0.3x of torch eager, batch 1.
2. Accuracy: top-1 on every test image of the reference nets (NETS: the digits' ResNet-20 trained with a decaying
   and with the spec's constant learning rate, 300 images; the Fashion-MNIST ResNet-20, ResNet-20 with SE and
   shortcut D, and ResNet-56 of tests/data/fashion-nets.md, 10,000 images), for the fp32 module and the fp32,
   fp16 and int8 ONNX artefacts, int8 in both schemes with and without fallback, and the layers fallback left
   in float. Goals: int8 within 1 point of the module with fallback, fp16 within 0.1 on Fashion-MNIST.

The CPU's model and the SIMD flags int8 kernels use (AVX2, AVX-512 VNNI, AMX) are printed first.

Run: ``python bench/int8.py [--threads 2] [--rounds 3] [--repeat 20] [--skip-latency] [--skip-accuracy]
[--nets WORD,...]``
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


#: The nets whose accuracy is tabled: (name, spec, weights, data); data "digits" or "fashion" (Debian's
#: dataset-fashion-mnist, skipped when it is not installed).
FASHION = Path("/usr/share/datasets/fashion-mnist")
NETS = [("digits resnet20 (decaying lr)", "specs/cifar/resnet20.yaml", "tests/data/digits-resnet20.pt", "digits"),
        ("digits resnet20 (spec's recipe, lr 0.1)", "specs/cifar/resnet20.yaml",
         "tests/data/digits-resnet20-default.pt", "digits"),
        ("fashion resnet20", "specs/fashion/resnet20.yaml", "tests/data/fashion-resnet20.pt", "fashion"),
        ("fashion resnet20-se-d", "specs/fashion/resnet20-se-d.yaml", "tests/data/fashion-resnet20-se-d.pt",
         "fashion"),
        ("fashion resnet56", "specs/fashion/resnet56.yaml", "tests/data/fashion-resnet56.pt", "fashion")]
VARIANTS = [("fp32", {}), ("fp16", {"precision": "fp16"}),
            ("int8 ort", {"precision": "int8", "quant_scheme": "ort", "fallback": False}),
            ("int8 ort + fallback", {"precision": "int8", "quant_scheme": "ort"}),
            ("int8 trt", {"precision": "int8", "quant_scheme": "trt", "fallback": False}),
            ("int8 trt + fallback", {"precision": "int8", "quant_scheme": "trt"})]


def accuracy_table(tmp: Path, nets: list[str] | None) -> None:
    """Top-1 on every test image of each net's data: the module, then each artefact (int8 with and without
    fallback, and the layers fallback left in float). No budget is enforced here (``--max-drop 100``): the table
    shows what each variant reaches."""
    from resdsl.manifest import read
    from resdsl.options import CompileOptions
    from resdsl.pipeline import compile_spec

    data = {"digits": digits(tmp / "digits-acc"), "fashion": FASHION}
    print("\n| net | test images | module | " + " | ".join(v for v, _ in VARIANTS) + " | left in float (trt / ort) |")
    print("|---|---|---|" + "---|" * len(VARIANTS) + "---|")
    for name, spec, weights, where in NETS:
        if nets and not any(n in name for n in nets):
            continue
        if where == "fashion" and not (FASHION / "train-images-idx3-ubyte.gz").is_file():
            print(f"| {name} | not measured: apt-get install dataset-fashion-mnist |")
            continue
        if not (ROOT / weights).is_file():
            print(f"| {name} | not measured: {weights} is missing |")
            continue
        cells, module, images, in_float = [], 0.0, 0, {}
        for variant, kw in VARIANTS:
            int8 = {"calibration": data[where], "eval_max_drop": 100} if "precision" in kw and \
                kw["precision"] == "int8" else {"eval_data": data[where], "eval_max_drop": 100}
            out = tmp / f"{name.replace(' ', '-')}-{variant.replace(' ', '-')}"
            art, _ = compile_spec(ROOT / spec, CompileOptions(out=out, weights=ROOT / weights, **int8, **kw))
            acc = read(art).verification["accuracy"]  # type: ignore[index]
            module, images = acc["module"]["top1"], acc["images"]
            cells.append(f"{acc['artefact']['top1']:.2f}")
            fb = read(art).section("quantization").get("fallback") or {}
            if fb.get("enabled"):
                in_float[variant.split()[1]] = ", ".join(fb["in_float"]) or "none"
        print(f"| {name} | {images} | {module:.2f} | " + " | ".join(cells) +
              f" | {in_float.get('trt', '-')} / {in_float.get('ort', '-')} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--nets", help="comma list of words picking the accuracy table's nets (default: all)")
    a = ap.parse_args()
    m = machine("onnxruntime-cpu")
    print(f"CPU: {m['cpu']}, {m['cores']} cores; SIMD flags: {', '.join(m['cpu_flags']) or 'none known'}")
    with tempfile.TemporaryDirectory() as tmp:
        if not a.skip_latency:
            latency_ratios(Path(tmp), a.threads, a.repeat, a.rounds)
        if not a.skip_accuracy:
            accuracy_table(Path(tmp), a.nets.split(",") if a.nets else None)


if __name__ == "__main__":
    main()
