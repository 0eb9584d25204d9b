"""Image folders: ``DIR/train/<class>/*.png|jpg`` and ``DIR/val/<class>/`` (or ``test/``), decoded once with Pillow
to uint8 at the spec's size. Meant for datasets that fit in memory at that size (CIFAR-sized, not ImageNet).

An image of another size is refused unless the caller asks to resize (``--resize``: shorter side scaled to the
spec's, centre crop).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..data import Dataset, check_classes
from ..errors import BackendUnavailable, InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _decode(path: Path, size: tuple[int, int], mode: str, resize: bool, option: str) -> np.ndarray:
    from PIL import Image

    h, w = size
    try:
        with Image.open(path) as f:
            im = f.convert(mode)
    except Exception as e:  # Pillow raises many kinds for broken files
        raise InputError(f"cannot decode image {path} ({type(e).__name__}: {str(e)[:120]}); delete or replace "
                         "the file") from None
    if not resize and im.size != (w, h):
        raise InputError(f"{option}: image {path} is {im.height}x{im.width} (HxW) but the spec takes {h}x{w}; give "
                         f"images of the spec's size, or pass --resize to scale the shorter side to the spec's and "
                         "crop the centre (said in the output and recorded in the manifest)")
    try:
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
                      classes: int | None = None, resize: bool = False, option: str = "--data") -> Dataset:
    """Decode ``root/train`` and ``root/val`` (or ``root/test``) to uint8 at ``size`` with ``workers`` threads;
    the class count is checked against ``classes`` before anything is decoded. An image of another size is
    refused unless ``resize`` (shorter side scaled to the spec's, centre crop)."""
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
        check_classes(root, names, classes)
    test_files, test_labels, _ = _folder(test_dir, names)
    mode = "RGB" if channels == 3 else "L"
    with ThreadPoolExecutor(max(1, workers)) as pool:
        train = list(pool.map(lambda p: _decode(p, size, mode, resize, option), files))
        test = list(pool.map(lambda p: _decode(p, size, mode, resize, option), test_files))
    note = (f"images resized to {size[0]}x{size[1]} (shorter side scaled bilinearly, centre crop; --resize)"
            if resize else None)
    return Dataset(torch.from_numpy(np.stack(train)), torch.tensor(labels), torch.from_numpy(np.stack(test)),
                   torch.tensor(test_labels), names, "image-folder", test_dir.name, note)
