"""``resdsl compile``: spec -> module (+ weights) -> artefact -> verification -> manifest.

One function a target, all sharing the same frame: build the reference
module, write into a staging directory, verify the artefact against the
module, write the manifest, then rename the directory into place. Nothing
appears at the destination unless every step passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import staging_dir
from .errors import InputError, VerificationError
from .progress import Progress
from .spec import Spec, load

TARGETS = ("torch", "onnx", "trt", "aoti")


@dataclass(frozen=True)
class CompileOptions:
    """Everything ``resdsl compile`` takes besides the spec."""

    target: str = "onnx"
    out: Path | None = None
    weights: Path | None = None
    precision: str = "fp32"
    io: str = "fp32"
    batch: str = "1:1:32"
    opset: int = 18
    force: bool = False
    seed: int = 0
    verify_batches: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # target-specific (trt: workspace, opt level, ...)


def parse_batch(text: str) -> tuple[int, int, int]:
    """``N`` or ``MIN:OPT:MAX`` -> (min, opt, max)."""
    parts = text.split(":")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) == 1:
        nums *= 3
    if len(nums) != 3 or not 1 <= nums[0] <= nums[1] <= nums[2]:
        raise InputError(f"--batch {text!r}: give N or MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, e.g. 1:8:32")
    return nums[0], nums[1], nums[2]


def default_verify_batches(bmin: int, bmax: int) -> tuple[int, ...]:
    """The profile's ends, plus MIN+2 to exercise an odd size in between; capped for CPU time."""
    sizes = {bmin, min(bmax, bmin + 2)}
    if bmax <= 8:
        sizes.add(bmax)
    return tuple(sorted(sizes))


def reference_model(spec: Spec, opts: CompileOptions, source: str) -> tuple[Any, dict[str, Any]]:
    """The eval-mode torch module the artefact must equal, and the manifest's ``weights`` entry."""
    from .backends.torch import build
    from .weights import load_into, state_digest

    model = build(spec, seed=opts.seed)
    if opts.weights is not None:
        entry = load_into(model, opts.weights, source)
    else:
        entry = {"kind": "random", "seed": opts.seed, "sha256": state_digest(model.state_dict()),
                 "note": f"randomly initialised (He et al. 2015) from seed {opts.seed}; not trained"}
    return model.eval(), entry


def compile_spec(spec_path: str | Path, opts: CompileOptions) -> tuple[Path, dict[str, Any]]:
    """Compile one spec; return the artefact directory and its manifest."""
    if opts.target not in TARGETS:
        raise InputError(f"--target {opts.target!r}: choose one of {', '.join(TARGETS)}")
    if opts.precision not in ("fp32", "fp16"):
        raise InputError(f"--precision {opts.precision!r}: choose fp32 or fp16")
    if opts.io not in ("fp32", "fp16") or (opts.io == "fp16" and opts.precision != "fp16"):
        raise InputError(f"--io {opts.io!r}: fp16 inputs/outputs need --precision fp16; the default is fp32")
    if opts.opset < 17:
        raise InputError(f"--opset {opts.opset}: resdsl exports opset 17 or newer")
    batch = parse_batch(opts.batch)
    progress = Progress()
    spec = load(spec_path)
    from .expand import expand
    from .flops import count
    from .limits import check

    check(count(expand(spec)), str(spec_path), opts.extra.get("max_params"), opts.extra.get("max_gmacs"))
    out = Path(opts.out) if opts.out else Path("build") / spec.name
    if out.exists() and not opts.force:  # fail before the expensive steps
        raise InputError(f"{out} already exists; pass --force to replace it, or choose another directory with -o")
    if opts.target == "trt":  # refuse early, before minutes of export, when TensorRT or a GPU is missing
        from .backends import trt

        trt.environment()
    from . import targets

    with progress.step("building the PyTorch module"):
        model, weights = reference_model(spec, opts, str(spec_path))
    common = targets.common_manifest(spec, str(spec_path), opts, batch, weights)
    with staging_dir(out, force=opts.force) as tmp:
        manifest, report = targets.RUNNERS[opts.target](model, spec, opts, batch, tmp, progress)
        manifest = {**common, **manifest, "verification": report.to_dict()}
        for line in report.lines():
            progress.note(line)
        if not report.passed:
            raise VerificationError(_failure(spec_path, report))
        from .manifest import write

        write(tmp, manifest)
    return out, {"schema": "resdsl.manifest/1", **manifest}


def _failure(spec_path: str | Path, report: Any) -> str:
    lines = "; ".join(line for line in report.lines() if "ok" not in line.split(":")[-1] or "FAILED" in line)
    return (f"verification of {spec_path} failed, nothing was written: {lines}. Re-run with --precision fp32, or "
            "report the first diverging layer named here")
