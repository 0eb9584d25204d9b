"""The onnx target: ``model.onnx`` (float32, or float16 inside with ``--precision fp16``), verified in ONNX
Runtime; also the fp16 conversion, ONNX Runtime sessions and per-layer outputs.

The export itself is :mod:`resdsl.backends.onnx_export`; the file format (digest, checks before loading) is
:mod:`resdsl.backends.onnx_file`; naming tensors after module paths is :mod:`resdsl.backends.onnx_names`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailable, InputError, OptionError
from .base import Plan, Written
from .onnx_export import ExportInfo, export
from .onnx_file import DIGEST_KEY, INPUT, OUTPUT, PathLike, check_file, file_sha256, load_model, need, save, tensor_map

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import onnxruntime

    from ..manifest import Manifest
    from ..options import CompileOptions
    from ..progress import Progress
    from ..spec import Spec

__all__ = ["DIGEST_KEY", "INPUT", "OUTPUT", "ExportInfo", "convert_fp16", "export", "intermediates", "load_model",
           "run", "run_all", "session", "tensor_map"]

NAME, BASE, PRECISIONS = "onnx", None, ("fp32", "fp16", "int8")
MODEL = "model.onnx"
PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript")


def check_environment(options: CompileOptions) -> None:
    """The exporter's and the verifier's packages must import (BackendUnavailable says how to install them);
    onnxscript only for torch's exporter (its import alone takes 0.7 s)."""
    for module in ("onnx", "onnxruntime", *(("onnxscript",) if options.exporter == "torch" else ())):
        need(module)
    if options.exporter == "torch" and options.size is not None and options.size.dynamic:
        raise OptionError(f"{{exporter}} torch with {{size}} {options.size}: symbolic height and width are written "
                          "by the ir exporter only; leave {exporter} out (ir is the default), or give one {size} HxW")
    onnx = need("onnx")
    newest = onnx.defs.onnx_opset_version()
    if options.opset > newest:
        raise OptionError(f"{{opset}} {options.opset}: the installed onnx ({onnx.__version__}) knows opsets up "
                          f"to {newest}; give an opset from 17 to {newest} (default 18)")
    if options.calibration is not None and not options.calibration.is_dir():  # before minutes of export
        raise InputError(f"--calibration {options.calibration}: no such directory; give labelled images in a "
                         "layout resdsl train reads (CIFAR python batches, or DIR/train/<class>/*.png)")


def write(stage: Path, model: Any, spec: Spec, options: CompileOptions, progress: Progress) -> Written:
    """Export ``model.onnx`` at the options' opset and batch; rewrite it in float16 for ``--precision fp16``, or
    quantize it to int8 Q/DQ for ``--precision int8`` (:mod:`resdsl.backends.onnx_quant`)."""
    b, path = options.batch, stage / MODEL
    sections: dict[str, dict[str, Any]] = {}
    with progress.step(f"writing ONNX (opset {options.opset}, {options.exporter} exporter)"):
        fp32 = path if options.precision == "fp32" else stage / ".fp32.onnx"
        info = export(model, fp32, opset=options.opset, dynamic_batch=b.dynamic, batch=None if b.dynamic else b.min,
                      exporter=options.exporter, dynamic_size=options.size is not None and options.size.dynamic)
        if options.precision == "fp16":
            convert_fp16(fp32, path, keep_io_fp32=options.io == "fp32")
    if options.precision == "int8":
        from .onnx_quant import quantize
        from .onnx_sensitivity import summary

        with progress.step(f"quantizing to int8 ({options.scheme} scheme): scales from {options.calibration_samples} "
                           f"images of {options.calibration}, each layer's cost on {options.sensitivity_samples} "
                           "test images"):
            sections["quantization"] = quantize(fp32, path, spec, options)
        for line in summary(sections["quantization"]):
            progress.note(f"  {line}")
    if fp32 != path:
        fp32.unlink()
    sections["export"] = {"opset": options.opset, "exporter": info.exporter, "layers": info.tensor_of}
    return Written((MODEL,), sections=sections, packages=PACKAGES)


