"""Validation of a merged spec document: types, values, cross-key rules.

Every check appends a located :class:`~resdsl.errors.Problem` and carries on,
so one run reports everything wrong with a spec; only then is the
:class:`~resdsl.spec.Spec` built. Messages say what was found and what is
allowed, e.g. ``stages[2].stride: must be 1 or 2, got 3``.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from .errors import Problem, SpecError
from .options import MAX_SIDE
from .spec_types import (
    ATTENTIONS,
    BLOCKS,
    LOGITS,
    SHORTCUTS,
    STEM,
    Attention,
    ConvCfg,
    Expect,
    Normalize,
    PoolCfg,
    Spec,
    Stage,
    Stem,
    Train,
)
from .yamlio import KeyPath, Loc, Located, format_path

TOP_KEYS = ("resdsl", "name", "extends", "input", "block", "shortcut", "downsample", "expansion", "groups",
            "width_per_group", "zero_init_residual", "stem", "attention", "stages", "head", "outputs", "output_stride",
            "expect", "train")
#: The most convs a deep stem may chain (timm's deep stems have 3).
MAX_STEM_CONVS = 8
_MISSING = object()
#: Bounds the graph's size before it is built (ResNet-1202 has 600 blocks).
MAX_TOTAL_BLOCKS = 10_000
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class Checker:
    """Typed, located access to a document; collects problems instead of raising."""

    def __init__(self, doc: Located) -> None:
        self.doc = doc
        self.problems: list[Problem] = []

    def loc(self, path: KeyPath, key: bool = False) -> Loc:
        tables = (self.doc.key_locs, self.doc.value_locs) if key else (self.doc.value_locs, self.doc.key_locs)
        p = path
        while p:
            for table in tables:
                if p in table:
                    return table[p]
            p = p[:-1]
        return Loc(self.doc.file, 1, 1)

    def error(self, path: KeyPath, message: str, key: bool = False) -> None:
        loc = self.loc(path, key)
        self.problems.append(Problem(loc.file, loc.line, loc.col, format_path(path), message))

    def mapping(self, value: Any, path: KeyPath, allowed: tuple[str, ...]) -> dict[str, Any]:
        """Check that ``value`` is a mapping with only ``allowed`` keys; return it (or {})."""
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping with keys {', '.join(allowed)}, got {_show(value)}")
            return {}
        for k in value:
            if k not in allowed:
                close = difflib.get_close_matches(k, allowed, n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else f"; allowed: {', '.join(allowed)}"
                self.error((*path, k), f"unknown key{hint}", key=True)
        return value

    def get(self, m: dict[str, Any], key: str, path: KeyPath, kind: type, default: Any = _MISSING,
            lo: float | None = None, hi: float | None = None, choices: tuple[Any, ...] | None = None) -> Any:
        """Read ``m[key]`` as ``kind`` within bounds/choices; on a problem record it and return None."""
        sub = (*path, key)
        if key not in m or (m[key] is None and default is not _MISSING):
            if default is _MISSING:
                what = f"; one of {', '.join(map(str, choices))}" if choices else ""
                self.error(sub, f"required key missing{what}")
                return None
            return default
        v = m[key]
        ok = isinstance(v, kind) and not (kind is not bool and isinstance(v, bool))
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v, ok = float(v), True
        if not ok:
            self.error(sub, f"expected {_KIND_NAMES[kind]}, got {_show(v)}")
            return None
        if choices is not None and v not in choices:
            close = difflib.get_close_matches(str(v), [str(c) for c in choices], n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            allowed = " or ".join(map(str, choices)) if len(choices) == 2 else "one of " + ", ".join(map(str, choices))
            self.error(sub, f"must be {allowed}, got {v!r}{hint}")
            return None
        if lo is not None and v < lo:
            self.error(sub, f"must be at least {_num(lo)}, got {v}")
            return None
        if hi is not None and v > hi:
            self.error(sub, f"must be at most {_num(hi)}, got {v}")
            return None
        return v


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list", dict: "a mapping"}


def _show(v: Any) -> str:
    text = repr(v)
    return f"{text[:40]}... ({type(v).__name__})" if len(text) > 40 else f"{text} ({type(v).__name__})"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def validate(doc: Located) -> Spec:
    """Check a merged document and build the Spec, or raise SpecError with every problem."""
    c = Checker(doc)
    top = c.mapping(doc.value, (), TOP_KEYS)
    version = c.get(top, "resdsl", (), int)
    if version is not None and version != 1:
        c.error(("resdsl",), f"format version {version} is not supported; this resdsl reads version 1")
    name = c.get(top, "name", (), str)
    if name is not None and not _NAME_RE.match(name):
        c.error(("name",), f"must be letters, digits, '.', '_' or '-' (it names output files), got {name!r}")
    block = c.get(top, "block", (), str, choices=BLOCKS)
    shortcut = c.get(top, "shortcut", (), str, default="B", choices=SHORTCUTS)
    bottleneck = block is not None and block.endswith("bottleneck")
    basic = block is not None and not bottleneck

    for key, default in (("downsample", None), ("groups", 1), ("width_per_group", 64)):
        if basic and key in top and top[key] != default:
            c.error((key,), f"applies to bottleneck blocks only, and block is '{block}'; remove it")
    downsample = c.get(top, "downsample", (), str, default="1x1", choices=("1x1", "3x3"))
    expansion = c.get(top, "expansion", (), int, default=4 if bottleneck else 1, lo=1, hi=64)
    groups = c.get(top, "groups", (), int, default=1, lo=1, hi=4096)
    wpg = c.get(top, "width_per_group", (), int, default=64, lo=1, hi=4096)
    zero_init = c.get(top, "zero_init_residual", (), bool, default=False)

    inp = c.mapping(top.get("input", {}), ("input",), ("channels", "size", "mean", "std"))
    in_ch = c.get(inp, "channels", ("input",), int, default=3, lo=1, hi=4096)
    in_size = _size(c, inp.get("size", 224))
    normalize = _normalize(c, inp, in_ch)
    attention = _attention(c, top)

    stem = _stem(c, top)
    stages = _stages(c, top)
    head = c.mapping(top.get("head", {}), ("head",), ("classes",))
    classes = c.get(head, "classes", ("head",), int, default=1000, lo=1, hi=1_000_000)
    expect = _expect(c, top)
    train = _train(c, top)
    outputs = _outputs(c, top, stages)
    output_stride = c.get(top, "output_stride", (), int, default=None, lo=1)

    if not c.problems:
        assert block and shortcut and in_size and stem and stages is not None  # for the type checker
        _cross_checks(c, block, shortcut, expansion, groups, wpg, stem, stages)
        _output_stride(c, output_stride, stem, stages)
    if c.problems:
        raise SpecError(c.problems)
    assert in_size is not None and stem is not None and stages is not None  # every getter succeeded
    return Spec(name=name, block=block, shortcut=shortcut, downsample=downsample if bottleneck else "1x1",
                expansion=expansion, groups=groups, width_per_group=wpg, zero_init_residual=zero_init,
                in_channels=in_ch, in_size=in_size, stem=stem, stages=tuple(stages), classes=classes,
                expect=expect, train=train, attention=attention, normalize=normalize, outputs=outputs,
                output_stride=output_stride, source=doc.file, resolved=doc.value)


def _size(c: Checker, v: Any) -> tuple[int, int] | None:
    path = ("input", "size")
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v, v]
    if (not isinstance(v, list) or len(v) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in v)):
        c.error(path, f"expected an integer or [H, W], got {_show(v)}")
        return None
    if min(v) < 1 or max(v) > MAX_SIDE:
        c.error(path, f"each side must be between 1 and {MAX_SIDE} pixels, got {v}")
        return None
    return (v[0], v[1])


def _normalize(c: Checker, inp: dict[str, Any], channels: int | None) -> Normalize | None:
    """``input.mean`` and ``input.std``: one number per channel, given together, std positive."""
    given = [k for k in ("mean", "std") if inp.get(k) is not None]
    if not given:
        return None
    if len(given) == 1:
        other = "std" if given[0] == "mean" else "mean"
        c.error(("input", given[0]), f"needs input.{other} beside it (torchvision's weights: mean [0.485, 0.456, "
                "0.406], std [0.229, 0.224, 0.225])")
        return None
    values: dict[str, tuple[float, ...]] = {}
    for k in given:
        v = inp[k]
        ok = (isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
              and (channels is None or len(v) == channels))
        if not ok:
            c.error(("input", k), f"expected a list of {channels or 'per-channel'} numbers (one per input channel, on "
                    f"the 0..1 scale), got {_show(v)}")
        elif k == "std" and min(v) <= 0:
            c.error(("input", k), f"every std must be positive, got {v}")
        else:
            values[k] = tuple(float(x) for x in v)
    return Normalize(values["mean"], values["std"]) if len(values) == 2 else None


def _attention(c: Checker, top: dict[str, Any]) -> Attention | None:
    if top.get("attention") is None:
        return None
    path = ("attention",)
    raw = top["attention"]
    kind = c.get(raw, "kind", path, str, choices=ATTENTIONS) if isinstance(raw, dict) else None
    keys = {"se": ("kind", "reduction", "divisor"), "eca": ("kind", "gamma", "beta", "kernel")}
    m = c.mapping(raw, path, keys.get(kind or "", ("kind", "reduction", "divisor", "gamma", "beta", "kernel")))
    if kind is None:
        return None
    if kind == "se":
        return Attention("se", reduction=c.get(m, "reduction", path, int, default=16, lo=1, hi=4096),
                         divisor=c.get(m, "divisor", path, int, default=8, lo=1, hi=4096))
    kernel = c.get(m, "kernel", path, int, default=None, lo=1, hi=63)
    if kernel is not None and kernel % 2 == 0:
        c.error((*path, "kernel"), f"must be odd (the conv keeps the channel count), got {kernel}")
    return Attention("eca", gamma=c.get(m, "gamma", path, int, default=2, lo=1, hi=64),
                     beta=c.get(m, "beta", path, int, default=1, lo=0, hi=64), kernel=kernel)


def _stem_widths(c: Checker, conv: dict[str, Any], path: KeyPath) -> tuple[int, ...]:
    """``stem.conv.channels``: one width, or a list of widths for a deep stem."""
    v = conv.get("channels")
    if not isinstance(v, list):
        return (c.get(conv, "channels", path, int, default=64, lo=1, hi=65536),)
    sub = (*path, "channels")
    if not 1 <= len(v) <= MAX_STEM_CONVS:
        c.error(sub, f"a deep stem has 1 to {MAX_STEM_CONVS} convs, got {len(v)}")
        return (64,)
    for i, x in enumerate(v):
        if not isinstance(x, int) or isinstance(x, bool) or not 1 <= x <= 65536:
            c.error((*sub, i), f"expected a channel count between 1 and 65536, got {_show(x)}")
    return tuple(v)


def _stem(c: Checker, top: dict[str, Any]) -> Stem | None:
    if "stem" not in top:
        return Stem()
    stem = c.mapping(top["stem"], ("stem",), ("conv", "pool"))
    path = ("stem", "conv")
    conv = c.mapping(stem.get("conv", {}), path, ("channels", "kernel", "stride"))
    *inner, last = _stem_widths(c, conv, path)
    cc = ConvCfg(last, c.get(conv, "kernel", path, int, default=7, lo=1, hi=31),
                 c.get(conv, "stride", path, int, default=2, lo=1, hi=16), tuple(inner))
    pool = None
    if "pool" in stem:
        path = ("stem", "pool")
        p = c.mapping(stem["pool"], path, ("kind", "kernel", "stride"))
        pool = PoolCfg(c.get(p, "kind", path, str, default="max", choices=("max", "avg")),
                       c.get(p, "kernel", path, int, default=3, lo=1, hi=31),
                       c.get(p, "stride", path, int, default=2, lo=1, hi=16))
    return Stem(cc, pool)


def _stages(c: Checker, top: dict[str, Any]) -> list[Stage] | None:
    raw = c.get(top, "stages", (), list)
    if raw is None:
        return None
    if not raw:
        c.error(("stages",), "needs at least one stage")
        return None
    out: list[Stage] = []
    for i, s in enumerate(raw):
        path: KeyPath = ("stages", i)
        m = c.mapping(s, path, ("name", "width", "blocks", "stride"))
        if not m:
            continue
        out.append(Stage(c.get(m, "name", path, str, default=f"conv{i + 2}_x"),
                         c.get(m, "width", path, int, lo=1, hi=65536),
                         c.get(m, "blocks", path, int, lo=1, hi=100_000),
                         c.get(m, "stride", path, int, default=1, choices=(1, 2))))
    total = sum(s.blocks or 0 for s in out)
    if total > MAX_TOTAL_BLOCKS:
        c.error(("stages",), f"{total:,} blocks in all, more than the {MAX_TOTAL_BLOCKS:,} resdsl builds "
                "(ResNet-1202 has 600)")
    names = [s.name for s in out]
    for i, n in enumerate(names):
        if n in names[:i]:
            c.error(("stages", i, "name"), f"stage name '{n}' is used twice; names label reports")
        elif n in (STEM, LOGITS, "head"):
            c.error(("stages", i, "name"), f"'{n}' names the stem, the logits or the head; give the stage another "
                    f"name, e.g. conv{i + 2}_x")
    return out


def _outputs(c: Checker, top: dict[str, Any], stages: list[Stage] | None) -> tuple[str, ...]:
    """``outputs``: what the net returns, in order: ``conv1`` (the stem), stage names and ``logits`` (the default,
    alone)."""
    raw = c.get(top, "outputs", (), list, default=[LOGITS])
    if raw is None:
        return (LOGITS,)
    if not raw:
        c.error(("outputs",), f"needs at least one output: a stage name or '{LOGITS}'")
        return (LOGITS,)
    allowed = [STEM, *(s.name for s in stages or []), LOGITS]
    out: list[str] = []
    for i, v in enumerate(raw):
        if not isinstance(v, str):
            c.error(("outputs", i), f"expected a stage name or '{LOGITS}', got {_show(v)}")
        elif v in out:
            c.error(("outputs", i), f"'{v}' is listed twice; each output is returned once")
        elif stages is not None and v not in allowed:
            close = difflib.get_close_matches(v, allowed, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            c.error(("outputs", i), f"'{v}' is not a stage of this spec{hint}; one of {', '.join(allowed)}")
        else:
            out.append(v)
    return tuple(out) or (LOGITS,)


def _output_stride(c: Checker, value: int | None, stem: Stem, stages: list[Stage]) -> None:
    """``output_stride``: one of the strides the net reaches after its stem or a stage, at most its own."""
    if value is None:
        return
    net = stem.stride
    reached = [net]
    for s in stages:
        net *= s.stride
        reached.append(net)
    if value not in reached:
        choices = ", ".join(map(str, sorted(set(reached))))
        c.error(("output_stride",), f"{value} is not a stride this net reaches after its stem or a stage ({choices}); "
                f"the stages' strides ({', '.join(str(s.stride) for s in stages)}) after the stem's {reached[0]} "
                "set which output strides dilation can keep")


def _expect(c: Checker, top: dict[str, Any]) -> Expect:
    path = ("expect",)
    m = c.mapping(top.get("expect", {}), path, ("gflops", "gflops_tol", "params", "mparams", "mparams_tol"))
    return Expect(c.get(m, "gflops", path, float, default=None, lo=0),
                  c.get(m, "gflops_tol", path, float, default=0.1, lo=0) or 0.1,
                  c.get(m, "params", path, int, default=None, lo=0),
                  c.get(m, "mparams", path, float, default=None, lo=0),
                  c.get(m, "mparams_tol", path, float, default=0.005, lo=0) or 0.005)


def _train(c: Checker, top: dict[str, Any]) -> Train | None:
    if "train" not in top:
        return None
    path = ("train",)
    m = c.mapping(top["train"], path, ("batch", "iterations", "optimizer", "schedule"))
    op = (*path, "optimizer")
    opt = c.mapping(m.get("optimizer", {}), op, ("kind", "lr", "momentum", "weight_decay", "nesterov"))
    optimizer = {"kind": c.get(opt, "kind", op, str, default="sgd", choices=("sgd",)),
                 "lr": c.get(opt, "lr", op, float, default=0.1, lo=0),
                 "momentum": c.get(opt, "momentum", op, float, default=0.9, lo=0, hi=1),
                 "weight_decay": c.get(opt, "weight_decay", op, float, default=1e-4, lo=0),
                 "nesterov": c.get(opt, "nesterov", op, bool, default=False)}
    sp = (*path, "schedule")
    sch = c.mapping(m.get("schedule", {}), sp, ("kind", "milestones", "gamma", "patience"))
    schedule = {"kind": c.get(sch, "kind", sp, str, default="step", choices=("step", "plateau", "cosine")),
                "milestones": c.get(sch, "milestones", sp, list, default=[]),
                "gamma": c.get(sch, "gamma", sp, float, default=0.1, lo=0, hi=1),
                "patience": c.get(sch, "patience", sp, int, default=10, lo=1)}
    ms = schedule["milestones"] or []
    for i, v in enumerate(ms):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            c.error((*sp, "milestones", i), f"expected a positive iteration number, got {_show(v)}")
        elif i and isinstance(ms[i - 1], int) and v <= ms[i - 1]:
            c.error((*sp, "milestones", i), f"{v} does not come after {ms[i - 1]}; milestones must increase")
    return Train(c.get(m, "batch", path, int, default=128, lo=1, hi=1 << 20),
                 c.get(m, "iterations", path, int, default=64000, lo=1), optimizer, schedule)


def _cross_checks(c: Checker, block: str, shortcut: str, expansion: int, groups: int, wpg: int,
                  stem: Stem, stages: list[Stage]) -> None:
    """Rules that involve several keys: groups and option A.

    Spatial size needs no rule: every conv and pool pads by kernel // 2, so no
    feature map can shrink below 1x1.
    """
    if block.endswith("bottleneck"):
        for i, s in enumerate(stages):
            if s.width % groups:
                c.error(("stages", i, "width"), f"groups ({groups}) must divide every stage width, got {s.width}; "
                        "change groups or the width")
            elif s.width * wpg // 64 == 0:
                c.error(("stages", i, "width"), f"inner width int({s.width} x {wpg} / 64) is 0; raise width_per_group")
    chans = stem.conv.channels
    for i, s in enumerate(stages):
        out = s.width * expansion
        if shortcut == "A" and out < chans:
            c.error(("shortcut",), f"option A cannot shrink channels, but {s.name} (stages[{i}]) goes from "
                    f"{chans} to {out}; use shortcut B or C", key=True)
        chans = out
