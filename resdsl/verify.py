"""Verification: analytic vs traced FLOPs, and outputs equal across backends.

Comparisons return result objects with their tolerances; only the CLI turns
them into exit codes (as Polygraphy's comparator does). When two backends
disagree, :func:`localise` names the first layer, in topological order, whose
output differs beyond tolerance.

Error measure: ``rel = max|a - b| / max|b|``, the largest deviation relative to
the reference's largest logit; it is scale-free and does not blow up on logits
near zero, where an elementwise relative error would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Limits for one precision: normalised max error, and top-1 agreement on decisive samples."""

    rel: float
    top1: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


#: fp32: both sides compute in float32, so only summation order differs (~1e-6 seen).
#: fp16: float16 keeps ~3 decimal digits and errors grow with depth; 3e-2 of the largest
#: logit holds for the specs in specs/ (measured: tests/test_pipeline.py) and still catches a
#: wrong layer, which moves logits by tens of percent.
TOLERANCES = {"fp32": Tolerance(rel=1e-4), "fp16": Tolerance(rel=3e-2)}


@dataclass(frozen=True)
class Check:
    """One backend at one batch size against the reference."""

    backend: str
    batch: int
    max_abs: float
    rel: float
    top1_agree: float
    decisive: int  # samples whose top-1 margin exceeds the error, i.e. where top-1 must agree
    passed: bool


@dataclass
class Report:
    """Everything verification found; goes into the manifest as ``verification``."""

    precision: str
    tolerance: Tolerance
    checks: list[Check] = field(default_factory=list)
    flops: dict[str, Any] = field(default_factory=dict)
    divergence: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return bool(self.flops.get("passed", True)) and all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "precision": self.precision, "tolerance": self.tolerance.to_dict(),
                "flops": self.flops, "checks": [asdict(c) for c in self.checks], "divergence": self.divergence}

    def lines(self) -> list[str]:
        out = []
        f = self.flops
        if f:
            out.append(f"flops: analytic {f['analytic_macs']:,} MACs, traced {f['traced_macs']:,}: "
                       f"{'ok' if f['passed'] else 'MISMATCH'}")
        for c in self.checks:
            out.append(f"{c.backend} batch {c.batch}: rel err {c.rel:.2e} (tol {self.tolerance.rel:.0e}), "
                       f"top-1 agree {c.top1_agree:.0%} of {c.decisive} decisive: {'ok' if c.passed else 'FAILED'}")
        if self.divergence:
            d = self.divergence
            out.append(f"first diverging layer: {d['name']} ({d['label']}), rel err {d['rel']:.2e}")
        return out


def inputs(shape: Sequence[int], batch: int, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal float32 inputs of shape (batch, *shape)."""
    return np.random.default_rng(seed + batch).standard_normal((batch, *shape), dtype=np.float32)


def compare(out: np.ndarray, ref: np.ndarray, tol: Tolerance, backend: str) -> Check:
    """Compare one output with the reference under ``tol``."""
    out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
    max_abs = float(np.abs(out64 - ref64).max()) if out.size else 0.0
    rel = max_abs / max(float(np.abs(ref64).max()), 1e-12)
    srt = np.sort(ref64, axis=1)
    margin = srt[:, -1] - srt[:, -2] if ref.shape[1] > 1 else np.full(len(ref), np.inf)
    decisive = margin > 2 * max_abs
    agree = (out64.argmax(1) == ref64.argmax(1))[decisive]
    top1 = float(agree.mean()) if agree.size else 1.0
    ok = out.shape == ref.shape and bool(np.isfinite(out64).all()) and rel <= tol.rel and top1 >= tol.top1
    return Check(backend, int(ref.shape[0]), max_abs, rel, top1, int(decisive.sum()), ok)


def flop_check(model: Any, spec: Any, analytic_macs: int) -> dict[str, Any]:
    """Analytic MACs against ``torch.utils.flop_counter`` on the module (meta device: no compute)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .backends.torch import ResNet

    with torch.device("meta"):  # built there: initialising ResNet-152's weights on the CPU takes a second
        meta = ResNet(model.graph)
    with FlopCounterMode(display=False) as counter:
        meta(torch.empty(1, spec.in_channels, *spec.in_size, device="meta"))
    traced = int(counter.get_total_flops()) // 2
    return {"analytic_macs": analytic_macs, "traced_macs": traced, "passed": traced == analytic_macs}


def localise(graph: Any, reference: Callable[[list[str], np.ndarray], dict[str, np.ndarray]],
             other: Callable[[list[str], np.ndarray], dict[str, np.ndarray]], names: list[str], x: np.ndarray,
             tol: Tolerance) -> dict[str, Any] | None:
    """Name the first layer (topological order) whose output differs beyond ``tol``."""
    ref, got = reference(names, x), other(names, x)
    for node in graph.nodes:
        if node.name in ref and node.name in got:
            a, b = got[node.name].astype(np.float64), ref[node.name].astype(np.float64)
            if a.shape != b.shape:
                return {"name": node.name, "label": node.label, "rel": float("inf"), "reason": "shape"}
            rel = float(np.abs(a - b).max()) / max(float(np.abs(b).max()), 1e-12)
            if rel > tol.rel or not np.isfinite(a).all():
                return {"name": node.name, "label": node.label, "rel": rel}
    return None
