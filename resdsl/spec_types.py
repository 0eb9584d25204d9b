"""The spec's types: frozen dataclasses mirroring a column of Table 1, with no loading and no validation.

:mod:`resdsl.validate` builds them from YAML; :mod:`resdsl.spec` loads a file and re-exports them, so that
``from resdsl.spec import Spec`` keeps working. Kept apart so that the validator can import the types without
importing the loader that calls it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

BLOCKS = ("basic", "bottleneck", "preact_basic", "preact_bottleneck")
SHORTCUTS = ("A", "B", "C", "D", "none")
ATTENTIONS = ("se", "eca")
#: The name of the head's output among a spec's ``outputs``, and the stem's (its row of Table 1).
LOGITS, STEM = "logits", "conv1"


@dataclass(frozen=True)
class ConvCfg:
    """The stem convolution: conv (no bias) + BN + ReLU, padding kernel // 2.

    A deep stem ("Bag of Tricks" ResNet-C; YAML ``channels: [32, 32, 64]``) is a chain of convs, each
    followed by BN-ReLU: ``inner`` holds the widths before the last, ``channels`` the last; only the first
    conv carries ``stride``.
    """

    channels: int = 64
    kernel: int = 7
    stride: int = 2
    inner: tuple[int, ...] = ()

    @property
    def widths(self) -> tuple[int, ...]:
        """Every conv's output channels, in order."""
        return (*self.inner, self.channels)


@dataclass(frozen=True)
class PoolCfg:
    """The stem pooling layer (Table 1's "3x3 max pool, stride 2"); padding kernel // 2."""

    kind: str = "max"  # "max" or "avg"
    kernel: int = 3
    stride: int = 2


@dataclass(frozen=True)
class Stem:
    """conv1 of Table 1 and the pool that opens conv2_x."""

    conv: ConvCfg = ConvCfg()
    pool: PoolCfg | None = PoolCfg()

    @property
    def stride(self) -> int:
        """The stride of the stem's conv(s) and pool together: the stride at which the first stage starts."""
        return self.conv.stride * (self.pool.stride if self.pool else 1)


@dataclass(frozen=True)
class Stage:
    """One row conv{n}_x of Table 1."""

    name: str    # label used in reports, e.g. "conv3_x"
    width: int   # the number in Table 1's brackets (64, 128, 256, 512)
    blocks: int  # the multiplier, e.g. x4
    stride: int  # stride of the stage's first block (1 or 2)


@dataclass(frozen=True)
class Attention:
    """Channel attention at the end of each residual branch (after its last BN, before the addition).

    ``se``: squeeze-and-excitation (Hu et al. 2018), reduced width ``reduced(C)``; ``eca``: efficient channel
    attention (Wang et al. 2020), a 1-D conv across channels of kernel ``kernel_for(C)``.
    """

    kind: str                 # "se" or "eca"
    reduction: int = 16       # se: the paper's r
    divisor: int = 8          # se: the reduced width is rounded to a multiple of this (timm's rule)
    gamma: int = 2            # eca: kernel from log2(C)
    beta: int = 1
    kernel: int | None = None  # eca: a fixed kernel instead of the adaptive one

    def reduced(self, channels: int) -> int:
        """SE's bottleneck width: C / r rounded to the nearest multiple of ``divisor``, at least ``divisor``
        (timm's ``make_divisible(C / r, divisor, round_limit=0)``)."""
        d = self.divisor
        return max(d, int(channels / self.reduction + d / 2) // d * d)

    def kernel_for(self, channels: int) -> int:
        """ECA's adaptive kernel: t = int(|log2(C) + beta| / gamma), made odd, at least 3 (as timm does)."""
        if self.kernel is not None:
            return self.kernel
        t = int(abs(math.log2(channels) + self.beta) / self.gamma)
        return max(t if t % 2 else t + 1, 3)


@dataclass(frozen=True)
class Normalize:
    """Per-channel input normalisation, ``(x / 255 - mean) / std``, as torchvision's and timm's weights expect."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class Expect:
    """Figures that ``resdsl flops``/``verify`` assert."""

    gflops: float | None = None  # paper convention: GMACs of conv + fc
    gflops_tol: float = 0.1
    params: int | None = None    # exact trainable parameter count
    mparams: float | None = None  # rounded count in millions, as papers print it
    mparams_tol: float = 0.005


@dataclass(frozen=True)
class Train:
    """The training recipe; consumed by ``resdsl train``."""

    batch: int = 128
    iterations: int = 64000
    optimizer: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Spec:
    """A validated, fully defaulted spec. ``resolved`` is the merged YAML after ``extends``."""

    name: str
    block: str
    shortcut: str
    downsample: str        # "1x1" (paper, v1) or "3x3" (torchvision, v1.5); bottlenecks only
    expansion: int
    groups: int
    width_per_group: int
    zero_init_residual: bool
    in_channels: int
    in_size: tuple[int, int]  # (H, W)
    stem: Stem
    stages: tuple[Stage, ...]
    classes: int
    expect: Expect
    train: Train | None
    attention: Attention | None = None
    normalize: Normalize | None = None  # None: centre on the training images' per-pixel mean (``resdsl train``)
    outputs: tuple[str, ...] = (LOGITS,)  # what the net returns, in order: stage names and/or "logits"
    output_stride: int | None = None  # None: the net's own stride; else the later stages' strides become dilations
    source: str = field(default="<memory>", compare=False)
    resolved: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def preact(self) -> bool:
        """True for the pre-activation units of "Identity Mappings" (2016)."""
        return self.block.startswith("preact_")

    @property
    def bottleneck(self) -> bool:
        return self.block.endswith("bottleneck")

    def inner_width(self, width: int) -> int:
        """A bottleneck's inner width for a stage of ``width``: torchvision's rule, which covers ResNeXt
        (``groups`` x ``width_per_group``) and the wide nets (``width_per_group`` 128)."""
        return (width * self.width_per_group // 64) * self.groups

    @property
    def has_head(self) -> bool:
        """True when the net returns logits, so the pool and the fc are built."""
        return LOGITS in self.outputs

    def stage_plan(self) -> tuple[tuple[int, int, int, int], ...]:
        """Per stage: (stride, dilation, previous dilation, output stride). Under ``output_stride``, a stage that
        would stride the feature map beyond it runs at stride 1 and multiplies the dilation by its stride instead,
        as torchvision's ``replace_stride_with_dilation`` and timm's ``output_stride`` do; the first unit of a
        dilated stage keeps the previous dilation in its first 3x3 conv (both libraries' rule)."""
        net = self.stem.stride
        dilation = 1
        out = []
        for s in self.stages:
            previous = dilation
            stride = s.stride
            if self.output_stride is not None and net >= self.output_stride and stride > 1:
                dilation *= stride
                stride = 1
            else:
                net *= stride
            out.append((stride, dilation, previous, net))
        return tuple(out)

    def digest(self) -> str:
        """sha256 of the resolved spec in canonical JSON: equal specs, equal hashes."""
        blob = json.dumps(self.resolved, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()
