"""Analytic multiply-adds and parameters, per node, per stage and in total.

One convention, the paper's: a "FLOP" in Table 1 is a multiply-add of a conv
or fc layer (the convs inside squeeze-and-excitation and ECA included); BN,
ReLU, pooling, sigmoid, scaling, additions and option A's padding count zero.
``torch.utils.flop_counter`` counts 2 per multiply-add of the same ops, so
``2 * macs`` must equal its total exactly (the tests check this). Parameters
are trainable ones: conv and fc weights, fc bias, BN scale and shift.

No torch import here: ``resdsl flops`` answers in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .ir import Graph, Node


def _conv(n: Node) -> tuple[int, int]:
    k, cin, cout, g = n.attr("kernel"), n.attr("in_channels"), n.attr("out_channels"), n.attr("groups")
    weights = cout * (cin // g) * k * k
    return weights * n.shape[1] * n.shape[2], weights


def _fc(n: Node) -> tuple[int, int]:
    fin, fout = n.attr("in_features"), n.attr("out_features")
    return fin * fout, fin * fout + fout


def _bn(n: Node) -> tuple[int, int]:
    return 0, 2 * n.attr("channels")


def _se(n: Node) -> tuple[int, int]:
    c, r = n.attr("channels"), n.attr("reduced")
    return 2 * c * r, 2 * c * r + r + c  # two 1x1 convs on the pooled 1x1 map, with biases


def _eca(n: Node) -> tuple[int, int]:
    k = n.attr("kernel")
    return k * n.attr("channels"), k  # one 1-D conv of k taps along the channels, no bias


def _free(n: Node) -> tuple[int, int]:
    return 0, 0


#: op -> (multiply-adds, trainable parameters) of one node, batch 1.
FORMULAS: dict[str, Callable[[Node], tuple[int, int]]] = {
    "conv": _conv, "fc": _fc, "bn": _bn, "se": _se, "eca": _eca,
    "input": _free, "relu": _free, "maxpool": _free, "avgpool": _free, "add": _free, "shortcut_a": _free,
    "gap": _free,
}


@dataclass(frozen=True)
class NodeCount:
    """One node's contribution."""

    name: str
    label: str
    op: str
    stage: str
    shape: tuple[int, ...]
    macs: int
    params: int


@dataclass(frozen=True)
class StageCount:
    """One row of Table 1: totals over the stage's nodes."""

    name: str
    out_shape: tuple[int, ...]
    blocks: int
    macs: int
    params: int


@dataclass(frozen=True)
class FlopReport:
    """Per-node and per-stage counts of a graph; ``macs`` and ``params`` are totals."""

    name: str
    nodes: tuple[NodeCount, ...]
    stages: tuple[StageCount, ...]
    macs: int
    params: int
    depth: int  # weighted layers on the main path (the "50" of ResNet-50)

    def to_dict(self, unit: str = "macs", per_layer: bool = False) -> dict[str, Any]:
        """JSON-ready form; ``unit='flops'`` reports 2x multiply-adds."""
        mult = 2 if unit == "flops" else 1
        out: dict[str, Any] = {
            "name": self.name, "unit": unit, "total": self.macs * mult, "giga": self.macs * mult / 1e9,
            "params": self.params, "depth": self.depth,
            "stages": [{"name": s.name, "output": list(s.out_shape), "blocks": s.blocks, "total": s.macs * mult,
                        "params": s.params} for s in self.stages],
        }
        if per_layer:
            out["layers"] = [{"name": n.name, "label": n.label, "op": n.op, "shape": list(n.shape),
                              "total": n.macs * mult, "params": n.params} for n in self.nodes]
        return out


def count(graph: Graph) -> FlopReport:
    """Count every node of ``graph`` with FORMULAS."""
    nodes = []
    for n in graph.nodes:
        macs, params = FORMULAS[n.op](n)
        nodes.append(NodeCount(n.name, n.label, n.op, n.stage, n.shape, macs, params))
    stages = []
    for st in graph.stages:
        mine = [c for c in nodes if c.stage == st]
        blocks = len({n.block for n in graph.nodes if n.stage == st and n.block})
        shape = mine[-1].shape if mine else ()
        stages.append(StageCount(st, shape, blocks, sum(c.macs for c in mine), sum(c.params for c in mine)))
    depth = sum(1 for n in graph.nodes if n.op in ("conv", "fc") and n.role == "main")
    return FlopReport(graph.name, tuple(nodes), tuple(stages), sum(c.macs for c in nodes),
                      sum(c.params for c in nodes), depth)
