"""What a picture of a spec shows and where, with no drawing library: the model behind ``resdsl draw``.

:func:`picture` reads the graph (:func:`resdsl.expand.expand`) by op and role: one box per conv, pool, fc or
attention node of the main path (BN, ReLU and the input are not drawn, as in the paper; an op this module does
not know is a box with its name), a circled plus for each addition, and each unit's shortcut: an identity, a
projection (any shortcut path holding a conv, its layers listed), or option A's zero-padded identity. A stage
keeps its first unit and, when it has more than two, one representative repeated unit marked "x N". Each stage
carries its block count, output shape, multiply-adds and parameters (:func:`resdsl.flops.count`).
:func:`layout` places it all in inches; :mod:`resdsl.draw` renders the result with matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from .flops import FlopReport, StageCount
from .ir import Graph, Node
from .spec import Spec

#: Ops that are not drawn as boxes: BN and ReLU (as in Figure 3), the input (written above the column) and the
#: addition (a circled plus where the shortcut joins).
HIDDEN = frozenset({"input", "bn", "relu", "add"})
ATTENTION = {"se": "SE", "eca": "ECA"}
#: Shortcut kind -> (line style, colour, legend text).
SHORTCUT_STYLES = {
    "identity": ("-", "#222222", "identity shortcut (solid)"),
    "projection": (":", "#1f5fa8", "projection shortcut (dotted), its layers beside it"),
    "option_a": ("--", "#c0392b", "option A: identity, zero-padded channels (dashed)"),
    "other": ("-.", "#7d3c98", "other shortcut path (dash-dot)"),
}
#: Conv box fill per stage, in order (Figure 3 colours each stage); the head is grey.
STAGE_COLOURS = ("#fbe3c8", "#e6dcf5", "#d6eed5", "#f9d9e6", "#d5e7f7", "#fff3bf", "#dff3f1", "#ececec")
BOX_FILLS = {"pool": "#eeeeee", "fc": "#e2e2e2", "attention": "#ffe08a", "other": "#ffffff"}

# Layout, in inches (the axes span the figure, one data unit = one inch; y grows upwards, the column downwards).
FIG_W = 8.4
X_STAGE = 0.28                      # stage annotations
XC, BOX_W, BOX_H, ATT_W = 3.85, 2.3, 0.3, 1.25
GAP = 0.16                          # between successive elements of the column
ADD_R = 0.085                       # radius of the circled plus
X_ARC = XC + BOX_W / 2 + 0.25       # vertical run of the shortcuts
X_NOTE = X_ARC + 0.1                # what a shortcut path holds
FRAME_L, FRAME_R, X_REPEAT = XC - BOX_W / 2 - 0.14, 7.25, 7.35
PAD, MIN_BAND, FRAME_PAD = 0.14, 0.66, 0.14


@dataclass(frozen=True)
class Box:
    """One box of the main column: a conv, pool, fc, attention or unknown node."""

    text: str
    kind: str  # "conv", "pool", "fc", "attention" or "other"


@dataclass(frozen=True)
class Shortcut:
    """A unit's shortcut: its kind (a key of SHORTCUT_STYLES) and one line per layer on its path."""

    kind: str
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Block:
    """One residual unit as drawn; ``repeat`` > 1 when it stands for that many identical units of its stage."""

    boxes: tuple[Box, ...]
    shortcut: Shortcut | None  # None: no addition (the plain nets)
    repeat: int = 1
    first: int = 1  # 1-based number of the first unit it stands for


@dataclass(frozen=True)
class StagePic:
    """One row of Table 1: its boxes and units in graph order, its counts and its colour."""

    name: str
    items: tuple[Box | Block, ...]
    count: StageCount
    colour: str
    output: str = ""  # "output, stride 16" when the net returns this stage's feature map


@dataclass(frozen=True)
class Picture:
    """Everything the renderer needs, independent of matplotlib."""

    title: str
    subtitle: str
    input_text: str
    stages: tuple[StagePic, ...]

    def shortcut_kinds(self) -> list[str]:
        """The shortcut kinds drawn, in SHORTCUT_STYLES order."""
        found = {b.shortcut.kind for b in self.blocks() if b.shortcut}
        return [k for k in SHORTCUT_STYLES if k in found]

    def blocks(self) -> Iterator[Block]:
        """The drawn units, stage by stage."""
        for s in self.stages:
            yield from (i for i in s.items if isinstance(i, Block))


def _dims(shape: tuple[int, ...]) -> str:
    return "\u00d7".join(map(str, shape))


