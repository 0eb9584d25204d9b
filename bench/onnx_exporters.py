"""Measure resdsl's own ONNX writer (``ir``) and torch.onnx's two exporters on resdsl nets; the figures behind
``backends/onnx_export.py``'s choice.

Usage: ``PYTHONPATH=. python3 bench/onnx_exporters.py [--nets cifar20,r18,r50] [--repeat 3]``.

For each net and exporter it prints the export time (first call in the process,
then the median of the warm repeats), the largest error against torch's eval-mode
output at batch 1 and 3 run from the same file in ONNX Runtime (relative to the
largest |logit|), whether the batch axis of input and output is a symbolic
``dim_param`` in the saved file, and how many of the graph's module paths can be
read back from the raw export: from node names (TorchScript scopes) or from the
``pkg.torch.onnx.name_scopes`` metadata (dynamo). It measures the exporters
themselves, before any of resdsl's post-processing (``ir``: the model
:func:`resdsl.backends.onnx_emit.emit` builds, serialized; no checker, no file).
"""

from __future__ import annotations

import argparse
import ast
import io
import logging
import statistics
import sys
import time
import warnings
from contextlib import redirect_stdout

import numpy as np
import onnx
import onnxruntime as ort
import torch

from resdsl.backends.torch import build
from resdsl.spec import loads

NETS = {
    "cifar20": """resdsl: 1
name: cifar20
input: {channels: 3, size: 32}
block: basic
shortcut: A
stem: {conv: {channels: 16, kernel: 3, stride: 1}}
stages:
  - {width: 16, blocks: 3}
  - {width: 32, blocks: 3, stride: 2}
  - {width: 64, blocks: 3, stride: 2}
head: {classes: 10}
""",
    "r18": """resdsl: 1
name: r18
input: {channels: 3, size: 64}
block: basic
shortcut: B
stages:
  - {width: 64, blocks: 2}
  - {width: 128, blocks: 2, stride: 2}
  - {width: 256, blocks: 2, stride: 2}
  - {width: 512, blocks: 2, stride: 2}
head: {classes: 1000}
""",
    "r50": """resdsl: 1
name: r50
input: {channels: 3, size: 224}
block: bottleneck
shortcut: B
downsample: 3x3
stages:
  - {width: 64, blocks: 3}
  - {width: 128, blocks: 4, stride: 2}
  - {width: 256, blocks: 6, stride: 2}
  - {width: 512, blocks: 3, stride: 2}
head: {classes: 1000}
""",
}


def export_raw(model: torch.nn.Module, x: torch.Tensor, exporter: str) -> bytes:
    """One raw export with a dynamic batch axis; returns the serialized model."""
    if exporter == "ir":
        from resdsl.backends.onnx_emit import emit

        return bytes(emit(model.graph, model.state_dict())[0].SerializeToString())  # type: ignore[attr-defined]
    if exporter.startswith("dynamo"):
        prog = torch.onnx.export(model, (x,), input_names=["input"], output_names=["logits"], opset_version=18,
                                 dynamo=True, dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False,
                                 optimize=exporter == "dynamo")
        return prog.model_proto.SerializeToString()
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, input_names=["input"], output_names=["logits"], opset_version=18,
                      dynamo=False, dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()


def paths_found(proto: onnx.ModelProto, paths: list[str]) -> int:
    """How many module paths appear verbatim as a node-name segment or a name scope."""
    seen: set[str] = set()
    for n in proto.graph.node:
        seen.update(n.name.split("/"))
        for p in n.metadata_props:
            if p.key == "pkg.torch.onnx.name_scopes":
                seen.update(ast.literal_eval(p.value))
    return sum(p in seen for p in paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="cifar20,r18,r50")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
          f"python {sys.version.split()[0]}")
    print(f"{'net':8} {'exporter':12} {'first s':>8} {'warm s':>7} {'err b1':>9} {'err b3':>9} {'dyn':>4} "
          f"{'paths':>8} {'nodes':>5}")
    for net in args.nets.split(","):
        model = build(loads(NETS[net])).eval()
        c, h, w = model.graph.input.shape
        paths = [n.name for n in model.graph.nodes[1:] if not n.name.endswith(".add")]
        gen = torch.Generator().manual_seed(0)
        xs = {b: torch.randn(b, c, h, w, generator=gen) for b in (1, 2, 3)}
        for exporter in ("ir", "torchscript", "dynamo", "dynamo-noopt"):
            times = []
            for _ in range(1 + args.repeat):
                t0 = time.perf_counter()
                with redirect_stdout(io.StringIO()):
                    blob = export_raw(model, xs[2], exporter)
                times.append(time.perf_counter() - t0)
            proto = onnx.load_from_string(blob)
            sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
            errs = []
            for b in (1, 3):
                with torch.no_grad():
                    ref = model(xs[b]).numpy()
                got = sess.run(None, {"input": xs[b].numpy()})[0]
                errs.append(float(np.abs(got - ref).max() / np.abs(ref).max()))
            io_dims = [v.type.tensor_type.shape.dim[0] for v in (*proto.graph.input, *proto.graph.output)]
            dyn = all(d.dim_param and not d.HasField("dim_value") for d in io_dims)
            found = paths_found(proto, paths)
            print(f"{net:8} {exporter:12} {times[0]:8.2f} "
                  f"{statistics.median(times[1:]):7.2f} {errs[0]:9.1e} {errs[1]:9.1e} {'yes' if dyn else 'NO':>4} "
                  f"{found:>3}/{len(paths):<4} {len(proto.graph.node):5}", flush=True)


if __name__ == "__main__":
    main()
