"""``resdsl draw``: a picture of a spec in the manner of Figure 3 of He et al. 2015; registered by :mod:`resdsl.cli`.

What is drawn and where comes from :mod:`resdsl.figure`; this module renders it. Each unit's shortcut is a line
to the right of the column: solid for an identity, dotted for a projection (its layers written beside it),
dashed for option A's zero-padded identity. A stage shows its first unit and, when it has more than two, one
representative repeated unit in a dashed frame marked "x N", so ResNet-1001 draws about as tall as ResNet-50.

matplotlib is imported only when a picture is rendered, on the Agg canvas (never a display); no torch import.
Output is deterministic: the same spec gives byte-identical SVG (fixed ``svg.hashsalt``, no date), and PNG
carries no date either.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import BackendUnavailable, InputError
from .figure import (
    ADD_R,
    ATT_W,
    BOX_FILLS,
    BOX_H,
    BOX_W,
    FIG_W,
    FRAME_L,
    FRAME_R,
    SHORTCUT_STYLES,
    X_ARC,
    X_NOTE,
    X_REPEAT,
    X_STAGE,
    XC,
    Box,
    Layout,
    Picture,
    Shortcut,
    layout,
    legend,
    picture,
    stage_lines,
)
from .spec import Spec

#: Output suffix -> matplotlib format.
FORMATS = {".png": "png", ".svg": "svg"}
DEFAULT_DPI = 120
MIN_DPI, MAX_DPI = 30, 600


@contextmanager
def _matplotlib() -> Iterator[Any]:
    """matplotlib's Figure class under fixed settings (deterministic SVG with real text), or BackendUnavailable."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise BackendUnavailable("resdsl draw needs matplotlib, which is not installed here; install it with "
                                 "pip install 'resdsl[draw]' (or pip install 'matplotlib>=3.7') and run the command "
                                 "again") from None
    with matplotlib.rc_context({"svg.hashsalt": "resdsl-draw", "svg.fonttype": "none", "font.family": "DejaVu Sans",
                                "path.simplify": False}):
        yield lambda w, h: FigureCanvasAgg(Figure(figsize=(w, h))).figure


def render(spec: Spec, fmt: str, dpi: int = DEFAULT_DPI) -> bytes:
    """The picture of ``spec`` as PNG or SVG bytes (``fmt``: ``"png"`` or ``"svg"``)."""
    from .expand import expand
    from .flops import count

    graph = expand(spec)
    return render_picture(picture(spec, graph, count(graph)), fmt, dpi)


def render_picture(pic: Picture, fmt: str, dpi: int = DEFAULT_DPI) -> bytes:
    """Lay ``pic`` out and draw it on matplotlib's Agg canvas; PNG or SVG bytes."""
    lay = layout(pic)
    with _matplotlib() as new_figure:
        fig = new_figure(FIG_W, -lay.bottom)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, FIG_W)
        ax.set_ylim(lay.bottom, 0)
        ax.set_axis_off()
        _draw_header(ax, pic)
        _draw_column(ax, pic, lay)
        buf = io.BytesIO()
        meta = {"Date": None, "Title": pic.title} if fmt == "svg" else {"Title": pic.title}
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta)
    return buf.getvalue()


def _draw_header(ax: Any, pic: Picture) -> None:
    """Title, subtitle and legend."""
    ax.text(X_STAGE, -0.32, pic.title, fontsize=16, fontweight="bold", va="center")
    ax.text(X_STAGE, -0.6, pic.subtitle, fontsize=9.5, va="center", color="#333333")
    for i, (kind, text) in enumerate(legend(pic)):
        x, y = X_STAGE + 4.0 * (i % 2), -0.92 - 0.22 * (i // 2)
        if kind in SHORTCUT_STYLES:
            style, colour, _ = SHORTCUT_STYLES[kind]
            ax.plot([x, x + 0.45], [y, y], linestyle=style, color=colour, linewidth=1.6)
        elif kind == "add":
            _draw_add(ax, x + 0.22, y)
        elif kind == "frame":
            ax.add_patch(_frame_patch(x + 0.02, y - 0.07, 0.41, 0.14))
        ax.text(x + 0.55, y, text, fontsize=8.5, va="center")


def _frame_patch(x: float, y: float, w: float, h: float) -> Any:
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.06", fill=False, linestyle="--",
                          linewidth=1.0, edgecolor="#777777", zorder=1)


def _draw_add(ax: Any, x: float, y: float) -> None:
    from matplotlib.patches import Circle

    ax.add_patch(Circle((x, y), ADD_R, facecolor="white", edgecolor="#222222", linewidth=1.0, zorder=4))
    ax.plot([x - ADD_R * 0.6, x + ADD_R * 0.6], [y, y], color="#222222", linewidth=1.0, zorder=5)
    ax.plot([x, x], [y - ADD_R * 0.6, y + ADD_R * 0.6], color="#222222", linewidth=1.0, zorder=5)


