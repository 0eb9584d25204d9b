"""Classify images with a model that Triton Inference Server serves from a `resdsl triton` repository.

    resdsl compile specs/cifar/resnet20.yaml --target onnx --batch 1:8:32 -o build/resnet20
    resdsl triton build/resnet20 -o models
    tritonserver --model-repository models                 # on the serving machine
    python examples/triton/client.py --model resnet20-cifar images.npy

FILE is a .npy file of float32 images, already preprocessed the way the artefact expects (resdsl's networks
take what they were trained on), shaped (C, H, W) or (N, C, H, W). The client asks the server for the model's
input and output (name, datatype, shape) and its max_batch_size, sends the images in batches the model takes
(a fixed-batch model's last batch is padded with copies of its last image, whose answers are dropped), and
prints each image's top-5 classes as "index logit" lines.

Needs `pip install 'tritonclient[http]'` to run; importing this file (or --help) does not. Exit status: 0 ok,
2 bad input (one line on stderr), 3 tritonclient missing, or the server could not be reached or refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

DTYPES = {"FP32": np.float32, "FP16": np.float16}


class UsageError(Exception):
    """Bad input: one line on stderr, exit status 2."""


def top5(logits: np.ndarray) -> list[tuple[int, float]]:
    """The five highest-scoring classes of one sample, best first."""
    order = np.argsort(-logits, kind="stable")[:5]
    return [(int(i), float(logits[i])) for i in order]


def read_images(path: Path, chw: tuple[int, ...]) -> np.ndarray:
    """FILE as float32 (N, C, H, W); a UsageError naming the file says what is wrong with it."""
    want = f"(C, H, W) = {chw} or (N, {', '.join(map(str, chw))})"
    try:
        x = np.load(path, allow_pickle=False)
    except OSError as e:
        raise UsageError(f"{path}: cannot read it ({e.strerror or e}); give a .npy file shaped {want}") from None
    except (ValueError, EOFError) as e:
        raise UsageError(f"{path}: not a .npy file numpy can read ({e}); save float32 images with numpy.save, "
                         f"shaped {want}") from None
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "fiu":
        raise UsageError(f"{path}: holds {getattr(x, 'dtype', type(x).__name__)} values; give float32 images "
                         f"shaped {want}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(chw) or len(x) == 0:
        raise UsageError(f"{path}: found shape {tuple(x.shape)}, but the model takes {want} with N >= 1")
    return np.ascontiguousarray(x, dtype=np.float32)


def batches(x: np.ndarray, size: int, fixed: bool) -> list[tuple[np.ndarray, int]]:
    """``x`` cut into ``(batch, real)`` pairs of at most ``size`` images; with ``fixed``, every batch is exactly
    ``size`` long, the last padded with its last image (``real``: how many answers to keep)."""
    out = []
    for start in range(0, len(x), size):
        chunk = x[start:start + size]
        real = len(chunk)
        if fixed and real < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - real, axis=0)])
        out.append((chunk, real))
    return out


def classify(client: Any, http: Any, model: str, path: Path) -> tuple[list[int], np.ndarray]:
    """The input's shape as the server gives it, and every image's logits."""
    meta = client.get_model_metadata(model)
    config = client.get_model_config(model)
    inp, out = meta["inputs"][0], meta["outputs"][0]
    if inp["datatype"] not in DTYPES:
        raise UsageError(f"model {model!r} takes {inp['datatype']}; this client sends FP32 or FP16 images")
    shape = [int(d) for d in inp["shape"]]
    max_batch = int(config.get("max_batch_size", 0))
    x = read_images(path, tuple(shape[1:]))  # shape[0]: -1 for a batching model, else its fixed batch
    size, fixed = (max_batch, False) if max_batch > 0 else (shape[0], True)
    logits = []
    for chunk, real in batches(x.astype(DTYPES[inp["datatype"]]), size, fixed):
        request = http.InferInput(inp["name"], list(chunk.shape), inp["datatype"])
        request.set_data_from_numpy(chunk)
        result = client.infer(model, [request], outputs=[http.InferRequestedOutput(out["name"])])
        logits.append(np.asarray(result.as_numpy(out["name"]), dtype=np.float32)[:real])
    return shape, np.concatenate(logits)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="client.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path, metavar="FILE", help=".npy images, (C, H, W) or (N, C, H, W), float32")
    p.add_argument("--url", default="localhost:8000", help="Triton's HTTP endpoint (default localhost:8000)")
    p.add_argument("--model", required=True, help="the model's name: its directory in the repository")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        import tritonclient.http as http
        from tritonclient.utils import InferenceServerException
    except (ImportError, RuntimeError) as e:  # tritonclient without its http extra raises RuntimeError
        print(f"client.py: needs tritonclient's HTTP client ({e}): pip install 'tritonclient[http]'", file=sys.stderr)
        return 3
    try:
        client = http.InferenceServerClient(url=args.url)
        shape, logits = classify(client, http, args.model, args.file)
    except UsageError as e:
        print(f"client.py: {e}", file=sys.stderr)
        return 2
    except (InferenceServerException, OSError) as e:
        print(f"client.py: {args.url}: model {args.model!r}: {e}", file=sys.stderr)
        return 3
    print(f"{args.model} at {args.url}, input {shape}")
    for k, row in enumerate(logits):
        if len(logits) > 1:
            print(f"image {k}")
        for i, score in top5(row):
            print(f"{i} {score:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