class Runner:
    """An ONNX Runtime session on an artefact's model; ``session`` is ONNX Runtime's own object."""

    def __init__(self, sess: onnxruntime.InferenceSession) -> None:
        self.session = sess
        first = sess.get_providers()[0]
        self.backend = "onnxruntime-" + _SHORT.get(first, first.removesuffix("ExecutionProvider").lower())

    def __call__(self, x: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        """The only output's array, or every output by name when the model has several."""
        got = run_all(self.session, x)
        return got if len(got) > 1 else next(iter(got.values()))


def open(directory: Path, manifest: Manifest, threads: int | None = None,
         providers: Sequence[str] | None = None) -> Runner:
    """An ONNX Runtime session on the checked ``model.onnx``: on ``providers``, or CUDA first when available."""
    return Runner(session(directory / MODEL, threads=threads, providers=provider_list(providers)))


#: ``--provider`` names -> ONNX Runtime's execution providers (a full name such as "OpenVINOExecutionProvider"
#: is taken as it is).
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider", "rocm": "ROCMExecutionProvider",
             "openvino": "OpenVINOExecutionProvider", "dnnl": "DnnlExecutionProvider",
             "coreml": "CoreMLExecutionProvider", "directml": "DmlExecutionProvider"}
_SHORT = {v: k for k, v in PROVIDERS.items()}
_PACKAGE = {"CUDAExecutionProvider": "onnxruntime-gpu", "TensorrtExecutionProvider": "onnxruntime-gpu (and TensorRT)",
            "OpenVINOExecutionProvider": "onnxruntime-openvino", "DmlExecutionProvider": "onnxruntime-directml",
            "ROCMExecutionProvider": "onnxruntime-rocm"}


def provider_list(names: Sequence[str] | None) -> list[str] | None:
    """ONNX Runtime's provider list for ``names`` ("cuda", "cpu", ... or full names), in that order of preference,
    then the CPU for nodes the others do not take. None: the default, CUDA first when this onnxruntime has it,
    then the CPU. TensorRT's provider is never chosen unasked: it builds engines when a session starts, which
    takes minutes without an engine cache."""
    if names is None:
        return None
    ort = need("onnxruntime")
    if isinstance(names, str) or not names:
        raise OptionError(f"{{providers}} {names!r}: give a list of provider names, e.g. ['cuda'] or ['cpu']")
    full = [PROVIDERS.get(n, n) for n in names]
    available = ort.get_available_providers()
    for name, f in zip(names, full, strict=True):
        if f not in available:
            what = _PACKAGE.get(f, f"an onnxruntime build with {f}")
            raise BackendUnavailable(f"execution provider {name!r} ({f}) is not in this onnxruntime "
                                     f"{ort.__version__}, which has {', '.join(_SHORT.get(p, p) for p in available)}; "
                                     f"install {what} in place of onnxruntime (one of them, not both), or choose "
                                     "another provider")
    return list(dict.fromkeys([*full, "CPUExecutionProvider"]))


def plan(manifest: Manifest) -> Plan:
    return Plan()


