"""Naming an exported graph's tensors after the module paths they come from (``layer3.4.conv2``).

The exporters name tensors after the op that makes them (dynamo: ``conv2d_5``; TorchScript:
``/conv1_1/Conv_output_0``, by attribute name only).
:func:`name_layers` finds each layer's output by the module scope of the nodes that make it and by its
shape, renames the tensor and its node after the module path, and returns the map that verification and
``resdsl.tensors`` use to compare any layer between backends.
"""

from __future__ import annotations

import ast
import math
from collections import Counter
from typing import TYPE_CHECKING, Any

from .onnx_file import INPUT, need

if TYPE_CHECKING:
    import onnx

    from ..ir import Graph


def name_layers(proto: onnx.ModelProto, graph: Graph, exporter: str) -> dict[str, str]:
    """Find each graph node's output tensor, rename it (and its node) after the module path; return the map."""
    _infer_missing_shapes(proto)
    shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim[1:])
              for v in (*proto.graph.value_info, *proto.graph.output)}
    modules = {n.name: n.shape for n in graph.nodes[1:] if n.op != "add"}
    keys: dict[str, str] = {}  # TorchScript's scope name -> module path
    seen: Counter[str] = Counter()
    for name in modules if exporter == "torchscript" else ():
        atoms = name.split(".")
        leaf = ".".join(atoms[max(i for i, a in enumerate(atoms) if not a.isnumeric()):])
        keys[f"{leaf}_{seen[leaf]}" if seen[leaf] else leaf] = name
        seen[leaf] += 1
    nodes = list(proto.graph.node)
    scopes = [_scope(n, keys, modules) for n in nodes]
    users: dict[str, set[str | None]] = {}
    for n, s in zip(nodes, scopes, strict=True):
        for t in n.input:
            users.setdefault(t, set()).add(s)
    tensors, outputs = {"input": INPUT}, {o.name for o in proto.graph.output}
    for n, s in zip(nodes, scopes, strict=True):  # a module's output: its tensor used outside it, of the layer's shape
        for t in n.output:
            if s and (t in outputs or users.get(t, set()) - {s}) and _fits(shapes.get(t), modules[s]):
                tensors[s] = t
    for a in (g for g in graph.nodes if g.op == "add"):
        want = sorted(tensors.get(i, "?") for i in a.inputs)
        found = [n.output[0] for n in nodes if n.op_type == "Add" and sorted(n.input) == want]
        if len(found) == 1:
            tensors[a.name] = found[0]
    # a layer whose path is an output's name (torchvision's stem conv "conv1" beside the stem's output "conv1")
    # keeps its path with "/out" appended, as resdsl's own emitter names it
    rename = {t: (t if t in outputs or t == INPUT else f"{p}/out" if p in outputs else p) for p, t in tensors.items()}
    clash = ({t for n in nodes for t in n.output} | {i.name for i in proto.graph.initializer}) - set(rename)
    lost = [g.name for g in graph.nodes if g.name not in tensors] + sorted(clash & set(rename.values()))
    if lost:
        raise RuntimeError(f"resdsl bug: ONNX tensors of {lost[:5]} not found or clashing ({exporter} exporter)")
    by_output, used = {t: p for p, t in tensors.items()}, Counter[str]()
    for n, s in zip(nodes, scopes, strict=True):
        del n.metadata_props[:]  # stack traces with local paths; the names below carry the module path
        base = f"{s or by_output.get(n.output[0], '')}/{n.op_type}"
        n.name, used[base] = (f"{base}_{used[base]}" if used[base] else base), used[base] + 1
        n.input[:] = [rename.get(t, t) for t in n.input]
        n.output[:] = [rename.get(t, t) for t in n.output]
    for v in proto.graph.value_info:
        v.name = rename.get(v.name, v.name)
    return {p: rename[t] for p, t in tensors.items()}


def _infer_missing_shapes(proto: onnx.ModelProto) -> None:
    """Shape inference: ``value_info`` for node outputs that lack it, and refined graph output shapes.

    Runs on a weightless copy: ``infer_shapes`` on the whole model round-trips every weight through
    C++ (4.2 s of ResNet-152's export). Large initializers (the weights) become inputs of their shape;
    small ones (Reshape's shape, Pad's widths) keep their values, which inference reads.
    """
    ox = need("onnx")
    skeleton = ox.ModelProto(ir_version=proto.ir_version, opset_import=proto.opset_import)
    g = skeleton.graph
    g.node.extend(proto.graph.node)
    g.input.extend(proto.graph.input)
    g.output.extend(proto.graph.output)
    g.value_info.extend(proto.graph.value_info)
    for t in proto.graph.initializer:
        if math.prod(t.dims) <= 64:
            g.initializer.append(t)
        else:
            g.input.append(ox.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    inferred = ox.shape_inference.infer_shapes(skeleton).graph
    known = {v.name for v in (*proto.graph.value_info, *proto.graph.output, *proto.graph.input)}
    produced = {t for n in proto.graph.node for t in n.output}
    proto.graph.value_info.extend(v for v in inferred.value_info if v.name in produced and v.name not in known)
    for out, new in zip(proto.graph.output, inferred.output, strict=True):
        out.type.CopyFrom(new.type)


def _fits(inferred: tuple[int, ...] | None, shape: tuple[int, ...]) -> bool:
    """Whether an inferred shape (0 = unknown) can be a layer's shape."""
    return inferred is not None and len(inferred) == len(shape) and all(map(lambda a, b: a in (0, b), inferred, shape))


def _scope(node: onnx.NodeProto, keys: dict[str, str], modules: dict[str, Any]) -> str | None:
    """The module path a node belongs to: TorchScript's name ``/scope/Op``, or dynamo's name_scopes metadata."""
    if keys:
        parts = node.name.split("/")
        return keys.get(parts[1]) if len(parts) > 2 else None
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            scope = ast.literal_eval(p.value)
            return scope[1] if len(scope) > 1 and scope[1] in modules else None
    return None
