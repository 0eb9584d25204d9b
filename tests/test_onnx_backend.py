"""The ONNX backend against torch's own output and ONNX Runtime: dynamic batch, layer names, fp16, corrupt files.

Oracles: the eval-mode torch module (``model(x)``, ``model.forward_intermediates``)
and ONNX Runtime / ``onnx`` run directly on the saved file, never values the
backend computed itself. Each net is exported once per module, by the ``ir`` exporter (resdsl's own, the
default) and the small one by torch's exporters too (dynamo is ~5 s), so every check here holds for both.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from resdsl import build
from resdsl.backends import onnx as ob
from resdsl.errors import BackendUnavailable, InputError
from resdsl.passes.fp16 import to_float16
from resdsl.spec import Spec, loads

CIFAR = """resdsl: 1
name: tiny
input: {channels: 3, size: 32}
block: basic
shortcut: A
stem: {conv: {channels: 16, kernel: 3, stride: 1}}
stages:
  - {width: 16, blocks: 1}
  - {width: 32, blocks: 1, stride: 2}
head: {classes: 10}
"""
R18 = """resdsl: 1
name: resnet18-64
input: {channels: 3, size: 64}
block: basic
shortcut: B
stages:
  - {width: 64, blocks: 2}
  - {width: 128, blocks: 2, stride: 2}
  - {width: 256, blocks: 2, stride: 2}
  - {width: 512, blocks: 2, stride: 2}
head: {classes: 1000}
"""
RTOL = 1e-4  # of the largest |value| of the torch tensor compared against
FP16_TOL = 1e-2  # fp16 vs torch's fp32 logits, of the largest |logit| (seen: 9e-4 tiny, 1.3e-3 ResNet-18)


def trained_looking(spec: str | Spec) -> Any:
    """A net (spec text or Spec) whose BNs have non-trivial running statistics and affine terms, and whose conv
    biases (attention's) are not zero, left in training mode."""
    model = build(loads(spec) if isinstance(spec, str) else spec)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)
        elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model.train()


def batch_of(model: Any, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *model.graph.input.shape)).astype(np.float32)


def torch_out(model: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, ob.ExportInfo]]:
    """tiny, tiny at opset 17 and ResNet-18 at 64x64 written from resdsl's graph (ir); tiny by torch's exporter
    at opset 18 (dynamo) and 17 (TorchScript); all dynamic batch."""
    d = tmp_path_factory.mktemp("onnx")
    out = {}
    for key, text, opset, exporter in (("tiny", CIFAR, 18, "ir"), ("tiny17", CIFAR, 17, "ir"), ("r18", R18, 18, "ir"),
                                       ("tiny-torch", CIFAR, 18, "torch"), ("tiny17-torch", CIFAR, 17, "torch")):
        model = trained_looking(text)
        info = ob.export(model, d / f"{key}.onnx", opset=opset, exporter=exporter)
        assert model.training, "export must put the module back in training mode"
        out[key] = (model.eval(), info)
    return out


NETS = ["tiny", "tiny17", "r18", "tiny-torch", "tiny17-torch"]
EXPORTER = {"tiny": "ir", "tiny17": "ir", "r18": "ir", "tiny-torch": "dynamo", "tiny17-torch": "torchscript"}


@pytest.mark.parametrize("key", NETS)
def test_same_file_matches_torch_at_batch_1_and_3(exported: dict, key: str) -> None:
    model, info = exported[key]
    sess = ort.InferenceSession(info.path, providers=["CPUExecutionProvider"])  # the file itself, no resdsl code
    for n in (1, 3):
        x = batch_of(model, n, seed=n)
        got = sess.run(["logits"], {"input": x})[0]
        assert got.shape == (n, model.graph.output.shape[0])
        assert rel_err(got, torch_out(model, x)) < RTOL
        assert rel_err(ob.run(ob.session(info.path, threads=1), x), torch_out(model, x)) < RTOL


@pytest.mark.parametrize("key", NETS)
def test_onnxruntime_folds_every_batchnorm_and_relu(exported: dict, key: str, tmp_path: Path) -> None:
    """The speed of the onnx target rests on ORT folding BN into the convs and fusing the ReLUs: the file keeps BN
    and ReLU as separate nodes (for per-layer comparison), so check that nothing in it blocks the fusions."""
    _, info = exported[key]
    raw = Counter(n.op_type for n in onnx.load(info.path).graph.node)
    assert raw["BatchNormalization"] > 0 and raw["Relu"] > 0
    opts = ort.SessionOptions()  # EXTENDED: the portable fusions, without ALL's CPU-specific NCHWc layouts
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(info.path, opts, providers=["CPUExecutionProvider"])
    nodes = onnx.load(tmp_path / "optimized.onnx").graph.node
    ops, made_by = Counter(n.op_type for n in nodes), {t: n.op_type for n in nodes for t in n.output}
    assert ops["BatchNormalization"] == 0 and ops["Conv"] + ops["FusedConv"] == raw["Conv"], ops
    # at this level a ReLU stays only after a residual Add (level ALL fuses those into NCHWc convs as well)
    assert {made_by.get(n.input[0]) for n in nodes if n.op_type == "Relu"} <= {"Add"}, ops
    assert ops["FusedConv"] == raw["Relu"] - ops["Relu"] > 0, ops


