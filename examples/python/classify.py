"""Embedding a resdsl artefact in a Python application.

    resdsl compile specs/cifar/resnet20.yaml --weights runs/resnet20-cifar/last.pt -o build/resnet20
    python examples/python/classify.py build/resnet20 IMAGE.png|IMAGE.jpg|INPUT.npy

``resdsl.runtime.load`` checks the manifest and every file's sha256 before it
loads anything, then gives back one callable whatever the target (torch,
onnx, trt, aoti): numpy (N, C, H, W) in, float32 logits out. The manifest
says what the artefact expects, so the application needs no other config.

An image file (PNG or JPEG, read with Pillow) is converted to RGB or grayscale
as the input's channels say, its shorter side scaled to the input size and its
centre cropped (said on stderr when it was resized), then preprocessed as the
manifest's ``preprocessing`` says: ``(x / 255 - mean) / std`` per channel, or
``x / 255 - mean`` per pixel. INPUT.npy holds images already preprocessed, one
(C, H, W) or several (N, C, H, W); without an input the model gets one image,
linspace(-1, 1, C*H*W), as in the C++ examples. An artefact runs batches within its range (manifest.json's
``batch``: min, opt, max; ``--batch 4`` means exactly 4), so the images go in
runs of ``opt``; a last run smaller than ``min`` is padded with copies of its
last image, and the padding's logits are dropped. Prints the top-5 classes of
each image as "index score" lines. Exit status: 0 ok, 2 bad input (one line on
stderr), or the exit code of resdsl's error when the artefact is refused.
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


def top5(logits: np.ndarray) -> list[tuple[int, float]]:
    """The five highest-scoring classes of one sample, best first."""
    order = np.argsort(-logits, kind="stable")[:5]
    return [(int(i), float(logits[i])) for i in order]


def runs(n: int, lo: int, opt: int, hi: int) -> list[tuple[int, int]]:
    """Split ``n`` images into ``(start, stop)`` runs of ``opt`` (the batch size the artefact was built for);
    the caller pads a last run shorter than ``lo`` up to ``lo``. Every run is at most ``hi`` long."""
    size = min(max(opt, lo), hi)
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def classify(model: resdsl.runtime.Artefact, batch: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Logits of every image in ``x`` (N, C, H, W), run in batches within ``batch`` (the manifest's)."""
    lo, opt, hi = int(batch["min"]), int(batch["opt"]), int(batch["max"])
    out = []
    for start, stop in runs(len(x), lo, opt, hi):
        chunk = x[start:stop]
        real = len(chunk)
        if real < lo:  # e.g. one image for an artefact compiled with --batch 4: repeat it, keep one answer
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], lo - real, axis=0)])
        out.append(model(chunk)[:real])
    return np.concatenate(out)


def read_images(path: Path, chw: tuple[int, int, int]) -> np.ndarray:
    """INPUT.npy as float32 (N, C, H, W); a UsageError naming the file says what is wrong with it."""
    want = "(C, H, W) = ({}, {}, {}) or (N, {}, {}, {})".format(*chw, *chw)
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise UsageError(f"{path}: not a .npy file (no numpy header); save the images with numpy.save, "
                                 f"shaped {want}")
            f.seek(0)
            x = np.load(f, allow_pickle=False)
    except OSError as e:
        raise UsageError(f"{path}: cannot read it ({e.strerror or e}); give a .npy file of images shaped "
                         f"{want}") from None
    except (ValueError, EOFError) as e:  # truncated, or an object array (which would need unpickling)
        raise UsageError(f"{path}: numpy cannot read this .npy file ({e}); save the images with numpy.save, "
                         f"shaped {want}") from None
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "fiub":
        raise UsageError(f"{path}: holds {getattr(x, 'dtype', type(x).__name__)} values; the model takes numbers "
                         f"(float32), shaped {want}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or tuple(x.shape[1:]) != chw or len(x) == 0:
        raise UsageError(f"{path}: found shape {tuple(x.shape)}, but this artefact needs {want} with N >= 1")
    return np.ascontiguousarray(x, dtype=np.float32)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_image(path: Path, manifest: dict[str, Any]) -> np.ndarray:
    """An image file as the float32 input (1, C, H, W) the manifest describes: converted to its channels, the
    shorter side scaled to its size and the centre cropped, then its ``preprocessing`` applied."""
    prep = manifest.get("preprocessing")
    if prep is None:
        raise UsageError(f"{path}: the artefact's manifest does not say how images are preprocessed (its spec has no "
                         "input.mean/input.std and its weights no training record); give a preprocessed .npy instead")
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("reading PNG/JPEG images needs Pillow: pip install pillow") from None
    _, c, h, w = manifest["inputs"][0]["shape"]
    try:
        with Image.open(path) as f:
            im = f.convert("RGB" if c == 3 else "L")
    except OSError as e:
        raise UsageError(f"{path}: not a readable PNG or JPEG image ({e}); give an image file or a .npy") from None
    if im.size != (w, h):
        scale = max(h / im.height, w / im.width)
        rw, rh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
        print(f"classify.py: {path} is {im.width}x{im.height}; scaled to {rw}x{rh} and centre-cropped to {w}x{h}",
              file=sys.stderr)
        im = im.resize((rw, rh), Image.Resampling.BILINEAR)
        left, top = (rw - w) // 2, (rh - h) // 2
        im = im.crop((left, top, left + w, top + h))
    x = np.asarray(im, dtype=np.float32).reshape(h, w, c).transpose(2, 0, 1) / 255.0
    if prep["per"] == "channel":
        x = (x - np.float32(prep["mean"]).reshape(c, 1, 1)) / np.float32(prep["std"]).reshape(c, 1, 1)
    else:
        x = x - np.float32(prep["mean"]).reshape(c, h, w)
    return np.ascontiguousarray(x[None], dtype=np.float32)


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        model = resdsl.runtime.load(argv[0])
    except resdsl.ResdslError as e:  # a damaged or foreign artefact: say so, no traceback
        print(f"cannot load {argv[0]}: {e}", file=sys.stderr)
        return e.exit_code
    # resdsl.runtime.load has checked manifest.json against its schema: read what the application needs
    manifest = json.loads((Path(argv[0]) / "manifest.json").read_text(encoding="utf-8"))
    spec = manifest["inputs"][0]
    _, c, h, w = spec["shape"]
    try:
        if len(argv) > 1 and Path(argv[1]).suffix.lower() in IMAGE_SUFFIXES:
            x = read_image(Path(argv[1]), manifest)
        elif len(argv) > 1:
            x = read_images(Path(argv[1]), (c, h, w))
        else:  # the deterministic input the C++ examples use too
            x = np.linspace(-1, 1, c * h * w, dtype=np.float32).reshape(1, c, h, w)
        logits = classify(model, manifest["batch"], x)
    except UsageError as e:
        print(f"classify.py: {e}", file=sys.stderr)
        return 2
    except resdsl.ResdslError as e:
        print(f"classify.py: {argv[0]}: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{manifest['name']} ({model.target}, {model.backend}), input {list(x.shape)} {spec['dtype']}")
    for k, row in enumerate(logits):
        if len(logits) > 1:
            print(f"image {k}")
        for i, score in top5(row):
            print(f"{i} {score:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
