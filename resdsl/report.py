"""Plain-text tables for ``resdsl flops`` and ``resdsl table`` (no torch import)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .flops import FlopReport
from .ir import Graph
from .spec import Spec


@dataclass(frozen=True)
class ExpectResult:
    """One ``expect`` figure compared with the analytic count."""

    key: str
    expected: float
    actual: float
    tolerance: float
    ok: bool

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        if self.key == "params":
            return f"params {self.expected:,.0f}: {verdict} (counted {self.actual:,.0f})"
        unit = "GMACs" if self.key == "gflops" else "M"
        return (f"{self.key} {self.expected:g} ± {self.tolerance:g}: {verdict} "
                f"(counted {self.actual:.4f} {unit}, delta {self.actual - self.expected:+.4f})")


def check_expect(spec: Spec, report: FlopReport) -> list[ExpectResult]:
    """Compare the spec's ``expect`` section with the counts; one result per figure given."""
    e, out = spec.expect, []
    if e.gflops is not None:
        g = report.macs / 1e9
        out.append(ExpectResult("gflops", e.gflops, g, e.gflops_tol, abs(g - e.gflops) <= e.gflops_tol + 1e-12))
    if e.params is not None:
        out.append(ExpectResult("params", e.params, report.params, 0, report.params == e.params))
    if e.mparams is not None:
        m = report.params / 1e6
        out.append(ExpectResult("mparams", e.mparams, m, e.mparams_tol, abs(m - e.mparams) <= e.mparams_tol + 1e-12))
    return out


def block_text(spec: Spec, width: int) -> str:
    """Table 1's bracket for one stage, e.g. ``[1x1,64 3x3,64 1x1,256]``."""
    out = width * spec.expansion
    att = f" {spec.attention.kind.upper()}" if spec.attention else ""
    if spec.bottleneck:
        inner = spec.inner_width(width)
        mid = f"3x3,{inner}" + (f"/g{spec.groups}" if spec.groups > 1 else "")
        return f"[1x1,{inner} {mid} 1x1,{out}{att}]"
    return f"[3x3,{width} 3x3,{out}{att}]"


def stem_text(spec: Spec) -> str:
    """conv1's row: ``7x7, 64, stride 2``, or a deep stem's chain ``3x3, 32-32-64, stride 2``."""
    k = spec.stem.conv
    return f"{k.kernel}x{k.kernel}, {'-'.join(map(str, k.widths))}, stride {k.stride}"


def flops_table(spec: Spec, report: FlopReport, unit: str = "macs") -> str:
    """The per-stage table of ``resdsl flops``, shaped like Table 1."""
    mult, head = (2, "GFLOPs") if unit == "flops" else (1, "GMACs")
    c, h, w = spec.in_channels, *spec.in_size
    lines = [f"{spec.name} ({spec.source}): input {c}x{h}x{w}, {spec.block} blocks, shortcut {spec.shortcut}"
             + (f", stride on the {spec.downsample}" if spec.bottleneck else "") + f", {report.depth} layers",
             f"{'stage':<10} {'output':<9} {'block':<30} {'blocks':>6} {head:>9} {'params':>13}"]
    stages = {s.name: s for s in spec.stages}
    for st in report.stages:
        size = "x".join(map(str, st.out_shape[1:])) if len(st.out_shape) == 3 else str(st.out_shape[0])
        if st.name == "conv1":
            desc, blocks = stem_text(spec), "-"
        elif st.name == "head":
            desc, blocks = f"average pool, {spec.classes}-d fc", "-"
        else:
            desc, blocks = block_text(spec, stages[st.name].width), str(st.blocks)
        lines.append(f"{st.name:<10} {size:<9} {desc:<30} {blocks:>6} {st.macs * mult / 1e9:>9.4f} {st.params:>13,}")
    lines.append(f"{'total':<10} {'':<9} {'':<30} {'':>6} {report.macs * mult / 1e9:>9.4f} {report.params:>13,}")
    return "\n".join(lines)


def output_entries(graph: Graph) -> list[dict[str, Any]]:
    """Each output the net returns: name, shape (batch excluded), channels and stride (None for logits)."""
    out = []
    for o in graph.outputs:
        shape = graph.node(o.node).shape
        out.append({"name": o.name, "shape": list(shape), "channels": shape[0], "stride": o.stride or None})
    return out


def output_lines(spec: Spec, graph: Graph) -> list[str]:
    """``outputs:`` lines of ``resdsl flops``: what the net returns, and the stages that dilate instead of
    striding under ``output_stride``."""
    lines = []
    for e in output_entries(graph):
        where = f", stride {e['stride']}" if e["stride"] else ""
        lines.append(f"output {e['name']}: {'x'.join(map(str, e['shape']))} ({e['channels']} channels{where})")
    dilated = [f"{s.name} dilation {d}" for s, (_, d, _, _) in zip(spec.stages, spec.stage_plan(), strict=True)
               if d > 1 and s.name in graph.stages]
    if dilated:
        lines.append(f"output stride {spec.output_stride}: {', '.join(dilated)} (strides become dilations)")
    return lines


def summary_row(spec: Spec, report: FlopReport, unit: str = "macs") -> str:
    """One row of ``resdsl table``: the Table 1 FLOPs row with the delta to the paper."""
    mult = 2 if unit == "flops" else 1
    g = report.macs * mult / 1e9
    if spec.expect.gflops is not None:
        paper = spec.expect.gflops * mult
        ref, delta = f"{paper:g}", f"{g - paper:+.4f}"
    else:
        ref, delta = "-", "-"
    return (f"{spec.name:<22} {report.depth:>6} {spec.block:<18} {spec.shortcut:<8} {g:>9.4f} {ref:>7} {delta:>8} "
            f"{report.params:>13,}")


def summary_header(unit: str = "macs") -> str:
    head = "GFLOPs" if unit == "flops" else "GMACs"
    return (f"{'spec':<22} {'layers':>6} {'block':<18} {'shortcut':<8} {head:>9} {'paper':>7} {'delta':>8} "
            f"{'params':>13}")
