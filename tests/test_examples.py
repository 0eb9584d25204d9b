"""examples/python/classify.py as a user runs it: on fixed-batch and dynamic-batch ONNX artefacts, every image's
top-5 equals the artefact's own output (resdsl.runtime.load), and bad input is one line on stderr with exit 2."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from resdsl.runtime import load as load_artefact

from .conftest import ROOT, SPECS, TINY_BACKBONE

EXAMPLE = ROOT / "examples" / "python" / "classify.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
BATCHES = {"fixed4": "4", "dynamic1to3": "1:2:3"}


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """CIFAR ResNet-20 compiled to ONNX twice: --batch 4 (exactly 4) and --batch 1:2:3."""
    out = {}
    for name, batch in BATCHES.items():
        d = tmp_path_factory.mktemp("examples") / name
        r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "compile", str(SPECS / "cifar" / "resnet20.yaml"),
                            "--target", "onnx", "--batch", batch, "-o", str(d)], capture_output=True, text=True,
                           env=ENV, cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stderr
        out[name] = d
    return out


def classify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLE), *map(str, args)], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=120)


def parse(stdout: str) -> tuple[str, list[list[tuple[int, float]]]]:
    """The header line and, per image, the five (index, score) rows."""
    lines = stdout.splitlines()
    header, body = lines[0], [line for line in lines[1:] if not line.startswith("image ")]
    rows = [(int(i), float(s)) for i, s in (line.split() for line in body)]
    assert len(rows) % 5 == 0, stdout
    return header, [rows[k:k + 5] for k in range(0, len(rows), 5)]


def oracle(art: Path, x: np.ndarray) -> list[np.ndarray]:
    """Each image's logits from the artefact itself, run alone (repeated up to the artefact's smallest batch)."""
    net = load_artefact(art)
    lo = json.loads((art / "manifest.json").read_text())["batch"]["min"]
    return [net(np.repeat(x[k:k + 1], lo, axis=0))[0] for k in range(len(x))]


@pytest.mark.parametrize("name", list(BATCHES))
@pytest.mark.parametrize("images", [0, 1, 3, 5], ids=lambda n: f"{n}-images" if n else "default-input")
def test_top5_of_every_image_equals_the_artefacts_output(name: str, images: int, artefacts: dict[str, Path],
                                                         tmp_path: Path) -> None:
    art = artefacts[name]
    if images:
        x = np.random.default_rng(images).standard_normal((images, 3, 32, 32), dtype=np.float32)
        np.save(tmp_path / "x.npy", x if images > 1 else x[0])  # one image may be given as (C, H, W)
        r = classify(art, tmp_path / "x.npy")
    else:  # the example's own input: linspace(-1, 1, C*H*W), as the C++ examples use
        x = np.linspace(-1, 1, 3 * 32 * 32, dtype=np.float32).reshape(1, 3, 32, 32)
        r = classify(art)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    header, got = parse(r.stdout)
    assert header == f"resnet20-cifar (onnx, onnxruntime-cpu), input [{len(x)}, 3, 32, 32] float32"
    want = oracle(art, x)
    assert len(got) == len(want)  # one result per image: padding rows dropped
    for rows, ref in zip(got, want, strict=True):
        top = np.argsort(-ref, kind="stable")[:5]
        assert [i for i, _ in rows] == top.tolist()
        np.testing.assert_allclose([s for _, s in rows], ref[top], rtol=1e-5, atol=2e-6)


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("classify_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("n", "lo", "opt", "hi", "want"), [
    (5, 1, 2, 3, [(0, 2), (2, 4), (4, 5)]),
    (1, 4, 4, 4, [(0, 1)]),                      # padded up to 4 by the caller
    (9, 4, 4, 4, [(0, 4), (4, 8), (8, 9)]),
    (3, 1, 8, 32, [(0, 3)]),
])
def test_runs_stay_within_the_batch_range(n: int, lo: int, opt: int, hi: int, want: list[tuple[int, int]]) -> None:
    assert _example().runs(n, lo, opt, hi) == want


def _bad_npy(d: Path, kind: str) -> tuple[Path, str]:
    """A bad INPUT.npy and what the one-line message must say about it."""
    p = d / f"{kind}.npy"
    if kind == "wrong-shape":
        np.save(p, np.zeros((2, 3, 28, 28), np.float32))
        return p, f"{p}: found shape (2, 3, 28, 28), but this artefact needs (C, H, W) = (3, 32, 32) or (N, 3, 32, 32)"
    if kind == "wrong-rank":
        np.save(p, np.zeros((3, 32), np.float32))
        return p, f"{p}: found shape (3, 32), but this artefact needs (C, H, W) = (3, 32, 32)"
    if kind == "not-npy":
        p.write_text("3 32 32\n")
        return p, f"{p}: not a .npy file"
    if kind == "objects":
        np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return p, f"{p}: numpy cannot read this .npy file"
    if kind == "strings":
        np.save(p, np.full((1, 3, 32, 32), "x"))
        return p, f"{p}: holds <U1 values"
    return p, f"{p}: cannot read it (No such file or directory)"  # missing


@pytest.mark.parametrize("kind", ["wrong-shape", "wrong-rank", "not-npy", "objects", "strings", "missing"])
def test_bad_input_file_is_one_line_with_exit_2(kind: str, artefacts: dict[str, Path], tmp_path: Path) -> None:
    path, message = _bad_npy(tmp_path, kind)
    r = classify(artefacts["fixed4"], path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"classify.py: {message}"), r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


def test_missing_artefact_and_usage_are_clean(tmp_path: Path) -> None:
    r = classify(tmp_path / "nope")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"cannot load {tmp_path / 'nope'}: ") and len(r.stderr.splitlines()) == 1
    r = classify()
    assert r.returncode == 2 and "usage" not in r.stdout and "INPUT.npy" in r.stderr and "Traceback" not in r.stderr


FEATURES = ROOT / "examples" / "python" / "features.py"


def test_features_example_prints_every_output_at_the_input_s_own_size(tmp_path: Path) -> None:
    """A backbone over a size range: an input of another size inside it gives each feature map at that size, its
    stride from the manifest and statistics equal to the torch module's (built from the spec and the seed, not
    through the artefact); a size outside the range is one line and exit 2; a PNG is fitted into the range."""
    import torch

    from resdsl import build
    from resdsl.pipeline import CompileOptions, compile_spec

    spec = tmp_path / "bb.yaml"
    spec.write_text(TINY_BACKBONE)
    art, _ = compile_spec(spec, CompileOptions(out=tmp_path / "bb", size="24x24:32x32:64x64"))
    x = np.random.default_rng(0).standard_normal((1, 3, 45, 30)).astype(np.float32)
    np.save(tmp_path / "x.npy", x[0])
    r = subprocess.run([sys.executable, str(FEATURES), str(art), str(tmp_path / "x.npy")], capture_output=True,
                       text=True, env=ENV, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        want = build(spec, seed=0).eval()(torch.from_numpy(x))
    lines = r.stdout.splitlines()
    assert lines[0] == "input 1x3x45x30"
    for line, (name, value) in zip(lines[1:], want.items(), strict=True):
        got_name, shape, _, stride, _, mean, _, peak = line.split()
        assert (got_name, shape, stride) == (name, "x".join(map(str, value.shape)), "8")
        assert float(mean) == pytest.approx(float(value.mean()), rel=1e-4, abs=1e-6)
        assert float(peak) == pytest.approx(float(value.max()), rel=1e-4)
    np.save(tmp_path / "big.npy", np.zeros((3, 80, 40), np.float32))
    r = subprocess.run([sys.executable, str(FEATURES), str(art), str(tmp_path / "big.npy")], capture_output=True,
                       text=True, env=ENV, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "input size 80x40 is outside" in r.stderr and len(r.stderr.splitlines()) == 1
    pytest.importorskip("PIL")
    from PIL import Image

    Image.fromarray(np.zeros((200, 100, 3), np.uint8)).save(tmp_path / "tall.png")
    r = subprocess.run([sys.executable, str(FEATURES), str(art), str(tmp_path / "tall.png")], capture_output=True,
                       text=True, env=ENV, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "input 1x3x64x32"  # 200x100 scaled into 24..64 keeping its aspect
