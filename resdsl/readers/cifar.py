"""CIFAR-10/100 as distributed: the "python version" pickles, read with an unpickler that rebuilds numpy arrays and
nothing else.

CIFAR-10 is ``data_batch_1..5`` + ``test_batch`` + ``batches.meta``; CIFAR-100 is ``train`` + ``test`` + ``meta``.
Each is a pickled dict of ``data`` (uint8 [N, 3072]) and ``labels`` (``fine_labels`` for CIFAR-100).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..data import Dataset
from ..errors import InputError


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; refuses everything else."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
        ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnly(f, encoding="bytes").load()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}; check the file's permissions") from None
    except Exception as e:  # truncated or hostile pickles raise many kinds
        raise InputError(f"{path} is not a CIFAR python batch ({type(e).__name__}: {str(e)[:120]}); re-extract "
                         "cifar-10-python.tar.gz / cifar-100-python.tar.gz") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a CIFAR batch dict; re-extract the archive")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_batch(path: Path, fine: bool) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    key = "fine_labels" if fine and "fine_labels" in d else "labels"
    data, labels = d.get("data"), d.get(key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = "no 'data'" if data is None else f"'data' of {getattr(data, 'dtype', type(data).__name__)} " \
                                                 f"{list(getattr(data, 'shape', []))}"
        raise InputError(f"{path} has {what}; a CIFAR batch holds uint8 data [N, 3072]. Re-extract the archive")
    if labels is None or len(labels) != len(data):
        raise InputError(f"{path} has {0 if labels is None else len(labels)} '{key}' for {len(data)} images; "
                         "re-extract the archive")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _names(path: Path, key: str) -> list[str] | None:
    if not path.is_file():
        return None
    names = _unpickle(path).get(key)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names] if isinstance(names, list) else None


def load_cifar(root: Path) -> Dataset:
    """Read CIFAR-10 (``data_batch_*``, ``test_batch``) or CIFAR-100 (``train``, ``test``) from ``root``."""
    batches = sorted(root.glob("data_batch_*"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
    if batches:
        layout, train_files, test_file, fine = "cifar-10", batches, root / "test_batch", False
        names, default = _names(root / "batches.meta", "label_names"), 10
    else:
        layout, train_files, test_file, fine = "cifar-100", [root / "train"], root / "test", True
        names, default = _names(root / "meta", "fine_label_names"), 100
    if not test_file.is_file():
        raise InputError(f"{root} has {', '.join(p.name for p in train_files)} but no {test_file.name}; "
                         "re-extract the archive")
    parts = [_cifar_batch(p, fine) for p in train_files]
    test_x, test_y = _cifar_batch(test_file, fine)
    train_x, train_y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    classes = names or [str(i) for i in range(default)]
    for p, y in [*zip(train_files, (q[1] for q in parts), strict=True), (test_file, test_y)]:
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise InputError(f"{p} has label {int(y.max() if y.max() >= len(classes) else y.min())}, outside "
                             f"0..{len(classes) - 1} ({len(classes)} classes); the file does not belong with the "
                             f"others in {root}")
    return Dataset(torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x),
                   torch.from_numpy(test_y), classes, layout, "test")