@pytest.mark.parametrize("key", NETS)
def test_io_names_opset_and_symbolic_batch(exported: dict, key: str) -> None:
    model, info = exported[key]
    proto = onnx.load(info.path)
    onnx.checker.check_model(info.path, full_check=True)
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == info.opset >= 17 and opset == (17 if key.startswith("tiny17") else 18)
    assert info.exporter == EXPORTER[key]
    for v in (proto.graph.input[0], proto.graph.output[0]):
        dim = v.type.tensor_type.shape.dim[0]
        assert dim.dim_param and not dim.HasField("dim_value")
    assert info.input_shape == (dim.dim_param, *model.graph.input.shape)
    assert info.output_shape == (dim.dim_param, *model.graph.output.shape)
    assert not any(v.name.startswith(".") for v in Path(info.path).parent.iterdir()), "temporary file left behind"


@pytest.mark.parametrize("key", NETS)
def test_every_layer_found_by_module_path(exported: dict, key: str) -> None:
    model, info = exported[key]
    proto = onnx.load(info.path)
    by_output = {o: n for n in proto.graph.node for o in n.output}
    assert set(info.tensor_of) == {n.name for n in model.graph.nodes}
    assert ob.tensor_map(info.path) == info.tensor_of
    for node in model.graph.nodes[1:]:
        producer = by_output[info.tensor_of[node.name]]
        assert producer.name.startswith(f"{node.name}/"), (node.name, producer.name)
    ops = {n.op: by_output[info.tensor_of[n.name]].op_type for n in model.graph.nodes[1:]}
    assert {k: ops[k] for k in ("conv", "bn", "relu", "add", "fc")} == {
        "conv": "Conv", "bn": "BatchNormalization", "relu": "Relu", "add": "Add", "fc": "Gemm"}
    names = [n.name for n in model.graph.nodes]
    x = batch_of(model, 2, seed=7)
    got = ob.intermediates(info.path, [info.tensor_of[n] for n in names], x)
    with torch.no_grad():
        ref = model.forward_intermediates(torch.from_numpy(x), names)
    for n in names:  # every conv (and every other layer) equals torch's output of the same module
        assert rel_err(got[info.tensor_of[n]], ref[n].numpy()) < RTOL, n
    assert [o.name for o in onnx.load(info.path).graph.output] == ["logits"], "intermediates edited the file"


