"""Verification measures: analytic vs traced FLOPs, outputs compared under a tolerance, the first diverging layer.

Comparisons return result objects with their tolerances; only the CLI turns
them into exit codes (as Polygraphy's comparator does). When two backends
disagree, :func:`localise` names the first layer, in topological order, whose
output differs beyond tolerance.

Error measure: ``rel = max|a - b| / max|b|``, the largest deviation relative to
the reference's largest logit; it is scale-free and does not blow up on logits
near zero, where an elementwise relative error would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError
from .options import Limits
from .progress import Progress

if TYPE_CHECKING:
    from .backends.base import Localiser, Plan, Target
    from .ir import Graph
    from .manifest import Manifest
    from .weights import WeightsFile


@dataclass(frozen=True)
class Tolerance:
    """Limits for one precision: normalised max error, and top-1 agreement on decisive samples."""

    rel: float | None  # None: not checked (int8, judged on labelled images instead)
    top1: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


#: fp32: both sides compute in float32, so only summation order differs (~1e-6 seen).
#: fp16: float16 keeps ~3 decimal digits and errors grow with depth; 3e-2 of the largest
#: logit holds for the specs in specs/ (measured: tests/test_pipeline.py) and still catches a
#: wrong layer, which moves logits by tens of percent.
#: int8: scales are calibrated on real images, and random inputs lie far outside their ranges, so the random-input
#: check only asks for the right shape and finite logits; int8 is judged by its top-1 on labelled images against
#: the fp32 module (the accuracy check compile always runs for int8).
TOLERANCES = {"fp32": Tolerance(rel=1e-4), "fp16": Tolerance(rel=3e-2), "int8": Tolerance(rel=None, top1=0.0)}


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
    output: str = "logits"  # which of the net's outputs
    size: tuple[int, int] | None = None  # the input's height and width


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
                "flops": self.flops, "checks": [{**asdict(c), "size": list(c.size) if c.size else None}
                                                for c in self.checks], "divergence": self.divergence}

    def lines(self) -> list[str]:
        out = []
        f = self.flops
        if f:
            out.append(f"flops: analytic {f['analytic_macs']:,} MACs, traced {f['traced_macs']:,}: "
                       f"{'ok' if f['passed'] else 'MISMATCH'}")
        several = len({c.output for c in self.checks}) > 1
        for c in self.checks:
            verdict = "ok" if c.passed else "FAILED"
            where = f"{c.backend} batch {c.batch}" + (f" at {c.size[0]}x{c.size[1]}" if c.size else "") + \
                (f", {c.output}" if several or c.output != "logits" else "")
            if self.tolerance.rel is None:  # int8: random inputs lie outside the calibrated ranges
                out.append(f"{where}: right shape and finite logits on random inputs: {verdict} "
                           "(int8 values are judged by top-1 on labelled images, not here)")
                continue
            agree = ("" if c.output != "logits" else
                     f", top-1 agrees on all {c.decisive} inputs with a clear winner" if c.top1_agree == 1.0 else
                     f", top-1 agrees on {c.top1_agree:.0%} of {c.decisive} inputs with a clear winner")
            out.append(f"{where}: rel err {c.rel:.2e} (tol {self.tolerance.rel:.0e}){agree}: {verdict}")
        if self.divergence:
            d = self.divergence
            out.append(f"first diverging layer: {d['name']} ({d['label']}), rel err {d['rel']:.2e}")
        return out


def inputs(shape: Sequence[int], batch: int, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal float32 inputs of shape (batch, *shape)."""
    return np.random.default_rng(seed + batch).standard_normal((batch, *shape), dtype=np.float32)


def compare(out: np.ndarray, ref: np.ndarray, tol: Tolerance, backend: str, output: str = "logits",
            size: tuple[int, int] | None = None) -> Check:
    """Compare one output with the reference under ``tol``; top-1 agreement on logits only (a feature map has
    no classes)."""
    out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
    if out.shape != ref.shape:
        return Check(backend, int(ref.shape[0]), float("inf"), float("inf"), 0.0, 0, False, output, size)
    max_abs = float(np.abs(out64 - ref64).max()) if out.size else 0.0
    rel = max_abs / max(float(np.abs(ref64).max()), 1e-12)
    top1, decisive_count = 1.0, 0
    if ref.ndim == 2:
        srt = np.sort(ref64, axis=1)
        margin = srt[:, -1] - srt[:, -2] if ref.shape[1] > 1 else np.full(len(ref), np.inf)
        decisive = margin > 2 * max_abs
        agree = (out64.argmax(1) == ref64.argmax(1))[decisive]
        top1, decisive_count = (float(agree.mean()) if agree.size else 1.0), int(decisive.sum())
    ok = bool(np.isfinite(out64).all()) and (tol.rel is None or rel <= tol.rel) and top1 >= tol.top1
    return Check(backend, int(ref.shape[0]), max_abs, rel, top1, decisive_count, ok, output, size)


