"""``nn.Module`` -> ``model.onnx``: export, fp16 conversion, ONNX Runtime sessions, per-layer outputs.

Exported files have input ``input`` and output ``logits``, batch axis ``batch``
(symbolic unless a static batch is asked for). Each layer of ``model.graph`` is
the tensor named by its module path, made by a node named ``PATH/Op``
(``layer3.4.conv2`` by ``layer3.4.conv2/Conv``); ``fc``'s is ``logits``. BN stays
an inference-mode ``BatchNormalization``, so each conv's own output exists to be
compared; ONNX Runtime and TensorRT fold it when they build. ``metadata_props``
keep the map (``resdsl.tensors``) and a sha256 of the rest (``resdsl.sha256``),
checked on every load.

Exporter choice, from ``bench/onnx_exporters.py`` (torch 2.13.0 CPU, onnx 1.23.2,
onnxruntime 1.32.0, 2 cores, opset 18, dynamic batch). s: first export in a
process / median of 3 more; err: max|ORT - torch| / max|torch| at batch 1 and 3
from one file; paths: module paths readable in the raw export; noopt: optimize=False::

    net      exporter      first s  warm s  err b1   err b3   dyn  paths    nodes
    cifar20  torchscript      0.98    0.54  2.8e-07  1.7e-07  yes    4/61     118
    cifar20  dynamo           8.54    5.34  2.8e-07  1.6e-07  yes   42/61      56
    cifar20  dynamo-noopt     7.37    7.10  2.8e-07  1.4e-07  yes   61/61     256
    r18@64   torchscript      1.56    1.53  6.3e-07  7.9e-07  yes    5/60      65
    r18@64   dynamo           5.32    5.62  6.1e-07  8.2e-07  yes   40/60      49
    r18@64   dynamo-noopt     4.69    4.57  6.1e-07  7.7e-07  yes   60/60     179
    r50@224  torchscript      1.58    1.58  8.0e-07  8.5e-07  yes    5/158    169
    r50@224  dynamo          11.41   11.36  7.6e-07  8.3e-07  yes  105/158    122
    r50@224  dynamo-noopt     8.34    8.84  8.1e-07  8.2e-07  yes  158/158    450

All exact, all keep the batch axis. TorchScript is 3-8x faster but names scopes by
attribute only (``/conv1_1/Conv``) and is deprecated; dynamo's default optimizer
folds BN into the conv, losing the conv's output and path. So ``auto`` is dynamo
with optimize=False, then :func:`_tidy` (r18: 70 nodes); for opset 17 it is
TorchScript (dynamo emits >= 18; onnx has no Pad 18 -> 17 adapter), whose paths
are rebuilt from torch's ``_unqualified_variable_name`` scopes (``relu_1``, ``downsample.0``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from ..errors import BackendUnavailable, InputError, VerificationError

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import onnxruntime

    from .torch import ResNet

INPUT, OUTPUT, BATCH, MIN_OPSET = "input", "logits", "batch", 17
TENSORS_KEY, DIGEST_KEY = "resdsl.tensors", "resdsl.sha256"
PathLike = str | os.PathLike[str]
_FIX = "compile it again (resdsl compile SPEC --target onnx) or restore it from a good copy"


@dataclass(frozen=True)
class ExportInfo:
    """What :func:`export` wrote. ``tensor_of`` maps every node of ``model.graph`` to its ONNX tensor."""

    path: str
    opset: int
    exporter: str  # the exporter that ran: "dynamo" or "torchscript"
    input_name: str
    output_name: str
    input_shape: tuple[int | str, ...]  # ("batch", 3, 224, 224) when the batch axis is dynamic
    output_shape: tuple[int | str, ...]
    tensor_of: dict[str, str] = field(hash=False)
    seconds: float = 0.0


def _need(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise BackendUnavailable(f"the ONNX backend needs the Python package {name.split('.')[0]!r}, which cannot be "
                                 f"imported ({e}); install it with: pip install 'resdsl[onnx]'") from None


def export(model: ResNet, path: PathLike, *, opset: int = 18, batch: int | None = None, dynamic_batch: bool = True,
           exporter: str = "auto") -> ExportInfo:
    """Export ``model`` in eval mode to ``path`` (written atomically, then checked with ``full_check``).

    ``batch`` is the fixed batch size when ``dynamic_batch`` is False (default 1);
    otherwise the axis is the symbol ``batch``, checked in the result. ``exporter``:
    ``auto`` (dynamo; TorchScript for opset 17), ``dynamo`` or ``torchscript``.
    """
    ox = _need("onnx")
    batch = 1 if batch is None else batch
    if not MIN_OPSET <= opset <= ox.defs.onnx_opset_version() or batch < 1 or exporter not in (
            "auto", "dynamo", "torchscript"):
        raise InputError(f"opset {opset}, batch {batch}, exporter {exporter!r}: resdsl exports opsets {MIN_OPSET} to "
                         f"{ox.defs.onnx_opset_version()}, batches >= 1, with 'auto', 'dynamo' or 'torchscript'")
    chosen = "torchscript" if exporter == "torchscript" or (exporter == "auto" and opset < 18) else "dynamo"
    import torch

    start, was_training = time.perf_counter(), model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        x = torch.randn(max(batch, 2) if dynamic_batch else batch, *model.graph.input.shape,  # 2: no 0/1 specialising
                        generator=torch.Generator().manual_seed(0)).to(param.device if param is not None else "cpu")
        # torch.onnx logs a warning per torchvision op it cannot register; torchvision is not ours to need
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporters warn about their own internals
            proto = _tidy((_dynamo if chosen == "dynamo" else _torchscript)(model, x, opset, dynamic_batch), opset)
    finally:
        model.train(was_training)
    from .onnx_names import name_layers

    tensors = name_layers(proto, model.graph, chosen)
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*proto.graph.input, *proto.graph.output)]
    if len(dims) != 2 or [d[0] for d in dims] != [BATCH if dynamic_batch else batch] * 2:
        raise VerificationError(f"the {chosen} exporter wrote input/output shapes {dims}, not one input and one "
                                f"output with batch axis {BATCH if dynamic_batch else batch!r}; try the other exporter")
    proto.metadata_props.add(key=TENSORS_KEY, value=json.dumps(tensors))
    _save(proto, Path(path))
    return ExportInfo(str(path), opset, chosen, INPUT, OUTPUT, tuple(dims[0]), tuple(dims[1]), tensors,
                      time.perf_counter() - start)


def _dynamo(model: Any, x: Any, opset: int, dynamic: bool) -> onnx.ModelProto:
    import torch

    # Built at >= 18 and converted in _tidy: asked for 17, the exporter's converter meets ReduceMean's
    # not-yet-folded axes, logs a traceback and silently keeps opset 18.
    prog = torch.onnx.export(model, (x,), input_names=[INPUT], output_names=[OUTPUT], opset_version=max(opset, 18),
                             dynamo=True, optimize=False, verbose=False,
                             dynamic_shapes=({0: torch.export.Dim(BATCH)},) if dynamic else None)
    assert prog is not None
    return cast("onnx.ModelProto", _need("onnxscript.ir").serde.serialize_model(prog.model))


def _torchscript(model: Any, x: Any, opset: int, dynamic: bool) -> onnx.ModelProto:
    import torch

    buf = io.BytesIO()
    torch.onnx.export(model, (x,), cast(Any, buf), input_names=[INPUT], output_names=[OUTPUT], opset_version=opset,
                      dynamo=False, training=torch.onnx.TrainingMode.PRESERVE,  # model in eval: EVAL would fold BN
                      dynamic_axes={INPUT: {0: BATCH}, OUTPUT: {0: BATCH}} if dynamic else None)
    return cast("onnx.ModelProto", _need("onnx").load_model_from_string(buf.getvalue()))


def _tidy(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Fold constants, drop all-zero conv biases, make Reshape shapes static, convert to ``opset``."""
    optimizer, rewriter = _need("onnxscript.optimizer"), _need("onnxscript.rewriter")
    from onnxscript.rewriter.rules import common as rules

    # in place; ConstantOfShape is kept by default, which would leave TorchScript's option-A Pad widths unfolded
    optimizer.fold_constants(proto, should_fold=lambda n: True if n.op_type == "ConstantOfShape" else None)
    proto = rewriter.rewrite(proto, [rules.remove_optional_bias_from_conv_rule, rules.materialize_reshape_shape_rule])
    if opset < next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")):
        try:
            proto = cast("onnx.ModelProto", _need("onnx.version_converter").convert_version(proto, opset))
        except Exception as e:
            raise InputError(f"opset {opset}: onnx cannot convert this graph down to it ({str(e).splitlines()[0]}); "
                             "use opset 18 or exporter='torchscript'") from None
    return proto


