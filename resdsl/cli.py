"""The ``resdsl`` command line: the only place that prints and chooses exit codes.

Exit codes: 0 ok, 1 verification failed, 2 bad input, 3 missing backend or
hardware. User errors (:class:`~resdsl.errors.ResdslError`) print a message,
never a traceback. Heavy libraries are imported inside the commands that need
them, so ``check``, ``flops`` and ``table`` never import torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import SpecError
from .version import __version__


def _load(path: str):  # type: ignore[no-untyped-def]
    from .spec import load

    return load(path)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate every spec; print all problems of all files."""
    failed = 0
    for path in args.specs:
        try:
            spec = _load(path)
        except SpecError as e:
            failed += 1
            print(e, file=sys.stderr)
            continue
        if not args.quiet:
            print(f"{path}: ok ({spec.name})")
    return 2 if failed else 0


def cmd_flops(args: argparse.Namespace) -> int:
    """Per-stage (or per-layer) counts and the comparison with ``expect``."""
    from .expand import expand
    from .flops import count
    from .report import check_expect, flops_table, output_entries, output_lines

    spec = _load(args.spec)
    own = spec.in_size
    if args.size is not None:
        from dataclasses import replace

        from .options import parse_size

        spec = replace(spec, in_size=parse_size(args.size))
    graph = expand(spec)
    report = count(graph)
    results = check_expect(spec, report)
    unchecked = []
    if spec.in_size != own:  # the spec's FLOP figure is for its own input size; its parameters hold at any
        unchecked = [f"expect: {r.key} {r.expected:g}: not checked, it is for the spec's own input "
                     f"{own[0]}x{own[1]}" for r in results if r.key == "gflops"]
        results = [r for r in results if r.key != "gflops"]
    if args.json:
        doc = {"input": [spec.in_channels, *spec.in_size], **report.to_dict(args.unit, args.per_layer),
               "outputs": output_entries(graph)}
        doc["expect"] = [r.__dict__ for r in results]
        print(json.dumps(doc, indent=1))
    else:
        print(flops_table(spec, report, args.unit))
        for line in output_lines(spec, graph):
            print(line)
        if args.per_layer:
            mult = 2 if args.unit == "flops" else 1
            print(f"\n{'layer':<28} {'Table 1':<26} {'op':<10} {'output':<14} {'MMACs' if mult == 1 else 'MFLOPs':>10}"
                  f" {'params':>11}")
            for n in report.nodes:
                if n.op == "input":
                    continue
                shape = "x".join(map(str, n.shape))
                print(f"{n.name:<28} {n.label:<26} {n.op:<10} {shape:<14} {n.macs * mult / 1e6:>10.3f} {n.params:>11,}")
        for r in results:
            print(f"expect: {r}")
        for line in unchecked:
            print(line)
    return 0 if all(r.ok for r in results) else 1


def cmd_table(args: argparse.Namespace) -> int:
    """One row per spec: Table 1's FLOPs row reproduced, with the delta to the paper."""
    from .expand import expand
    from .flops import count
    from .report import summary_header, summary_row

    rows, errors = [], []
    for path in args.specs:
        try:
            spec = _load(path)
        except SpecError as e:
            errors.append(str(e))
            continue
        rows.append(summary_row(spec, count(expand(spec)), args.unit))
    print(summary_header(args.unit))
    print("\n".join(rows))
    for message in errors:
        print(message, file=sys.stderr)
    return 2 if errors else 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of spec files (for editors: ``# yaml-language-server: $schema=...``)."""
    from importlib import resources

    sys.stdout.write(resources.files("resdsl").joinpath("schemas/spec.schema.json").read_text())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resdsl", description="Compile ResNet specs (YAML, Table 1 of He et al. 2015) "
                                "into verified PyTorch, ONNX and TensorRT artefacts.")
    p.add_argument("--version", action="version", version=f"resdsl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="validate specs; exit 0, or 2 with every problem located")
    c.add_argument("specs", nargs="+", metavar="SPEC")
    c.add_argument("-q", "--quiet", action="store_true", help="print nothing for valid specs")
    c.set_defaults(func=cmd_check)

    f = sub.add_parser("flops", help="multiply-adds and parameters per stage, checked against 'expect'")
    f.add_argument("spec", metavar="SPEC")
    f.add_argument("--unit", choices=("macs", "flops"), default="macs",
                   help="macs: the paper's convention (default); flops: 2 x multiply-adds")
    f.add_argument("--per-layer", action="store_true", help="also list every layer")
    f.add_argument("--json", action="store_true", help="machine-readable output")
    f.add_argument("--size", metavar="HxW|N", help="count at this input size instead of the spec's (e.g. 800x1216, "
                   "a detection-sized image); the spec's expected FLOPs are then not checked, its parameters are")
    f.set_defaults(func=cmd_flops)

    t = sub.add_parser("table", help="one row per spec: Table 1's FLOPs row with the delta to the paper")
    t.add_argument("specs", nargs="+", metavar="SPEC")
    t.add_argument("--unit", choices=("macs", "flops"), default="macs")
    t.set_defaults(func=cmd_table)

    s = sub.add_parser("schema", help="print the JSON Schema of spec files, for editors and CI checks")
    s.set_defaults(func=cmd_schema)

    from .listing import add_list_command  # list: analytic counts, no torch

    add_list_command(sub)
    from .draw import add_draw_command  # draw: matplotlib is imported inside it; no torch

    add_draw_command(sub)
    from .commands import add_commands  # compile, verify: their heavy imports stay inside them

    add_commands(sub)
    from .train_cli import add_train_commands  # train, plot: torch is imported inside them

    add_train_commands(sub)
    from .triton_cli import add_triton_command  # triton: a Triton model repository; no torch

    add_triton_command(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``resdsl`` console script."""
    from .commands import dispatch

    return dispatch(parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
