"""Accuracy as users judge it, at a scale that tells 0.1 points apart: the reference nets trained on Fashion-MNIST
(tests/data/fashion-nets.md) keep their top-1 through ONNX, fp16 and int8 (both schemes, fallback allowed) on
test images calibration never saw. `make test` uses the first 2,000 of the 10,000 test images; `make test-all`
all of them. The oracle is the module's top-1 computed here from the dataset's own reader, and what
`resdsl train` measured."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from resdsl import build
from resdsl.manifest import read

from .conftest import ROOT, SPECS
from .test_idx import FASHION, needs_fashion

DATA = ROOT / "tests" / "data"
NETS = {"resnet20": (SPECS / "fashion" / "resnet20.yaml", DATA / "fashion-resnet20.pt"),
        "resnet20-se-d": (SPECS / "fashion" / "resnet20-se-d.yaml", DATA / "fashion-resnet20-se-d.pt"),
        "resnet56": (SPECS / "fashion" / "resnet56.yaml", DATA / "fashion-resnet56.pt")}
#: What resdsl train measured on the 10,000 test images (tests/data/fashion-nets.md): the oracle's figure.
TRAINED = {"resnet20": 90.96, "resnet20-se-d": 86.76, "resnet56": 87.11}
SUBSET = 2000
pytestmark = needs_fashion


def _images(name: str) -> np.ndarray:
    with gzip.open(FASHION / f"{name}.gz", "rb") as f:
        return np.frombuffer(f.read(), np.uint8)


def _oracle_top1(net: str, n: int) -> float:
    """The module's top-1 on the first ``n`` test images, from the raw IDX bytes (offsets 16 and 8, as the
    dataset's own reader takes them) and the checkpoint's stored pixel mean."""
    spec, weights = NETS[net]
    ck = torch.load(weights, weights_only=True)
    x = torch.from_numpy(_images("t10k-images-idx3-ubyte")[16:].reshape(-1, 1, 28, 28)[:n].copy()).float() / 255
    y = _images("t10k-labels-idx1-ubyte")[8:][:n]
    model = build(spec).eval()
    model.load_state_dict(ck["model"])
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 500] - ck["pixel_mean"]).argmax(1) for i in range(0, n, 500)]).numpy()
    return 100.0 * float((pred == y).mean())


@pytest.fixture(scope="session")
def fashion_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fashion-MNIST with every training image and the first SUBSET test images, as IDX files."""
    d = tmp_path_factory.mktemp("fashion") / "subset"
    d.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        shutil.copy(FASHION / f"{name}.gz", d / f"{name}.gz")
    images, labels = _images("t10k-images-idx3-ubyte"), _images("t10k-labels-idx1-ubyte")
    head = bytearray(images[:16].tobytes())
    head[4:8] = SUBSET.to_bytes(4, "big")
    (d / "t10k-images-idx3-ubyte").write_bytes(bytes(head) + images[16:16 + SUBSET * 784].tobytes())
    head = bytearray(labels[:8].tobytes())
    head[4:8] = SUBSET.to_bytes(4, "big")
    (d / "t10k-labels-idx1-ubyte").write_bytes(bytes(head) + labels[8:8 + SUBSET].tobytes())
    return d


def test_the_reference_nets_reach_what_training_measured() -> None:
    """Each checkpoint's recorded test error (resdsl train on all 10,000 test images) is the module's, recomputed
    here on the first 2,000, within the spread a subset allows, and the full figure in make test-all."""
    for net, (_, weights) in NETS.items():
        ck = torch.load(weights, weights_only=True)
        trained = 100.0 - ck["resdsl"]["test_error"]
        assert trained == pytest.approx(TRAINED[net], abs=0.005), (net, trained)
        assert abs(_oracle_top1(net, SUBSET) - trained) < 2.5, net


@pytest.mark.slow
@pytest.mark.parametrize("net", list(NETS))
def test_the_reference_nets_full_test_split(net: str) -> None:
    ck = torch.load(NETS[net][1], weights_only=True)
    assert _oracle_top1(net, 10000) == pytest.approx(100.0 - ck["resdsl"]["test_error"], abs=0.021)  # 2 images


#: make test: ResNet-20 in fp16; make test-all: every reference net in fp16 and int8 (both schemes)
CASES = [pytest.param(net, precision, marks=() if (net, precision) == ("resnet20", "fp16") else pytest.mark.slow)
         for net in NETS for precision in ("fp16", "int8-ort", "int8-trt")]


@pytest.mark.parametrize(("net", "precision"), CASES)
def test_the_reference_nets_keep_their_accuracy(net: str, precision: str, fashion_subset: Path, tmp_path: Path,
                                                cli: Any) -> None:
    """fp16 within 0.1 point of the module on the 2,000 test images; int8 within the 1-point budget in both
    schemes, by default (fallback allowed, layers left in float reported); the module's figure is the oracle's."""
    spec, weights = NETS[net]
    args = ["compile", str(spec), "--weights", str(weights), "-o", str(tmp_path / "out"), "-q"]
    if precision == "fp16":
        args += ["--precision", "fp16", "--eval-data", str(fashion_subset), "--max-drop", "0.1"]
    else:
        args += ["--precision", "int8", "--calibration", str(fashion_subset), "--quant-scheme", precision[5:]]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    acc = read(tmp_path / "out").verification["accuracy"]  # type: ignore[index]
    assert acc["images"] == SUBSET and acc["module"]["top1"] == pytest.approx(_oracle_top1(net, SUBSET))
    assert acc["drop"] <= (0.1 if precision == "fp16" else 1.0)
