"""Subcommands that lower and verify (``compile``, ``verify``); registered by :mod:`resdsl.cli`.

Their heavy imports (torch, onnx, onnxruntime, tensorrt) happen inside the
command functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .errors import InputError


def _batches(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        sizes = tuple(int(t) for t in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise InputError(f"--verify-batch {text!r}: give batch sizes like 1,3,8")
    return sizes


def cmd_compile(args: argparse.Namespace) -> int:
    from .pipeline import CompileOptions, compile_spec

    extra: dict[str, Any] = {k: getattr(args, k) for k in ("workspace", "opt_level", "timing_cache", "tf32",
                                                            "version_compatible", "device", "max_params",
                                                            "max_gmacs")}
    opts = CompileOptions(target=args.target, out=args.output, weights=args.weights, precision=args.precision,
                          io=args.io, batch=args.batch, opset=args.opset, force=args.force, seed=args.seed,
                          verify_batches=_batches(args.verify_batch), extra=extra)
    out, manifest = compile_spec(args.spec, opts)
    v = manifest["verification"]
    worst = max((c["rel"] for c in v["checks"]), default=0.0)
    files = ", ".join(manifest["files"])
    print(f"{out}: {files} + manifest.json ({manifest['name']}, {manifest['target']}, {manifest['precision']}, "
          f"{manifest['counts']['gmacs']} GMACs); verified at batch "
          f"{', '.join(str(c['batch']) for c in v['checks'])}, max rel err {worst:.1e}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .backends.torch import build
    from .errors import VerificationError
    from .manifest import read_checked
    from .runtime import Artefact
    from .spec import from_resolved
    from .targets import run_checks, verify_batches
    from .weights import load_into, state_digest

    d = Path(args.directory)
    m = read_checked(d)
    spec = from_resolved(m["spec"]["resolved"], str(d / "manifest.json"))
    w = m["weights"]
    model = build(spec, seed=int(w.get("seed", 0)))
    if w["kind"] == "file":
        path = Path(args.weights or w["path"])
        entry = load_into(model, path)
        if entry["sha256"] != w["sha256"]:
            raise InputError(f"weights file {path} is not the one {d} was compiled from (sha256 differs); pass the "
                             "original with --weights")
    elif state_digest(model.state_dict()) != w["sha256"]:
        raise InputError(f"cannot regenerate the random weights of {d} (seed {w.get('seed')}): this torch "
                         f"draws different numbers than torch {m.get('versions', {}).get('torch')}; verify on "
                         "that version, or compile with --weights")
    model.eval()
    art = Artefact(d, m)
    recorded = tuple(c["batch"] for c in m.get("verification", {}).get("checks", []))
    batches = _batches(args.verify_batch) or tuple(dict.fromkeys(recorded)) or verify_batches(m["batch"])
    report = run_checks(model, spec, m["precision"] if m["target"] != "torch" else "fp32", batches,
                        {art.backend: art}, seed=args.seed)
    for line in report.lines():
        print(f"{d}: {line}")
    if not report.passed:
        raise VerificationError(f"{d} does not compute what its spec and weights say it should")
    print(f"{d}: verified ({m['name']}, {m['target']}, {m['precision']})")
    return 0


def add_commands(sub: Any) -> None:
    """Register ``compile`` and ``verify``."""
    c = sub.add_parser("compile", help="lower a spec to an artefact directory and verify it")
    c.add_argument("spec", metavar="SPEC")
    c.add_argument("--target", choices=("torch", "onnx", "trt", "aoti"), default="onnx")
    c.add_argument("-o", "--output", type=Path, metavar="DIR", help="artefact directory (default build/NAME)")
    c.add_argument("--weights", type=Path, metavar="FILE",
                   help="a resdsl checkpoint or a PyTorch state_dict (torchvision's included)")
    c.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp16 makes the ONNX graph itself float16 (how TensorRT 11 takes reduced precision)")
    c.add_argument("--io", choices=("fp32", "fp16"), default="fp32", help="dtype of input and logits (fp16 needs "
                   "--precision fp16)")
    c.add_argument("--batch", default="1:1:32", metavar="MIN:OPT:MAX|N",
                   help="batch range (a dynamic axis when MIN < MAX); default 1:1:32")
    c.add_argument("--opset", type=int, default=18, help="ONNX opset (17 or newer; default 18)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random init without --weights, and of the "
                   "verification inputs")
    c.add_argument("--verify-batch", metavar="N,N,...", help="batch sizes to verify at (default: MIN, MIN+2, and "
                   "MAX when MAX <= 8)")
    c.add_argument("--force", action="store_true", help="replace an existing output directory")
    c.add_argument("--max-params", type=int, metavar="N", help="refuse networks with more parameters "
                   "(default 2e9)")
    c.add_argument("--max-gmacs", type=float, metavar="X", help="refuse networks needing more GMACs per image "
                   "(default 2000)")
    g = c.add_argument_group("trt and aoti targets")
    g.add_argument("--workspace", type=int, default=4096, metavar="MIB", help="TensorRT workspace limit")
    g.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimization level 0..5")
    g.add_argument("--timing-cache", type=Path, metavar="DIR", help="TensorRT timing cache directory, reused "
                   "across builds")
    g.add_argument("--tf32", action="store_true", help="allow TF32 in fp32 TensorRT engines (off by default)")
    g.add_argument("--version-compatible", action="store_true", help="build a version-compatible engine")
    g.add_argument("--device", choices=("cpu", "cuda"), default=None, help="aoti: compile for this device")
    c.set_defaults(func=cmd_compile)

    v = sub.add_parser("verify", help="re-hash an artefact and check it against its spec and weights")
    v.add_argument("directory", metavar="DIR")
    v.add_argument("--weights", type=Path, metavar="FILE", help="the weights file, if it moved since compile")
    v.add_argument("--verify-batch", metavar="N,N,...", help="batch sizes (default: those of compile)")
    v.add_argument("--seed", type=int, default=1, help="seed of the verification inputs (default 1: inputs "
                   "compile did not see)")
    v.set_defaults(func=cmd_verify)


