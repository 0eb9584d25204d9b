"""What each quantized layer costs, and the mix of int8 and float layers that keeps the accuracy budget.

Measured on the images the accuracy check judges the artefact on: the test split of ``--eval-data``, else of
``--calibration``, which calibration never sees (as NNCF's accuracy control uses the user's validation set; the
training images are no stand-in, since a net fits them with margins its test images lack). Two signals, against
the fp32 (BN-folded) model on the same images: top-1 on their labels, and the logits' relative error
``sum((z_int8 - z_fp32)^2) / sum(z_fp32^2)``, which still ranks layers when top-1 moves by a few images only.

**Sensitivity.** For each quantized layer, the model quantized with that layer alone left in float (ONNX
Runtime's ``nodes_to_exclude``, with the ranges calibrated once): the logit error it recovers is what the layer
costs. This is the ranking NNCF's ``quantize_with_accuracy_control`` uses (a layer's contribution is the
metric change when it is reverted to float), measured one layer at a time.

**Fallback.** When the fully quantized model loses more top-1 than the budget (``--max-drop``), the costliest
layers are left in float one at a time, re-quantizing with the same calibrated ranges, until the budget holds;
like NNCF and unlike a greedy search that re-ranks after every step, the ranking is computed once. At most half
the layers may stay in float: a net that needs more is refused, naming the layers tried. The manifest lists every
layer left in float and the accuracy reached; ``--no-fallback`` keeps the all-int8 model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import VerificationError
from .onnx_file import INPUT, need

if TYPE_CHECKING:
    import onnx

    from ..options import CompileOptions
    from .onnx_quant import Images, Quantizer

#: How many of the costliest layers compile's output names.
SHOWN = 5
#: At most this share of the quantized layers is left in float: a net that needs more is refused, since the
#: calibration data (or the net) is then the problem, and fp16 is the better artefact.
MAX_FLOAT_SHARE = 0.5


@dataclass(frozen=True)
class Score:
    top1: float         # percent, on the held-out images' labels
    logit_error: float  # relative squared error of the logits against the fp32 model's


def layer_name(node: str) -> str:
    """``layer1.0.conv1/Conv`` -> ``layer1.0.conv1``: the module path resdsl names ONNX nodes by."""
    return node.rsplit("/", 1)[0]


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """``model``'s logits (float64) on images ``x``, with ONNX Runtime on the CPU."""
    ort = need("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    dim = session.get_inputs()[0].shape[0]
    step = dim if isinstance(dim, int) and dim > 0 else 64
    names = [o.name for o in session.get_outputs()]
    logits = [names[names.index("logits") if "logits" in names else 0]]  # beside a backbone's feature maps
    out = []
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        n = len(chunk)
        if isinstance(dim, int) and n < dim:  # a fixed batch axis: pad with copies of the last image
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], dim - n, axis=0)])
        out.append(session.run(logits, {INPUT: chunk})[0][:n].astype(np.float64))
    return np.concatenate(out)


