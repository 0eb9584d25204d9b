"""``metrics.csv`` of a training run: one writer, one reader.

A row per evaluation: ``iteration``, ``epoch``, ``loss`` and ``train_error`` (means over the evaluation interval,
errors in percent), ``test_error``, ``lr`` and ``images_per_s``. The writer replaces the file atomically, so a
reader never sees half a row; ``resdsl train --resume`` and ``resdsl plot`` read it back with :func:`read`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .atomic import write_bytes_atomic
from .errors import InputError

FIELDS = ("iteration", "epoch", "loss", "train_error", "test_error", "lr", "images_per_s")


def write(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Replace ``path`` with ``rows`` (iterations written as integers)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows({**r, "iteration": int(r["iteration"])} for r in rows)
    write_bytes_atomic(path, buf.getvalue().encode())


def read(path: Path) -> list[dict[str, float]]:
    """The rows of ``path`` as floats (empty fields dropped); a clear error if it is not a metrics file."""
    if not path.is_file():
        raise InputError(f"{path}: no such metrics file; give a run directory written by `resdsl train` "
                         "(it holds metrics.csv after the first evaluation)")
    try:
        with open(path, newline="") as f:
            rows = [{k: float(v) for k, v in r.items() if k is not None and v not in ("", None)}
                    for r in csv.DictReader(f)]
    except (ValueError, OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read {path}: {e}; it is not a resdsl metrics.csv. Delete it (a resumed run "
                         "writes it again from its checkpoint's iteration) or give another run") from None
    return [r for r in rows if "iteration" in r]
