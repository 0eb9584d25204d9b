"""Hostile input, faults and concurrency: clear errors, nothing half-written, nothing loaded that should not be."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from resdsl import SpecError, load

from .conftest import ROOT, SPECS

HOSTILE = {
    "alias-bomb": "resdsl: 1\nname: x\na: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                  "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
                  "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
                  "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]\n",
    "deep-flow-nesting": "resdsl: 1\nname: x\nblock: " + "[" * 50000 + "]" * 50000 + "\n",
    "deep-block-nesting": "resdsl: 1\nname: x\nblock:\n" + "".join("  " * i + "- \n" for i in range(1, 200)),
    "python-tag": "resdsl: 1\nname: !!python/object/apply:os.system ['touch /tmp/resdsl-pwned']\n",
    "python-name-tag": "resdsl: 1\nname: x\nblock: !!python/name:os.system\n",
    "million-blocks": "resdsl: 1\nname: x\nblock: basic\nstages: [{width: 64, blocks: 1000000}]\n",
    "many-stages": "resdsl: 1\nname: x\nblock: basic\nstages: [" + ", ".join(["{width: 8, blocks: 90000}"] * 4) + "]\n",
    "width-1e6": "resdsl: 1\nname: x\nblock: bottleneck\nstages: [{width: 1000000, blocks: 1}]\n",
    "input-1e5": "resdsl: 1\nname: x\ninput: {size: 100000}\nblock: basic\nstages: [{width: 64, blocks: 1}]\n",
    "duplicate-keys": "resdsl: 1\nname: x\nname: y\nblock: basic\nstages: [{width: 64, blocks: 1}]\n",
    "merge-key": "base: &b {width: 64}\nresdsl: 1\nname: x\nblock: basic\nstages: [{<<: *b, blocks: 1}]\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_spec_is_refused_quickly_with_bounded_memory(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(HOSTILE[name])
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(SpecError) as info:
            load(path)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - t < 5.0
    assert peak < 200 * 2**20, f"{peak / 2**20:.0f} MiB"
    assert all(p.file.endswith(f"{name}.yaml") and p.line >= 1 for p in info.value.problems)
    assert not Path("/tmp/resdsl-pwned").exists()


def test_huge_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:
        f.truncate(3 << 30)  # 3 GiB, sparse
    t = time.perf_counter()
    with pytest.raises(SpecError, match="more than the 1048576 a spec may have"):
        load(path)
    assert time.perf_counter() - t < 1.0


@pytest.mark.parametrize("data,message", [(b"resdsl: 1\nname: \xff\xfe\n", "not UTF-8"),
                                          (b"resdsl: 1\nname: a\x00b\n", "is not allowed in YAML text")])
def test_binary_garbage(tmp_path: Path, data: bytes, message: str) -> None:
    (tmp_path / "bin.yaml").write_bytes(data)
    with pytest.raises(SpecError, match=message):
        load(tmp_path / "bin.yaml")


def test_extends_outside_the_tree_and_through_a_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = tmp_path / "project"
    inner.mkdir()
    (tmp_path / "secret.yaml").write_text("resdsl: 1\nname: secret\nblock: basic\nstages: [{width: 1, blocks: 1}]\n")
    (inner / "a.yaml").write_text("resdsl: 1\nextends: ../secret.yaml\nname: a\n")
    os.symlink(tmp_path / "secret.yaml", inner / "link.yaml")
    (inner / "b.yaml").write_text("resdsl: 1\nextends: link.yaml\nname: b\n")
    (inner / "c.yaml").write_text(f"resdsl: 1\nextends: {tmp_path / 'secret.yaml'}\nname: c\n")
    monkeypatch.chdir(inner)
    for f in ("a.yaml", "b.yaml", "c.yaml"):
        with pytest.raises(SpecError, match="outside the spec tree"):
            load(f)


def _compile_cmd(out: Path, spec: str = "specs/resnet152.yaml") -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "compile", spec, "--target", "torch", "-o", str(out)]


def _wait_for_staging(parent: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t = time.time()
    while time.time() - t < timeout:
        if any(p.name.startswith(".") and ".tmp-" in p.name for p in parent.iterdir()):
            return
        if proc.poll() is not None:
            pytest.fail(f"compile ended before it could be interrupted: {proc.returncode}")
        time.sleep(0.05)
    pytest.fail("no staging directory appeared")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_compile_leaves_nothing_and_the_next_succeeds(sig: signal.Signals, tmp_path: Path) -> None:
    out = tmp_path / "out" / "r152"
    out.parent.mkdir()
    proc = subprocess.Popen(_compile_cmd(out), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_staging(out.parent, proc)
    time.sleep(0.5)  # inside the work: writing model.pt or verifying
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if out.exists():  # the signal came after the final rename: then the directory must be complete
        assert proc.returncode in (0, 130, -signal.SIGKILL)
        assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.pt"]
        return
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
        assert list(out.parent.iterdir()) == []  # staging removed on the way out
    r = subprocess.run(_compile_cmd(out, "specs/cifar/resnet20.yaml"), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["r152"]  # stale staging cleaned up
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.pt"]


def test_two_compiles_into_one_directory(tmp_path: Path) -> None:
    out = tmp_path / "same"
    procs = [subprocess.Popen(_compile_cmd(out, "specs/resnet50.yaml"), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[2] == 2)
    assert "another resdsl process is writing" in loser[1] or "already exists" in loser[1]
    assert "Traceback" not in loser[1]
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "verify", str(out)], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]


def test_exit_codes(tmp_path: Path) -> None:
    """0 ok, 1 verification failed, 2 bad input, 3 missing backend: as documented in the README."""
    def code(*args: str) -> int:
        return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, capture_output=True).returncode

    (tmp_path / "resnet18.yaml").write_text((SPECS / "resnet18.yaml").read_text())
    (tmp_path / "off.yaml").write_text("resdsl: 1\nextends: resnet18.yaml\nname: wrong-params\nexpect: {params: 1}\n")
    assert code("check", "specs/resnet18.yaml") == 0
    assert code("flops", str(tmp_path / "off.yaml")) == 1
    assert code("check", "specs/invalid/stride3.yaml") == 2
    assert code("compile", "specs/cifar/resnet20.yaml", "--target", "trt", "-o", str(tmp_path / "t")) == 3
    readme = (ROOT / "README.md").read_text()
    assert "**0** ok, **1** verification failed, **2** bad\ninput, **3** missing backend or hardware" in readme
