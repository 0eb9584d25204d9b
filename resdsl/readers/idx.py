"""The IDX files of the MNIST family (MNIST, Fashion-MNIST, KMNIST): ``train-images-idx3-ubyte`` and
``train-labels-idx1-ubyte`` for training, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` for testing,
each optionally gzipped (``.gz``), as the datasets are distributed.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), the dimensions as
big-endian 32-bit integers, then the values in C order. Only unsigned bytes (type 0x08) are read: images as
[N, H, W] (3 dimensions), labels as [N] (1 dimension). Every header is checked against the file's real length
before anything is allocated, so a file that claims absurd sizes is refused without reading them.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from ..data import Dataset
from ..errors import InputError

#: split -> (images, labels) base names; each may end in .gz.
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
UBYTE = 0x08
#: The largest file read: MNIST-family training images are 47 MB; this leaves room for larger sets of the format.
MAX_BYTES = 2 << 30
FIX = "re-extract the dataset's four IDX files (e.g. from Debian's dataset-fashion-mnist package)"


def find(root: Path, name: str) -> Path | None:
    """``root/name`` or ``root/name.gz``, whichever exists (the plain file first)."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def is_idx(root: Path) -> bool:
    """Whether ``root`` holds the training images of the IDX layout."""
    return find(root, FILES["train"][0]) is not None


def _read(path: Path, ndim: int) -> np.ndarray:
    """One IDX file of unsigned bytes with ``ndim`` dimensions, checked against its length."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] != UBYTE or head[3] != ndim:
                got = head.hex() if len(head) == 4 else f"{len(head)} bytes"
                raise InputError(f"{path}: not an IDX file of unsigned bytes with {ndim} dimension"
                                 f"{'s' if ndim > 1 else ''} (magic number {got}, expected "
                                 f"0000{UBYTE:02x}{ndim:02x}); {FIX}")
            raw = f.read(4 * ndim)
            if len(raw) < 4 * ndim:
                raise InputError(f"{path}: the header ends after {4 + len(raw)} bytes; the file is truncated. {FIX}")
            dims = [int.from_bytes(raw[4 * i:4 * i + 4], "big") for i in range(ndim)]
            size = math.prod(dims)
            if size > MAX_BYTES:
                raise InputError(f"{path}: its header claims {' x '.join(map(str, dims))} = {size:,} bytes, more "
                                 f"than the {MAX_BYTES:,} resdsl reads; the file is damaged or not an image set")
            data = f.read(size + 1)  # one byte more than the header says: a longer file is refused too
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"cannot read {path} ({type(e).__name__}: {str(e)[:120]}); {FIX}") from None
    if len(data) != size:
        what = "truncated" if len(data) < size else "longer than its header says"
        raise InputError(f"{path}: its header says {' x '.join(map(str, dims))} values but the file holds "
                         f"{min(len(data), size)}{'' if len(data) < size else '+'}: it is {what}. {FIX}")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    names = FILES[split]
    paths = [find(root, n) for n in names]
    missing = [n for n, p in zip(names, paths, strict=True) if p is None]
    if missing:
        raise InputError(f"{root} has {FILES['train'][0]} but no {' or '.join(missing)} (nor .gz); the IDX layout "
                         f"needs all four files. {FIX}")
    images_path, labels_path = paths
    assert images_path is not None and labels_path is not None
    images, labels = _read(images_path, 3), _read(labels_path, 1)
    if len(images) != len(labels):
        raise InputError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels; the "
                         f"two files do not belong together. {FIX}")
    return images, labels


def load_idx(root: Path, classes: int) -> Dataset:
    """Read the four IDX files in ``root`` as a 1-channel dataset; the classes are numbered 0..``classes``-1
    (the spec's head), and a label outside them is refused naming its file."""
    train_x, train_y = _split(root, "train")
    test_x, test_y = _split(root, "test")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise InputError(f"{root}: the training images are {train_x.shape[1]}x{train_x.shape[2]} but the test images "
                         f"{test_x.shape[1]}x{test_x.shape[2]}; {FIX}")
    for split, y in (("train", train_y), ("test", test_y)):
        if len(y) and int(y.max()) >= classes:
            raise InputError(f"{find(root, FILES[split][1])} has label {int(y.max())}, outside 0..{classes - 1} "
                             f"(the spec's head has {classes} classes); set head: {{classes: {int(y.max()) + 1}}}, "
                             "or give data with as many classes")
    return Dataset(torch.from_numpy(train_x.copy()).unsqueeze(1), torch.from_numpy(train_y.astype(np.int64)),
                   torch.from_numpy(test_x.copy()).unsqueeze(1), torch.from_numpy(test_y.astype(np.int64)),
                   [str(i) for i in range(classes)], "idx", "test")
