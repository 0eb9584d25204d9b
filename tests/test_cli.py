"""The command line as a user runs it: exit codes, messages, no torch for the analytic commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, SPECS


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_check_ok_and_bad() -> None:
    ok = run("check", "specs/resnet50.yaml", "specs/cifar/resnet56.yaml")
    assert ok.returncode == 0 and "resnet50" in ok.stdout
    bad = run("check", "specs/resnet50.yaml", "specs/invalid/stride3.yaml", "specs/invalid/misspelt-keys.yaml")
    assert bad.returncode == 2
    assert "specs/invalid/stride3.yaml:8:37: stages[2].stride: must be 1 or 2, got 3" in bad.stderr
    assert bad.stderr.count("did you mean") == 3 and "Traceback" not in bad.stderr


def test_missing_file_is_a_clean_error() -> None:
    r = run("flops", "specs/nope.yaml")
    assert r.returncode == 2 and "specs/nope.yaml:1:1: no such file" in r.stderr and "Traceback" not in r.stderr


def test_flops_table_matches_table1_and_reports_expect() -> None:
    r = run("flops", "specs/resnet152.yaml")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[2:]}
    assert rows["conv4_x"][1] == "14x14" and rows["conv4_x"][-3] == "36"
    assert rows["total"][1] == "11.2824" and rows["total"][2] == "60,192,808"
    assert "expect: gflops 11.3 ± 0.1: ok" in r.stdout


def test_flops_json_per_layer_and_units() -> None:
    macs = json.loads(run("flops", "specs/resnet50.yaml", "--json", "--per-layer").stdout)
    flops = json.loads(run("flops", "specs/resnet50.yaml", "--json", "--unit", "flops").stdout)
    assert flops["total"] == 2 * macs["total"] and macs["params"] == 25557032
    layer = {x["name"]: x for x in macs["layers"]}["layer2.0.conv1"]
    assert layer["label"] == "conv3_x.0.conv1" and layer["shape"] == [128, 28, 28]
    assert sum(x["total"] for x in macs["layers"]) == macs["total"]


def test_flops_exit_1_when_expect_fails(tmp_path: Path) -> None:
    (tmp_path / "resnet50.yaml").write_text((SPECS / "resnet50.yaml").read_text())
    spec = tmp_path / "wrong.yaml"
    spec.write_text("resdsl: 1\nextends: resnet50.yaml\nname: wrong\nexpect: {gflops: 4.5}\n")
    r = run("flops", str(spec))
    assert r.returncode == 1 and "FAILED" in r.stdout


def test_table_reproduces_the_paper_row(figures: dict) -> None:
    names = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    r = run("table", *[f"specs/{n}.yaml" for n in names])
    assert r.returncode == 0
    lines = r.stdout.splitlines()[1:]
    for name, line in zip(names, lines, strict=True):
        cols = line.split()
        paper = figures["table1"][name]["paper_gflops"]
        assert cols[0] == name and float(cols[5]) == paper
        assert abs(float(cols[6])) < 0.1 and abs(float(cols[4]) - paper - float(cols[6])) < 1e-3


def test_analytic_commands_do_not_import_torch() -> None:
    code = ("import sys; from resdsl.cli import main; "
            "rc = [main(['flops', 'specs/resnet152.yaml']), main(['table', 'specs/resnet50.yaml']), "
            "main(['check', '-q', 'specs/resnet50.yaml'])]; "
            "assert 'torch' not in sys.modules and 'onnx' not in sys.modules, sorted(sys.modules); print(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("[0, 0, 0]")


@pytest.mark.parametrize("args", [[], ["flops"], ["frobnicate"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert run(*args).returncode == 2
