"""The IDX layout of the MNIST family (resdsl.readers.idx): read as the dataset's own reader reads it (Fashion-MNIST
from Debian's dataset-fashion-mnist), and refused with exit 2, nothing written, when a file is truncated, has the
wrong magic number, disagrees with its partner or claims absurd sizes."""

from __future__ import annotations

import gzip
import importlib.util
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from resdsl.errors import InputError
from resdsl.readers import load_dataset

FASHION = Path("/usr/share/datasets/fashion-mnist")
#: The package's own reader (zalandoresearch's utils/mnist_reader.py), an oracle resdsl did not write.
FASHION_READER = Path("/usr/share/doc/dataset-fashion-mnist/utils/mnist_reader.py")
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="needs Fashion-MNIST: apt-get install dataset-fashion-mnist (make test "
                                   "installs it where it runs as root on Debian/Ubuntu)")


def idx_bytes(a: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes, written here from the format's definition."""
    return bytes([0, 0, 0x08, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape) + a.astype(np.uint8).tobytes()


def write_idx(root: Path, n_train: int = 30, n_test: int = 10, size: int = 28, classes: int = 10,
              gz: bool = False) -> tuple[Path, dict[str, np.ndarray]]:
    r = np.random.default_rng(7)
    arrays = {"train-images-idx3-ubyte": r.integers(0, 256, (n_train, size, size)),
              "train-labels-idx1-ubyte": np.arange(n_train) % classes,
              "t10k-images-idx3-ubyte": r.integers(0, 256, (n_test, size, size)),
              "t10k-labels-idx1-ubyte": np.arange(n_test) % classes}
    root.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        data = idx_bytes(a)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (root / name).write_bytes(data)
    return root, arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_read_as_written(tmp_path: Path, gz: bool) -> None:
    root, a = write_idx(tmp_path / "d", gz=gz)
    ds = load_dataset(root, classes=10, size=(28, 28), channels=1)
    assert ds.layout == "idx" and ds.test_name == "test" and ds.classes == [str(i) for i in range(10)]
    assert ds.train_x.shape == (30, 1, 28, 28) and ds.test_x.shape == (10, 1, 28, 28)
    assert np.array_equal(ds.train_x[:, 0].numpy(), a["train-images-idx3-ubyte"])
    assert np.array_equal(ds.test_y.numpy(), a["t10k-labels-idx1-ubyte"])
    with pytest.raises(InputError, match=r"IDX images have 1 channel but the spec takes 3; set input\.channels: 1"):
        load_dataset(root, classes=10, size=(28, 28), channels=3)
    with pytest.raises(InputError, match=r"its images are 28x28 but the spec takes 32x32; .*--resize"):
        load_dataset(root, classes=10, size=(32, 32), channels=1)
    assert load_dataset(root, classes=10, size=(32, 32), channels=1, resize=True).train_x.shape == (30, 1, 32, 32)
    with pytest.raises(InputError, match=r"train-labels-idx1-ubyte(\.gz)? has label 9, outside 0\.\.4"):
        load_dataset(root, classes=5, size=(28, 28), channels=1)


def _broken(kind: str, root: Path) -> tuple[str, str]:
    """Break one file of a good IDX directory; returns the file the message names and words it must hold."""
    images, labels = root / "train-images-idx3-ubyte", root / "train-labels-idx1-ubyte"
    if kind == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
        return images.name, "it is truncated"
    if kind == "longer":
        images.write_bytes(images.read_bytes() + b"\0")
        return images.name, "longer than its header says"
    if kind == "magic":
        data = bytearray(images.read_bytes())
        data[2] = 0x0D  # float32 values
        images.write_bytes(bytes(data))
        return images.name, "not an IDX file of unsigned bytes with 3 dimensions (magic number 00000d03"
    if kind == "counts":
        labels.write_bytes(idx_bytes(np.zeros(29, np.uint8)))
        return labels.name, "holds 30 images but"
    if kind == "hostile":
        images.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">III", 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF))
        return images.name, "more than the 2,147,483,648 resdsl reads"
    if kind == "header":
        images.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
        return images.name, "the header ends after 6 bytes"
    if kind == "missing":
        (root / "t10k-labels-idx1-ubyte").unlink()
        return str(root), "no t10k-labels-idx1-ubyte"
    if kind == "gzip":
        (root / "t10k-images-idx3-ubyte").unlink()
        (root / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
        return "t10k-images-idx3-ubyte.gz", "cannot read"
    raise AssertionError(kind)


BROKEN = ["truncated", "longer", "magic", "counts", "hostile", "header", "missing", "gzip"]


@pytest.mark.parametrize("kind", BROKEN)
def test_bad_idx_files_are_refused_naming_the_file(kind: str, tmp_path: Path) -> None:
    root, _ = write_idx(tmp_path / kind)
    name, words = _broken(kind, root)
    t = time.perf_counter()
    with pytest.raises(InputError) as e:
        load_dataset(root, classes=10, size=(28, 28), channels=1)
    assert time.perf_counter() - t < 2.0  # a hostile header is refused without reading what it claims
    assert name in str(e.value) and words in str(e.value), str(e.value)


@pytest.mark.parametrize("kind", ["truncated", "hostile", "counts"])
def test_bad_idx_data_exits_2_with_nothing_written(kind: str, tmp_path: Path, cli: Any) -> None:
    from .test_evaluate import write_tiny_spec

    root, _ = write_idx(tmp_path / "data")
    name, words = _broken(kind, root)
    spec = write_tiny_spec(tmp_path, False, channels=1, size=28, classes=10)
    for args in (["--eval-data", str(root)], ["--precision", "int8", "--calibration", str(root)]):
        r = cli("compile", str(spec), "-o", str(tmp_path / "out"), "--random-weights", "-q", *args)
        assert r.returncode == 2 and name in r.stderr and words in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    r = cli("train", str(spec), "--data", str(root), "--out", str(tmp_path / "run"), "--iterations", "1",
            "--batch", "4", "--lr", "0.1")
    assert r.returncode == 2 and name in r.stderr and not (tmp_path / "run").exists()


@needs_fashion
def test_fashion_mnist_reads_as_its_own_reader_reads_it() -> None:
    spec = importlib.util.spec_from_file_location("mnist_reader", FASHION_READER)
    assert spec is not None and spec.loader is not None
    reader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reader)
    ds = load_dataset(FASHION, classes=10, size=(28, 28), channels=1)
    for split, x, y in (("train", ds.train_x, ds.train_y), ("t10k", ds.test_x, ds.test_y)):
        images, labels = reader.load_mnist(str(FASHION), kind=split)
        assert np.array_equal(x.reshape(len(x), -1).numpy(), images)
        assert np.array_equal(y.numpy(), labels)
    assert (len(ds.train_x), len(ds.test_x)) == (60000, 10000)
    assert np.bincount(ds.test_y.numpy()).tolist() == [1000] * 10