class Judge:
    """Scores candidate models on images ``x`` with ``labels`` against the fp32 model's logits ``reference``."""

    def __init__(self, x: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> None:
        self.x, self.labels, self.reference = x, labels, reference
        self.fp32_top1 = self._top1(reference)

    @classmethod
    def of(cls, fp32: onnx.ModelProto, images: Images) -> Judge:
        """The judge on the accuracy check's images (``images.heldout``), the fp32 model run once."""
        return cls(images.heldout, images.heldout_labels, run(fp32, images.heldout))

    def head(self, n: int) -> Judge:
        """The same judge on the first ``n`` images only (the fp32 logits sliced, not run again)."""
        return Judge(self.x[:n], self.labels[:n], self.reference[:n])

    def logits(self, model: onnx.ModelProto) -> np.ndarray:
        return run(model, self.x)

    def _top1(self, logits: np.ndarray) -> float:
        return 100.0 * float((logits.argmax(1) == self.labels).mean())

    def score(self, model: onnx.ModelProto) -> Score:
        return self.score_logits(self.logits(model))

    def score_logits(self, z: np.ndarray) -> Score:
        """Top-1 and relative logit error of logits ``z`` computed on the judged images."""
        err = float(((z - self.reference) ** 2).sum() / max(float((self.reference ** 2).sum()), 1e-30))
        return Score(self._top1(z), err)


def search(quantizer: Quantizer, images: Images, options: CompileOptions) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The int8 model to write and the manifest's ``sensitivity`` and ``fallback`` entries."""
    full = quantizer.model()
    if options.sensitivity_samples == 0:
        return full, {"sensitivity": None, "fallback": {"enabled": False, "in_float": [],
                                                        "why": "not measured (--sensitivity-samples 0)"}}
    fp32 = need("onnx").load_model(str(quantizer.pre))
    judge = Judge.of(fp32, images)
    probe = judge.head(options.sensitivity_samples)
    z = judge.logits(full)
    base, probed = judge.score_logits(z), probe.score_logits(z[:options.sensitivity_samples])
    costs: list[dict[str, Any]] = []
    for node in quantizer.layers():
        s = probe.score(quantizer.model([node]))
        costs.append({"layer": layer_name(node), "node": node, "recovers": probed.logit_error - s.logit_error,
                      "logit_error_in_float": s.logit_error, "top1_in_float": s.top1})
    costs.sort(key=lambda c: -c["recovers"])
    sensitivity = {"data": images.heldout_from, "images": len(images.heldout), "ranked_on": len(probe.x),
                   "fp32_top1": judge.fp32_top1, "int8": asdict(base),
                   "signal": f"logit error recovered when the layer alone stays in float, on the first {len(probe.x)} "
                             "images; top-1 on all of them",
                   "layers": costs}
    model, fallback = _fallback(quantizer, judge, full, base, [str(c["node"]) for c in costs], options)
    return model, {"sensitivity": sensitivity, "fallback": fallback}


def _fallback(quantizer: Quantizer, judge: Judge, full: onnx.ModelProto, base: Score, ranked: Sequence[str],
              options: CompileOptions) -> tuple[onnx.ModelProto, dict[str, Any]]:
    budget = options.max_drop
    entry: dict[str, Any] = {"enabled": options.fallback, "budget": budget, "in_float": [], "top1": base.top1,
                             "drop": judge.fp32_top1 - base.top1, "tried": []}
    if not options.fallback or judge.fp32_top1 - base.top1 <= budget:
        return full, entry
    in_float: list[str] = []
    model, score = full, base
    for node in ranked[:max(1, int(len(ranked) * MAX_FLOAT_SHARE))]:
        in_float.append(node)
        model = quantizer.model(in_float)
        score = judge.score(model)
        entry["tried"].append({"layer": layer_name(node), "top1": score.top1, "logit_error": score.logit_error})
        if judge.fp32_top1 - score.top1 <= budget:
            break
    else:
        raise VerificationError(
            f"int8 ({quantizer.scheme} scheme) keeps losing top-1 on {len(judge.x)} test images: "
            f"{judge.fp32_top1 - score.top1:.2f} points below fp32 ({score.top1:.2f}% against "
            f"{judge.fp32_top1:.2f}%) with {len(in_float)} of {len(ranked)} layers left in float "
            f"({', '.join(layer_name(n) for n in in_float)}), more than the budget of {budget:g} points; nothing "
            "was written. Check the calibration data (--calibration: enough images, like the ones the net will "
            "see), or compile at --precision fp16")
    entry.update(in_float=[layer_name(n) for n in in_float], top1=score.top1, drop=judge.fp32_top1 - score.top1,
                 logit_error=score.logit_error)
    return model, entry


def summary(section: dict[str, Any]) -> list[str]:
    """Lines for compile's output: the costliest layers and what fallback left in float."""
    lines = []
    sens = section.get("sensitivity")
    if sens:
        worst = ", ".join(f"{c['layer']} ({c['recovers']:.2g})" for c in sens["layers"][:SHOWN])
        lines.append(f"int8 on {sens['images']} test images: top-1 {sens['int8']['top1']:.2f}% against "
                     f"fp32 {sens['fp32_top1']:.2f}%, logit error {sens['int8']['logit_error']:.2g}; costliest "
                     f"layers (logit error each recovers in float): {worst}")
    fb = section.get("fallback") or {}
    if fb.get("in_float"):
        lines.append(f"left in float to keep the budget of {fb['budget']:g} points: {', '.join(fb['in_float'])} "
                     f"(top-1 {fb['top1']:.2f}%, drop {fb['drop']:+.2f})")
    return lines
