"""The backend-neutral graph: named, shape-annotated nodes in topological order.

A node's ``name`` is the module path a PyTorch lowering gives it, following
torchvision's state_dict layout (``layer2.0.downsample.0``); its ``label`` is
the Table 1 name shown beside it in reports (``conv3_x.0.downsample.0``).
Shapes exclude the batch axis: ``(C, H, W)`` for feature maps, ``(F,)`` after
global pooling. A graph returns one or more :class:`Output`: the logits, or the
feature maps of stages when the net is a backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: op -> the attributes it carries. ``shortcut_a`` is option A's parameter-free
#: shortcut: subsample by ``stride`` and append ``pad`` zero channels. ``se`` is
#: squeeze-and-excitation (global mean, 1x1 conv to ``reduced`` with bias, ReLU,
#: 1x1 conv back with bias, sigmoid, scale the input); ``eca`` is efficient channel
#: attention (global mean, a 1-D conv of ``kernel`` across channels, sigmoid, scale).
#: A conv pads ``dilation * (kernel // 2)``. ``pad_end`` appends that many zero rows and
#: columns (bottom and right) before an average pool, counted in the average: timm's
#: ``AvgPool2dSame``, which shortcut D uses in a dilated stage.
OPS: dict[str, tuple[str, ...]] = {
    "input": (),
    "conv": ("in_channels", "out_channels", "kernel", "stride", "padding", "groups", "dilation"),
    "bn": ("channels",),
    "relu": (),
    "maxpool": ("kernel", "stride", "padding"),
    "avgpool": ("kernel", "stride", "padding", "ceil_mode", "count_include_pad", "pad_end"),
    "add": (),
    "shortcut_a": ("stride", "pad"),
    "gap": (),
    "fc": ("in_features", "out_features"),
    "se": ("channels", "reduced"),
    "eca": ("channels", "kernel"),
}


@dataclass(frozen=True)
class Node:
    """One operation. ``inputs`` name earlier nodes; ``attrs`` holds OPS[op]'s keys."""

    name: str
    op: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    stage: str  # Table 1 row: "conv1", "conv2_x", ..., or "head"
    label: str
    attrs: dict[str, Any] = field(default_factory=dict, hash=False)
    residual_end: bool = False  # last conv/BN of a residual branch (zero_init_residual acts here)
    block: str = ""             # the residual unit it belongs to ("layer2.1"); "" for the stem and the head
    role: str = "main"          # "main", or "shortcut" for a unit's projection / option-A path (off the main path)

    def attr(self, key: str) -> Any:
        return self.attrs[key]


@dataclass(frozen=True)
class Output:
    """One tensor the net returns: ``name`` as users see it ("logits", or a stage's name such as "conv4_x"),
    ``node`` the graph node that computes it, ``stride`` its stride relative to the input (0 for logits)."""

    name: str
    node: str
    stride: int


@dataclass(frozen=True)
class Graph:
    """A whole network: ``nodes[0]`` is the input; ``outputs`` what it returns, in order (by default the logits,
    ``nodes[-1]``). Nodes no output needs are not in the graph (a backbone has no pool or fc)."""

    name: str
    nodes: tuple[Node, ...]
    stages: tuple[str, ...]  # Table 1 rows in order, "conv1" first, "head" last
    outputs: tuple[Output, ...] = (Output("logits", "fc", 0),)

    @property
    def input(self) -> Node:
        return self.nodes[0]

    @property
    def output(self) -> Node:
        """The single output's node; a graph with several outputs has none (use :attr:`outputs`)."""
        if len(self.outputs) != 1:
            raise ValueError(f"{self.name} returns {len(self.outputs)} outputs; use graph.outputs")
        return self.node(self.outputs[0].node)

    @property
    def has_head(self) -> bool:
        return any(o.name == "logits" for o in self.outputs)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def validate(self) -> None:
        """Check the invariants every consumer relies on; raise ValueError naming the bad node."""
        seen: set[str] = set()
        if not self.nodes or self.nodes[0].op != "input":
            raise ValueError("graph must start with its input node")
        for n in self.nodes:
            if n.op not in OPS:
                raise ValueError(f"{n.name}: unknown op {n.op!r}")
            if n.name in seen:
                raise ValueError(f"{n.name}: duplicate node name")
            missing = [i for i in n.inputs if i not in seen]
            if missing:
                raise ValueError(f"{n.name}: inputs {missing} are not earlier nodes (graph not topological)")
            absent = [a for a in OPS[n.op] if a not in n.attrs]
            if absent:
                raise ValueError(f"{n.name}: {n.op} lacks attributes {absent}")
            if n.stage not in self.stages:
                raise ValueError(f"{n.name}: stage {n.stage!r} is not one of {self.stages}")
            seen.add(n.name)
        if not self.outputs:
            raise ValueError("graph must return at least one output")
        for o in self.outputs:
            if o.node not in seen:
                raise ValueError(f"output {o.name}: node {o.node!r} is not in the graph")
        if self.nodes[-1].name not in {o.node for o in self.outputs}:
            raise ValueError(f"{self.nodes[-1].name}: the last node is no output (nodes past the last output are "
                             "not built)")
