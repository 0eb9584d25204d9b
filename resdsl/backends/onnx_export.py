"""``nn.Module`` -> ``model.onnx``: the export.

Exported files have input ``input`` and output ``logits``, batch axis ``batch``
(symbolic unless a static batch is asked for). Each layer of ``model.graph`` is
the tensor named by its module path, made by a node named ``PATH/Op``
(``layer3.4.conv2`` by ``layer3.4.conv2/Conv``); ``fc``'s is ``logits``. BN stays
an inference-mode ``BatchNormalization``, so each conv's own output exists to be
compared; ONNX Runtime and TensorRT fold it when they build. ``metadata_props``
keep the map (``resdsl.tensors``) and a sha256 of the rest (``resdsl.sha256``),
checked on every load.

Exporters. ``ir`` (the default) writes the file from resdsl's graph and the module's state_dict
(:mod:`resdsl.backends.onnx_emit`): no tracing, so its time is about that of serializing the weights. ``torch``
has torch.onnx trace the module, the cross-check the tests compare ``ir`` with. Measured by
``bench/onnx_exporters.py`` on 2026-12-07 (torch 2.13.0 CPU, onnx 1.23.2, onnxruntime 1.32.0, 2 cores of an AMD
EPYC Zen 4, opset 18, dynamic batch). s: first export in a process / median of 3 more; err: max|ORT - torch| /
max|torch| at batch 1 and 3 from one file; paths: module paths readable in the raw export; noopt:
optimize=False::

    net      exporter      first s  warm s  err b1   err b3   dyn  paths    nodes
    cifar20  ir               0.01    0.00  2.8e-07  2.1e-07  yes   61/61      73
    cifar20  torchscript      0.23    0.13  2.1e-07  2.1e-07  yes    4/61     118
    cifar20  dynamo           4.45    2.43  2.8e-07  2.1e-07  yes   42/61      56
    cifar20  dynamo-noopt     2.25    2.22  2.8e-07  1.4e-07  yes   61/61     256
    r18@64   ir               0.14    0.13  5.9e-07  5.5e-07  yes   60/60      69
    r18@64   torchscript      0.25    0.22  6.1e-07  5.3e-07  yes    5/60      65
    r18@64   dynamo           2.46    2.43  5.9e-07  5.5e-07  yes   40/60      49
    r18@64   dynamo-noopt     2.31    2.08  6.1e-07  5.2e-07  yes   60/60     179
    r50@224  ir               0.23    0.24  7.0e-07  6.5e-07  yes  158/158    175
    r50@224  torchscript      0.78    0.77  6.6e-07  6.8e-07  yes    5/158    169
    r50@224  dynamo           4.52    4.72  7.0e-07  6.5e-07  yes  105/158    122
    r50@224  dynamo-noopt     4.35    3.89  5.4e-07  6.0e-07  yes  158/158    450

TorchScript is faster but names scopes by attribute only (``/conv1_1/Conv``) and is deprecated; dynamo's default
optimizer folds BN into the conv, losing the conv's output and path. So ``torch`` is dynamo with
optimize=False, then :func:`_tidy`; for opset 17 it is TorchScript (dynamo emits >= 18; onnx has no Pad 18 -> 17
adapter), whose paths are rebuilt from torch's ``_unqualified_variable_name`` scopes (``relu_1``,
``downsample.0``). Either way :func:`resdsl.backends.onnx_names.name_layers` renames the traced graph's tensors
to the layout ``ir`` writes directly.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..errors import InputError, VerificationError
from .onnx_file import BATCH, INPUT, MIN_OPSET, TENSORS_KEY, PathLike, commit, need, write_temporary

if TYPE_CHECKING:
    import onnx
    from onnxscript import ir

    from .torch import ResNet


@dataclass(frozen=True)
class ExportInfo:
    """What :func:`export` wrote. ``tensor_of`` maps every node of ``model.graph`` to its ONNX tensor."""

    path: str
    opset: int
    exporter: str  # the exporter that ran: "dynamo" or "torchscript"
    input_name: str
    output_name: str  # the first output's ("logits" for a classifier)
    input_shape: tuple[int | str, ...]  # ("batch", 3, 224, 224) when the batch axis is dynamic
    output_shape: tuple[int | str, ...]
    tensor_of: dict[str, str] = field(hash=False)
    seconds: float = 0.0
    outputs: tuple[tuple[str, tuple[int | str, ...]], ...] = ()  # every output's name and shape, in order


#: ``exporter`` values: ``ir`` writes the file from resdsl's graph (:mod:`resdsl.backends.onnx_emit`); ``torch``
#: traces the module with torch.onnx (dynamo, or TorchScript for opset 17), the cross-check; ``dynamo`` and
#: ``torchscript`` pick one of torch's.
EXPORTERS = ("ir", "torch", "dynamo", "torchscript")


def export(model: ResNet, path: PathLike, *, opset: int = 18, batch: int | None = None, dynamic_batch: bool = True,
           exporter: str = "ir", dynamic_size: bool = False) -> ExportInfo:
    """Export ``model`` (inference form: BN from its running statistics) to ``path``, written atomically, then
    checked with ``full_check``.

    ``batch`` is the fixed batch size when ``dynamic_batch`` is False (default 1);
    otherwise the axis is the symbol ``batch``, checked in the result. ``exporter``: one of :data:`EXPORTERS`.
    ``dynamic_size``: height and width as the symbols ``height`` and ``width`` (the ``ir`` exporter).
    """
    ox = need("onnx")
    batch = 1 if batch is None else batch
    if not MIN_OPSET <= opset <= ox.defs.onnx_opset_version() or batch < 1 or exporter not in EXPORTERS:
        raise InputError(f"opset {opset}, batch {batch}, exporter {exporter!r}: resdsl exports opsets {MIN_OPSET} to "
                         f"{ox.defs.onnx_opset_version()}, batches >= 1, with one of {', '.join(EXPORTERS)}")
    if dynamic_size and exporter != "ir":
        raise InputError(f"exporter {exporter!r}: symbolic height and width are written by the 'ir' exporter only")
    chosen = ("ir" if exporter == "ir" else
              "torchscript" if exporter == "torchscript" or (exporter == "torch" and opset < 18) else "dynamo")
    start = time.perf_counter()
    if chosen == "ir":
        from .onnx_emit import emit

        proto, tensors = emit(model.graph, model.state_dict(), opset=opset, batch=None if dynamic_batch else batch,
                              dynamic_size=dynamic_size)
    else:
        proto, tensors = _traced(model, chosen, opset, batch, dynamic_batch)
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*proto.graph.input, *proto.graph.output)]
    names = [v.name for v in proto.graph.output]
    wanted = [o.name for o in model.graph.outputs]
    if (len(proto.graph.input) != 1 or names != wanted
            or [d[0] for d in dims] != [BATCH if dynamic_batch else batch] * len(dims)):
        raise VerificationError(f"the {chosen} exporter wrote input/output shapes {dims} (outputs {names}), not one "
                                f"input and the outputs {wanted} with batch axis "
                                f"{BATCH if dynamic_batch else batch!r}; try the other exporter")
    proto.metadata_props.add(key=TENSORS_KEY, value=json.dumps(tensors))
    tmp = write_temporary(proto, Path(path))
    del proto  # the checker loads the file: no second copy of the model meanwhile
    commit(tmp, Path(path))
    return ExportInfo(str(path), opset, chosen, INPUT, names[0], tuple(dims[0]), tuple(dims[1]), tensors,
                      time.perf_counter() - start, tuple((n, tuple(d)) for n, d in zip(names, dims[1:], strict=True)))


def _traced(model: ResNet, chosen: str, opset: int, batch: int, dynamic_batch: bool
            ) -> tuple[onnx.ModelProto, dict[str, str]]:
    """torch.onnx's export of ``model`` in eval mode, tidied, its layers named by module path."""
    import torch

    was_training = model.training
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

    return proto, name_layers(proto, model.graph, chosen)


