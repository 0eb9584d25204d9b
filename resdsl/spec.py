"""The spec: frozen dataclasses mirroring a column of Table 1, and loading them.

``load(path)`` reads YAML (see :mod:`resdsl.yamlio`), resolves ``extends``,
applies defaults and validates everything, collecting *all* problems before
raising one :class:`~resdsl.errors.SpecError`. The format (every key, its
type, default and bounds, ``extends`` and the errors) is documented in
``docs/spec-format.md``; :mod:`resdsl.validate` enforces it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import Problem, SpecError
from .yamlio import KeyPath, Loc, Located, display_name, read_yaml

BLOCKS = ("basic", "bottleneck", "preact_basic", "preact_bottleneck")
SHORTCUTS = ("A", "B", "C", "D", "none")
ATTENTIONS = ("se", "eca")
MAX_EXTENDS_DEPTH = 16


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

    def digest(self) -> str:
        """sha256 of the resolved spec in canonical JSON: equal specs, equal hashes."""
        blob = json.dumps(self.resolved, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def load(path: str | Path, root: Path | None = None) -> Spec:
    """Load, merge (``extends``) and validate a spec file; raise SpecError listing every problem.

    ``extends`` may only reach files under ``root`` (default: the working
    directory if it contains the spec, else the spec's own directory), so a
    spec from elsewhere cannot make resdsl read arbitrary files.
    """
    from .validate import validate  # validate imports this module's dataclasses

    path = Path(path)
    return validate(_load_merged(path, [], root or _default_root(path)))


def _default_root(path: Path) -> Path:
    """The tree ``extends`` may reach: the working directory when it holds the spec, else the spec's directory."""
    cwd, here = Path.cwd().resolve(), path.resolve()
    return cwd if here.is_relative_to(cwd) else here.parent


def from_resolved(doc: dict[str, Any], source: str = "<manifest>") -> Spec:
    """Rebuild a Spec from its resolved mapping (as stored in a manifest); validated like a file."""
    from .validate import validate

    return validate(Located(doc, source, {}, {}))


def loads(text: str, name: str = "spec.yaml") -> Spec:
    """Load a spec from a string (tools, tests); it cannot use ``extends``."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / name
        p.write_text(text, encoding="utf-8")
        return load(p)


def _load_merged(path: Path, chain: list[Path], root: Path) -> Located:
    doc = read_yaml(path)
    if not isinstance(doc.value, dict):
        raise SpecError(Problem(doc.file, 1, 1, "", "a spec is a mapping of keys (resdsl: 1, name: ..., ...)"))
    parent_ref = doc.value.get("extends")
    if parent_ref is None:
        return doc
    loc = doc.value_locs[("extends",)]
    if not isinstance(parent_ref, str) or not parent_ref:
        raise SpecError(Problem(loc.file, loc.line, loc.col, "extends", "must be a path to another spec"))
    parent_path = (path.parent / parent_ref).resolve()
    here = path.resolve()
    if parent_path in chain or parent_path == here:
        cycle = " -> ".join(p.name for p in [*chain, here, parent_path])
        raise SpecError(Problem(loc.file, loc.line, loc.col, "extends", f"cycle: {cycle}; remove one link"))
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise SpecError(Problem(loc.file, loc.line, loc.col, "extends", f"more than {MAX_EXTENDS_DEPTH} levels"))
    if not parent_path.is_relative_to(root.resolve()):
        raise SpecError(Problem(loc.file, loc.line, loc.col, "extends",
                                f"'{parent_ref}' lies outside the spec tree {display_name(root)}; keep a spec and "
                                "the specs it extends under one directory, and run resdsl from there"))
    if not parent_path.is_file():
        raise SpecError(Problem(loc.file, loc.line, loc.col, "extends",
                                f"no such file '{parent_ref}' (looked for {display_name(parent_path)}); the path is "
                                "relative to this spec's directory"))
    parent = _load_merged(parent_path, [*chain, here], root)
    return _merge(parent, doc)


def _merge(base: Located, over: Located) -> Located:
    """Mappings merge key by key; lists and scalars replace whole (docs/spec-format.md).

    As in JSON Merge Patch (RFC 7386), a ``null`` in the extending file removes
    the key it inherited: ``expect: {params: null}`` drops the parent's count.
    """
    key_locs = dict(base.key_locs)
    value_locs = dict(base.value_locs)

    def drop(prefix: KeyPath) -> None:
        for table in (key_locs, value_locs):
            for k in [k for k in table if k[: len(prefix)] == prefix]:
                del table[k]

    def merge(a: Any, b: Any, path: KeyPath) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                sub = (*path, k)
                if v is None:
                    drop(sub)
                    out.pop(k, None)
                elif k in out and isinstance(out[k], dict) and isinstance(v, dict):
                    out[k] = merge(out[k], v, sub)
                else:
                    drop(sub)
                    out[k] = v
                    _copy_locs(over, sub, key_locs, value_locs)
            return out
        return b

    value = merge(base.value, over.value, ())
    value.pop("extends", None)
    return Located(value, over.file, key_locs, value_locs)


def _copy_locs(src: Located, prefix: KeyPath, key_locs: dict[KeyPath, Loc], value_locs: dict[KeyPath, Loc]) -> None:
    for table_in, table_out in ((src.key_locs, key_locs), (src.value_locs, value_locs)):
        for k, v in table_in.items():
            if k[: len(prefix)] == prefix:
                table_out[k] = v
