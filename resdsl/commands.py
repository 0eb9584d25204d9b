"""Subcommands that lower and verify (``compile``, ``verify``); registered by :mod:`resdsl.cli`.

Options are parsed into :class:`resdsl.options.CompileOptions` here, once; the library does the rest. Heavy
imports (torch, onnx, onnxruntime, tensorrt) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import OptionError, ResdslError, SpecError, VerificationError
from .options import DEFAULT_MAX_GMACS, DEFAULT_MAX_PARAMS, AotiOptions, CompileOptions, Limits, TrtOptions
from .progress import Progress

#: Option fields -> the flags that set them, for messages (:meth:`resdsl.errors.OptionError.render`).
FLAGS = {"target": "--target", "out": "-o", "weights": "--weights", "precision": "--precision", "io": "--io",
         "batch": "--batch", "opset": "--opset", "exporter": "--exporter", "force": "--force", "seed": "--seed",
         "verify_batches": "--verify-batch", "max_params": "--max-params", "max_gmacs": "--max-gmacs",
         "workspace_mib": "--workspace", "opt_level": "--opt-level", "timing_cache": "--timing-cache",
         "tf32": "--tf32", "version_compatible": "--version-compatible", "device": "--device",
         "providers": "--provider", "batches": "--batch", "warmup": "--warmup", "iterations": "--iterations",
         "duration": "--duration", "threads": "--threads", "cuda_graph": "--cuda-graph", "split": "--split",
         "limit": "--limit", "max_drop": "--max-drop", "batch_size": "--batch", "eval_data": "--eval-data",
         "eval_max_drop": "--max-drop", "calibration": "--calibration", "calibration_samples": "--calibration-samples",
         "calibration_method": "--calibration-method", "quant_scheme": "--quant-scheme",
         "max_queue_delay_us": "--max-queue-delay-us", "instances": "--instances", "kind": "--kind",
         "cuda_graphs": "--cuda-graphs", "dynamic_batching": "--dynamic-batching", "resize": "--resize",
         "random_weights_ok": "--random-weights", "fallback": "--no-fallback",
         "sensitivity_samples": "--sensitivity-samples", "size": "--size",
         "bench_size": "--size"}
_TRT = ("workspace_mib", "opt_level", "timing_cache", "tf32", "version_compatible")


def batch_list(text: str | None, field: str = "verify_batches") -> tuple[int, ...]:
    """``--verify-batch 1,3,8`` (``field``: the option it fills, named in the error)."""
    if not text:
        return ()
    try:
        sizes = tuple(int(t) for t in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise OptionError(f"{{{field}}} {text!r}: give batch sizes like 1,3,8")
    return sizes


def limits(args: argparse.Namespace) -> Limits:
    """``--max-params`` / ``--max-gmacs`` (the defaults when not given)."""
    return Limits(DEFAULT_MAX_PARAMS if args.max_params is None else args.max_params,
                  DEFAULT_MAX_GMACS if args.max_gmacs is None else args.max_gmacs)


def compile_options(args: argparse.Namespace) -> CompileOptions:
    """The typed options of ``resdsl compile``; a target's option group only when one of its flags was given."""
    given = {k: getattr(args, k) for k in _TRT if getattr(args, k) is not None and getattr(args, k) is not False}
    return CompileOptions(target=args.target, out=args.output, weights=args.weights, precision=args.precision,
                          io=args.io, batch=args.batch, size=args.size, opset=args.opset, exporter=args.exporter,
                          force=args.force,
                          seed=args.seed,
                          verify_batches=batch_list(args.verify_batch), limits=limits(args),
                          trt=TrtOptions(**given) if given else None,
                          aoti=AotiOptions(args.device) if args.device is not None else None,
                          eval_data=args.eval_data, eval_max_drop=args.max_drop, calibration=args.calibration,
                          calibration_samples=args.calibration_samples, calibration_method=args.calibration_method,
                          quant_scheme=args.quant_scheme, resize=args.resize, random_weights_ok=args.random_weights,
                          fallback=args.fallback, sensitivity_samples=args.sensitivity_samples)


def cmd_compile(args: argparse.Namespace) -> int:
    from .pipeline import compile_spec

    out, m = compile_spec(args.spec, compile_options(args), Progress(quiet=args.quiet))
    print(f"{out}: {', '.join(m.files)} + manifest.json ({m.name}, {m.target}, {m.precision}, {m.counts.gmacs} "
          f"GMACs); {verified(m)}")
    return 0


