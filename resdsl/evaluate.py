"""``resdsl evaluate DIR --data DATA``: an artefact's accuracy on labelled images, beside the fp32 module's.

Verification compares an artefact with its module on random inputs; this is how users judge a deployment: top-1
and top-5 on real labelled images, next to the full-precision PyTorch module rebuilt from the same spec and
weights (as ``resdsl verify`` rebuilds it), plus the share of images whose top-1 class the two agree on. With a
budget (``max_drop``, in points of top-1) the result fails when the artefact falls further below the module.

Images come from the layouts ``resdsl train`` reads (CIFAR python batches, IDX files, image folders), at the spec's size
and channels, and are preprocessed as training does (:func:`resdsl.data.preprocessing`): with the spec's
``input.mean``/``input.std``, ``(x / 255 - mean) / std`` per channel (torchvision's ImageNet weights: see
specs/torchvision/); without them ``x / 255 - pixel_mean``, with the per-pixel mean stored in the resdsl training
checkpoint the artefact was compiled from, or else the mean of DATA's training split (which is what
``resdsl train`` on DATA computes). The result says which, and where the numbers came from.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError, OptionError
from .options import EvalOptions
from .progress import Progress

if TYPE_CHECKING:
    from .data import Labelled


@dataclass(frozen=True)
class Accuracy:
    top1: float  # percent
    top5: float  # percent (top-k with k = min(5, classes))


@dataclass
class EvalResult:
    directory: str
    name: str
    target: str
    precision: str
    backend: str
    data: str
    split: str
    images: int
    preprocessing: str
    module: Accuracy
    artefact: Accuracy
    agreement: float  # percent of images whose top-1 class artefact and module agree on
    drop: float  # module top-1 - artefact top-1, in points
    max_drop: float | None
    untrained: bool = False  # the artefact's weights are random: its accuracy proves nothing about a trained net

    @property
    def passed(self) -> bool:
        return self.max_drop is None or self.drop <= self.max_drop + 1e-9

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def table(self) -> str:
        budget = "" if self.max_drop is None else \
            f" (budget {self.max_drop:g}: {'ok' if self.passed else 'EXCEEDED'})"
        return "\n".join([
            f"{self.directory}: {self.name} ({self.target}, {self.precision}, {self.backend}) on {self.data}, "
            f"{self.split} split, {self.images} images; {self.preprocessing}",
            f"{'':<16}{'top-1':>9}{'top-5':>9}",
            f"{'module (fp32)':<16}{self.module.top1:>8.2f}%{self.module.top5:>8.2f}%",
            f"{'artefact':<16}{self.artefact.top1:>8.2f}%{self.artefact.top5:>8.2f}%",
            f"top-1 agreement {self.agreement:.2f}%; top-1 drop {self.drop:+.2f} points{budget}",
            *([UNTRAINED] if self.untrained else [])])


#: Said wherever an accuracy figure comes from random weights.
UNTRAINED = ("note: the weights are random (compiled without --weights), so this accuracy is chance level and "
             "proves nothing about how a trained net keeps its accuracy")


def evaluate(directory: str | Path, options: EvalOptions, progress: Progress | None = None, *,
             data: Labelled | None = None) -> EvalResult:
    """Run the artefact in ``directory`` and its fp32 module over ``options.data``; see the module docstring.
    ``data``: that dataset already read and checked, with its preprocessing (``compile`` passes the one it read
    before the export); None: read here."""
    import torch

    from .data import preprocessing
    from .expand import expand
    from .readers import load_dataset
    from .runtime import load
    from .spec import from_resolved
    from .verify import rebuild_module, weights_path
    from .weights import read_weights

    progress = progress or Progress(quiet=True)
    d = Path(directory)
    art = load(d, threads=options.threads, providers=options.providers)
    m = art.manifest
    spec = from_resolved(m.spec["resolved"], str(d / "manifest.json"))
    if not spec.has_head:
        raise InputError(f"{d}: its net returns {', '.join(spec.outputs)} (feature maps for a detector or "
                         "segmenter), not logits, so there is no top-1 to evaluate; compile a spec whose outputs "
                         "include logits to evaluate it, or check the backbone with resdsl verify")
    if data is None:
        with progress.step(f"reading {options.data}"):
            ds = load_dataset(options.data, classes=spec.classes, size=spec.in_size, channels=spec.in_channels,
                              resize=options.resize)
    else:
        ds = data.dataset
    with progress.step("rebuilding the fp32 module"):  # the weights file is read once, for its preprocessing too
        weights = read_weights(weights_path(m, d, options.weights)) if m.weights.get("kind") == "file" else None
        module = rebuild_module(expand(spec), m, d, weights)
    prep = data.preprocess if data is not None else \
        preprocessing(spec.normalize, ds, weights.trained if weights is not None else None)
    del weights  # the module holds its own copy of the weights
    x_all, y_all = (ds.test_x, ds.test_y) if options.split == "test" else (ds.train_x, ds.train_y)
    if options.limit is not None:
        x_all, y_all = x_all[:options.limit], y_all[:options.limit]
    b = options.batch_size or min(m.batch.max, max(m.batch.min, 64))
    if not m.batch.min <= b <= m.batch.max:
        raise OptionError(f"{{batch_size}} {b}: outside {d}'s batch range {m.batch.min}..{m.batch.max}")
    logits_art, logits_mod = [], []
    with progress.step(f"running {len(x_all)} images through {art.backend} and the module"), torch.no_grad():
        for xb, n in _batches(x_all, b, m.batch.min):
            x = prep.apply(xb)
            logits_art.append(_logits(art(x.numpy()))[:n])
            logits_mod.append(_logits(module(x)).numpy()[:n])
    labels = y_all.numpy()
    a, r = np.concatenate(logits_art), np.concatenate(logits_mod)
    acc_a, acc_r = _accuracy(a, labels), _accuracy(r, labels)
    split = ds.test_name if options.split == "test" else "train"
    return EvalResult(str(d), m.name, m.target, m.precision, art.backend, str(options.data), split, len(labels),
                      ds.describe(prep), acc_r, acc_a,
                      100.0 * float((a.argmax(1) == r.argmax(1)).mean()), acc_r.top1 - acc_a.top1, options.max_drop,
                      m.weights.get("kind") != "file")


def _logits(out: Any) -> Any:
    """The logits of a net's result: the result itself, or its ``logits`` entry when the net returns several
    outputs (a spec whose ``outputs`` lists stages beside ``logits``)."""
    return out["logits"] if isinstance(out, dict) else out


def _batches(x: Any, b: int, minimum: int) -> Iterator[tuple[Any, int]]:
    """Batches of ``b`` images; a last one smaller than the artefact's minimum is padded by repeating its last
    image (the padding's outputs are dropped)."""
    import torch

    for start in range(0, len(x), b):
        xb = x[start:start + b]
        n = len(xb)
        if n < minimum:
            xb = torch.cat([xb, xb[-1:].expand(minimum - n, *xb.shape[1:])])
        yield xb, n


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> Accuracy:
    k = min(5, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return Accuracy(100.0 * float((top[:, 0] == labels).mean()), 100.0 * float((top == labels[:, None]).any(1).mean()))