def _strip_digest(proto: onnx.ModelProto) -> list[str]:
    """Remove the digest entries from ``proto``; return their values."""
    kept = [p for p in proto.metadata_props if p.key != DIGEST_KEY]
    stamped = [p.value for p in proto.metadata_props if p.key == DIGEST_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    return stamped


def _digest(proto: onnx.ModelProto) -> tuple[list[str], str]:
    """Remove the digest entries from ``proto``; return them and the sha256 of what is left, serialized canonically."""
    stamped = _strip_digest(proto)
    return stamped, hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def _save(proto: onnx.ModelProto, path: Path) -> None:
    """Stamp the digest, write a temporary file beside ``path``, check it, then ``os.replace`` it.

    The model is serialized once: the digest entry is appended to the canonical bytes as one more
    ``metadata_props`` record, which protobuf's parsers merge into the repeated field (concatenated
    messages merge), so the file reads back as ``proto`` with the entry added.
    """
    ox = _need("onnx")
    _strip_digest(proto)  # an entry already there would be stale (and a duplicate key)
    body = proto.SerializeToString(deterministic=True)
    stamp = ox.ModelProto(metadata_props=[ox.StringStringEntryProto(key=DIGEST_KEY,
                                                                    value=hashlib.sha256(body).hexdigest())])
    proto.metadata_props.extend(stamp.metadata_props)
    tmp = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.write(stamp.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        ox.checker.check_model(tmp, full_check=True)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise InputError(f"{path}: cannot write the ONNX model there ({e.strerror or e})") from None
        raise


def load_model(path: PathLike) -> onnx.ModelProto:
    """Read and check an ONNX file; a missing, truncated or edited file raises InputError naming it."""
    return _read_checked(path)[0]


def _read_checked(path: PathLike) -> tuple[onnx.ModelProto, bytes]:
    """:func:`load_model`, also returning the file's bytes (checked; handed to ONNX Runtime as they are)."""
    ox = _need("onnx")
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read the ONNX model ({e.strerror})") from None
    try:
        proto: onnx.ModelProto = ox.load_model_from_string(data)
    except Exception:
        raise InputError(f"{path}: not a readable ONNX model: it does not parse (truncated or corrupted); {_FIX}") \
            from None
    external = [t.name for t in _tensors(proto) if t.data_location == 1]  # TensorProto.EXTERNAL
    if external:  # resdsl's files are self-contained; external data could name any file on the machine
        raise InputError(f"{path}: tensors {external[:3]} point at external data files; resdsl artefacts hold "
                         f"their weights inside model.onnx, so this file was not made by resdsl; {_FIX}")
    try:  # a file with resdsl's metadata must carry the digest of the rest (an edited key may not even be a str)
        stamped, digest = _digest(proto)
        ours = any(str(p.key).startswith("resdsl.") for p in proto.metadata_props)
        intact = stamped == [digest] if stamped else not ours
    except Exception:
        intact = False
    if not intact:
        raise InputError(f"{path}: the model was changed after resdsl wrote it (its sha256 no longer matches the "
                         f"one stored in it); {_FIX}")
    try:
        ox.checker.check_model(data)
    except Exception as e:
        raise InputError(f"{path}: not a valid ONNX model ({str(e).splitlines()[0]}); {_FIX}") from None
    return proto, data


def _tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Initializers and the tensors held in node attributes (Constant values)."""
    out = list(proto.graph.initializer)
    for node in proto.graph.node:
        out += [a.t for a in node.attribute if a.HasField("t")]
        out += [t for a in node.attribute for t in a.tensors]
    return out


def tensor_map(path: PathLike) -> dict[str, str]:
    """The ``module path -> tensor name`` map stored in a file :func:`export` wrote."""
    for p in load_model(path).metadata_props:
        if p.key == TENSORS_KEY:
            return dict(json.loads(p.value))
    raise InputError(f"{path}: has no {TENSORS_KEY} entry, so resdsl did not export it; re-export it")


def convert_fp16(src_path: PathLike, dst_path: PathLike, *, keep_io_fp32: bool = True) -> None:
    """Write ``dst_path``: ``src_path`` with its graph in float16 (see :mod:`resdsl.passes.fp16`).

    With ``keep_io_fp32`` the input and output stay float32 (Casts at the graph's
    edges); otherwise they are float16 too. Tensor names and the layer map are kept.
    """
    from ..passes.fp16 import to_float16

    half = to_float16(load_model(src_path), keep_io_fp32=keep_io_fp32)
    half.metadata_props.add(key="resdsl.precision", value="fp16, fp32 io" if keep_io_fp32 else "fp16")
    _save(half, Path(dst_path))


def _session(model: onnx.ModelProto | bytes, name: str, threads: int | None = None,
             providers: list[str] | None = None) -> onnxruntime.InferenceSession:
    ort = _need("onnxruntime")
    if threads is not None and threads < 1:
        raise InputError(f"threads {threads}: must be at least 1")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default
    if providers is None:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        data = model if isinstance(model, bytes) else model.SerializeToString()
        return ort.InferenceSession(data, sess_options=opts, providers=providers)
    except Exception as e:
        raise InputError(f"{name}: ONNX Runtime cannot load the model: {e}") from None


def session(path: PathLike, *, threads: int | None = None,
            providers: list[str] | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session on ``path``: CUDA first when this onnxruntime has it, then CPU."""
    return _session(_read_checked(path)[1], str(path), threads, providers)


def _feed(sess: onnxruntime.InferenceSession, x: np.ndarray) -> dict[str, np.ndarray]:
    import numpy as np

    inp, x = sess.get_inputs()[0], np.asarray(x)
    if x.ndim != len(inp.shape) or any(isinstance(d, int) and d != s for d, s in zip(inp.shape, x.shape, strict=True)):
        fixed = " (a static-batch export: re-export with dynamic_batch=True)" if isinstance(inp.shape[0], int) else ""
        raise InputError(f"an input of shape {tuple(x.shape)} does not fit the model's {inp.name!r}, shape "
                         f"{tuple(inp.shape)}{fixed}")
    dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(inp.type, x.dtype)
    return {inp.name: x.astype(dtype, copy=False)}


def run(sess: onnxruntime.InferenceSession, x: np.ndarray) -> np.ndarray:
    """Run ``sess`` on one batch (cast to the model's input type) and return its first output."""
    return cast("np.ndarray", sess.run(None, _feed(sess, x))[0])


def intermediates(path: PathLike, tensor_names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """Run the model on ``x`` with ``tensor_names`` added as outputs (in memory; the file is untouched)."""
    ox = _need("onnx")
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