def _dynamo(model: Any, x: Any, opset: int, dynamic: bool) -> ir.Model:
    import torch

    # Built at >= 18 and converted in _tidy: asked for 17, the exporter's converter meets ReduceMean's
    # not-yet-folded axes, logs a traceback and silently keeps opset 18.
    outputs = [o.name for o in model.graph.outputs]
    prog = torch.onnx.export(model, (x,), input_names=[INPUT], output_names=outputs, opset_version=max(opset, 18),
                             dynamo=True, optimize=False, verbose=False,
                             dynamic_shapes=({0: torch.export.Dim(BATCH)},) if dynamic else None)
    assert prog is not None
    return prog.model  # its initializers are views of the module's parameters: no copy of the weights yet


def _torchscript(model: Any, x: Any, opset: int, dynamic: bool) -> ir.Model:
    import torch

    buf = io.BytesIO()
    outputs = [o.name for o in model.graph.outputs]
    torch.onnx.export(model, (x,), cast(Any, buf), input_names=[INPUT], output_names=outputs, opset_version=opset,
                      dynamo=False, training=torch.onnx.TrainingMode.PRESERVE,  # model in eval: EVAL would fold BN
                      dynamic_axes={n: {0: BATCH} for n in (INPUT, *outputs)} if dynamic else None)
    proto = need("onnx").load_model_from_string(buf.getvalue())
    return cast("ir.Model", need("onnxscript.ir").serde.deserialize_model(proto))


def _tidy(model: ir.Model, opset: int) -> onnx.ModelProto:
    """Fold constants, drop all-zero conv biases, make Reshape shapes static (all in place on the IR), then
    serialize once and convert to ``opset``."""
    optimizer, rewriter = need("onnxscript.optimizer"), need("onnxscript.rewriter")
    from onnxscript.rewriter.rules import common as rules

    # ConstantOfShape is kept by default, which would leave TorchScript's option-A Pad widths unfolded
    optimizer.fold_constants(model, should_fold=lambda n: True if n.op_type == "ConstantOfShape" else None)
    model = rewriter.rewrite(model, [rules.remove_optional_bias_from_conv_rule, rules.materialize_reshape_shape_rule])
    proto = cast("onnx.ModelProto", need("onnxscript.ir").serde.serialize_model(model))
    for value in model.graph.initializers.values():  # the IR's tensors are views of the module's parameters, and
        value.const_value = None  # onnxscript's rewrite rules keep the last graph they matched
    if opset < next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")):
        try:
            proto = cast("onnx.ModelProto", need("onnx.version_converter").convert_version(proto, opset))
        except Exception as e:
            raise InputError(f"opset {opset}: onnx cannot convert this graph down to it ({str(e).splitlines()[0]}); "
                             "use opset 18 or exporter='torchscript'") from None
    return proto