def localiser(directory: Path, manifest: Manifest) -> Any:
    """The ONNX model's per-layer outputs, keyed by module path (the manifest's layer map)."""
    import numpy as np

    if manifest.precision == "int8":  # BN is folded into the convs and every layer carries quantization error
        return None
    tensor_of: dict[str, str] = manifest.section("export")["layers"]
    half = manifest.input.dtype == "float16"

    def outputs(names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
        wanted = {n: tensor_of[n] for n in names if n in tensor_of}
        got = intermediates(directory / MODEL, list(wanted.values()), x.astype(np.float16) if half else x)
        return {n: got[t] for n, t in wanted.items() if t in got}

    return outputs


def convert_fp16(src_path: PathLike, dst_path: PathLike, *, keep_io_fp32: bool = True) -> None:
    """Write ``dst_path``: ``src_path`` with its graph in float16 (see :mod:`resdsl.passes.fp16`).

    With ``keep_io_fp32`` the input and output stay float32 (Casts at the graph's
    edges); otherwise they are float16 too. Tensor names and the layer map are kept.
    """
    from ..passes.fp16 import to_float16

    try:
        half = to_float16(load_model(src_path), keep_io_fp32=keep_io_fp32)
    except ValueError as e:  # the pass's pre-conditions: e.g. weights beyond float16's range
        raise OptionError(f"{src_path}: cannot be converted to float16 ({e}); these weights need {{precision}} "
                          "fp32") from None
    half.metadata_props.add(key="resdsl.precision", value="fp16, fp32 io" if keep_io_fp32 else "fp16")
    save(half, Path(dst_path))


def _session(model: onnx.ModelProto | str, name: str, threads: int | None = None,
             providers: list[str] | None = None) -> onnxruntime.InferenceSession:
    ort = need("onnxruntime")
    if threads is not None and threads < 1:
        raise InputError(f"threads {threads}: must be at least 1")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default
    if providers is None:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        source = model if isinstance(model, str) else model.SerializeToString()
        return ort.InferenceSession(source, sess_options=opts, providers=providers)
    except Exception as e:
        raise InputError(f"{name}: ONNX Runtime cannot load the model: {e}") from None


def session(path: PathLike, *, threads: int | None = None,
            providers: list[str] | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session on ``path``: CUDA first when this onnxruntime has it, then CPU.

    The file is checked first (:func:`load_model`'s checks), then ONNX Runtime reads it itself, so the process
    never holds the model's bytes beside ONNX Runtime's copy; the file is hashed again afterwards to confirm
    ONNX Runtime read what was checked.
    """
    digest = check_file(path)
    sess = _session(str(path), str(path), threads, providers)
    if file_sha256(path) != digest:
        raise InputError(f"{path}: the file changed while ONNX Runtime was loading it; load it again once "
                         "nothing is writing it")
    return sess


def _feed(sess: onnxruntime.InferenceSession, x: np.ndarray) -> dict[str, np.ndarray]:
    import numpy as np

    inp, x = sess.get_inputs()[0], np.asarray(x)
    if x.ndim != len(inp.shape) or any(isinstance(d, int) and d != s for d, s in zip(inp.shape, x.shape, strict=True)):
        fixed = " (a static-batch export: re-export with dynamic_batch=True)" if isinstance(inp.shape[0], int) else ""
        raise InputError(f"an input of shape {tuple(x.shape)} does not fit the model's {inp.name!r}, shape "
                         f"{tuple(inp.shape)}{fixed}")
    dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(inp.type, x.dtype)
    return {inp.name: x.astype(dtype, copy=False)}


def run_all(sess: onnxruntime.InferenceSession, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run ``sess`` on one batch (cast to the model's input type); every output by name, in the model's order."""
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, _feed(sess, x)), strict=True))


def run(sess: onnxruntime.InferenceSession, x: np.ndarray) -> np.ndarray:
    """Run ``sess`` on one batch (cast to the model's input type) and return its first output."""
    return next(iter(run_all(sess, x).values()))


def intermediates(path: PathLike, tensor_names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """Run the model on ``x`` with ``tensor_names`` added as outputs (in memory; the file is untouched)."""
    ox = need("onnx")
    proto = load_model(path)
    g = proto.graph
    produced = {t for n in g.node for t in n.output}
    missing = [t for t in tensor_names if t not in produced and t != g.input[0].name]
    if missing:
        raise InputError(f"{path}: no tensors named {missing[:5]}; layers are named by module path "
                         f"(see tensor_map), e.g. {sorted(produced)[:3]}")
    wanted = [t for t in dict.fromkeys(tensor_names) if t in produced]
    types = {v.name: v for v in (*g.value_info, *g.output)}
    if any(t not in types for t in wanted):
        types.update({v.name: v for v in ox.shape_inference.infer_shapes(proto).graph.value_info})
    have = {o.name for o in g.output}
    g.output.extend(types.get(t) or ox.helper.make_empty_tensor_value_info(t) for t in wanted if t not in have)
    sess = _session(proto, str(path))
    feed = _feed(sess, x)
    got = dict(zip(wanted, sess.run(wanted, feed), strict=True))
    return {t: got[t] if t in got else feed[t] for t in tensor_names}
