"""``resdsl triton DIR... -o REPO``: a Triton Inference Server model repository; registered by :mod:`resdsl.cli`
through :func:`add_triton_command`.

The flags are parsed into :class:`resdsl.triton.TritonOptions` here, once; :func:`resdsl.triton.write_repository`
does the rest. Nothing heavy is imported (no torch, onnx or tensorrt).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_triton(args: argparse.Namespace) -> int:
    """Write one model per artefact; print one line per model."""
    from .triton import TritonOptions, write_repository

    opts = TritonOptions(max_queue_delay_us=args.max_queue_delay_us, instances=args.instances, kind=args.kind,
                         cuda_graphs=args.cuda_graphs, dynamic_batching=args.dynamic_batching)
    written = write_repository(args.artefacts, args.output, opts)  # OptionErrors name flags: commands.FLAGS
    for source, model in zip(args.artefacts, written, strict=True):
        files = ", ".join(f"1/{f.name}" for f in sorted((model / "1").iterdir(), key=lambda f: f.suffix == ".json"))
        print(f"{model}: config.pbtxt, {files} (from {source})")
    return 0


def add_triton_command(sub: Any) -> None:
    """Register ``triton``."""
    p = sub.add_parser("triton", help="write a Triton Inference Server model repository from onnx/trt artefacts",
                       description="For each artefact directory (compiled with --target onnx or trt), write "
                       "REPO/NAME/config.pbtxt and REPO/NAME/1/ holding model.onnx or model.plan and the "
                       "artefact's manifest.json. Every artefact is checked (schema, hashes, options) before "
                       "anything is written; each model is replaced atomically, other models in REPO are kept.")
    p.add_argument("artefacts", nargs="+", type=Path, metavar="DIR", help="artefact directories (manifest.json)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="REPO", help="the model repository "
                   "(created if missing)")
    p.add_argument("--max-queue-delay-us", type=int, default=100, metavar="N", help="dynamic batcher's "
                   "max_queue_delay_microseconds (default 100; dynamic-batch artefacts only)")
    p.add_argument("--instances", type=int, default=1, metavar="N", help="instance_group count (default 1)")
    p.add_argument("--kind", choices=("gpu", "cpu"), default=None, help="instance kind (default: gpu for trt, cpu "
                   "for onnx; trt takes gpu only)")
    p.add_argument("--cuda-graphs", action="store_true", help="trt only: optimization { cuda { graphs: true } }")
    p.add_argument("--dynamic-batching", action=argparse.BooleanOptionalAction, default=None,
                   help="Triton's dynamic batcher (default: on for dynamic-batch artefacts, off for fixed-batch "
                   "ones, which refuse --dynamic-batching)")
    p.set_defaults(func=cmd_triton)
