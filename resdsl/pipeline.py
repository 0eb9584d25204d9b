"""``compile``: spec -> module (+ weights) -> artefact -> verification -> manifest, the same for every target.

The frame every target shares: load the spec and count it once (limits are checked on the counts before
anything is allocated), refuse early what this machine cannot do, read and check the labelled data (int8
calibration, the accuracy check) once, so that bad data is refused before any heavy work, build the reference
module, then in a staging directory, for the target and the targets it extends (``trt`` extends ``onnx``),
write its files, open them as :func:`resdsl.runtime.load` will and verify them against the module. The
manifest is written last and the directory renamed into place: nothing appears at the destination unless
every step passed.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import manifest as mf
from .atomic import staging_dir
from .backends.base import Written, chain
from .errors import OptionError, VerificationError
from .expand import expand
from .flops import FlopReport, count
from .limits import check
from .options import BatchProfile, CompileOptions
from .progress import Progress
from .spec import Spec, load
from .verify import Reference, Report, check_target, new_report

if TYPE_CHECKING:
    from .data import Dataset, Trained

__all__ = ["CompileOptions", "compile_spec"]


def compile_spec(spec_path: str | Path, opts: CompileOptions, progress: Progress | None = None
                 ) -> tuple[Path, mf.Manifest]:
    """Compile one spec; return the artefact directory and its manifest."""
    progress = progress or Progress(quiet=True)
    targets = chain(opts.target)
    if opts.precision not in targets[-1].PRECISIONS:
        raise OptionError(f"{{precision}} {opts.precision}: the {opts.target} target writes "
                          f"{' or '.join(targets[-1].PRECISIONS)} only")
    spec = _sized(load(spec_path), opts, str(spec_path))
    _refuse_for_outputs(spec, opts)
    graph = expand(spec)
    counts = count(graph)
    check(counts, str(spec_path), opts.limits)
    out = opts.out or Path("build") / spec.name
    if out.exists() and not opts.force:  # fail before the expensive steps
        raise OptionError(f"{out} already exists; pass {{force}} to replace it, or choose another directory with "
                          "{out}")
    for target in targets:  # refuse before minutes of work when a library or the hardware is missing
        target.check_environment(opts)
    datasets = _read_data(spec, opts, progress)  # bad data is refused before the module and the export
    with progress.step("building the PyTorch module"):
        model, weights, trained = _reference(graph, spec, opts, str(spec_path))
    if weights.get("dropped"):
        progress.note(f"  weights: {weights['note']}")
    if datasets:
        from .data import Labelled, preprocessing

        opts = replace(opts, loaded={path: Labelled(path, ds, preprocessing(spec.normalize, ds, trained))
                                     for path, ds in datasets.items()})
        del datasets
    reference = Reference(lambda: _reference(graph, spec, opts, str(spec_path))[0], model)
    reference.probe(opts.seed, str(spec_path))  # a module whose own logits overflow: refused before any export
    del model  # held by ``reference`` alone, so that verifying the last target can free it
    manifest = _manifest(spec, graph, str(spec_path), opts, counts, weights)
    prep = _preprocessing(spec, trained)
    if prep is not None:
        manifest = manifest.with_(sections={**manifest.sections, "preprocessing": prep})
    report = new_report(opts.precision, counts.macs, reference)
    with staging_dir(out, force=opts.force) as stage:
        for i, target in enumerate(targets):
            manifest = _add(manifest, stage, target.write(stage, reference.module, spec, opts, progress))
            check_target(report, reference, target, stage, manifest, batches=opts.verify_batches, seed=opts.seed,
                         progress=progress, last=i == len(targets) - 1)
            if not report.passed:
                break
        for line in report.lines():
            progress.note(line)
        if not report.passed:
            raise VerificationError(_failure(spec_path, report))
        manifest = manifest.with_(verification=report.to_dict())
        mf.write(stage, manifest)
        if opts.accuracy_data is not None:
            manifest = _accuracy_check(stage, manifest, opts, spec_path, progress)
            mf.write(stage, manifest)
    return out, manifest


def _accuracy_check(stage: Path, manifest: mf.Manifest, opts: CompileOptions, spec_path: str | Path,
                    progress: Progress) -> mf.Manifest:
    """Top-1 on ``opts.eval_data``'s test split against the fp32 module's, opening the staged artefact as
    ``resdsl evaluate`` does; recorded in the verification, refused beyond the budget."""
    from .evaluate import evaluate
    from .options import EvalOptions

    data = opts.accuracy_data
    assert data is not None
    r = evaluate(stage, EvalOptions(data=data, max_drop=opts.max_drop, weights=opts.weights, resize=opts.resize),
                 progress,
                 data=opts.loaded.get(data))
    progress.note(f"  top-1 on {r.images} {r.split} images: module {r.module.top1:.2f}%, {r.backend} "
                  f"{r.artefact.top1:.2f}% (drop {r.drop:+.2f} points, budget {opts.max_drop:g})")
    accuracy = {"data": str(data), "split": r.split, "images": r.images, "module": asdict(r.module),
                "artefact": asdict(r.artefact), "agreement": r.agreement, "drop": r.drop, "max_drop": opts.max_drop,
                "preprocessing": r.preprocessing, "passed": r.passed}
    if r.untrained:
        from .evaluate import UNTRAINED

        accuracy["untrained"] = True
        progress.note(f"  {UNTRAINED}")
    if not r.passed:
        fb = manifest.section("quantization").get("fallback") or {}
        tried = (f" Layers left in float: {', '.join(fb['in_float'])}." if fb.get("in_float") else
                 " No layer was left in float (--no-fallback)." if fb and not fb.get("enabled") else
                 " No layer was left in float: the budget held on the images fallback judged." if fb else "")
        raise VerificationError(f"{spec_path}: the {manifest.precision} artefact's top-1 on {data} is "
                                f"{r.drop:.2f} points below the fp32 module's ({r.artefact.top1:.2f}% against "
                                f"{r.module.top1:.2f}%), more than the budget of {opts.max_drop:g} points; nothing "
                                f"was written.{tried} Compile at a higher precision, or give a larger budget "
                                "(--max-drop)")
    return manifest.with_(verification={**(manifest.verification or {}), "accuracy": accuracy})


def _read_data(spec: Spec, opts: CompileOptions, progress: Progress) -> dict[Path, Dataset]:
    """The labelled data the compile uses (int8 calibration, the accuracy check), each directory read once and
    checked against the spec: a truncated or hostile file, images of the wrong shape, labels outside the head's
    classes or too few calibration images are refused before any heavy work."""
    from .data import calibration_sample
    from .readers import load_dataset

    out: dict[Path, Dataset] = {}
    for path, option in ((opts.calibration, "--calibration"), (opts.eval_data, "--eval-data")):
        if path is not None and path not in out:
            with progress.step(f"reading {path}"):
                out[path] = load_dataset(path, classes=spec.classes, size=spec.in_size, channels=spec.in_channels,
                                         option=option, resize=opts.resize)
    if opts.calibration is not None:
        calibration_sample(out[opts.calibration], opts.calibration_samples, opts.calibration)
    return out


def _reference(graph: Any, spec: Spec, opts: CompileOptions, source: str
               ) -> tuple[Any, dict[str, Any], Trained | None]:
    """The eval-mode torch module the artefact must equal, the manifest's ``weights`` entry, and what the
    weights file records about the preprocessing training used (read with the weights, not again)."""
    from .backends.torch import from_graph
    from .weights import load_into, read_weights, state_digest

    model = from_graph(graph, seed=opts.seed, zero_init_residual=spec.zero_init_residual)
    trained = None
    if opts.weights is not None:
        w = read_weights(opts.weights)
        entry, trained = load_into(model, w, source), w.trained
    else:
        entry = {"kind": "random", "seed": opts.seed, "sha256": state_digest(model.state_dict()),
                 "note": f"randomly initialised (He et al. 2015) from seed {opts.seed}; not trained"}
    return model.eval(), entry, trained


def _preprocessing(spec: Spec, trained: Trained | None) -> dict[str, Any] | None:
    """The manifest's ``preprocessing``: what an application must do to an image, from the spec's
    ``input.mean``/``input.std`` or the per-pixel mean a resdsl training checkpoint recorded; None when neither
    says (random weights, or a plain state_dict for a spec without them)."""
    if spec.normalize is not None:
        return {"rule": "(x / 255 - mean) / std", "per": "channel", "mean": list(spec.normalize.mean),
                "std": list(spec.normalize.std), "source": "the spec's input.mean and input.std"}
    if trained is not None and trained.pixel_mean is not None:
        mean = [float(f"{v:.9g}") for v in trained.pixel_mean.flatten().tolist()]  # float32 exactly, shorter
        return {"rule": "x / 255 - mean", "per": "pixel", "mean": mean,
                "source": f"the training checkpoint {Path(trained.path).name} (its training images' mean)"}
    return None


def _sized(spec: Spec, opts: CompileOptions, source: str) -> Spec:
    """The spec at ``--size``'s size (its opt size for a range), or as it is: the artefact's resolved spec
    records the size it was compiled at."""
    if opts.size is None or (not opts.size.dynamic and opts.size.opt == spec.in_size):
        return spec
    from .spec import from_resolved

    doc = dict(spec.resolved)
    doc["input"] = {**(doc.get("input") or {}), "size": list(opts.size.opt)}
    return from_resolved(doc, source)


def _refuse_for_outputs(spec: Spec, opts: CompileOptions) -> None:
    """What needs logits (the accuracy check, int8's calibration and budget) is refused for a backbone before any
    work."""
    if spec.has_head:
        return
    for given, what in ((opts.eval_data is not None, "{eval_data} (top-1 on labelled images)"),
                        (opts.precision == "int8", "{precision} int8 (calibrated and judged by top-1)")):
        if given:
            raise OptionError(f"{what}: {spec.source} returns {', '.join(spec.outputs)}, not logits, so there is "
                              "no top-1 to check; add logits to its outputs, or compile at fp32 or fp16")


def _manifest(spec: Spec, graph: Any, source: str, opts: CompileOptions, counts: FlopReport,
              weights: dict[str, Any]) -> mf.Manifest:
    """The manifest before any file is written: what every target shares. With a size range, height and width
    are symbols (``height``, ``width``; ``<output>_height``, ... for feature maps) and ``size`` records it."""
    b: BatchProfile = opts.batch
    axis: int | str = "batch" if b.dynamic else b.min
    io = "float16" if opts.io == "fp16" else "float32"
    ranged = opts.size is not None and opts.size.dynamic
    outputs = []
    for o in graph.outputs:
        shape: list[int | str] = list(graph.node(o.node).shape)
        if ranged and len(shape) == 3:
            shape = [shape[0], f"{o.name}_height", f"{o.name}_width"]
        outputs.append(mf.Tensor(o.name, [axis, *shape], io, o.stride or None))
    size = [spec.in_channels, *(("height", "width") if ranged else spec.in_size)]
    sections: dict[str, Any] = {}
    if opts.size is not None:
        sections["size"] = {"min": list(opts.size.min), "opt": list(opts.size.opt), "max": list(opts.size.max),
                            "dynamic": opts.size.dynamic}
    return mf.Manifest(
        name=spec.name, target=opts.target, created=mf.now(),
        spec={"source": source, "sha256": spec.digest(), "resolved": spec.resolved}, weights=weights, files={},
        inputs=[mf.Tensor("input", [axis, *size], io)], outputs=outputs,
        batch=mf.Batch(b.min, b.opt, b.max, b.dynamic), precision=opts.precision,
        counts=mf.Counts(counts.macs, round(counts.macs / 1e9, 4), counts.params, counts.depth),
        versions=mf.versions(), sections=sections)


def _add(manifest: mf.Manifest, stage: Path, written: Written) -> mf.Manifest:
    """The manifest with a target's files hashed, its sections and its versions added."""
    files = {**manifest.files, **{name: mf.file_entry(stage / name) for name in written.files}}
    versions = {**manifest.versions, **mf.versions(*written.packages), **written.versions}
    return manifest.with_(files=files, sections={**manifest.sections, **written.sections}, versions=versions)


def _failure(spec_path: str | Path, report: Report) -> str:
    lines = "; ".join(line for line in report.lines() if "ok" not in line.split(":")[-1] or "FAILED" in line)
    return (f"verification of {spec_path} failed, nothing was written: {lines}. Compile at fp32 precision, or "
            "report the first diverging layer named here")
