"""Q/DQ placed where TensorRT fuses it, for the ``trt`` int8 scheme.

TensorRT's rules for explicitly quantized networks (its developer guide, "Q/DQ Layer-Placement
Recommendations", and NVIDIA ModelOpt's ONNX quantizer, which implements them):

* quantize the inputs of every Conv and Gemm (activation and weights), never their outputs: a Conv's output
  flows into its bias, BN (folded), activation and residual add, which TensorRT fuses into the convolution;
* quantize the residual input of an Add, so that the Add fuses into the Conv that computes its other input;
* do not quantize a tensor that only a pool or a reshape reads (TensorRT propagates the Q/DQ across them).

ONNX Runtime's quantizer gives most of this when asked to quantize only Conv, Gemm and Add and to leave their
outputs alone (``op_types_to_quantize`` and ``OpTypesToExcludeOutputQuantization``): no Q/DQ lands between a
Conv and its ReLU, on a pool's input, or after the fc. What it cannot express is "the residual input only": it
quantizes both inputs of an Add. :func:`place_for_tensorrt` removes the pair on the Add input a Conv computes
(the branch TensorRT fuses the Add into); when both inputs come from Convs (a projection shortcut), the first
(the residual branch, as resdsl's modules add ``branch + shortcut``) loses its pair and the shortcut keeps it.
The scales come from ONNX Runtime's calibration either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

#: Ops whose output TensorRT fuses with what follows: no Q/DQ may sit on it.
FUSING = ("Conv", "Gemm")


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: n for n in model.graph.node for out in n.output}


def quantized_source(prod: dict[str, onnx.NodeProto], tensor: str
                     ) -> tuple[str, onnx.NodeProto, onnx.NodeProto] | None:
    """When ``tensor`` is DequantizeLinear(QuantizeLinear(x)) in the graph whose producers are ``prod`` (tensor ->
    the node writing it), ``(x, Q, DQ)``; else None."""
    dq = prod.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = prod.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return None
    return q.input[0], q, dq


def place_for_tensorrt(model: onnx.ModelProto) -> int:
    """Remove the Q/DQ pair on the Add input that a Conv (or Gemm) computes, in place; return how many Add inputs
    were rewired. Q and DQ nodes left without readers are dropped."""
    prod = _producers(model)
    rewired = 0
    for node in model.graph.node:
        if node.op_type != "Add":
            continue
        sources = [quantized_source(prod, t) for t in node.input]
        fused = [i for i, s in enumerate(sources) if s is not None and prod.get(s[0]) is not None
                 and prod[s[0]].op_type in FUSING]
        if len(fused) == 2:  # a projection shortcut: the branch (input 0) fuses, the shortcut keeps its Q/DQ
            fused = [0]
        for i in fused:
            source = sources[i]
            assert source is not None
            node.input[i] = source[0]
            rewired += 1
    drop_unread(model)
    return rewired


def drop_unread(model: onnx.ModelProto) -> None:
    """Remove Q/DQ nodes whose outputs nothing reads (repeatedly: a DQ gone can leave its Q unread)."""
    outputs = {o.name for o in model.graph.output}
    while True:
        read = {t for n in model.graph.node for t in n.input} | outputs
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {t for n in model.graph.node for t in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)
