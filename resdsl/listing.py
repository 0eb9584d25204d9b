"""``resdsl list``: the specs of a directory, one line each; registered by :mod:`resdsl.cli`.

Counts come from :mod:`resdsl.expand` and :mod:`resdsl.flops`, so listing never imports torch. The directory
defaults to ``specs/`` under the working directory; ``invalid/`` (the broken specs the tests use) is skipped.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, SpecError
from .yamlio import display_name

#: Sub-directories of the listed directory that hold deliberately broken specs.
SKIPPED = ("invalid",)
SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Row:
    """One spec: its name, family, counts and file."""

    name: str
    family: str
    block: str
    macs: int
    gmacs: float
    params: int
    file: str


def family(rel: Path, block: str) -> str:
    """The spec's sub-directory (``torchvision``, ``cifar``, ``preact``); at the top, ``preact`` for
    pre-activation blocks and ``paper`` otherwise."""
    if len(rel.parts) > 1:
        return rel.parts[0]
    return "preact" if block.startswith("preact_") else "paper"


def _natural(rel: Path) -> tuple[Any, ...]:
    """Sort key: files at the top first, then by sub-directory; numbers by value (resnet18 before resnet101,
    resnet34 before resnet34-a)."""
    parts = tuple(tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p))
                  for p in rel.with_suffix("").parts)
    return (len(rel.parts) > 1, parts)


def spec_files(directory: Path) -> list[Path]:
    """Every spec file under ``directory``, except those under ``invalid/``, in listing order."""
    found = [p for p in directory.rglob("*") if p.suffix in SUFFIXES and p.is_file()
             and not any(part in SKIPPED for part in p.relative_to(directory).parts[:-1])]
    return sorted(found, key=lambda p: _natural(p.relative_to(directory)))


def list_specs(directory: Path) -> tuple[list[Row], list[SpecError]]:
    """Load and count every spec under ``directory``; specs that fail to load come back as errors."""
    from .expand import expand
    from .flops import count
    from .spec import load, spec_tree

    rows, errors = [], []
    for path in spec_files(directory):
        # ``extends`` may reach the spec's project, or at least the whole listed tree
        tree = spec_tree(path)
        root = tree if directory.resolve().is_relative_to(tree) else directory
        try:
            spec = load(path, root=root)
        except SpecError as e:
            errors.append(e)
            continue
        report = count(expand(spec))
        rows.append(Row(spec.name, family(path.relative_to(directory), spec.block), spec.block, report.macs,
                        round(report.macs / 1e9, 4), report.params, display_name(path)))
    return rows, errors


def _directory(arg: Path | None) -> Path:
    if arg is None:
        default = Path("specs")
        if not default.is_dir():
            raise InputError(f"no specs/ directory in {Path.cwd()}; pass the directory: resdsl list DIR")
        return default
    if not arg.is_dir():
        what = "not a directory" if arg.exists() else "no such directory"
        raise InputError(f"{arg}: {what}; pass a directory of specs: resdsl list DIR")
    return arg


def cmd_list(args: argparse.Namespace) -> int:
    """Print one row per spec (or a JSON list); exit 2 if any spec outside ``invalid/`` does not load."""
    directory = _directory(args.directory)
    rows, errors = list_specs(directory)
    if not rows and not errors:
        raise InputError(f"{directory}: no .yaml specs there (invalid/ is skipped); pass a directory of specs")
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
    else:
        print(f"{'name':<24} {'family':<12} {'GMACs':>9} {'params':>13}  file")
        for r in rows:
            print(f"{r.name:<24} {r.family:<12} {r.macs / 1e9:>9.4f} {r.params:>13,}  {r.file}")
    for e in errors:
        print(e, file=sys.stderr)
    return 2 if errors else 0


def add_list_command(sub: Any) -> None:
    """Register ``list``."""
    p = sub.add_parser("list", help="the specs of a directory (default ./specs): name, family, GMACs, params, file",
                       description="List every spec under DIR (default: specs/ in the working directory), "
                       "skipping invalid/. Family is the spec's sub-directory (torchvision, cifar, preact); specs "
                       "at the top are 'paper', or 'preact' for pre-activation blocks. GMACs are the paper's "
                       "multiply-adds of conv and fc layers. Never imports torch.")
    p.add_argument("directory", nargs="?", type=Path, metavar="DIR", help="directory of specs (default ./specs)")
    p.add_argument("--json", action="store_true", help="a JSON list: name, family, block, macs, gmacs, params, "
                   "file")
    p.set_defaults(func=cmd_list)
