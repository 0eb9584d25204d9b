"""Why int8 loses accuracy, and which calibration to use: measured on a trained net and real labelled images.

For one spec, its trained weights and a dataset (any layout ``resdsl train`` reads), with every layer in int8
(no fallback), top-1 on the data's whole test split against the fp32 model:

1. **Placement.** The ``trt`` scheme with Q/DQ where ONNX Runtime's quantizer puts them (on every Conv's output,
   every ReLU's output, every Add's output: how resdsl placed them before) against TensorRT's placement (inputs of
   Conv and Gemm and the residual input of Add only); the ``ort`` scheme beside them.
2. **Layers.** What each layer costs: the logit error it recovers when it alone stays in float (the ranking
   ``compile`` reports), and the activation ranges calibration found for the tensors those layers read.
3. **Calibration.** min-max, percentile and entropy, on 128, 512 and 2,000 calibration images, per scheme.

Run: ``python experiments/int8_study.py SPEC --weights W --data DATA [--samples 128,512,2000]
[--methods minmax,percentile,entropy] [--top 8]``. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def _setup(spec_path: str, weights: Path, data: Path, tmp: Path) -> tuple[Any, Any, Path, Any]:
    """The spec, the labelled data with its preprocessing, the BN-folded fp32 ONNX model, and a Judge on the whole
    test split."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from resdsl.backends.onnx_export import export
    from resdsl.backends.onnx_quant import Images
    from resdsl.backends.onnx_sensitivity import Judge
    from resdsl.backends.torch import from_graph
    from resdsl.data import Labelled, preprocessing
    from resdsl.expand import expand
    from resdsl.readers import load_dataset
    from resdsl.spec import load
    from resdsl.weights import load_into, read_weights

    spec = load(spec_path)
    w = read_weights(weights)
    model = from_graph(expand(spec))
    load_into(model, w)
    ds = load_dataset(data, classes=spec.classes, size=spec.in_size, channels=spec.in_channels)
    labelled = Labelled(data, ds, preprocessing(spec.normalize, ds, w.trained))
    export(model.eval(), tmp / "fp32.onnx", opset=18, dynamic_batch=True)
    quant_pre_process(str(tmp / "fp32.onnx"), str(tmp / "pre.onnx"), skip_symbolic_shape=True)
    test = np.asarray(labelled.preprocess.apply(ds.test_x).numpy(), dtype=np.float32)
    images = Images(np.empty(0), test, ds.test_y.numpy(), f"{data} (test)", "", "")
    import onnx

    judge = Judge.of(onnx.load(str(tmp / "pre.onnx")), images)
    return spec, labelled, tmp / "pre.onnx", judge


def _quantizer(pre: Path, labelled: Any, scheme: str, method: str, samples: int, work: Path,
               placed: bool = True) -> Any:
    from resdsl.backends.onnx_quant import Quantizer
    from resdsl.data import calibration_sample

    chosen = calibration_sample(labelled.dataset, samples, labelled.path)
    x = np.asarray(labelled.preprocess.apply(chosen).numpy(), dtype=np.float32)
    work.mkdir(parents=True, exist_ok=True)
    return Quantizer(pre, x, scheme, method, work, tensorrt_placement=placed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec")
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--samples", default="128,512,2000")
    ap.add_argument("--methods", default="minmax,percentile,entropy")
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    samples = [int(s) for s in args.samples.split(",")]
    methods = args.methods.split(",")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        spec, labelled, pre, judge = _setup(args.spec, args.weights, args.data, tmp)
        n = len(judge.x)
        print(f"{spec.name}, {args.weights.name}, {n} test images of {args.data}; fp32 top-1 {judge.fp32_top1:.2f}%\n")
        default = 512 if len(labelled.dataset.train_x) >= 512 else len(labelled.dataset.train_x)

        print("| scheme | Q/DQ placement | top-1 | drop | logit error | Q/DQ nodes |")
        print("|---|---|---|---|---|---|")
        ranked: dict[str, Any] = {}
        for scheme, placed, name in (("ort", False, "ONNX Runtime's (every op)"),
                                     ("trt", False, "ONNX Runtime's (every op): before"),
                                     ("trt", True, "TensorRT's")):
            q = _quantizer(pre, labelled, scheme, "minmax", default, tmp / f"{scheme}-{placed}", placed)
            m = q.model()
            s = judge.score(m)
            qdq = sum(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in m.graph.node)
            print(f"| {scheme} | {name} | {s.top1:.2f}% | {judge.fp32_top1 - s.top1:+.2f} | {s.logit_error:.2g} | "
                  f"{qdq} |")
            ranked[f"{scheme}-{placed}"] = (q, m, s)

        for key, title in (("trt-False", "trt scheme, ONNX Runtime's placement"),
                           ("trt-True", "trt scheme, TensorRT's placement"), ("ort-False", "ort scheme")):
            q, m, s = ranked[key]
            ranges = json.loads(q.cache.read_text()) if q.cache.is_file() else {}
            rows = []
            for node in q.layers():
                r = judge.score(q.model([node]))
                rows.append((s.logit_error - r.logit_error, r.top1, node))
            rows.sort(reverse=True)
            print(f"\n{title}: the {args.top} costliest layers (each alone in float)\n")
            print("| layer | logit error recovered | top-1 with it in float | its input's calibrated range |")
            print("|---|---|---|---|")
            fp32 = {n.name: n for n in __import__("onnx").load(str(pre)).graph.node}
            for rec, top1, node in rows[:args.top]:
                src = fp32[node].input[0] if node in fp32 else ""
                rng = _range(ranges, src)
                print(f"| {node.rsplit('/', 1)[0]} | {rec:.2g} | {top1:.2f}% | {rng} |")

        print("\ncalibration, every layer int8 (TensorRT's placement for trt): top-1 (drop)\n")
        print("| scheme | method | " + " | ".join(f"{k} images" for k in samples) + " |")
        print("|---|---|" + "---|" * len(samples))
        for scheme in ("ort", "trt"):
            for method in methods:
                cells = []
                for k in samples:
                    if k > len(labelled.dataset.train_x):
                        cells.append("-")
                        continue
                    q = _quantizer(pre, labelled, scheme, method, k, tmp / f"cal-{scheme}-{method}-{k}")
                    s = judge.score(q.model())
                    cells.append(f"{s.top1:.2f}% ({judge.fp32_top1 - s.top1:+.2f})")
                print(f"| {scheme} | {method} | " + " | ".join(cells) + " |")


def _range(ranges: dict[str, Any], tensor: str) -> str:
    """The calibrated [min, max] of ``tensor`` from ONNX Runtime's calibration cache, when it holds it."""
    entry = ranges.get("data", {}).get(tensor)
    if isinstance(entry, dict) and "lowest" in entry and "highest" in entry:
        lo, hi = (float(np.ravel(entry[k]["data"])[0]) for k in ("lowest", "highest"))
        return f"[{lo:.3g}, {hi:.3g}]"
    return "-"


if __name__ == "__main__":
    main()