def verified(m: Any) -> str:
    """What compile's checks established, in a user's words: against the module on random inputs (values for
    fp32/fp16; shapes and finite logits only for int8) and, when run, top-1 on labelled images."""
    v = m.verification or {}
    checks = v.get("checks", [])
    batches = ", ".join(str(b) for b in dict.fromkeys(c["batch"] for c in checks))
    sizes = list(dict.fromkeys(tuple(c["size"]) for c in checks if c.get("size")))
    outputs = list(dict.fromkeys(c.get("output", "logits") for c in checks))
    where = f"batch {batches}" + (f" and sizes {', '.join(f'{h}x{w}' for h, w in sizes)}" if sizes else "")
    what = f"every output ({', '.join(outputs)})" if len(outputs) > 1 else "the module"
    if m.precision == "int8":
        said = f"right shapes and finite logits on random inputs at {where}"
    else:
        worst = max((c["rel"] for c in checks), default=0.0)
        said = (f"equals the module on random inputs at {where} (max rel err {worst:.1e})" if len(outputs) == 1 else
                f"{what} equals the module's on random inputs at {where} (max rel err {worst:.1e})")
    acc = v.get("accuracy")
    if acc:
        said += (f"; top-1 on {acc['images']} labelled {acc.get('split', 'test')} images "
                 f"{acc['artefact']['top1']:.2f}% against the module's {acc['module']['top1']:.2f}% "
                 f"(drop {acc['drop']:+.2f} points, budget {acc['max_drop']:g})")
        if acc.get("preprocessing", "").startswith("images resized"):
            said += f"; {acc['preprocessing'].split(';')[0]}"
        fb = m.section("quantization").get("fallback") or {}
        if fb.get("in_float"):
            said += f"; left in float: {', '.join(fb['in_float'])}"
        if acc.get("untrained"):
            said += "; the weights are random, so that accuracy is chance level and proves nothing"
    return said


def cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify_artefact

    d = Path(args.directory)
    m, report = verify_artefact(d, weights=args.weights, batches=batch_list(args.verify_batch), seed=args.seed,
                                limits=limits(args), progress=Progress(quiet=args.quiet),
                                providers=[args.provider] if args.provider else None)
    for line in report.lines():
        print(f"{d}: {line}")
    if not report.passed:
        raise VerificationError(f"{d} does not compute what its spec and weights say it should")
    print(f"{d}: verified ({m.name}, {m.target}, {m.precision})")
    acc = (m.verification or {}).get("accuracy")
    if m.precision == "int8" or acc:
        recorded = (f"; at compile: top-1 {acc['artefact']['top1']:.2f}% against the module's "
                    f"{acc['module']['top1']:.2f}% on {acc['data']}") if acc else ""
        what = ("random inputs check only the shapes and finite logits of an int8 artefact" if m.precision == "int8"
                else "random inputs check that the artefact computes the module's function")
        print(f"{d}: note: {what}; accuracy is checked on labelled images by `resdsl evaluate {d} --data DATA`"
              f"{recorded}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Time an artefact; a table (or JSON) on stdout."""
    from .benchmark import bench
    from .options import BenchOptions

    opts = BenchOptions(batches=batch_list(args.batch, "batches"), warmup=args.warmup, iterations=args.iterations,
                        duration=args.duration, threads=args.threads,
                        providers=(args.provider,) if args.provider else None, cuda_graph=args.cuda_graph,
                        bench_size=args.size)
    result = bench(args.directory, opts, Progress(quiet=args.quiet or args.json))
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Accuracy of an artefact beside its module; exit 1 when it drops more than --max-drop."""
    from .evaluate import evaluate
    from .options import EvalOptions

    opts = EvalOptions(data=args.data, split=args.split, batch_size=args.batch, limit=args.limit,
                       max_drop=args.max_drop, weights=args.weights, threads=args.threads,
                       providers=(args.provider,) if args.provider else None, resize=args.resize)
    result = evaluate(args.directory, opts, Progress(quiet=args.quiet or args.json))
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())
    if not result.passed:
        raise VerificationError(f"{args.directory}: top-1 is {result.drop:.2f} points below the fp32 module's, more "
                                f"than --max-drop {result.max_drop:g}; compile at a higher precision, or with "
                                "better calibration data")
    return 0


def dispatch(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run the chosen command: the one place that turns errors into messages and exit codes."""
    args = p.parse_args(argv)
    try:
        return int(args.func(args))
    except OptionError as e:
        print(f"resdsl: error: {e.render(FLAGS)}", file=sys.stderr)
        return e.exit_code
    except ResdslError as e:
        print(f"resdsl: error: {e}" if not isinstance(e, SpecError) else str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("resdsl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def add_limit_flags(p: Any) -> None:
    """``--max-params`` / ``--max-gmacs``, read back by :func:`limits` (compile, verify and train take them)."""
    p.add_argument("--max-params", type=int, metavar="N", help="refuse networks with more parameters (default 2e9)")
    p.add_argument("--max-gmacs", type=float, metavar="X", help="refuse networks needing more GMACs per image "
                   "(default 2000)")


def add_provider_flag(p: Any) -> None:
    """``--provider``: ONNX Runtime's execution provider for an onnx artefact (verify, bench)."""
    p.add_argument("--provider", metavar="NAME", help="ONNX Runtime execution provider for an onnx artefact: cpu, "
                   "cuda, tensorrt, openvino, ... or a full name (default: cuda when installed, else cpu)")


def _common(p: Any) -> None:
    add_limit_flags(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print no progress lines")


def add_commands(sub: Any) -> None:
    """Register ``compile``, ``verify``, ``bench`` and ``evaluate``."""
    for add in (_add_compile, _add_verify, _add_bench, _add_evaluate):
        add(sub)


def _add_compile(sub: Any) -> None:
    from .backends.base import TARGETS

    c = sub.add_parser("compile", help="lower a spec to an artefact directory and verify it")
    c.add_argument("spec", metavar="SPEC")
    c.add_argument("--target", choices=tuple(TARGETS), default="onnx", help="what to write (default: onnx)")
    c.add_argument("-o", "--output", type=Path, metavar="DIR", help="artefact directory (default build/NAME)")
    c.add_argument("--weights", type=Path, metavar="FILE",
                   help="a resdsl checkpoint, a PyTorch state_dict (torchvision's included) or a safetensors file "
                   "(timm's)")
    c.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="fp16 makes the ONNX graph itself float16 (how TensorRT 11 takes reduced precision); int8 "
                   "(onnx target) adds Q/DQ nodes with scales from --calibration")
    c.add_argument("--calibration", type=Path, metavar="DATA", help="int8: labelled images (a layout resdsl train "
                   "reads); the scales come from its training split, the accuracy check uses its test split")
    c.add_argument("--calibration-samples", type=int, default=512, metavar="N", help="int8: training images to "
                   "calibrate on (default 512)")
    c.add_argument("--calibration-method", choices=("minmax", "percentile", "entropy"), default="minmax",
                   help="int8: how activation ranges are chosen (default minmax)")
    c.add_argument("--quant-scheme", choices=("ort", "trt"), help="int8: ort (uint8 activations: ONNX Runtime's "
                   "fast CPU path; the onnx target's default) or trt (symmetric int8, zero points 0: what TensorRT "
                   "accepts; the trt target's only scheme)")
    c.add_argument("--no-fallback", dest="fallback", action="store_false", help="int8: keep every layer in int8 "
                   "even when the accuracy budget is missed (the compile is then refused)")
    c.add_argument("--sensitivity-samples", type=int, default=256, metavar="N", help="int8: test images each "
                   "layer's cost is ranked on (default 256; 0: no ranking, and no fallback)")
    c.add_argument("--io", choices=("fp32", "fp16"), default="fp32", help="dtype of input and logits (fp16 needs "
                   "--precision fp16)")
    c.add_argument("--batch", default="1:1:32", metavar="MIN:OPT:MAX|N",
                   help="batch range (a dynamic axis when MIN < MAX); default 1:1:32")
    c.add_argument("--size", metavar="HxW|MIN:OPT:MAX", help="input height and width: one size (800x1216, or N for a "
                   "square) or a range MINHxMINW:OPTHxOPTW:MAXHxMAXW (symbolic height and width in ONNX; verified "
                   "at min, opt, max and an odd size between); default the spec's input.size")
    c.add_argument("--opset", type=int, default=18, help="ONNX opset (17 or newer; default 18)")
    c.add_argument("--exporter", choices=("ir", "torch"), default="ir", help="how model.onnx is written: ir "
                   "(from resdsl's graph, in about the time of writing the weights; default) or torch (torch.onnx "
                   "traces the module: minutes on deep nets; the cross-check)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random init without --weights, and of the "
                   "verification inputs")
    c.add_argument("--eval-data", type=Path, metavar="DATA", help="labelled images (a layout resdsl train reads): "
                   "the artefact's top-1 on their test split is checked against the fp32 module's, and recorded")
    c.add_argument("--max-drop", type=float, metavar="POINTS", help="with --eval-data: the top-1 budget (default "
                   "0.2 points); more refuses the artefact")
    c.add_argument("--resize", action="store_true", help="resize --eval-data/--calibration images of another size "
                   "than the spec's input (default: refuse them); said in the output and the manifest")
    c.add_argument("--random-weights", action="store_true", help="allow --eval-data or int8 without --weights: "
                   "the accuracy of an untrained net proves nothing, and the output says so")
    c.add_argument("--verify-batch", metavar="N,N,...", help="batch sizes to verify at (default: MIN, MIN+2, and "
                   "MAX when MAX <= 8)")
    c.add_argument("--force", action="store_true", help="replace an existing output directory")
    _common(c)
    g = c.add_argument_group("trt target (refused with other targets)")
    g.add_argument("--workspace", dest="workspace_mib", type=int, metavar="MIB",
                   help="TensorRT workspace limit (default 4096)")
    g.add_argument("--opt-level", type=int, help="TensorRT builder optimization level 0..5 (default 3)")
    g.add_argument("--timing-cache", type=Path, metavar="DIR", help="TensorRT timing cache directory, shared "
                   "across builds")
    g.add_argument("--tf32", action="store_true", help="allow TF32 in fp32 TensorRT engines (off by default)")
    g.add_argument("--version-compatible", action="store_true", help="build a version-compatible engine")
    a = c.add_argument_group("aoti target (refused with other targets)")
    a.add_argument("--device", choices=("cpu", "cuda"), default=None, help="compile for this device (default: cuda "
                   "when torch sees a GPU)")
    c.set_defaults(func=cmd_compile)


def _add_verify(sub: Any) -> None:
    v = sub.add_parser("verify", help="re-hash an artefact and check it against its spec and weights")
    v.add_argument("directory", metavar="DIR")
    v.add_argument("--weights", type=Path, metavar="FILE", help="the weights file, if it moved since compile")
    v.add_argument("--verify-batch", metavar="N,N,...", help="batch sizes (default: those of compile)")
    v.add_argument("--seed", type=int, default=1, help="seed of the verification inputs (default 1: inputs "
                   "compile did not see)")
    add_provider_flag(v)
    _common(v)
    v.set_defaults(func=cmd_verify)


def _add_bench(sub: Any) -> None:
    b = sub.add_parser("bench", help="latency and throughput of an artefact at given batch sizes")
    b.add_argument("directory", metavar="DIR")
    b.add_argument("--batch", metavar="N,N,...", help="batch sizes within the artefact's range (default: its opt)")
    b.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed runs first (default 10)")
    runs = b.add_mutually_exclusive_group()
    runs.add_argument("--iterations", type=int, metavar="N", help="timed runs per batch size")
    runs.add_argument("--duration", type=float, metavar="S", help="seconds of timed runs per batch size (default 3)")
    b.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime intra-op threads (default: one per core)")
    add_provider_flag(b)
    b.add_argument("--cuda-graph", action="store_true", help="TensorRT: replay the engine from a CUDA graph")
    b.add_argument("--size", metavar="HxW", help="input height and width within the artefact's range (default: its "
                   "opt size, or its one size)")
    b.add_argument("--json", action="store_true", help="machine-readable output (no progress lines)")
    b.add_argument("-q", "--quiet", action="store_true", help="print no progress lines")
    b.set_defaults(func=cmd_bench)


def _add_evaluate(sub: Any) -> None:
    e = sub.add_parser("evaluate", help="top-1/top-5 of an artefact on labelled images, beside its fp32 module")
    e.add_argument("directory", metavar="DIR")
    e.add_argument("--data", type=Path, required=True, metavar="DATA", help="a dataset in a layout resdsl train "
                   "reads (CIFAR python batches, MNIST-family IDX files, or image folders DATA/train/<class>, "
                   "DATA/val/<class>)")
    e.add_argument("--split", choices=("test", "train"), default="test", help="which split (default: test / val)")
    e.add_argument("--batch", type=int, metavar="N", help="images per call (default: up to 64, within the "
                   "artefact's batch range)")
    e.add_argument("--limit", type=int, metavar="N", help="the first N images only")
    e.add_argument("--resize", action="store_true", help="resize images of another size than the spec's input "
                   "(default: refuse them); said in the output")
    e.add_argument("--max-drop", type=float, metavar="POINTS", help="exit 1 when the artefact's top-1 falls more "
                   "than this below the module's")
    e.add_argument("--weights", type=Path, metavar="FILE", help="the weights file, if it moved since compile")
    e.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime intra-op threads")
    add_provider_flag(e)
    e.add_argument("--json", action="store_true", help="machine-readable output (no progress lines)")
    e.add_argument("-q", "--quiet", action="store_true", help="print no progress lines")
    e.set_defaults(func=cmd_evaluate)
