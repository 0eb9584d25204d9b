"""Shared fixtures: paths, the reference data in tests/data (published figures, torchvision's layout), specs."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SPECS = ROOT / "specs"
VALID_SPECS = sorted(p for p in SPECS.rglob("*.yaml") if "invalid" not in p.parts)
INVALID_SPECS = sorted((SPECS / "invalid").glob("*.yaml"))
#: Nets too deep to run through torch on every CI run at full size.
DEEP = {"resnet1202.yaml", "resnet1001.yaml"}

#: A tiny backbone (basic blocks, two outputs, conv4_x dilated to keep stride 8) for tests of what consumes
#: several outputs and a size range (examples, Triton).
TINY_BACKBONE = """
resdsl: 1
name: tiny-backbone
block: basic
input: {size: 32}
stem: {conv: {channels: 8, kernel: 3, stride: 2}, pool: {}}
stages: [{width: 8, blocks: 1}, {width: 16, blocks: 1, stride: 2}, {width: 16, blocks: 1, stride: 2}]
outputs: [conv3_x, conv4_x]
output_stride: 8
"""


def spec_id(p: Path) -> str:
    return str(p.relative_to(SPECS))


@pytest.fixture(scope="session")
def figures() -> dict:
    return json.loads((DATA / "paper-figures.json").read_text())


@pytest.fixture(scope="session")
def tv_layout() -> dict:
    return json.loads((DATA / "torchvision-resnet-state-dict.json").read_text())


@pytest.fixture(scope="session")
def tv_logits() -> dict:
    return json.loads((DATA / "torchvision-golden-logits.json").read_text())


@pytest.fixture
def in_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run with the repository root as working directory (messages show paths relative to it)."""
    monkeypatch.chdir(ROOT)
    return ROOT


@pytest.fixture(scope="session")
def onnx_artefact(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], tuple[Path, Any]]:
    """``onnx_artefact(spec)``: ``spec`` compiled to ONNX with the default options, once per session (per worker
    under xdist), as ``(directory, manifest)``. Tests that damage it work on a copy (``shutil.copytree``)."""
    compiled: dict[Path, tuple[Path, Any]] = {}

    def get(spec: Path) -> tuple[Path, Any]:
        if spec not in compiled:
            from resdsl.pipeline import CompileOptions, compile_spec

            out = tmp_path_factory.mktemp("onnx") / spec.stem
            compiled[spec] = compile_spec(spec, CompileOptions(target="onnx", out=out))
        return compiled[spec]

    return get


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli(*ARGS)``: ``resdsl ARGS`` in this process (no interpreter start per call), as a CompletedProcess with
    the exit code, stdout and stderr. Tests of the console script itself start a process instead."""
    from resdsl.cli import main

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's digits (copied to tests/data/digits.npz), written as experiments/degradation.py does."""
    import sys

    import numpy as np

    sys.path.insert(0, str(ROOT))
    from experiments.degradation import write_digits

    arrays = np.load(ROOT / "tests" / "data" / "digits.npz")
    return write_digits(tmp_path_factory.mktemp("digits") / "data", images=arrays["images"],
                        targets=arrays["targets"])


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker is one of as many processes as there are cores: torch and ONNX Runtime get
    one thread each per worker (as OMP_NUM_THREADS=1 gives the processes the tests start), instead of a pool
    per core in every worker, whose threads would fight over the cores and spin."""
    import os

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    os.environ["OMP_NUM_THREADS"] = "1"  # the subprocesses this worker starts
    import onnxruntime
    import torch

    torch.set_num_threads(1)
    init = onnxruntime.InferenceSession.__init__

    def one_thread(self: Any, path_or_bytes: Any, sess_options: Any = None, *args: Any, **kw: Any) -> None:
        opts = sess_options or onnxruntime.SessionOptions()
        if opts.intra_op_num_threads == 0:  # ONNX Runtime's default: a thread per core
            opts.intra_op_num_threads = 1
        init(self, path_or_bytes, opts, *args, **kw)

    onnxruntime.InferenceSession.__init__ = one_thread  # type: ignore[method-assign]
