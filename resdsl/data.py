"""Datasets for ``resdsl train``: CIFAR's "python version" files and image folders, held in memory.

Two layouts are read, never downloaded:

* CIFAR-10/100 as distributed (``data_batch_1..5`` + ``test_batch`` + ``batches.meta``, or CIFAR-100's
  ``train`` + ``test`` + ``meta``): pickled dicts of ``data`` (uint8 [N, 3072]) and ``labels``/``fine_labels``.
  The pickles are read with an unpickler that only rebuilds numpy arrays, never arbitrary objects.
* Image folders ``DIR/train/<class>/*.png|jpg`` and ``DIR/val/<class>/...`` (``test/`` is accepted for ``val/``),
  decoded once with Pillow: shorter side resized to the spec's input, centre-cropped, kept as uint8. Meant for
  datasets that fit in memory at the spec's resolution (CIFAR-sized, not ImageNet).

Everything becomes uint8 tensors [N, C, H, W]; :func:`augment` is the paper's CIFAR augmentation on a batch.
:class:`Preprocess` turns them into the network's inputs, the same way for training, evaluation, int8
calibration and compile's accuracy check; :func:`preprocessing` says which normalisation applies.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .errors import BackendUnavailable, InputError
from .spec import Normalize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FIX_LAYOUT = ("give a directory with CIFAR's python batches (data_batch_1..5 + test_batch, or CIFAR-100's train + "
              "test), or image folders DIR/train/<class>/*.png and DIR/val/<class>/*.png")


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

    def pixel_mean(self) -> torch.Tensor:
        """The per-pixel mean [C, H, W] of the training images, scaled to [0, 1] (float32)."""
        total = torch.zeros(self.train_x.shape[1:], dtype=torch.float64)
        for chunk in torch.split(self.train_x, 4096):
            total += chunk.sum(0, dtype=torch.float64)
        return (total / (255.0 * len(self.train_x))).float()


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


def _decode(path: Path, size: tuple[int, int], mode: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as f:
            im = f.convert(mode)
        h, w = size
        scale = max(h / im.height, w / im.width)
        rw, rh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
        if (rw, rh) != im.size:
            im = im.resize((rw, rh), Image.Resampling.BILINEAR)
        left, top = (rw - w) // 2, (rh - h) // 2
        a = np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.uint8)
    except Exception as e:  # Pillow raises many kinds for broken files
        raise InputError(f"cannot decode image {path} ({type(e).__name__}: {str(e)[:120]}); delete or replace "
                         "the file") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _folder(split: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    dirs = sorted(d for d in split.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise InputError(f"{split} has no class subdirectories; put images in {split}/<class>/*.png")
    names = classes if classes is not None else [d.name for d in dirs]
    index = {n: i for i, n in enumerate(names)}
    files: list[Path] = []
    labels: list[int] = []
    for d in dirs:
        if d.name not in index:
            raise InputError(f"{d}: class '{d.name}' is not among the {len(names)} classes of "
                             f"{split.parent / 'train'}; remove it or add it to train/")
        imgs = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not imgs:
            raise InputError(f"{d} has no .png/.jpg images; add some or remove the directory")
        files += imgs
        labels += [index[d.name]] * len(imgs)
    return files, labels, names


def load_image_folder(root: Path, size: tuple[int, int], channels: int, workers: int = 0,
                      classes: int | None = None) -> Dataset:
    """Decode ``root/train`` and ``root/val`` (or ``root/test``) to uint8 at ``size`` with ``workers`` threads;
    the class count is checked against ``classes`` before anything is decoded."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise BackendUnavailable(f"{root} holds image folders, which need Pillow to decode: pip install "
                                 "'resdsl[train]' (or convert the data to CIFAR's python batches)") from None
    if channels not in (1, 3):
        raise InputError(f"the spec takes {channels} input channels; image folders give 1 (grayscale) or 3 (RGB)")
    test_dir = root / "val" if (root / "val").is_dir() else root / "test"
    if not test_dir.is_dir():
        raise InputError(f"{root} has train/ but no val/ (or test/) directory; image folders need both")
    files, labels, names = _folder(root / "train", None)
    if classes is not None:
        _check_classes(root, names, classes)
    test_files, test_labels, _ = _folder(test_dir, names)
    mode = "RGB" if channels == 3 else "L"
    with ThreadPoolExecutor(max(1, workers)) as pool:
        train = list(pool.map(lambda p: _decode(p, size, mode), files))
        test = list(pool.map(lambda p: _decode(p, size, mode), test_files))
    return Dataset(torch.from_numpy(np.stack(train)), torch.tensor(labels), torch.from_numpy(np.stack(test)),
                   torch.tensor(test_labels), names, "image-folder", test_dir.name)


def load_dataset(root: str | Path, *, classes: int, size: tuple[int, int], channels: int,
                 workers: int = 0, option: str = "--data") -> Dataset:
    """Find the layout in ``root``, read it and check it against the spec's classes, channels and input size;
    ``option`` names where ``root`` was given in messages (``--data``, ``--calibration``, ``--eval-data``)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{option} {root}: {'not a directory' if root.exists() else 'no such directory'}; "
                         f"{FIX_LAYOUT}")
    for sub in ("cifar-10-batches-py", "cifar-100-python"):  # the directory the archive extracts to
        if not any(root.glob("data_batch_*")) and (root / sub).is_dir():
            root = root / sub
    if any(root.glob("data_batch_*")) or ((root / "train").is_file() and (root / "test").is_file()):
        ds = load_cifar(root)
        if channels != 3:
            raise InputError(f"{option} {root}: CIFAR images have 3 channels but the spec takes {channels}; set "
                             "input.channels: 3, or give images with that many channels")
        if (ds.train_x.shape[-2], ds.train_x.shape[-1]) != size:
            ds.train_x, ds.test_x = resize(ds.train_x, size), resize(ds.test_x, size)
    elif (root / "train").is_dir():
        ds = load_image_folder(root, size, channels, workers, classes)
    else:
        raise InputError(f"{option} {root}: found neither CIFAR batches nor a train/ directory; {FIX_LAYOUT}")
    _check_classes(root, ds.classes, classes)
    for name, x in (("training", ds.train_x), (ds.test_name, ds.test_x)):
        if len(x) == 0:
            raise InputError(f"{root}: the {name} split is empty; add images")
    return ds


def _check_classes(root: Path, names: list[str], classes: int) -> None:
    if len(names) != classes:
        raise InputError(f"{root} has {len(names)} classes ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                         f" but the spec's head has {classes}; set head: {{classes: {len(names)}}} in the spec, or "
                         f"point --data at a {classes}-class dataset")


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
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
