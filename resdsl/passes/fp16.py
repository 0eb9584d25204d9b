"""float32 -> float16 on an ONNX graph, written on the ``onnx`` protobuf API alone.

The pass rewrites the graph itself, so any runtime (ONNX Runtime, TensorRT's
ONNX parser) gets float16 weights and float16 arithmetic between the layers.
Activations are whatever the ops compute in float16: a ResNet's BN keeps them
well inside float16's range (max 65504); weights are checked before converting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

FP16_MAX = 65504.0
# Ops with an input the ONNX spec pins to float32 (Resize/Upsample scales): converting them needs per-input care
# this pass does not take, and a ResNet has none.
_FLOAT32_PINNED = frozenset({"Resize", "Upsample"})
_DTYPE_ATTR_OPS = frozenset({"EyeLike", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"})


def to_float16(model: onnx.ModelProto, *, keep_io_fp32: bool = True) -> onnx.ModelProto:
    """Return a copy of ``model`` whose float32 tensors are float16.

    Pre-conditions (ValueError names the one broken):
      - the graph has no subgraphs (If/Loop/Scan attributes), no model-local
        functions, no sparse initializers and no external data: the pass does
        not recurse into or load any of them;
      - no ``Resize``/``Upsample`` (inputs the spec pins to float32);
      - every finite float32 constant (initializer, Constant value) fits
        float16, |x| <= 65504: it would otherwise silently become inf;
      - every float32 graph output is produced by a node (not a graph input or
        initializer passed straight through).
    Post-conditions:
      - ``model`` is unchanged;
      - every float32 initializer, Constant value (``value_float(s)`` become a
        float16 ``value``), ConstantOfShape value and value_info is float16, and
        Casts/dtype attributes to float32 now give float16; values below
        float16's smallest subnormal (6e-8) become 0;
      - with ``keep_io_fp32`` each float32 graph input and output keeps its name
        and float32 type, a Cast to float16 after the input (``NAME.fp16``) and
        a Cast back to float32 before the output (from ``NAME.fp16``); without
        it they are float16;
      - every other tensor and node name is unchanged, so maps from layers to
        tensor names stay valid; the graph stays topologically sorted.
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    if out.functions or g.sparse_initializer:
        raise ValueError("fp16 pass: the model has local functions or sparse initializers, which it does not convert")
    _convert_tensors(g)
    if keep_io_fp32:
        _cast_io(g)
    else:
        for v in (*g.input, *g.output):
            _retype(v)
    return out


def _half(t: onnx.TensorProto) -> onnx.TensorProto:
    """``t`` as float16, refused if stored outside the model or beyond float16's range."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    if t.data_location == TensorProto.EXTERNAL:
        raise ValueError(f"fp16 pass: tensor {t.name!r} is stored as external data; load it into the model first")
    a = numpy_helper.to_array(t)
    big = np.abs(a[np.isfinite(a)]).max(initial=0.0)
    if big > FP16_MAX:
        raise ValueError(f"fp16 pass: tensor {t.name!r} holds {big:g}, beyond float16's largest value {FP16_MAX:g}")
    return numpy_helper.from_array(a.astype(np.float16), t.name)


def _retype(v: onnx.ValueInfoProto) -> None:
    from onnx import TensorProto

    if v.type.tensor_type.elem_type == TensorProto.FLOAT:
        v.type.tensor_type.elem_type = TensorProto.FLOAT16


def _convert_tensors(g: onnx.GraphProto) -> None:
    """Initializers, constants, dtype attributes and value_info: float32 -> float16 (graph inputs/outputs kept)."""
    import numpy as np
    from onnx import AttributeProto, TensorProto, helper, numpy_helper

    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    for init in g.initializer:
        if init.data_type == f32:
            init.CopyFrom(_half(init))
    for node in g.node:
        if node.op_type in _FLOAT32_PINNED:
            raise ValueError(f"fp16 pass: node {node.name!r} is a {node.op_type}, whose scales must stay float32")
        scalars = ("value_float", "value_floats") if node.op_type == "Constant" else ()
        for a in [a for a in node.attribute if a.name in scalars]:
            value = np.array(a.f if a.name == "value_float" else list(a.floats), dtype=np.float32)
            node.attribute.remove(a)
            node.attribute.append(helper.make_attribute("value", _half(numpy_helper.from_array(value, node.output[0]))))
        for a in node.attribute:
            if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
                raise ValueError(f"fp16 pass: node {node.name!r} ({node.op_type}) has a subgraph")
            if a.type == AttributeProto.TENSOR and a.t.data_type == f32:
                a.t.CopyFrom(_half(a.t))
            elif a.type == AttributeProto.INT and a.i == f32 and ((node.op_type, a.name) == ("Cast", "to") or (
                    node.op_type in _DTYPE_ATTR_OPS and a.name == "dtype")):
                a.i = f16
    for v in g.value_info:
        _retype(v)


def _cast_io(g: onnx.GraphProto) -> None:
    """Keep float32 graph inputs and outputs: a Cast to float16 after each input, one back before each output."""
    from onnx import TensorProto, helper

    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    names = {t for n in g.node for t in (*n.input, *n.output)} | {i.name for i in g.initializer}
    initializers = {i.name for i in g.initializer}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.add(name)
        return name

    def rename_uses(old: str, new: str) -> None:
        for n in g.node:
            n.input[:] = [new if t == old else t for t in n.input]

    def internal(v: onnx.ValueInfoProto, name: str) -> None:
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        g.value_info.append(helper.make_tensor_value_info(name, f16, dims))

    first: list[onnx.NodeProto] = []
    last: list[onnx.NodeProto] = []
    for v in g.input:
        if v.type.tensor_type.elem_type != f32:
            continue
        if v.name in initializers:  # an initializer listed as input (IR < 4 style): it is float16 now
            _retype(v)
            continue
        new = fresh(f"{v.name}.fp16")
        rename_uses(v.name, new)
        first.append(helper.make_node("Cast", [v.name], [new], name=f"{v.name}/Cast", to=f16))
        internal(v, new)
    producers = {t: n for n in g.node for t in n.output}
    for v in g.output:
        if v.type.tensor_type.elem_type != f32:
            continue
        if v.name not in producers:
            raise ValueError(f"fp16 pass: graph output {v.name!r} is not produced by a node")
        new = fresh(f"{v.name}.fp16")
        rename_uses(v.name, new)
        producers[v.name].output[:] = [new if t == v.name else t for t in producers[v.name].output]
        last.append(helper.make_node("Cast", [new], [v.name], name=f"{v.name}/Cast", to=f32))
        internal(v, new)
    nodes = [*first, *g.node, *last]
    del g.node[:]
    g.node.extend(nodes)
