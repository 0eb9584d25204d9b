"""Spec -> Graph: the pure function that unrolls Table 1 into layers.

Block by block, with explicit running locals (channels and feature-map size so
far), in the manner of timm's ``make_blocks``. Design decisions the papers
leave open are taken from the authors' released code and noted where made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .ir import Graph, Node, Output
from .spec import LOGITS, STEM, Spec

#: block-local part -> (module path, Table 1 label), e.g. "conv1" -> ("layer2.0.conv1", "conv3_x.0.conv1")
Namer = Callable[[str], tuple[str, str]]


class _Builder:
    """Appends nodes, tracking the current tensor's name and shape."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.block = ""    # the residual unit being built, stamped on its nodes
        self.role = "main"  # "shortcut" while building a unit's shortcut path

    def add(self, name: str, label: str, op: str, inputs: tuple[str, ...], shape: tuple[int, ...], stage: str,
            residual_end: bool = False, **attrs: Any) -> Node:
        node = Node(name, op, inputs, shape, stage, label, attrs, residual_end, self.block, self.role)
        self.nodes.append(node)
        return node

    def conv(self, name: str, label: str, x: Node, out_ch: int, kernel: int, stride: int, stage: str,
             groups: int = 1, residual_end: bool = False, dilation: int = 1) -> Node:
        c, h, w = x.shape
        pad = dilation * (kernel // 2)
        span = dilation * (kernel - 1) + 1
        oh, ow = (h + 2 * pad - span) // stride + 1, (w + 2 * pad - span) // stride + 1
        return self.add(name, label, "conv", (x.name,), (out_ch, oh, ow), stage, residual_end, in_channels=c,
                        out_channels=out_ch, kernel=kernel, stride=stride, padding=pad, groups=groups,
                        dilation=dilation)

    def bn(self, name: str, label: str, x: Node, stage: str, residual_end: bool = False) -> Node:
        return self.add(name, label, "bn", (x.name,), x.shape, stage, residual_end, channels=x.shape[0])

    def relu(self, name: str, label: str, x: Node, stage: str) -> Node:
        return self.add(name, label, "relu", (x.name,), x.shape, stage)

    def pool(self, name: str, label: str, kind: str, x: Node, stage: str, kernel: int, stride: int, padding: int,
             ceil_mode: bool = False, count_include_pad: bool = True, pad_end: int = 0) -> Node:
        """Max or average pooling; output size as torch computes it (ceil mode drops a window that would start
        in the right padding). ``pad_end``: zero rows and columns appended first (average pooling only)."""
        c, h, w = x.shape
        attrs: dict[str, Any] = {"kernel": kernel, "stride": stride, "padding": padding}
        if kind == "avg":
            attrs.update(ceil_mode=ceil_mode, count_include_pad=count_include_pad, pad_end=pad_end)
        h, w = h + pad_end, w + pad_end
        shape = (c, _pooled(h, kernel, stride, padding, ceil_mode), _pooled(w, kernel, stride, padding, ceil_mode))
        return self.add(name, label, f"{kind}pool", (x.name,), shape, stage, **attrs)


def _pooled(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    span = size + 2 * padding - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def expand(spec: Spec) -> Graph:
    """Unroll ``spec`` into a validated Graph with torchvision's module names. Stages past the last one the
    spec's ``outputs`` return are not built, nor the head unless ``logits`` is returned; ``conv1`` returns the
    stem's output (before the pool that opens conv2_x, as timm's ``act1`` feature)."""
    b = _Builder()
    x = b.add("input", "input", "input", (), (spec.in_channels, *spec.in_size), STEM)
    x = _stem(b, spec, x)
    wanted = set(spec.outputs)
    found: dict[str, Output] = {}
    if STEM in wanted:
        found[STEM] = Output(STEM, x.name, spec.stem.conv.stride)
    built = [i for i, s in enumerate(spec.stages) if s.name in wanted]
    last = len(spec.stages) - 1 if spec.has_head else max(built, default=-1)
    if spec.stem.pool and last >= 0:
        p = spec.stem.pool
        # Table 1 lists the max pool at the top of the conv2_x row.
        first = spec.stages[0].name
        # torchvision's name for the max pool; an average-pool stem must not collide with the head's avgpool
        name = "maxpool" if p.kind == "max" else "stem_avgpool"
        x = b.pool(name, f"{first}.pool", p.kind, x, first, p.kernel, p.stride, p.kernel // 2)
    for si, (stage, (stride, dilation, previous, net)) in enumerate(zip(spec.stages, spec.stage_plan(), strict=True)):
        if si > last:
            break
        for j in range(stage.blocks):
            b.block = f"layer{si + 1}.{j}"
            x = _block(b, spec, x, f"layer{si + 1}.{j}", f"{stage.name}.{j}", stage.name, stage.width,
                       stride if j == 0 else 1, first_in_stage=j == 0,
                       dilations=(previous if j == 0 else dilation, dilation))
        b.block = ""
        if spec.preact and si == len(spec.stages) - 1:
            # "Identity Mappings": a final BN-ReLU after the last unit, before the pool; the last stage's feature
            # map is taken after it, as timm's ResNetV2 takes its last feature after its final norm
            x = b.bn("bn_final", "final.bn", x, stage.name)
            x = b.relu("relu_final", "final.relu", x, stage.name)
        if stage.name in wanted:
            found[stage.name] = Output(stage.name, x.name, net)
    stages = (STEM, *(s.name for s in spec.stages[:last + 1]))
    if spec.has_head:
        x = b.add("avgpool", "avgpool", "gap", (x.name,), (x.shape[0],), "head")
        x = b.add("fc", "fc", "fc", (x.name,), (spec.classes,), "head", in_features=x.shape[0],
                  out_features=spec.classes)
        found[LOGITS] = Output(LOGITS, x.name, 0)
        stages = (*stages, "head")
    graph = Graph(spec.name, tuple(b.nodes), stages, tuple(found[o] for o in spec.outputs))
    graph.validate()
    return graph


def _stem(b: _Builder, spec: Spec, x: Node) -> Node:
    """conv1 of Table 1, or a deep stem ("Bag of Tricks" ResNet-C): a chain of convs with BN-ReLU between, named
    as timm's ``nn.Sequential`` (``conv1.0``, ``conv1.1`` BN, ``conv1.2`` ReLU, ``conv1.3``, ...); only the first
    conv carries the stride. Either way ``bn1`` and ``relu`` follow, except in pre-activation nets, whose first
    unit applies BN-ReLU to the stem's output."""
    sc = spec.stem.conv
    if not sc.inner:
        x = b.conv("conv1", "conv1", x, sc.channels, sc.kernel, sc.stride, "conv1")
    else:
        for i, width in enumerate(sc.widths):
            x = b.conv(f"conv1.{3 * i}", f"conv1.{3 * i}", x, width, sc.kernel, sc.stride if i == 0 else 1, "conv1")
            if i < len(sc.inner):
                x = b.bn(f"conv1.{3 * i + 1}", f"conv1.{3 * i + 1}", x, "conv1")
                x = b.relu(f"conv1.{3 * i + 2}", f"conv1.{3 * i + 2}", x, "conv1")
    if spec.preact:
        return x
    x = b.bn("bn1", "conv1.bn", x, "conv1")
    return b.relu("relu", "conv1.relu", x, "conv1")


def _block(b: _Builder, spec: Spec, x: Node, name: str, label: str, stage: str, width: int, stride: int,
           first_in_stage: bool, dilations: tuple[int, int] = (1, 1)) -> Node:
    """One residual unit (or plain pair/triple when shortcut is 'none'). ``dilations``: the unit's first 3x3 conv's
    and the others' (they differ in the first unit of a stage that starts dilating, as in torchvision and timm)."""
    in_ch = x.shape[0]
    out_ch = width * spec.expansion
    changes = stride != 1 or in_ch != out_ch

    def n(part: str) -> tuple[str, str]:
        return f"{name}.{part}", f"{label}.{part}"

    shortcut_in = x
    if spec.preact:
        # Pre-activation unit. In the authors' code (KaimingHe/resnet-1k-layers,
        # and fb.resnet.torch's preresnet.lua) the first unit of each stage applies
        # its BN-ReLU *before* splitting, so the projection shortcut also sees the
        # activated input ("both_preact"); elsewhere BN-ReLU sits in the residual
        # branch only and the identity path stays clean.
        h = b.relu(*n("relu1"), stage=stage, x=b.bn(*n("bn1"), stage=stage, x=x))
        if first_in_stage:
            shortcut_in = h
        h = _preact_body(b, spec, h, n, stage, width, out_ch, stride, dilations)
    else:
        h = _postact_body(b, spec, x, n, stage, width, out_ch, stride, dilations)
    if spec.attention:
        h = _attention(b, spec, h, n("se"), stage)

    if spec.shortcut == "none":  # the paper's plain nets
        return h if spec.preact else b.relu(*n("relu"), stage=stage, x=h)
    b.role = "shortcut"
    if spec.shortcut == "C" or (spec.shortcut == "B" and changes):
        short = b.conv(*n("downsample.0"), shortcut_in, out_ch, 1, stride, stage)
        if not spec.preact:
            # Post-activation (the 2015 paper, torchvision): projection conv then BN. A pre-activation
            # projection is a bare 1x1 conv, as in the authors' code (resnet-pre-act.lua: the shortcut of a
            # dimension-increasing unit is Convolution only, after the unit's shared BN-ReLU); the sum is
            # normalised by the next unit's BN.
            short = b.bn(*n("downsample.1"), stage=stage, x=short)
    elif spec.shortcut == "D" and changes:
        short = _pooled_projection(b, spec, shortcut_in, n, stage, out_ch, stride, dilations[1])
    elif spec.shortcut == "A" and changes:
        # Option A: subsample (as a 1x1 stride-s conv would) and append zero
        # channels at the end, as fb.resnet.torch does (Concat of x and 0*x);
        # no parameters, no BN on the shortcut.
        c, hh, ww = shortcut_in.shape
        shape = (out_ch, (hh - 1) // stride + 1, (ww - 1) // stride + 1)
        short = b.add(*n("downsample"), op="shortcut_a", inputs=(shortcut_in.name,), shape=shape, stage=stage,
                      stride=stride, pad=out_ch - c)
    else:
        short = shortcut_in
    b.role = "main"
    out = b.add(*n("add"), op="add", inputs=(h.name, short.name), shape=h.shape, stage=stage)
    return out if spec.preact else b.relu(*n("relu"), stage=stage, x=out)


def _pooled_projection(b: _Builder, spec: Spec, x: Node, n: Namer, stage: str, out_ch: int, stride: int,
                       dilation: int) -> Node:
    """Shortcut D ("Bag of Tricks" ResNet-D): a 2x2 average pool (ceil mode, padding not counted) carries the
    stride, then a stride-1 1x1 projection and its BN, under timm's ``downsample_avg`` names: the pool is
    ``downsample.0`` (an identity, and no node, when the stride is 1), the conv ``.1``, the BN ``.2``. In a
    dilated stage timm keeps a stride-1 2x2 pool over the input padded by one zero row and column at the end
    (``AvgPool2dSame``), which the pool's ``pad_end`` reproduces."""
    if stride > 1:
        x = b.pool(*n("downsample.0"), kind="avg", x=x, stage=stage, kernel=2, stride=stride, padding=0,
                   ceil_mode=True, count_include_pad=False)
    elif dilation > 1:
        x = b.pool(*n("downsample.0"), kind="avg", x=x, stage=stage, kernel=2, stride=1, padding=0,
                   ceil_mode=True, count_include_pad=True, pad_end=1)
    short = b.conv(*n("downsample.1"), x, out_ch, 1, 1, stage)
    return short if spec.preact else b.bn(*n("downsample.2"), stage=stage, x=short)


def _attention(b: _Builder, spec: Spec, x: Node, names: tuple[str, str], stage: str) -> Node:
    """Channel attention at the end of the residual branch, after its last BN and before the addition, as timm's
    blocks place it (named ``se`` for either kind, as timm does)."""
    att = spec.attention
    assert att is not None
    c = x.shape[0]
    if att.kind == "se":
        return b.add(*names, op="se", inputs=(x.name,), shape=x.shape, stage=stage, channels=c,
                     reduced=att.reduced(c))
    return b.add(*names, op="eca", inputs=(x.name,), shape=x.shape, stage=stage, channels=c, kernel=att.kernel_for(c))


def _postact_body(b: _Builder, spec: Spec, x: Node, n: Namer, stage: str, width: int, out_ch: int,
                  stride: int, dilations: tuple[int, int]) -> Node:
    """conv-BN-ReLU stacks of the 2015 paper, up to (not including) the addition."""
    first, rest = dilations
    if not spec.bottleneck:
        h = b.relu(*n("relu1"), stage=stage, x=b.bn(*n("bn1"), stage=stage, x=b.conv(*n("conv1"), x, width, 3, stride,
                                                                                       stage, dilation=first)))
        return b.bn(*n("bn2"), stage=stage, residual_end=True, x=b.conv(*n("conv2"), h, out_ch, 3, 1, stage,
                                                                         dilation=rest))
    inner = spec.inner_width(width)
    s1, s3 = (stride, 1) if spec.downsample == "1x1" else (1, stride)
    h = b.relu(*n("relu1"), stage=stage, x=b.bn(*n("bn1"), stage=stage, x=b.conv(*n("conv1"), x, inner, 1, s1, stage)))
    h = b.relu(*n("relu2"), stage=stage, x=b.bn(*n("bn2"), stage=stage,
                                                 x=b.conv(*n("conv2"), h, inner, 3, s3, stage, groups=spec.groups,
                                                          dilation=first)))
    return b.bn(*n("bn3"), stage=stage, residual_end=True, x=b.conv(*n("conv3"), h, out_ch, 1, 1, stage))


def _preact_body(b: _Builder, spec: Spec, h: Node, n: Namer, stage: str, width: int, out_ch: int,
                 stride: int, dilations: tuple[int, int]) -> Node:
    """BN-ReLU-conv stacks of "Identity Mappings", after the unit's first BN-ReLU."""
    first, rest = dilations
    if not spec.bottleneck:
        h = b.conv(*n("conv1"), h, width, 3, stride, stage, dilation=first)
        h = b.relu(*n("relu2"), stage=stage, x=b.bn(*n("bn2"), stage=stage, x=h))
        return b.conv(*n("conv2"), h, out_ch, 3, 1, stage, residual_end=True, dilation=rest)
    inner = spec.inner_width(width)
    s1, s3 = (stride, 1) if spec.downsample == "1x1" else (1, stride)
    h = b.conv(*n("conv1"), h, inner, 1, s1, stage)
    h = b.relu(*n("relu2"), stage=stage, x=b.bn(*n("bn2"), stage=stage, x=h))
    h = b.conv(*n("conv2"), h, inner, 3, s3, stage, groups=spec.groups, dilation=first)
    h = b.relu(*n("relu3"), stage=stage, x=b.bn(*n("bn3"), stage=stage, x=h))
    return b.conv(*n("conv3"), h, out_ch, 1, 1, stage, residual_end=True)
