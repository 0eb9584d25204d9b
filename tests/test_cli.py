"""The command line as a user runs it: exit codes, messages, no torch for the analytic commands."""

from __future__ import annotations

import json
import re
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


@pytest.mark.parametrize(("args", "message"), [
    (["compile", "specs/cifar/resnet20.yaml", "--target", "onnx", "--batch", "4:2:1", "-o", "{tmp}/out"],
     "resdsl: error: --batch 4:2:1: out of order; it needs MIN <= OPT <= MAX"),
    (["compile", "specs/cifar/resnet20.yaml", "--target", "onnx", "--batch", "0", "-o", "{tmp}/out"],
     "resdsl: error: --batch: batch sizes must be integers >= 1"),
    (["verify", "{tmp}"], "resdsl: error: {tmp} has no manifest.json; it is not a resdsl artefact"),
    (["flops", "specs"], "specs:1:1: is a directory, not a spec file"),
], ids=["batch-order", "batch-zero", "verify-not-an-artefact", "flops-directory"])
def test_bad_input_is_one_line_naming_the_option_and_writes_nothing(args: list[str], message: str,
                                                                     tmp_path: Path) -> None:
    """resdsl's own checks (not argparse's): exit 2, one line naming the flag or file and the fix, nothing left."""
    r = run(*[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(message.format(tmp=tmp_path)), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "CompileOptions" not in r.stderr  # the command line names its flags, not the Python API's fields
    assert list(tmp_path.iterdir()) == []  # no output, staging directory or lock file


def test_aoti_compile_silences_torchs_leafspec_notice_and_nothing_else() -> None:
    """``--target aoti`` printed torch's ``FutureWarning: isinstance(treespec, LeafSpec) is deprecated`` (raised when
    Inductor copies the exported program). The oracle is torch itself: building a LeafSpec raises that notice."""
    import warnings

    from torch.utils._pytree import LeafSpec

    from resdsl.backends import aoti

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        LeafSpec()  # outside: torch's notice, as a user saw it
        with aoti._without_torch_internal_warnings():  # what export and compile run under
            LeafSpec()
            warnings.warn("some other deprecation", FutureWarning, stacklevel=1)
            warnings.warn("a user warning", UserWarning, stacklevel=1)
        LeafSpec()  # the filter ends with the block
    messages = [(w.category, str(w.message)) for w in seen]
    leaf = [m for c, m in messages if c is FutureWarning and "isinstance(treespec, LeafSpec)" in m]
    assert len(leaf) == 2, messages
    assert (FutureWarning, "some other deprecation") in messages and (UserWarning, "a user warning") in messages


class _Stream:
    """A stderr stand-in: records what was written and when, and says whether it is a terminal."""

    def __init__(self, tty: bool) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("tty", [False, True], ids=["pipe", "terminal"])
def test_progress_prints_a_line_when_each_step_starts(tty: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from resdsl.progress import Progress

    err = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", err)
    p = Progress()
    with p.step("exporting ONNX"):
        during = err.text
        p.note("half done")
    with p.step("verifying"):
        pass
    assert during == ("resdsl: exporting ONNX ..." if tty else "resdsl: exporting ONNX ...\n")  # before it ends
    lines = err.text.splitlines()
    if tty:  # the duration is appended when the step ends (on a line of its own after a note)
        assert lines[:2] == ["resdsl: exporting ONNX ...", "resdsl:   half done"]
        assert re.fullmatch(r"resdsl: exporting ONNX: [0-9]+\.[0-9] s", lines[2])
        assert re.fullmatch(r"resdsl: verifying \.\.\. [0-9]+\.[0-9] s", lines[3]) and len(lines) == 4
    else:  # no bars, no carriage returns, no durations: one line per step
        assert lines == ["resdsl: exporting ONNX ...", "resdsl:   half done", "resdsl: verifying ..."]
    quiet = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", quiet)
    q = Progress(quiet=True)
    with q.step("exporting ONNX"):
        q.note("half done")
    assert quiet.text == ""


def _tiny_cifar(d: Path) -> Path:
    """Five training batches and a test batch in CIFAR-10's python format, 8 images each."""
    import pickle

    import numpy as np

    d.mkdir()
    r = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        x = r.integers(0, 255, (8, 3 * 32 * 32), dtype=np.uint8)
        (d / name).write_bytes(pickle.dumps({b"data": x, b"labels": [int(v) for v in r.integers(0, 10, 8)]}))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return d


@pytest.mark.parametrize(("umask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)],
                         ids=["022", "077"])
def test_outputs_get_the_modes_the_umask_gives(umask: int, dir_mode: int, file_mode: int, tmp_path: Path) -> None:
    """A compiled artefact, a training run and its plot are created as any tool creates files: 0777/0666 less the
    umask, so a serving account can read them under umask 022 (mkdtemp/mkstemp alone give 0700/0600)."""
    import stat

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT,
                              timeout=300, umask=umask)

    art = tmp_path / "art"
    r = cli("compile", "specs/cifar/resnet20.yaml", "--target", "torch", "--batch", "2", "-o", str(art))
    assert r.returncode == 0, r.stderr
    assert mode(art) == dir_mode
    assert {f.name: mode(f) for f in art.iterdir()} == {"manifest.json": file_mode, "model.pt": file_mode}
    # not a terminal: each step still shows, one line as it starts
    assert "resdsl: building the PyTorch module ...\n" in r.stderr

    spec = tmp_path / "tiny.yaml"
    spec.write_text("resdsl: 1\nname: tiny\ninput: {channels: 3, size: 32}\nblock: basic\nshortcut: A\n"
                    "stem: {conv: {channels: 4, kernel: 3, stride: 1}}\nstages: [{width: 4, blocks: 1}]\n"
                    "head: {classes: 10}\n")
    onnx_art = tmp_path / "onnx"  # model.onnx is written through a temporary file of its own
    r = cli("compile", str(spec), "--target", "onnx", "-o", str(onnx_art))
    assert r.returncode == 0, r.stderr
    assert {f.name: mode(f) for f in onnx_art.iterdir()} == {"manifest.json": file_mode, "model.onnx": file_mode}
    run = tmp_path / "run"
    r = cli("train", str(spec), "--data", str(_tiny_cifar(tmp_path / "data")), "--out", str(run), "--iterations",
            "2", "--batch", "4", "--lr", "0.01", "--eval-every", "1")
    assert r.returncode == 0, r.stderr
    assert {f.name: mode(f) for f in run.iterdir()} == {"last.pt": file_mode, "metrics.csv": file_mode}
    assert mode(run) == dir_mode
    r = cli("plot", str(run), "-o", str(tmp_path / "curves.png"))
    assert r.returncode == 0, r.stderr
    assert mode(tmp_path / "curves.png") == file_mode
