"""Labelled images from disk, never downloaded: one module a layout, and :func:`load_dataset`, which finds the layout
in a directory, reads it and checks it against the spec (classes, channels, input size).

* :mod:`.cifar`: CIFAR-10/100's python pickles.
* :mod:`.folder`: image folders ``DIR/train/<class>/`` and ``DIR/val/<class>/``.
* :mod:`.idx`: the IDX files of the MNIST family (``train-images-idx3-ubyte[.gz]`` and the other three).

Everything becomes a :class:`resdsl.data.Dataset` of uint8 tensors [N, C, H, W].
"""

from __future__ import annotations

from pathlib import Path

from ..data import Dataset, check_classes, resize_images
from ..errors import InputError
from .cifar import load_cifar
from .folder import load_image_folder
from .idx import is_idx, load_idx

__all__ = ["FIX_LAYOUT", "load_dataset"]

FIX_LAYOUT = ("give a directory with CIFAR's python batches (data_batch_1..5 + test_batch, or CIFAR-100's train + "
              "test), the MNIST family's IDX files (train-images-idx3-ubyte[.gz] and the other three), or image "
              "folders DIR/train/<class>/*.png and DIR/val/<class>/*.png")


def load_dataset(root: str | Path, *, classes: int, size: tuple[int, int], channels: int,
                 workers: int = 0, option: str = "--data", resize: bool = False) -> Dataset:
    """Find the layout in ``root``, read it and check it against the spec's classes, channels and input size;
    ``option`` names where ``root`` was given in messages (``--data``, ``--calibration``, ``--eval-data``).
    Images of another size than the spec's are refused, unless ``resize`` (``--resize``): then they are resized
    and :attr:`Dataset.resized` says how."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{option} {root}: {'not a directory' if root.exists() else 'no such directory'}; "
                         f"{FIX_LAYOUT}")
    for sub in ("cifar-10-batches-py", "cifar-100-python"):  # the directory the archive extracts to
        if not any(root.glob("data_batch_*")) and (root / sub).is_dir():
            root = root / sub
    if is_idx(root):
        ds = _fixed_size(load_idx(root, classes), root, option, "IDX", 1, channels, size, resize)
    elif any(root.glob("data_batch_*")) or ((root / "train").is_file() and (root / "test").is_file()):
        ds = _fixed_size(load_cifar(root), root, option, "CIFAR", 3, channels, size, resize)
    elif (root / "train").is_dir():
        ds = load_image_folder(root, size, channels, workers, classes, resize, option)
    else:
        raise InputError(f"{option} {root}: found neither CIFAR batches, IDX files nor a train/ directory; "
                         f"{FIX_LAYOUT}")
    check_classes(root, ds.classes, classes)
    for name, x in (("training", ds.train_x), (ds.test_name, ds.test_x)):
        if len(x) == 0:
            raise InputError(f"{root}: the {name} split is empty; add images")
    return ds


def _fixed_size(ds: Dataset, root: Path, option: str, layout: str, has: int, channels: int, size: tuple[int, int],
                resize: bool) -> Dataset:
    """A layout whose images come at one size (CIFAR's 32x32 RGB, the MNIST family's 28x28 grayscale), checked
    against the spec's channels and size; resized only when asked."""
    if channels != has:
        raise InputError(f"{option} {root}: {layout} images have {has} channel{'s' if has > 1 else ''} but the spec "
                         f"takes {channels}; set input.channels: {has}, or give images with that many channels")
    hw = (ds.train_x.shape[-2], ds.train_x.shape[-1])
    if hw != size and not resize:
        raise InputError(f"{option} {root}: its images are {hw[0]}x{hw[1]} but the spec takes {size[0]}x{size[1]}; "
                         "give images of the spec's size, or pass --resize to resize them (bilinear, antialiased; "
                         "said in the output and recorded in the manifest)")
    if hw != size:
        ds.train_x, ds.test_x = resize_images(ds.train_x, size), resize_images(ds.test_x, size)
        ds.resized = f"images resized from {hw[0]}x{hw[1]} to {size[0]}x{size[1]} (bilinear; --resize)"
    return ds
