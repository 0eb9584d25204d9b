"""A resdsl backbone in a Python application: feature maps at the image's own size.

    resdsl compile specs/backbones/resnet50-fpn.yaml --size 320x320:800x1216:1344x1344 -o build/r50-fpn
    python examples/python/features.py build/r50-fpn IMAGE.png|IMAGE.jpg|INPUT.npy

``resdsl.runtime.load`` checks the manifest and every file's sha256, then gives back one callable: numpy
(N, C, H, W) in, and for a net with several outputs a dict of float32 arrays by output name, in the spec's order
(one array for a single output). The manifest lists each output's name, shape (``conv4_x_height`` and the like
where the size varies) and stride, and ``size`` gives the range of input heights and widths the artefact serves.

An image (PNG or JPEG, read with Pillow) keeps its aspect ratio: it is scaled so that it fits the range (its
shorter side at least the range's smallest, its longer side at most the largest), as a detector's resize does,
then preprocessed as the manifest's ``preprocessing`` says. INPUT.npy holds one preprocessed image (C, H, W) or
a batch. Without an input the model gets linspace(-1, 1) at the range's opt size. Prints one line per output:
name, shape, stride, and the mean and max of its values. Exit status: 0 ok, 2 bad input (one line on stderr),
or the exit code of resdsl's error when the artefact is refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

import resdsl.runtime


class UsageError(Exception):
    """A problem with the command line or the input file: one line on stderr, exit status 2."""


def size_range(manifest: dict[str, Any]) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """The (min, opt, max) input heights and widths: the ``size`` section, else the input's one size."""
    r = manifest.get("size")
    if r:
        return tuple(r["min"]), tuple(r["opt"]), tuple(r["max"])  # type: ignore[return-value]
    h, w = manifest["inputs"][0]["shape"][2:]
    return (h, w), (h, w), (h, w)


def fit(h: int, w: int, lo: tuple[int, int], hi: tuple[int, int]) -> tuple[int, int]:
    """(h, w) scaled by one factor into [lo, hi] side by side where one factor can do it, else clamped."""
    scale = max(lo[0] / h, lo[1] / w, 1.0) if h < lo[0] or w < lo[1] else min(hi[0] / h, hi[1] / w, 1.0)
    return (min(max(round(h * scale), lo[0]), hi[0]), min(max(round(w * scale), lo[1]), hi[1]))


def read_image(path: Path, manifest: dict[str, Any]) -> np.ndarray:
    """One image as a (1, C, H, W) float32 input within the artefact's size range, preprocessed."""
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("reading an image needs Pillow (pip install pillow); or give a .npy input") from None
    channels = manifest["inputs"][0]["shape"][1]
    lo, _, hi = size_range(manifest)
    try:
        img = Image.open(path).convert("RGB" if channels == 3 else "L")
    except OSError as e:
        raise UsageError(f"{path}: not an image Pillow can read ({e})") from None
    h, w = fit(img.height, img.width, lo, hi)
    x = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    x = x.reshape(h, w, -1).transpose(2, 0, 1)
    prep = manifest.get("preprocessing")
    if prep and prep["per"] == "channel":
        mean, std = (np.asarray(prep[k], np.float32)[:, None, None] for k in ("mean", "std"))
        x = (x - mean) / std
    elif prep:
        raise UsageError(f"{path}: the artefact's preprocessing subtracts a per-pixel mean of its own size; give "
                         "a preprocessed .npy input instead")
    return x[None]


def read_input(arg: str | None, manifest: dict[str, Any]) -> np.ndarray:
    channels = manifest["inputs"][0]["shape"][1]
    if arg is None:
        _, (h, w), _ = size_range(manifest)
        return np.linspace(-1, 1, channels * h * w, dtype=np.float32).reshape(1, channels, h, w)
    path = Path(arg)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if path.suffix.lower() != ".npy":
        return read_image(path, manifest)
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a .npy array ({e})") from None
    return np.asarray(x, np.float32)[None] if x.ndim == 3 else np.asarray(x, np.float32)


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    directory = Path(argv[0])
    try:
        art = resdsl.runtime.load(directory)
    except resdsl.ResdslError as e:
        print(f"features.py: {e}", file=sys.stderr)
        return e.exit_code
    manifest = json.loads((directory / "manifest.json").read_text())
    try:
        x = read_input(argv[1] if len(argv) == 2 else None, manifest)
        out = art(x)
    except (UsageError, resdsl.ResdslError) as e:
        print(f"features.py: {e}", file=sys.stderr)
        return 2
    outputs = out if isinstance(out, dict) else {art.outputs[0]: out}
    strides = {t["name"]: t.get("stride") for t in manifest["outputs"]}
    print(f"input {'x'.join(map(str, x.shape))}")
    for name, value in outputs.items():
        stride = f"stride {strides[name]}" if strides.get(name) else "logits"
        print(f"{name} {'x'.join(map(str, value.shape))} {stride} mean {value.mean():.6g} max {value.max():.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