def _draw_column(ax: Any, pic: Picture, lay: Layout) -> None:
    """Stage bands and annotations, the main line, boxes, additions, shortcuts and repeat frames."""
    from matplotlib.patches import Rectangle

    for i, (top, bottom, stage) in enumerate(lay.bands):
        ax.add_patch(Rectangle((0.12, bottom), FIG_W - 0.24, top - bottom, facecolor="#f6f6f6" if i % 2 else
                               "#fcfcfc", edgecolor="#dddddd", linewidth=0.6, zorder=0))
        ax.add_patch(Rectangle((0.12, bottom), 0.07, top - bottom, facecolor=stage.colour, linewidth=0, zorder=0))
        name, shape, counts = stage_lines(stage)
        ax.text(X_STAGE, top - 0.1, name, fontsize=10.5, fontweight="bold", va="top")
        ax.text(X_STAGE, top - 0.3, f"{shape}\n{counts}", fontsize=8, va="top", linespacing=1.35, color="#333333")
    ax.text(XC, lay.top, pic.input_text, fontsize=9, ha="center", va="center")
    last = min(y for y, _, _ in lay.boxes) if lay.boxes else lay.top
    ax.plot([XC, XC], [lay.top - 0.1, last], color="#222222", linewidth=1.2, zorder=1)
    for y, box, colour in lay.boxes:
        _draw_box(ax, y, box, colour)
    for y in lay.adds:
        _draw_add(ax, XC, y)
    for split, join, shortcut in lay.arcs:
        _draw_shortcut(ax, split, join, shortcut)
    for top, bottom, block in lay.frames:
        ax.add_patch(_frame_patch(FRAME_L, bottom, FRAME_R - FRAME_L, top - bottom))
        mid = (top + bottom) / 2
        ax.text(X_REPEAT, mid + 0.1, f"\u00d7{block.repeat}", fontsize=13, fontweight="bold", va="center")
        ax.text(X_REPEAT, mid - 0.14, f"units {block.first}\u2013{block.first + block.repeat - 1}", fontsize=7.5,
                va="center", color="#555555")


def _draw_box(ax: Any, y: float, box: Box, colour: str) -> None:
    from matplotlib.patches import FancyBboxPatch

    w = ATT_W if box.kind == "attention" else BOX_W
    fill = colour if box.kind == "conv" else BOX_FILLS.get(box.kind, "#ffffff")
    ax.add_patch(FancyBboxPatch((XC - w / 2, y - BOX_H / 2), w, BOX_H, boxstyle="round,pad=0,rounding_size=0.05",
                                facecolor=fill, edgecolor="#444444", linewidth=0.9, zorder=3))
    ax.text(XC, y, box.text, fontsize=8.5 if box.kind != "attention" else 8, ha="center", va="center", zorder=4)


def _draw_shortcut(ax: Any, split: float, join: float, shortcut: Shortcut) -> None:
    """The run from the split above a unit to its addition: right, down, back left, with an arrowhead."""
    style, colour, _ = SHORTCUT_STYLES[shortcut.kind]
    end = XC + ADD_R + 0.02
    ax.plot([XC, X_ARC, X_ARC, end + 0.05], [split, split, join, join], linestyle=style, color=colour,
            linewidth=1.5, zorder=2)
    ax.plot([end + 0.03], [join], marker="<", markersize=5, color=colour, zorder=2)
    if shortcut.lines:
        ax.text(X_NOTE, (split + join) / 2, "\n".join(shortcut.lines), fontsize=7.5, va="center", color=colour,
                linespacing=1.3)


def draw(spec_path: str | Path, out: Path, dpi: int = DEFAULT_DPI) -> Path:
    """Render the spec at ``spec_path`` to ``out`` (``.png`` or ``.svg``), atomically: a temporary file in the
    same directory renamed into place, so an error leaves nothing behind (and an existing ``out`` untouched)."""
    from .atomic import write_bytes_atomic
    from .spec import load

    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise InputError(f"{out}: cannot tell the picture format from the suffix {out.suffix or '(none)'!r}; name "
                         "the output FILE.png or FILE.svg with -o")
    if out.is_dir():
        raise InputError(f"{out} is a directory; give a file name ending in .png or .svg with -o")
    if not MIN_DPI <= dpi <= MAX_DPI:
        raise InputError(f"--dpi must be between {MIN_DPI} and {MAX_DPI}, got {dpi}")
    data = render(load(spec_path), fmt, dpi)
    try:
        write_bytes_atomic(out, data)
    except OSError as e:
        raise InputError(f"cannot write {out}: {e.strerror or e}; nothing was written; choose a writable path "
                         "with -o") from None
    return out


def cmd_draw(args: argparse.Namespace) -> int:
    """Draw one spec; print the path written."""
    print(draw(args.spec, args.output, args.dpi))
    return 0


def add_draw_command(sub: Any) -> None:
    """Register ``draw``."""
    p = sub.add_parser("draw", help="a picture of a spec (PNG or SVG), in the manner of Figure 3 of the paper",
                       description="Draw SPEC as in Figure 3 of He et al. 2015: the stem, each stage's first unit "
                       "and one repeated unit (marked xN), layer widths and strides, shortcuts (solid: identity, "
                       "dotted: projection, dashed: option A), and each stage's GMACs and parameters. Needs "
                       "matplotlib (pip install 'resdsl[draw]'); never imports torch.")
    p.add_argument("spec", metavar="SPEC", help="the spec file (YAML)")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="FILE",
                   help="FILE.png or FILE.svg: the suffix chooses the format")
    p.add_argument("--dpi", type=int, default=DEFAULT_DPI, metavar="N",
                   help=f"resolution of a PNG, {MIN_DPI} to {MAX_DPI} (default {DEFAULT_DPI})")
    p.set_defaults(func=cmd_draw)