def _stride(node: Node) -> str:
    s = node.attrs.get("stride", 1)
    return f", /{s}" if isinstance(s, int) and s > 1 else ""


def node_text(node: Node) -> str | None:
    """What a node's box (or shortcut note) says, as in Figure 3 (``3x3 conv, 128, /2``); None for hidden ops."""
    a, op = node.attrs, node.op
    if op in HIDDEN:
        return None
    if op == "conv":
        k, g = a.get("kernel", "?"), a.get("groups", 1)
        d = a.get("dilation", 1)
        return (f"{k}x{k} conv, {a.get('out_channels', node.shape[0])}{_stride(node)}" + (f", g={g}" if g != 1 else "")
                + (f", dil {d}" if d != 1 else ""))
    if op in ("maxpool", "avgpool"):
        k = a.get("kernel", "?")
        return f"{k}x{k} {op[:3]} pool{_stride(node)}"
    if op == "gap":
        return "global avg pool"
    if op == "fc":
        return f"fc {a.get('out_features', node.shape[0])}"
    if op == "shortcut_a":
        return f"zero-pad to {node.shape[0]} ch{_stride(node)}"
    if op == "se" and "reduced" in a:
        return f"SE {a.get('channels', node.shape[0])}\u2192{a['reduced']}"
    if op == "eca" and "kernel" in a:
        return f"ECA, k={a['kernel']}"
    return ATTENTION.get(op, op)[:28]


def node_kind(node: Node) -> str:
    """The box kind of a drawn node (it chooses the fill)."""
    if node.op == "conv":
        return "conv"
    if node.op in ("maxpool", "avgpool", "gap"):
        return "pool"
    if node.op == "fc":
        return "fc"
    return "attention" if node.op in ATTENTION else "other"


def shortcut_of(nodes: list[Node]) -> Shortcut | None:
    """Classify a unit's shortcut from its ``role == "shortcut"`` nodes: none there is an identity, a conv makes
    a projection (option B/C, and D's pooled projection), ``shortcut_a`` option A. None when nothing is added."""
    if not any(n.op == "add" and n.role == "main" for n in nodes):
        return None
    path = [n for n in nodes if n.role == "shortcut"]
    ops = {n.op for n in path}
    if not path:
        kind = "identity"
    elif "conv" in ops:
        kind = "projection"
    else:
        kind = "option_a" if "shortcut_a" in ops else "other"
    return Shortcut(kind, tuple(t for n in path if (t := node_text(n)) is not None))


def _block(nodes: list[Node], repeat: int, first: int) -> Block:
    boxes = tuple(Box(t, node_kind(n)) for n in nodes if n.role == "main" and (t := node_text(n)) is not None)
    return Block(boxes, shortcut_of(nodes), repeat, first)


def picture(spec: Spec, graph: Graph, report: FlopReport) -> Picture:
    """Read the picture off ``graph``: per stage, its loose nodes as boxes and its first unit plus one repeated
    unit standing for the rest (``repeat`` = units - 1)."""
    units: dict[str, list[Node]] = {}
    for n in graph.nodes:
        if n.block:
            units.setdefault(n.block, []).append(n)
    per_stage: dict[str, list[str]] = {st: [] for st in graph.stages}
    for name, nodes in units.items():
        per_stage.setdefault(nodes[0].stage, []).append(name)
    items: dict[str, list[Box | Block]] = {st: [] for st in per_stage}
    for n in graph.nodes:
        if not n.block:
            text = node_text(n)
            if text is not None:
                items.setdefault(n.stage, []).append(Box(text, node_kind(n)))
        elif units[n.block][0] is n:
            order = per_stage[n.stage]
            j = order.index(n.block)
            if j < 2:
                items[n.stage].append(_block(units[n.block], len(order) - 1 if j == 1 else 1, j + 1))
    counts = {s.name: s for s in report.stages}
    returned = {o.name: f"\u2192 output, stride {o.stride}" for o in graph.outputs if o.stride}
    stages = tuple(StagePic(st, tuple(items.get(st, [])), counts[st],
                            "#e2e2e2" if st == "head" else STAGE_COLOURS[i % len(STAGE_COLOURS)], returned.get(st, ""))
                   for i, st in enumerate(graph.stages) if st in counts)
    return Picture(spec.name, _subtitle(spec, graph, report), f"input {_dims(graph.input.shape)}", stages)