def named_outputs(value: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """A runner's or module's result as ``{output name: float32 array}``: one array is the only output's."""
    if isinstance(value, dict):
        missing = [n for n in names if n not in value]
        if missing:
            raise InputError(f"the artefact returned {sorted(value)}, without {missing}")
        return {n: np.asarray(value[n], dtype=np.float32) for n in names}
    return {names[0]: np.asarray(value, dtype=np.float32)}


def flop_check(analytic_macs: int, traced_macs: int) -> dict[str, Any]:
    """Analytic MACs against ``torch.utils.flop_counter``'s count of the module's forward pass at batch 1
    (:meth:`Reference.probe` counts it)."""
    return {"analytic_macs": analytic_macs, "traced_macs": traced_macs, "passed": traced_macs == analytic_macs}


@contextmanager
def counting_flops() -> Iterator[Any]:
    """torch's ``FlopCounterMode``, without the 1.1 s import of ``torch._dynamo`` when nothing has imported it.

    torch wraps every dispatch mode's ``__torch_dispatch__`` in ``torch._disable_dynamo``, which imports
    ``torch._dynamo`` on its first call, to keep a running dynamo trace out of the mode, and caches the result as
    the function's ``__dynamo_disable``. While ``torch._dynamo`` has never been imported no trace can be running,
    so for the duration of the count that cache is set to the function itself (what the wrapper would call
    anyway) and removed afterwards. Where torch's layout differs, the mode runs exactly as torch ships it.
    """
    import sys

    from torch.utils import flop_counter

    raw = getattr(getattr(flop_counter, "_FlopCounterMode", None), "__dict__", {}).get("__torch_dispatch__")
    raw = getattr(raw, "__wrapped__", None)
    seed = raw is not None and "torch._dynamo" not in sys.modules and not hasattr(raw, "__dynamo_disable")
    if seed:
        setattr(raw, "__dynamo_disable", raw)
    try:
        with flop_counter.FlopCounterMode(display=False) as counter:
            yield counter
    finally:
        if seed:
            delattr(raw, "__dynamo_disable")


def localise(graph: Graph, reference: Callable[[list[str], np.ndarray], dict[str, np.ndarray]],
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
            if (tol.rel is not None and rel > tol.rel) or not np.isfinite(a).all():
                return {"name": node.name, "label": node.label, "rel": rel}
    return None


# --------------------------------------------------------------------------- running the checks


def default_batches(bmin: int, bmax: int) -> tuple[int, ...]:
    """The range's ends, plus MIN+2 to exercise an odd size in between; MAX only up to 8, for CPU time."""
    sizes = {bmin, min(bmax, bmin + 2)}
    if bmax <= 8:
        sizes.add(bmax)
    return tuple(sorted(sizes))


def new_report(precision: str, analytic_macs: int, reference: Reference) -> Report:
    """An empty report for ``precision``, holding the FLOP cross-check against ``reference``'s counted pass."""
    return Report(precision, TOLERANCES[precision], flops=flop_check(analytic_macs, reference.traced_macs()))


class Reference:
    """The module every artefact is compared with.

    ``module`` is built on first use (or given); :func:`check_target` computes its outputs before opening a
    target and, for the last target, :meth:`release` gives its weights back first: ResNet-152's 0.24 GB would
    otherwise sit beside ONNX Runtime's own copy. It is rebuilt (the same weights: a seed or a file whose
    digest was checked) only if a divergence has to be localised afterwards.
    """

    def __init__(self, build: Callable[[], Any], module: Any = None) -> None:
        self._build, self._module = build, module
        self._probed: dict[int, dict[str, np.ndarray]] = {}  # seed -> the module's CPU outputs at batch 1
        self._traced: int | None = None  # MACs of that pass, as torch's flop counter counts them

    def probe(self, seed: int = 0, source: str | None = None) -> None:
        """One forward pass of the module on the batch-1 verification input, its MACs counted by torch's flop
        counter: a module whose own logits overflow is refused here, before any artefact is written (InputError,
        naming ``source``). The logits are kept for the verification on the CPU, which needs them again."""
        model = self.module
        with counting_flops() as counter:
            self._probed[seed] = _reference(model, inputs(model.graph.input.shape, 1, seed), "cpu", source)
        self._traced = int(counter.get_total_flops()) // 2

    def traced_macs(self) -> int:
        """The MACs torch's flop counter counted in the module's forward pass at batch 1 (probed if not yet)."""
        if self._traced is None:
            self.probe()
        assert self._traced is not None
        return self._traced

    def outputs(self, x: np.ndarray, seed: int, device: str) -> dict[str, np.ndarray]:
        """The module's outputs by name for ``x`` (the verification input of its batch size, size and ``seed``)
        on ``device``."""
        probed = self._probed.get(seed)
        if device == "cpu" and len(x) == 1 and probed is not None and x.shape[1:] == self.module.graph.input.shape:
            return probed
        return _reference(self.module, x, device)

    @property
    def module(self) -> Any:
        if self._module is None:
            self._module = self._build()
        return self._module

    def release(self) -> None:
        """Free the weights: moved to torch's storage-less meta device, in case anything still holds the module,
        and a collection, since the export leaves reference cycles that reach the old parameters."""
        import gc

        if self._module is not None:
            self._module.to("meta")
            self._module = None
            gc.collect()


def check_target(report: Report, reference: Reference, target: Target, directory: Path, manifest: Manifest, *,
                 batches: tuple[int, ...] = (), seed: int = 0, progress: Progress | None = None,
                 last: bool = False, providers: Sequence[str] | None = None) -> None:
    """Open ``directory`` as ``target`` (as the runtime will) and compare every output with the reference module;
    add to ``report``. The batch sizes run at the input size the spec gives; an artefact with a size range also
    runs at batch MIN at each of :func:`sizes_to_verify`. ``last``: no later check needs the module, so it is
    released before the target is opened."""
    plan = target.plan(manifest)
    b = batches or plan.batches or default_batches(manifest.batch.min, manifest.batch.max)
    model = reference.module
    c, *size = model.graph.input.shape
    shapes = [((c, *size), n) for n in b] + [((c, *hw), manifest.batch.min) for hw in sizes_to_verify(manifest)
                                             if list(hw) != size]
    with _on_device(model, plan) as device:
        xs = [inputs(shape, n, seed) for shape, n in shapes]
        cases = [(x, reference.outputs(x, seed, device)) for x in xs]
    graph = model.graph
    names = [o.name for o in graph.outputs]
    del model
    if last:
        reference.release()
    runner = target.open(directory, manifest, None, providers)
    sizes = sorted({tuple(x.shape[2:]) for x in xs})
    what = (f"verifying {runner.backend} against the module at batch {', '.join(map(str, b))}"
            + (f" and at sizes {', '.join(f'{h}x{w}' for h, w in sizes)}" if len(sizes) > 1 else ""))
    with (progress or Progress(quiet=True)).step(what):
        for x, ref in cases:
            hw = (int(x.shape[2]), int(x.shape[3])) if len(sizes) > 1 else None
            got = named_outputs(runner(x), names)
            checks = [compare(got[n], ref[n], report.tolerance, runner.backend, n, hw) for n in names]
            report.checks.extend(checks)
            if all(check.passed for check in checks) or report.divergence is not None:
                continue
            other = target.localiser(directory, manifest)
            if other is None:
                continue
            with _on_device(reference.module, plan) as device:
                report.divergence = localise(graph, _intermediates(reference.module, device), other,
                                             [node.name for node in graph.nodes], x[:1], report.tolerance)


def sizes_to_verify(manifest: Manifest) -> tuple[tuple[int, int], ...]:
    """An artefact's input sizes to verify at: the manifest's size range's min, opt, max and an odd size between
    (:meth:`resdsl.options.SizeProfile.sizes`); only the input's own size for a fixed size."""
    from .options import SizeProfile

    return SizeProfile(*manifest.size_range()).sizes()


def verify_artefact(directory: str | Path, *, weights: Path | None = None, batches: tuple[int, ...] = (),
                    seed: int = 1, limits: Limits | None = None, progress: Progress | None = None,
                    providers: Sequence[str] | None = None) -> tuple[Manifest, Report]:
    """Re-hash an artefact, rebuild its module from the manifest's spec and weights, compare every target of
    its chain (a trt artefact: its ONNX model and its engine) again. Raise InputError when the weights cannot
    be reproduced; the report says whether the outputs agree. ``providers``: ONNX Runtime's execution providers
    for the ONNX model (see :func:`resdsl.runtime.load`)."""
    from . import manifest as mf
    from .backends.base import chain, refuse_providers
    from .expand import expand
    from .flops import count
    from .limits import check
    from .spec import from_resolved

    d = Path(directory)
    m = mf.read(d)
    graph = expand(from_resolved(m.spec["resolved"], str(d / mf.NAME)))
    check(count(graph), str(d / mf.NAME), limits or Limits())
    outside = [b for b in batches if not m.batch.min <= b <= m.batch.max]
    if outside:
        from .errors import OptionError

        raise OptionError(f"{{verify_batches}} {','.join(map(str, outside))}: outside {d}'s batch range "
                          f"{m.batch.min}..{m.batch.max} (its manifest's batch); verify at sizes within it")
    reference = Reference(lambda: rebuild_module(graph, m, d, weights))
    reference.probe(seed)  # built and run now: weights that cannot be reproduced are refused before anything runs
    recorded = tuple(dict.fromkeys(c["batch"] for c in (m.verification or {}).get("checks", [])))
    report = new_report(m.precision, m.counts.macs, reference)
    targets = chain(m.target)
    if providers is not None and all(t.NAME != "onnx" for t in targets):
        refuse_providers(m.target, providers)
    for i, target in enumerate(targets):
        check_target(report, reference, target, d, m, batches=batches or recorded, seed=seed, progress=progress,
                     last=i == len(targets) - 1, providers=providers if target.NAME == "onnx" else None)
    return m, report


def rebuild_module(graph: Graph, m: Manifest, d: Path, weights: Path | WeightsFile | None = None) -> Any:
    """The eval-mode fp32 module an artefact was compiled from: its spec's graph with the manifest's weights
    (the file, whose digest must match, or the seed's random weights, which this torch must reproduce).
    ``weights``: another path to the file, or the file already read (:func:`resdsl.weights.read_weights`)."""
    from .backends.torch import from_graph

    zero_init = bool(m.spec["resolved"].get("zero_init_residual", False))
    from .weights import WeightsFile, load_into, state_digest

    w = m.weights
    model = from_graph(graph, seed=int(w.get("seed", 0)), zero_init_residual=zero_init)
    if w["kind"] == "file":
        source = weights if isinstance(weights, WeightsFile) else weights_path(m, d, weights)
        path = source.path if isinstance(source, WeightsFile) else source
        if load_into(model, source)["sha256"] != w["sha256"]:
            raise InputError(f"weights file {path} is not the one {d} was compiled from: its weights differ "
                             f"(file sha256 {w.get('file_sha256', '?')[:16]}... was expected); pass the original "
                             "with --weights FILE")
    elif state_digest(model.state_dict()) != w["sha256"]:
        raise InputError(f"cannot regenerate the random weights of {d} (seed {w.get('seed')}): this torch "
                         f"draws different numbers than torch {m.versions.get('torch')}; verify on "
                         "that version, or compile with --weights")
    return model.eval()


def weights_path(m: Manifest, d: Path, given: Path | None = None) -> Path:
    """Where the weights file of the artefact in ``d`` is: ``given`` (``--weights``), else the absolute path the
    manifest recorded at compile time (an older manifest's relative path is tried from the working directory and
    from the artefact's parent). A file that is no longer there is refused with the path and sha256 the manifest
    needs, and how to pass it."""
    w = m.weights
    if given is not None:
        if not Path(given).is_file():
            raise InputError(f"--weights {given}: {'not a file' if Path(given).exists() else 'no such file'}; give "
                             f"the weights file {d} was compiled from (sha256 {w.get('file_sha256', '?')})")
        return Path(given)
    recorded = Path(w["path"])
    for candidate in (recorded,) if recorded.is_absolute() else (recorded, d.parent / recorded):
        if candidate.is_file():
            return candidate
    raise InputError(f"{d} was compiled from the weights file {w['path']} (sha256 {w.get('file_sha256', '?')}), "
                     "which is no longer there; pass it with --weights FILE (its contents are checked against the "
                     "manifest, so a copy anywhere will do)")


def _reference(model: Any, x: np.ndarray, device: str, source: str | None = None) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        got = model(torch.from_numpy(x).to(device))
    names = [o.name for o in model.graph.outputs]
    ref = named_outputs({k: v.float().cpu().numpy() for k, v in got.items()} if isinstance(got, dict) else
                        got.float().cpu().numpy(), names)
    if not all(np.isfinite(v).all() for v in ref.values()):
        what = "logits" if names == ["logits"] else "outputs"
        raise InputError(f"{source or model.graph.name}: the PyTorch module's own {what} overflow to inf/NaN under "
                         "these weights (very deep nets with random weights and untrained BN statistics do: each "
                         "unit adds its branch's variance), so there is nothing to verify against and nothing was "
                         "written; compile with trained --weights, or set zero_init_residual: true in the spec "
                         "(every unit then starts as the identity)")
    return ref


@contextmanager
def _on_device(model: Any, plan: Plan) -> Iterator[str]:
    """Run the reference on the plan's device; on CUDA with TF32 as the plan says; move back afterwards."""
    if plan.device == "cpu":
        yield "cpu"
        return
    import torch

    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = plan.tf32
    model.to(plan.device)
    try:
        yield plan.device
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
        model.to("cpu")


def _intermediates(model: Any, device: str) -> Localiser:
    import torch

    def run(names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = model.forward_intermediates(torch.from_numpy(x).to(device), names)
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    return run