@pytest.mark.parametrize("key", ["tiny", "r18"])
def test_fp16_conversion(exported: dict, key: str, tmp_path: Path) -> None:
    model, info = exported[key]
    x = batch_of(model, 16, seed=3)
    ref = torch_out(model, x)
    for keep in (True, False):
        path = tmp_path / f"h{keep}.onnx"
        ob.convert_fp16(info.path, path, keep_io_fp32=keep)
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(path)
        floats = [i for i in proto.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
        assert floats and all(i.data_type == TensorProto.FLOAT16 for i in floats)
        assert all(v.type.tensor_type.elem_type != TensorProto.FLOAT for v in proto.graph.value_info)
        io = TensorProto.FLOAT if keep else TensorProto.FLOAT16
        assert [v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)] == [io, io]
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": x if keep else x.astype(np.float16)})[0]
        assert got.dtype == (np.float32 if keep else np.float16)
        assert rel_err(got, ref) < FP16_TOL
        top2 = np.sort(ref, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * FP16_TOL * np.abs(ref).max()  # top-1 decided beyond fp16 noise
        assert clear.sum() >= 4 and (got.argmax(1) == ref.argmax(1))[clear].all()
        if keep:  # layer outputs stay reachable by module path after the conversion
            with torch.no_grad():
                conv = model.forward_intermediates(torch.from_numpy(x), ["layer2.0.conv2"])["layer2.0.conv2"].numpy()
            assert rel_err(ob.intermediates(path, ["layer2.0.conv2"], x)["layer2.0.conv2"], conv) < FP16_TOL


def test_fp16_pass_refuses_weights_beyond_float16() -> None:
    w = numpy_helper.from_array(np.array([1.0, 7e4], dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [w])
    with pytest.raises(ValueError, match="'w' holds 70000"):
        to_float16(helper.make_model(graph))


def test_static_batch_rejects_batch_3(tmp_path: Path) -> None:
    model = trained_looking(CIFAR)
    info = ob.export(model, tmp_path / "static.onnx", dynamic_batch=False, batch=1, exporter="torchscript")
    assert info.input_shape[0] == 1 and info.output_shape[0] == 1
    x1, x3 = batch_of(model, 1), batch_of(model, 3)
    sess = ort.InferenceSession(info.path, providers=["CPUExecutionProvider"])
    assert rel_err(sess.run(None, {"input": x1})[0], torch_out(model, x1)) < RTOL
    with pytest.raises(Exception, match=r"(?i)dimension"):  # ONNX Runtime itself refuses it
        sess.run(None, {"input": x3})
    with pytest.raises(InputError, match="dynamic_batch=True"):
        ob.run(ob.session(info.path), x3)


def test_truncated_and_edited_files_are_input_errors(exported: dict, tmp_path: Path) -> None:
    _, info = exported["tiny"]
    data = Path(info.path).read_bytes()
    weight = max(onnx.load(info.path).graph.initializer, key=lambda t: len(t.raw_data))
    at = data.find(weight.raw_data) + len(weight.raw_data) // 2
    edited = bytearray(data)
    edited[at] ^= 0x10  # one bit of one weight: still a well-formed protobuf
    onnx.checker.check_model(onnx.load_model_from_string(bytes(edited)))  # which onnx alone accepts
    cases = {"truncated.onnx": data[: len(data) // 2], "edited.onnx": bytes(edited), "empty.onnx": b""}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        for call in (ob.load_model, ob.session, lambda p: ob.intermediates(p, ["conv1"], np.zeros((1, 3, 32, 32)))):
            with pytest.raises(InputError, match=re.escape(name)) as e:
                call(tmp_path / name)
            assert "protobuf" not in str(e.value).lower() and e.value.__cause__ is None
    with pytest.raises(InputError, match=r"missing\.onnx"):
        ob.session(tmp_path / "missing.onnx")


@pytest.mark.parametrize("key", ["tiny", "tiny17", "tiny-torch"])
def test_file_is_protobufs_serialization_then_the_digest_record(exported: dict, key: str, tmp_path: Path) -> None:
    """The file is written a piece at a time; it must equal protobuf's own serialization of the model (the oracle)
    followed by one metadata record holding the sha256 of those bytes."""
    data = Path(exported[key][1].path).read_bytes()
    proto = onnx.load_model_from_string(data)
    stamps = [p for p in proto.metadata_props if p.key == ob.DIGEST_KEY]
    body = onnx.ModelProto()
    body.CopyFrom(proto)
    kept = [p for p in body.metadata_props if p.key != ob.DIGEST_KEY]
    del body.metadata_props[:]
    body.metadata_props.extend(kept)
    canonical = body.SerializeToString(deterministic=True)
    assert len(stamps) == 1 and stamps[0].value == hashlib.sha256(canonical).hexdigest()
    assert data[:len(canonical)] == canonical
    assert data[len(canonical):] == onnx.ModelProto(metadata_props=stamps).SerializeToString()

    # another tool re-saving the model (digest record moved to the front) keeps it loadable: the digest is then
    # checked on the re-serialized content
    del proto.metadata_props[:]
    proto.metadata_props.extend([*stamps, *kept])
    onnx.save(proto, tmp_path / "resaved.onnx")
    assert (tmp_path / "resaved.onnx").read_bytes() != data
    assert ob.tensor_map(tmp_path / "resaved.onnx") == exported[key][1].tensor_of


def test_a_file_changed_while_onnxruntime_loads_it_is_refused(exported: dict, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime reads the file itself after resdsl checked it; a file replaced in between is caught."""
    path = tmp_path / "m.onnx"
    path.write_bytes(Path(exported["tiny"][1].path).read_bytes())
    real = ob._session

    def swap_then_load(*args: Any, **kw: Any) -> Any:
        sess = real(*args, **kw)
        path.write_bytes(Path(exported["r18"][1].path).read_bytes())  # another valid resdsl model
        return sess

    monkeypatch.setattr(ob, "_session", swap_then_load)
    with pytest.raises(InputError, match=r"m\.onnx: the file changed while ONNX Runtime was loading it"):
        ob.session(path)


def test_bad_options_and_names(exported: dict) -> None:
    model, info = exported["tiny"]
    with pytest.raises(InputError, match="opset 16"):
        ob.export(model, "never.onnx", opset=16)
    with pytest.raises(InputError, match="'fast'"):
        ob.export(model, "never.onnx", exporter="fast")
    with pytest.raises(InputError, match="layer9"):
        ob.intermediates(info.path, ["layer9.0.conv1"], batch_of(model, 1))
    assert not Path("never.onnx").exists()


def test_import_is_cheap_and_missing_packages_say_how_to_install(exported: dict, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    code = ("import sys, resdsl.backends.onnx; "
            "assert not {'torch', 'onnx', 'onnxruntime', 'onnxscript'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(BackendUnavailable, match=r"'onnxruntime', which cannot be imported .*it comes with resdsl: "
                       r"pip install onnxruntime"):
        ob.session(exported["tiny"][1].path)
