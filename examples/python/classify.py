"""Embedding a resdsl artefact in a Python application.

    resdsl compile specs/cifar/resnet20.yaml --target onnx -o build/resnet20
    python examples/python/classify.py build/resnet20 [INPUT.npy]

``resdsl.runtime.load`` checks the manifest and every file's sha256 before it
loads anything, then gives back one callable whatever the target (torch,
onnx, trt, aoti): numpy (N, C, H, W) in, float32 logits out. The manifest
says what the artefact expects, so the application needs no other config.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import resdsl.runtime


def top5(logits: np.ndarray) -> list[tuple[int, float]]:
    """The five highest-scoring classes of one sample, best first."""
    order = np.argsort(-logits)[:5]
    return [(int(i), float(logits[i])) for i in order]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    try:
        model = resdsl.runtime.load(argv[0])
    except resdsl.ResdslError as e:  # a damaged or foreign artefact: say so, no traceback
        print(f"cannot load {argv[0]}: {e}", file=sys.stderr)
        return e.exit_code
    spec = model.manifest["inputs"][0]
    _, c, h, w = spec["shape"]
    if len(argv) > 1:
        x = np.load(Path(argv[1])).astype(np.float32)
    else:  # the deterministic input the C++ example uses too
        x = np.linspace(-1, 1, c * h * w, dtype=np.float32).reshape(1, c, h, w)
    logits = model(x)
    print(f"{model.manifest['name']} ({model.target}, {model.backend}), input {list(x.shape)} {spec['dtype']}")
    for i, score in top5(logits[0]):
        print(f"{i} {score:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
