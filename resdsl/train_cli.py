"""``resdsl train`` and ``resdsl plot``; registered by :mod:`resdsl.cli` through :func:`add_train_commands`.

torch is imported inside ``train`` and matplotlib inside ``plot``, so building the parser stays cheap.
``python -m resdsl.train_cli train ...`` runs the same commands without the main CLI (handy under torchrun).
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import BackendUnavailable, InputError


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _milestones(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        vals = (0,)
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected iterations like 32000,48000, got {text!r}")
    if any(a >= b for a, b in itertools.pairwise(vals)):
        raise argparse.ArgumentTypeError(f"{text!r}: milestones must increase (each iteration once), e.g. "
                                         f"{','.join(str(v) for v in sorted(set(vals)))}")
    return vals


def cmd_train(args: argparse.Namespace) -> int:
    """Train or resume; print one summary line (rank 0)."""
    from .commands import limits
    from .train import TrainOptions, train

    opts = TrainOptions(spec=args.spec, data=args.data, out=args.out, iterations=args.iterations, batch=args.batch,
                        lr=args.lr, milestones=args.milestones, resume=args.resume, seed=args.seed,
                        workers=args.workers, eval_every=args.eval_every, sync_bn=args.sync_bn, device=args.device,
                        limits=limits(args), resize=args.resize)
    s = train(opts)
    if s["rank"] == 0:
        errs = ", ".join(f"{k.replace('_', ' ')} {s[k]:.2f}%" for k in ("train_error", "test_error") if k in s)
        print(f"{s['out']}: {s['iteration']} iterations{', ' + errs if errs else ''}; {s['checkpoint']}, "
              f"{s['metrics']}")
    return 0


def _metrics(run: Path) -> tuple[str, list[dict[str, float]]]:
    from .metrics import read

    path = run / "metrics.csv" if run.is_dir() else run
    if not path.is_file():
        raise InputError(f"{run}: no metrics.csv there; give run directories written by `resdsl train`")
    rows = read(path)
    if not rows or not {"train_error", "test_error"} <= rows[0].keys():
        raise InputError(f"{path} has no rows with iteration, train_error and test_error; let the run reach its "
                         "first evaluation (--eval-every)")
    return (run.name if run.is_dir() else run.parent.name) or str(run), rows


def plot_runs(runs: Sequence[Path], out: Path, title: str | None = None) -> Path:
    """Figure 1/6 style: training error dashed, test error bold, error (%) over iterations; one colour a run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        raise BackendUnavailable("resdsl plot needs matplotlib: pip install 'resdsl[train]'") from None
    from .atomic import write_bytes_atomic

    data = [_metrics(Path(r)) for r in runs]
    top = max(r["iteration"] for _, rows in data for r in rows)
    scale, unit = (1e4, "iter. (1e4)") if top >= 2e4 else (1.0, "iterations")
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=150)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles: list[Any] = []
    ymax = 0.0
    for k, (name, rows) in enumerate(data):
        c = colors[k % len(colors)]
        x = [r["iteration"] / scale for r in rows]
        train = [r["train_error"] for r in rows]
        test = [r["test_error"] for r in rows]
        ax.plot(x, train, "--", color=c, linewidth=1.0)
        ax.plot(x, test, "-", color=c, linewidth=2.2)
        handles.append(Line2D([], [], color=c, linewidth=2.2, label=name))
        ymax = max(ymax, *train, *test)
    handles += [Line2D([], [], color="0.3", linestyle="--", linewidth=1.0, label="train error"),
                Line2D([], [], color="0.3", linewidth=2.2, label="test error")]
    ax.set_xlabel(unit)
    ax.set_ylabel("error (%)")
    ax.set_xlim(0, top / scale)
    ax.set_ylim(0, min(100.0, ymax * 1.05 + 1))
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, buf.getvalue())
    return out


def cmd_plot(args: argparse.Namespace) -> int:
    runs = [Path(r) for r in args.runs]
    out = args.output or (runs[0] / "curves.png" if len(runs) == 1 and runs[0].is_dir() else Path("curves.png"))
    print(plot_runs(runs, out, args.title))
    return 0


def add_train_commands(sub: Any) -> None:
    """Add ``train`` and ``plot`` to the CLI's subparsers."""
    t = sub.add_parser("train", help="train a spec (the paper's CIFAR recipe from its 'train' section); resumable",
                       description="Train SPEC on --data with SGD, the spec's schedule and the paper's augmentation. "
                       "Checkpoints (DIR/last.pt, loadable by `resdsl compile --weights`) and DIR/metrics.csv "
                       "(errors in %) are written at every evaluation. Under torchrun each process takes batch / "
                       "WORLD_SIZE images of the same global batch.")
    t.add_argument("spec", metavar="SPEC")
    t.add_argument("--data", required=True, type=Path, metavar="DIR",
                   help="CIFAR-10/100 python batches, MNIST-family IDX files, or image folders DIR/train/<class>/, "
                   "DIR/val/<class>/")
    t.add_argument("--resize", action="store_true", help="resize images of another size than the spec's input "
                   "(default: refuse them)")
    t.add_argument("--out", type=Path, metavar="DIR", help="run directory (default runs/NAME)")
    t.add_argument("--iterations", type=_positive, metavar="N", help="total iterations (default: the spec's)")
    t.add_argument("--batch", type=_positive, metavar="N", help="global batch size (default: the spec's)")
    t.add_argument("--lr", type=float, metavar="LR", help="initial learning rate (default: the spec's)")
    t.add_argument("--milestones", type=_milestones, metavar="N,N",
                   help="iterations where a step schedule multiplies the lr by gamma (default: the spec's)")
    t.add_argument("--resume", action="store_true", help="continue DIR/last.pt exactly where it stopped")
    t.add_argument("--seed", type=int, metavar="N", help="initialisation, data order and augmentation (default 0)")
    t.add_argument("--workers", type=int, default=0, metavar="N",
                   help="threads decoding image folders (default: CPUs, at most 8)")
    t.add_argument("--eval-every", type=_positive, metavar="N",
                   help="evaluate, log and checkpoint every N iterations (default: one epoch)")
    t.add_argument("--no-sync-bn", dest="sync_bn", action="store_false",
                   help="under torchrun, BatchNorm statistics per process instead of over the global batch")
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if available")
    from .commands import add_limit_flags

    add_limit_flags(t)
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("plot", help="PNG of training curves (paper's Figure 6 style), runs overlaid")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or their metrics.csv)")
    p.add_argument("-o", "--output", type=Path, metavar="PNG", help="default RUN/curves.png, or ./curves.png")
    p.add_argument("--title", help="figure title")
    p.set_defaults(func=cmd_plot)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point with only ``train`` and ``plot``."""
    from .commands import dispatch

    parser = argparse.ArgumentParser(prog="resdsl")
    add_train_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
