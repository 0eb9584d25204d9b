"""Labelled images in memory, and how they become the network's inputs.

:class:`Dataset` holds a train and a test split as uint8 tensors [N, C, H, W] (:mod:`resdsl.readers` reads them
from disk, one module a layout); :func:`augment` is the paper's CIFAR augmentation on a batch.
:class:`Preprocess` turns images into the network's inputs, the same way for training, evaluation, int8
calibration and compile's accuracy check; :func:`preprocessing` says which normalisation applies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .errors import InputError
from .spec import Normalize


@dataclass
class Dataset:
    """A train and a test split as uint8 images [N, C, H, W] and int64 labels [N]."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    layout: str  # "cifar-10", "cifar-100" or "image-folder"
    test_name: str  # "test" or "val"
    resized: str | None = None  # how images were resized to the spec's input (``--resize``); None: they were not

    def describe(self, prep: Preprocess) -> str:
        """How the images became inputs, for reports and manifests: the resize (if any), then ``prep``."""
        return prep.describe() if self.resized is None else f"{self.resized}; {prep.describe()}"

    def pixel_mean(self) -> torch.Tensor:
        """The per-pixel mean [C, H, W] of the training images, scaled to [0, 1] (float32)."""
        total = torch.zeros(self.train_x.shape[1:], dtype=torch.float64)
        for chunk in torch.split(self.train_x, 4096):
            total += chunk.sum(0, dtype=torch.float64)
        return (total / (255.0 * len(self.train_x))).float()



def check_classes(root: Path, names: list[str], classes: int) -> None:
    """Refuse a dataset whose class count is not the spec head's."""
    if len(names) != classes:
        raise InputError(f"{root} has {len(names)} classes ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                         f" but the spec's head has {classes}; set head: {{classes: {len(names)}}} in the spec, or "
                         f"point --data at a {classes}-class dataset")