def _subtitle(spec: Spec, graph: Graph, report: FlopReport) -> str:
    ops = {n.op for n in graph.nodes}
    extras = [ATTENTION[op] for op in ATTENTION if op in ops]
    return (f"{spec.block} blocks{' + ' + '/'.join(extras) if extras else ''}, shortcut {spec.shortcut}, "
            f"{report.depth} layers \u00b7 {gmacs(report.macs)} \u00b7 {params(report.params)}")


def _sig3(x: float) -> str:
    """Three significant digits, trailing zeros kept (``25.0``, ``0.118``, ``148``)."""
    return f"{x:#.3g}".rstrip(".")


def gmacs(macs: int) -> str:
    """Multiply-adds: ``1.82 GMACs``, ``0.0415 GMACs``; below a million, ``0.442 MMACs`` or ``640 MACs``."""
    if macs >= 1_000_000:
        return f"{_sig3(macs / 1e9)} GMACs"
    return f"{_sig3(macs / 1e6)} MMACs" if macs >= 1000 else f"{macs} MACs"


def params(n: int) -> str:
    """A parameter count: ``11.7M params``, ``9.47K params``, ``650 params``."""
    if n >= 1_000_000:
        return f"{_sig3(n / 1e6)}M params"
    return f"{_sig3(n / 1e3)}K params" if n >= 1000 else f"{n} params"


def stage_lines(stage: StagePic) -> tuple[str, str, str]:
    """The three lines beside a stage: name, ``N blocks -> shape`` (or the output alone), counts."""
    c = stage.count
    n = c.blocks
    shape = f"{n} block{'s' if n != 1 else ''} \u2192 {_dims(c.out_shape)}" if n else f"output {_dims(c.out_shape)}"
    name = f"{stage.name} {stage.output}" if stage.output else stage.name
    return name, shape, f"{gmacs(c.macs)} \u00b7 {params(c.params)}"


@dataclass
class Layout:
    """Where everything goes: y of box centres, additions, shortcut runs (split, join), frames and bands."""

    top: float
    boxes: list[tuple[float, Box, str]] = field(default_factory=list)
    adds: list[float] = field(default_factory=list)
    arcs: list[tuple[float, float, Shortcut]] = field(default_factory=list)
    frames: list[tuple[float, float, Block]] = field(default_factory=list)
    bands: list[tuple[float, float, StagePic]] = field(default_factory=list)
    bottom: float = 0.0


def legend(pic: Picture) -> list[tuple[str, str]]:
    """(symbol, text) of each legend entry: the shortcut kinds drawn, the addition, the repeat frame if any."""
    entries = [(k, SHORTCUT_STYLES[k][2]) for k in pic.shortcut_kinds()]
    entries.append(("add", "addition (BN and ReLU are not drawn)") if entries else
                   ("", "a plain network: no shortcuts (BN and ReLU are not drawn)"))
    if any(b.repeat > 1 for b in pic.blocks()):
        entries.append(("frame", "a repeated unit, drawn once"))
    return entries


def header_height(pic: Picture) -> float:
    """Title, subtitle and the legend in two columns."""
    return 0.78 + 0.22 * math.ceil(len(legend(pic)) / 2)


def layout(pic: Picture) -> Layout:
    """Place the column top-down from below the header; every stage is a band at least MIN_BAND tall."""
    lay = Layout(top=-header_height(pic) - 0.3)
    y = lay.top - 0.1
    for stage in pic.stages:
        top = y
        y -= PAD
        for item in stage.items:
            y = _place_block(lay, item, y, stage.colour) if isinstance(item, Block) else _place_box(
                lay, item, y, stage.colour)
        y = min(y + GAP - PAD, top - MIN_BAND)
        lay.bands.append((top, y, stage))
    lay.bottom = y - 0.15
    return lay


def _place_box(lay: Layout, box: Box, y: float, colour: str) -> float:
    lay.boxes.append((y - BOX_H / 2, box, colour))
    return y - BOX_H - GAP


def _place_block(lay: Layout, block: Block, y: float, colour: str) -> float:
    framed = block.repeat > 1
    top = y
    if framed:
        y -= FRAME_PAD
    split = y + (FRAME_PAD if framed else GAP) / 2
    for box in block.boxes:
        y = _place_box(lay, box, y, colour)
    if block.shortcut is not None:
        y += GAP / 2  # the addition sits closer to the last layer
        lay.adds.append(y - ADD_R)
        lay.arcs.append((split, y - ADD_R, block.shortcut))
        y -= 2 * ADD_R + GAP
    if framed:
        y -= FRAME_PAD - GAP
        lay.frames.append((top, y, block))
        y -= GAP
    return y
