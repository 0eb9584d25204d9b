"""``resdsl list`` and ``python -m resdsl``: rows checked against published figures, no torch import."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from resdsl import cli
from resdsl.listing import add_list_command

from .conftest import ROOT, SPECS, VALID_SPECS

#: torchvision's weights metadata for resnet50 (stride on the 3x3): parameters and "GFLOPS" (multiply-adds).
TV_RESNET50 = {"params": 25_557_032, "gmacs": 4.089}
#: Table 1 of He et al. 2015, the FLOPs row (multiply-adds of conv and fc layers, in 1e9).
TABLE1 = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3}

_parser = cli.parser


def _parser_with_list() -> argparse.ArgumentParser:
    """resdsl's parser, with ``list`` added where :func:`resdsl.cli.parser` lacks it."""
    p = _parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    if "list" not in sub.choices:
        add_list_command(sub)
    return p


Main = Callable[..., tuple[int, str, str]]


@pytest.fixture
def main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Main:
    """``resdsl ARGS`` in this process through :func:`resdsl.cli.main`: (exit code, stdout, stderr)."""
    monkeypatch.setattr(cli, "parser", _parser_with_list)

    def run(*args: str) -> tuple[int, str, str]:
        rc = cli.main(list(args))
        out = capsys.readouterr()
        return rc, out.out, out.err

    return run


def _rows(main: Main, *args: str) -> dict[str, dict]:
    rc, out, err = main("list", *args, "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert len({r["name"] for r in rows}) == len(rows)
    return {r["name"]: r for r in rows}


def test_one_row_per_valid_spec(main: Main, in_root: Path) -> None:
    rows = _rows(main)  # default directory: ./specs
    assert len(rows) == len(VALID_SPECS)
    assert sorted(r["file"] for r in rows.values()) == sorted(str(p.relative_to(ROOT)) for p in VALID_SPECS)
    assert not any("invalid" in r["file"] for r in rows.values())


def test_rows_match_torchvision_and_table1(main: Main, in_root: Path) -> None:
    rows = _rows(main, "specs")
    tv = rows["resnet50-tv"]
    assert tv["params"] == TV_RESNET50["params"] and round(tv["macs"] / 1e9, 3) == TV_RESNET50["gmacs"]
    assert (tv["family"], tv["block"], tv["file"]) == ("torchvision", "bottleneck", "specs/torchvision/resnet50.yaml")
    for name, paper in TABLE1.items():
        assert abs(rows[name]["gmacs"] - paper) < 0.1, (name, rows[name]["gmacs"])
        assert rows[name]["family"] == "paper"
    assert rows["resnet50"]["params"] == TV_RESNET50["params"]  # same layers, the stride elsewhere
    assert rows["resnet20-cifar"]["family"] == "cifar" and rows["preact-resnet164-cifar"]["family"] == "preact"
    assert round(rows["resnet20-cifar"]["params"] / 1e6, 2) == 0.27  # Table 6 of the paper


def test_text_rows(main: Main, in_root: Path) -> None:
    rc, out, err = main("list")
    assert rc == 0 and not err
    lines = out.splitlines()
    assert lines[0].split() == ["name", "family", "GMACs", "params", "file"]
    assert len(lines) == 1 + len(VALID_SPECS)
    row = next(line.split() for line in lines if line.startswith("resnet50-tv "))
    assert row == ["resnet50-tv", "torchvision", "4.0892", "25,557,032", "specs/torchvision/resnet50.yaml"]
    names = [line.split()[0] for line in lines[1:]]
    assert names.index("resnet18") < names.index("resnet101")  # numbers sort by value


def test_no_specs_directory_is_a_one_line_error(main: Main, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc, out, err = main("list")
    assert rc == 2 and not out
    assert len(err.strip().splitlines()) == 1 and "pass the directory" in err and "Traceback" not in err
    rc, _, err = main("list", str(tmp_path / "nope"))
    assert rc == 2 and "no such directory" in err


def test_broken_specs_are_reported_and_invalid_skipped(main: Main, tmp_path: Path) -> None:
    shutil.copy(SPECS / "resnet18.yaml", tmp_path / "resnet18.yaml")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "tiny.yaml").write_text("resdsl: 1\nname: tiny\nblock: preact_basic\n"
                                                 "stages: [{width: 8, blocks: 1}]\n")
    (tmp_path / "broken.yaml").write_text("resdsl: 1\nname: broken\nblock: basic\nstages: [{width: 8, blocks: 0}]\n")
    (tmp_path / "invalid").mkdir()
    shutil.copy(SPECS / "invalid" / "stride3.yaml", tmp_path / "invalid" / "stride3.yaml")
    rc, out, err = main("list", str(tmp_path), "--json")
    assert rc == 2
    rows = {r["name"]: r for r in json.loads(out)}
    assert sorted(rows) == ["resnet18", "tiny"] and rows["tiny"]["family"] == "mine"
    assert rows["resnet18"]["params"] == 11_689_512  # torchvision's resnet18
    assert "broken.yaml:4:" in err and "stages[0].blocks: must be at least 1, got 0" in err
    assert "stride3" not in err


def test_top_level_preact_spec_is_family_preact(main: Main, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("resdsl: 1\nname: p\nblock: preact_bottleneck\nstages: [{width: 16, blocks: 1}]\n")
    assert _rows(main, str(tmp_path))["p"]["family"] == "preact"


def test_python_m_resdsl_list_imports_no_torch() -> None:
    code = ("import sys, runpy; sys.argv = ['resdsl', 'list', '--json']\n"
            "try:\n    runpy.run_module('resdsl', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == len(VALID_SPECS)
    assert {r["name"]: r["params"] for r in rows}["resnet50-tv"] == TV_RESNET50["params"]


def test_python_m_resdsl_version() -> None:
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version
    r = subprocess.run([sys.executable, "-m", "resdsl", "--version"], capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"resdsl {version.group(1)}"
