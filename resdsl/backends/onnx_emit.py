"""Graph + weights -> ONNX: ``model.onnx`` written straight from resdsl's IR, with ONNX's own builders.

Each node of :func:`resdsl.expand.expand`'s graph becomes the ONNX operator(s) that compute it, in the graph's
order: the node's output is the tensor named by its module path (``layer3.4.conv2``; a node the net returns is
named as the output: ``logits`` for ``fc``, the stage's name such as ``conv4_x`` for a backbone's feature map),
made by an ONNX node named ``PATH/Op`` (a second node of the same kind in one layer is ``PATH/Op_1``), and the
weights are the module's state_dict entries under their own names (``layer3.4.conv2.weight``). This is the
layout the torch exporter's output is tidied into, so everything downstream (fp16, int8, TensorRT, the
first-diverging-layer search) reads either the same way.

Lowerings (``x`` the node's input):

=============  ==============================================================================================
conv           ``Conv`` (no bias, ``dilations`` as the node's); BN stays an inference-mode ``BatchNormalization``
               (runtimes fold it)
maxpool        ``MaxPool``; avgpool: ``AveragePool`` with the node's ceil mode and padding rule, after a
               ``Pad`` of ``pad_end`` zero rows and columns at the end when it has one
shortcut_a     ``Slice`` every ``stride``-th row and column, then ``Pad`` zero channels at the end
gap            ``ReduceMean`` over H and W, ``Reshape`` to ``[N, C]``; fc: ``Gemm`` (``transB=1``)
se             ``ReduceMean`` (kept dims), 1x1 ``Conv`` + bias, ``Relu``, 1x1 ``Conv`` + bias, ``Sigmoid``,
               ``Mul`` with ``x``
eca            ``ReduceMean`` to ``[N, C]``, ``Unsqueeze`` to ``[N, 1, C]``, 1-D ``Conv`` across channels,
               ``Sigmoid``, ``Reshape`` to ``[N, C, 1, 1]``, ``Mul`` with ``x``
=============  ==============================================================================================

Height and width are numbers, or the symbols ``height`` and ``width`` (``dynamic_size``); nothing in the
lowerings depends on them, so one emitter serves both. No tracing and no optimizer run: writing the weights is
the work.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import version
from .onnx_file import BATCH, INPUT, need

if TYPE_CHECKING:
    import onnx

    from ..ir import Graph, Node

#: the symbols of a size-varying input's height and width
HEIGHT, WIDTH = "height", "width"
BN_EPS = 1e-5  # torch's BatchNorm2d default, which resdsl's modules use
_INT64_MAX = 2**63 - 1


class _Emitter:
    """Writes nodes and initializers straight into the model's graph (protobuf copies a message it is given, so
    a weight built apart and then added would be held twice); names them as the module describes."""

    def __init__(self, state: Mapping[str, Any], opset: int, graph: onnx.GraphProto) -> None:
        self.ox, self.np = need("onnx"), need("numpy")
        self.state, self.opset, self.graph = state, opset, graph
        self._made: set[str] = set()
        self._ops: Counter[str] = Counter()

    def weight(self, key: str) -> str:
        """The state_dict entry ``key`` as a float32 initializer of the same name (once)."""
        if key not in self._made:
            try:
                value = self.state[key]
            except KeyError:
                raise KeyError(f"the weights have no entry {key!r}, which the graph needs") from None
            array = value.detach().cpu().numpy() if hasattr(value, "detach") else value
            array = self.np.ascontiguousarray(array, dtype=self.np.float32)  # a view of a float32 parameter
            t = self.graph.initializer.add()
            t.name, t.data_type = key, self.ox.TensorProto.FLOAT
            t.dims.extend(array.shape)
            t.raw_data = array.tobytes()
            self._made.add(key)
        return key

    def ints(self, name: str, values: list[int]) -> str:
        """An int64 initializer (axes, shapes, pads), shared by name."""
        if name not in self._made:
            self.graph.initializer.append(self.ox.helper.make_tensor(name, self.ox.TensorProto.INT64, [len(values)],
                                                                     values))
            self._made.add(name)
        return name

    def op(self, path: str, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        """Append ``PATH/Op`` (``PATH/Op_1``, ... for a layer's later nodes of that kind); its output is ``output``
        or, for a step inside the layer, the node's own name."""
        base = f"{path}/{op_type}"
        name = f"{base}_{self._ops[base]}" if self._ops[base] else base
        self._ops[base] += 1
        out = output or name
        self.graph.node.append(self.ox.helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def reduce_mean(self, path: str, x: str, axes: list[int], keepdims: int, output: str | None = None) -> str:
        """ReduceMean: axes as an input from opset 18, as an attribute before."""
        if self.opset >= 18:
            return self.op(path, "ReduceMean", [x, self.ints(f"axes{''.join(map(str, axes))}", axes)], output,
                           keepdims=keepdims)
        return self.op(path, "ReduceMean", [x], output, axes=axes, keepdims=keepdims)


def emit(graph: Graph, state: Mapping[str, Any], *, opset: int = 18, batch: int | None = None,
         dynamic_size: bool = False) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The ONNX model of ``graph`` with the weights ``state`` (a module's state_dict: tensors or arrays), and the
    map from each graph node to its tensor. ``batch``: a fixed batch size, or None for the symbol ``batch``;
    ``dynamic_size``: height and width as the symbols ``height`` and ``width``. Raises KeyError naming a weight
    the state lacks."""
    ox = need("onnx")
    opsets = [ox.helper.make_opsetid("", opset)]
    model = ox.ModelProto(ir_version=ox.helper.find_min_ir_version_for(opsets), opset_import=opsets,
                          producer_name="resdsl", producer_version=version.__version__)
    g = model.graph  # filled in place: helper.make_graph / make_model would copy every weight
    g.name = graph.name
    e = _Emitter(state, opset, g)
    tensor_of = {INPUT: INPUT}
    returned = {o.node: o for o in graph.outputs}
    public = {o.name for o in graph.outputs}
    n_axis: int | str = BATCH if batch is None else batch
    for node in graph.nodes[1:]:
        # a returned node's tensor takes the output's name; a layer whose path is an output's name (torchvision's
        # stem conv "conv1" beside the stem's output "conv1") keeps its path with "/out" appended
        out = (returned[node.name].name if node.name in returned else
               f"{node.name}/out" if node.name in public else node.name)
        _lower(e, node, [tensor_of[i] for i in node.inputs], out)
        tensor_of[node.name] = out
        if node.name not in returned:
            g.value_info.append(ox.helper.make_tensor_value_info(out, ox.TensorProto.FLOAT,
                                                                 [n_axis, *_dims(node.shape, dynamic_size)]))
    c, h, w = graph.input.shape
    size: list[int | str] = [HEIGHT, WIDTH] if dynamic_size else [h, w]
    g.input.append(ox.helper.make_tensor_value_info(INPUT, ox.TensorProto.FLOAT, [n_axis, c, *size]))
    for o in graph.outputs:
        shape = graph.node(o.node).shape
        dims = [shape[0], f"{o.name}_height", f"{o.name}_width"] if dynamic_size and len(shape) == 3 else list(shape)
        g.output.append(ox.helper.make_tensor_value_info(o.name, ox.TensorProto.FLOAT, [n_axis, *dims]))
    return model, tensor_of


def _dims(shape: tuple[int, ...], dynamic_size: bool) -> list[int | str | None]:
    """A layer's dims after the batch axis; a feature map's height and width unknown when the input's vary."""
    return [shape[0], None, None] if dynamic_size and len(shape) == 3 else list(shape)


def _lower(e: _Emitter, node: Node, x: list[str], out: str) -> None:
    """Append the ONNX nodes that compute ``node`` from the tensors ``x``, ending in the tensor ``out``."""
    p, a = node.name, node.attrs
    if node.op == "conv":
        k, s, pad, d = a["kernel"], a["stride"], a["padding"], a["dilation"]
        e.op(p, "Conv", [x[0], e.weight(f"{p}.weight")], out, kernel_shape=[k, k], strides=[s, s],
             pads=[pad] * 4, dilations=[d, d], group=a["groups"])
    elif node.op == "bn":
        e.op(p, "BatchNormalization", [x[0], *(e.weight(f"{p}.{w}") for w in ("weight", "bias", "running_mean",
                                                                           "running_var"))], out, epsilon=BN_EPS)
    elif node.op == "relu":
        e.op(p, "Relu", x, out)
    elif node.op == "add":
        e.op(p, "Add", x, out)
    elif node.op == "maxpool":
        k, s, pad = a["kernel"], a["stride"], a["padding"]
        e.op(p, "MaxPool", x, out, kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4)
    elif node.op == "avgpool":
        k, s, pad, end = a["kernel"], a["stride"], a["padding"], a["pad_end"]
        src = x[0]
        if end:  # zeros appended at the bottom and right, then pooled as they are (as the module pads them)
            src = e.op(p, "Pad", [src, e.ints(f"pads_end{end}", [0, 0, 0, 0, 0, 0, end, end])], mode="constant")
        e.op(p, "AveragePool", [src], out, kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4,
             ceil_mode=int(a["ceil_mode"]), count_include_pad=int(a["count_include_pad"]))
    elif node.op == "shortcut_a":
        _shortcut_a(e, p, x[0], out, a["stride"], a["pad"])
    elif node.op == "gap":
        mean = e.reduce_mean(p, x[0], [2, 3], keepdims=1)
        e.op(p, "Reshape", [mean, e.ints(f"{p}/shape", [-1, node.shape[0]])], out)
    elif node.op == "fc":
        e.op(p, "Gemm", [x[0], e.weight(f"{p}.weight"), e.weight(f"{p}.bias")], out, transB=1)
    elif node.op == "se":
        g = e.reduce_mean(p, x[0], [2, 3], keepdims=1)
        for i, fc in enumerate(("fc1", "fc2")):
            g = e.op(p, "Conv", [g, e.weight(f"{p}.{fc}.weight"), e.weight(f"{p}.{fc}.bias")], kernel_shape=[1, 1])
            if i == 0:
                g = e.op(p, "Relu", [g])
        e.op(p, "Mul", [x[0], e.op(p, "Sigmoid", [g])], out)
    elif node.op == "eca":
        k, c = a["kernel"], a["channels"]
        g = e.op(p, "Unsqueeze", [e.reduce_mean(p, x[0], [2, 3], keepdims=0), e.ints("axes1", [1])])
        g = e.op(p, "Conv", [g, e.weight(f"{p}.conv.weight")], kernel_shape=[k], pads=[(k - 1) // 2] * 2)
        g = e.op(p, "Reshape", [e.op(p, "Sigmoid", [g]), e.ints(f"{p}/shape", [-1, c, 1, 1])])
        e.op(p, "Mul", [x[0], g], out)
    else:
        raise ValueError(f"resdsl bug: no ONNX lowering for {node.op!r} ({p})")


def _shortcut_a(e: _Emitter, p: str, x: str, out: str, stride: int, pad: int) -> None:
    """Option A: every ``stride``-th row and column (as a 1x1 stride-s conv samples), then ``pad`` zero channels
    appended (ONNX Pad's widths: all begins, then all ends, over N, C, H, W)."""
    if stride > 1:
        x = e.op(p, "Slice", [x, e.ints("zeros2", [0, 0]), e.ints("int64max2", [_INT64_MAX] * 2),
                              e.ints("axes23", [2, 3]), e.ints(f"steps{stride}", [stride, stride])],
                 None if pad else out)
    if pad:
        e.op(p, "Pad", [x, e.ints(f"{p}/pads", [0, 0, 0, 0, 0, pad, 0, 0])], out, mode="constant")
    elif stride == 1:
        e.op(p, "Identity", [x], out)