def resize_images(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 images [N, C, h, w] to ``size``."""
    out = [F.interpolate(c.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
           for c in torch.split(x, 1024)]
    return torch.cat(out).round_().clamp_(0, 255).to(torch.uint8)


def augment(x: torch.Tensor, pad: int, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """The paper's CIFAR augmentation on a float batch [B, C, H, W]: zero-pad by ``pad``, crop H x W at
    (``oy``, ``ox``) in [0, 2 pad], mirror where ``flip``; two gathers, on the batch's device."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    rows = (oy[:, None] + ar_h)[:, None, :, None].expand(b, c, h, w + 2 * pad)
    cols = (ox[:, None] + torch.where(flip[:, None], (w - 1) - ar_w, ar_w))[:, None, None, :].expand(b, c, h, w)
    return xp.gather(2, rows).gather(3, cols)


def stream_generator(seed: int, stream: str, k: int) -> torch.Generator:
    """A generator seeded from ``(seed, stream, k)``: random draws that depend on nothing else."""
    h = hashlib.blake2b(f"{seed}/{stream}/{k}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(h, "little") >> 1)


class Sampler:
    """Global batch ``i`` = samples ``i*B .. (i+1)*B - 1`` of the stream of per-epoch permutations."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch, self.seed = n, batch, seed
        self._perms: dict[int, torch.Tensor] = {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = torch.randperm(self.n, generator=stream_generator(self.seed, "order", epoch))
        return self._perms[epoch]

    def indices(self, i: int) -> torch.Tensor:
        k = torch.arange(i * self.batch, (i + 1) * self.batch)
        epoch, pos = k // self.n, k % self.n
        first, last = int(epoch[0]), int(epoch[-1])
        if first == last:
            return self.perm(first)[pos]
        return torch.cat([self.perm(e)[pos[epoch == e]] for e in range(first, last + 1)])


@dataclass(frozen=True, eq=False)
class Trained:
    """What a training checkpoint records about its inputs: resdsl train's per-pixel ``pixel_mean`` [C, H, W]
    (a spec without ``input.mean``/``input.std``), or the per-channel ``normalize`` it trained with."""

    path: Path
    pixel_mean: torch.Tensor | None = None
    normalize: Normalize | None = None

    @classmethod
    def from_checkpoint(cls, obj: Any, path: Path) -> Trained | None:
        """The record in an unpickled weights file ``obj`` (None when it has none: a plain state_dict)."""
        if not isinstance(obj, dict):
            return None
        mean, norm = obj.get("pixel_mean"), obj.get("normalize")
        normalize = None
        if isinstance(norm, dict) and all(isinstance(norm.get(k), (list, tuple)) for k in ("mean", "std")):
            try:
                normalize = Normalize(tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"]))
            except (TypeError, ValueError):
                normalize = None
        pixel_mean = mean.float() if isinstance(mean, torch.Tensor) else None
        return cls(path, pixel_mean, normalize) if pixel_mean is not None or normalize is not None else None


@dataclass(frozen=True, eq=False)
class Preprocess:
    """How uint8 images [N, C, H, W] become the network's inputs: ``(x / 255 - mean) / std``.

    Either per channel (``mean`` and ``std`` [C, 1, 1], the spec's ``input.mean``/``input.std``: torchvision's
    and timm's convention) or per pixel (``mean`` [C, H, W], ``std`` None: ``x / 255 - mean``, resdsl train's
    default). ``source`` says where the numbers came from.
    """

    mean: torch.Tensor
    std: torch.Tensor | None
    source: str

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """float32 inputs from uint8 images ``x``, on the device ``mean`` is on."""
        out = x.to(self.mean.device, non_blocking=True).float().div_(255).sub_(self.mean)
        return out if self.std is None else out.div_(self.std)

    def to(self, device: torch.device | str) -> Preprocess:
        std = None if self.std is None else self.std.to(device)
        return Preprocess(self.mean.to(device), std, self.source)

    def describe(self) -> str:
        """The rule and where its numbers came from, for reports and manifests."""
        if self.std is None:
            return f"x / 255 - per-pixel mean of {self.source}"
        return (f"(x / 255 - mean) / std per channel, mean {_numbers(self.mean)} and std {_numbers(self.std)} "
                f"from {self.source}")


def _numbers(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:g}" for v in t.flatten().tolist()) + "]"


def preprocessing(normalize: Normalize | None, ds: Dataset, trained: Trained | None = None) -> Preprocess:
    """The preprocessing a spec's network takes, as training applied it: the spec's per-channel ``normalize``
    (``input.mean``/``input.std``) when it has one; else ``x / 255 - mean`` with the per-pixel mean stored in the
    training checkpoint (``trained``), or else the mean of ``ds``'s training split (what ``resdsl train`` on ``ds``
    computes). A checkpoint trained with the other rule is refused: its accuracy would be meaningless."""
    if normalize is not None:
        if trained is not None and trained.pixel_mean is not None:
            raise InputError(f"{trained.path} was trained on x / 255 - a per-pixel mean (a spec without input.mean "
                             "and input.std), but the spec sets input.mean and input.std; drop them from the spec, or "
                             "use weights trained with them")
        if trained is not None and trained.normalize is not None and trained.normalize != normalize:
            raise InputError(f"{trained.path} was trained with input.mean {list(trained.normalize.mean)} and "
                             f"input.std {list(trained.normalize.std)}, not the spec's {list(normalize.mean)} and "
                             f"{list(normalize.std)}; use the spec it was trained from")
        c = len(normalize.mean)
        return Preprocess(torch.tensor(normalize.mean, dtype=torch.float32).view(c, 1, 1),
                          torch.tensor(normalize.std, dtype=torch.float32).view(c, 1, 1), "the spec's input")
    if trained is not None and trained.normalize is not None:
        raise InputError(f"{trained.path} was trained with input.mean {list(trained.normalize.mean)} and input.std "
                         f"{list(trained.normalize.std)}, which the spec lacks; add them to the spec's input section")
    if trained is not None and trained.pixel_mean is not None:
        mean = trained.pixel_mean
        if tuple(mean.shape) != tuple(ds.train_x.shape[1:]):
            raise InputError(f"{trained.path}: its pixel_mean has shape {list(mean.shape)} but the images are "
                             f"{list(ds.train_x.shape[1:])}; use data of the size it was trained on")
        return Preprocess(mean, None, f"the training checkpoint {trained.path}")
    return Preprocess(ds.pixel_mean(), None, "the data's training split")


@dataclass(frozen=True, eq=False)
class Labelled:
    """Labelled images read and checked once (``path``: where from), with the preprocessing their inputs take."""

    path: Path
    dataset: Dataset
    preprocess: Preprocess


def calibration_sample(ds: Dataset, n: int, path: Path) -> torch.Tensor:
    """The uint8 images [n, C, H, W] int8 scales are calibrated on: the first ``n`` of a fixed shuffle (seed 0)
    of ``ds``'s training split; the same data gives the same images."""
    if len(ds.train_x) < n:
        raise InputError(f"--calibration {path}: its training split has {len(ds.train_x)} images, fewer than "
                         f"--calibration-samples {n}; lower it or add images")
    order = torch.randperm(len(ds.train_x), generator=torch.Generator().manual_seed(0))[:n]
    return ds.train_x[order]
