"""The ``ir`` exporter (ONNX written from resdsl's graph) against torch's exporter and the torch module.

Oracles: the eval-mode torch module (``forward_intermediates``, at any input size) and the model torch.onnx's
dynamo exporter writes for the same module, run in ONNX Runtime; never values the emitter computed itself.
Every shipped spec's configuration (block, shortcut, stem, stem pool, attention, pre-activation, groups,
stride placement, input channels) is checked at a reduced depth and size (at most two units per stage, inputs
of at most 64x64), so that torch's exporter, the slow side, takes seconds: one configuration per lowering in
``make test``, every shipped spec in ``make test-all``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from resdsl.backends import onnx as ob
from resdsl.backends.torch import from_graph
from resdsl.errors import InputError
from resdsl.expand import expand
from resdsl.spec import from_resolved, load

from .test_onnx_backend import rel_err as rel
from .test_onnx_backend import trained_looking

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(p for p in (ROOT / "specs").rglob("*.yaml") if "invalid" not in p.parts)
RTOL = 1e-5  # of the largest |value| of the torch tensor compared against (seen: 1.5e-6)
#: ops the two exporters spell differently around the same computation (option A's subsampling, ECA's
#: reshapes, the head's flatten); every other op must occur as often in both
SPELLING = {"Constant", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Identity"}
#: for make test, the fewest shipped specs that together use every op and option the shipped specs use (found
#: greedily; test_quick_set_covers_every_lowering keeps it so): ECA + shortcut D + deep stem, option A with a
#: 1-channel input, ResNeXt groups + SE, a pre-activation bottleneck, the plain net, option C, a backbone (several
#: outputs, no head, dilated stages and shortcut D's stride-1 pool under dilation)
QUICK = ("timm/ecaresnet50d", "fashion/resnet20", "timm/seresnext50_32x4d", "preact/resnet164", "plain18",
         "resnet34-c", "backbones/timm-resnet50d-os16")


def reduced(path: Path) -> Any:
    """The spec of ``path`` with at most two units per stage and an input of at most 64x64: every lowering it
    uses (a first unit that changes shape, a unit that keeps it), at a size torch's exporter takes seconds on."""
    doc = json.loads(json.dumps(load(path).resolved))
    doc["stages"] = [{**s, "blocks": min(s["blocks"], 2)} for s in doc["stages"]]
    size = doc.get("input", {}).get("size", 224)
    doc["input"] = {**doc.get("input", {}), "size": min(size if isinstance(size, int) else max(size), 64)}
    doc.pop("expect", None)
    return from_resolved(doc, str(path))


def op_counts(path: str) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(path).graph.node if n.op_type not in SPELLING)


def producers(path: str, tensors: dict[str, str]) -> dict[str, onnx.NodeProto]:
    made_by = {o: n for n in onnx.load(path).graph.node for o in n.output}
    return {name: made_by[t] for name, t in tensors.items() if t in made_by}


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def cross_check(path: Path, tmp: Path) -> None:
    spec = reduced(path)
    model = trained_looking(spec).eval()
    ir = ob.export(model, tmp / "ir.onnx", exporter="ir")
    traced = ob.export(model, tmp / "torch.onnx", exporter="torch")
    assert (ir.exporter, traced.exporter) == ("ir", "dynamo")
    assert ir.tensor_of == traced.tensor_of  # the same layer map: every layer of the graph, the same names
    assert ir.input_shape == traced.input_shape and ir.output_shape == traced.output_shape
    # operator by operator: the same ops, and each layer made by the same kind of node with the same attributes
    assert op_counts(ir.path) == op_counts(traced.path), path.name
    ours, theirs = producers(ir.path, ir.tensor_of), producers(traced.path, traced.tensor_of)
    for name, node in ours.items():
        other = theirs[name]
        assert node.op_type == other.op_type or {node.op_type, other.op_type} <= SPELLING | {"Pad"}, name
        if node.op_type in ("Conv", "MaxPool", "AveragePool", "Gemm", "BatchNormalization"):
            mine, torch_attrs = attrs(node), attrs(other)
            assert {k: v for k, v in torch_attrs.items() if k in mine and k != "momentum"} == \
                {k: mine[k] for k in torch_attrs if k in mine and k != "momentum"}, name
    # numerically: every layer of both files against the module, at batch 1 and 3
    names = [n.name for n in model.graph.nodes]
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, *model.graph.input.shape)).astype(np.float32)
        with torch.no_grad():
            ref = {k: v.numpy() for k, v in model.forward_intermediates(torch.from_numpy(x), names).items()}
        for info in (ir, traced):
            got = ob.intermediates(info.path, [info.tensor_of[n] for n in names], x)
            worst = max((rel(got[info.tensor_of[n]], ref[n]), n) for n in names)
            assert worst[0] < RTOL, (path.name, info.exporter, batch, worst)


@pytest.mark.parametrize("name", QUICK)
def test_ir_export_equals_torch_export(name: str, tmp_path: Path) -> None:
    cross_check(ROOT / "specs" / f"{name}.yaml", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in SPECS if str(p.relative_to(ROOT / "specs"))[:-5] not in QUICK],
                         ids=lambda p: str(p.relative_to(ROOT / "specs"))[:-5])
def test_ir_export_equals_torch_export_every_shipped_spec(path: Path, tmp_path: Path) -> None:
    cross_check(path, tmp_path)


def test_quick_set_covers_every_lowering() -> None:
    """The make-test subset exercises every op and every option of the graph that the shipped specs use."""
    def features(path: Path) -> set[tuple[str, Any]]:
        spec = load(path)
        nodes = expand(spec).nodes
        return ({("op", n.op) for n in nodes} | {("shortcut", spec.shortcut), ("preact", spec.preact),
                                                 ("bottleneck", spec.bottleneck), ("grouped", spec.groups > 1),
                                                 ("deep stem", bool(spec.stem.conv.inner)),
                                                 ("channels", spec.in_channels),
                                                 ("stride on", spec.downsample if spec.bottleneck else "3x3"),
                                                 ("stem pool", spec.stem.pool.kind if spec.stem.pool else None),
                                                 ("several outputs", len(spec.outputs) > 1), ("head", spec.has_head),
                                                 ("dilated", any(n.attrs.get("dilation", 1) > 1 for n in nodes)),
                                                 ("pad_end", any(n.attrs.get("pad_end") for n in nodes))})
    everything = set().union(*(features(p) for p in SPECS))
    quick = set().union(*(features(ROOT / "specs" / f"{n}.yaml") for n in QUICK))
    assert everything - quick == set()


@pytest.mark.parametrize("name", ["timm/ecaresnet50d", "cifar/resnet20", "fashion/resnet20-se-d", "preact/resnet164"])
def test_symbolic_height_and_width(name: str, tmp_path: Path) -> None:
    """One file, any input size: odd sizes too, where ceil-mode pooling (shortcut D) and padding bite."""
    model = trained_looking(reduced(ROOT / "specs" / f"{name}.yaml")).eval()
    info = ob.export(model, tmp_path / "m.onnx", dynamic_size=True, opset=17 if "cifar" in name else 18)
    c = model.graph.input.shape[0]
    assert info.input_shape == ("batch", c, "height", "width")
    sess = ort.InferenceSession(info.path, providers=["CPUExecutionProvider"])
    for h, w in ((33, 33), (64, 48), (97, 131)):
        x = np.random.default_rng(h).standard_normal((2, c, h, w)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert rel(sess.run(None, {"input": x})[0], ref) < RTOL, (h, w)
    with pytest.raises(InputError, match="symbolic height and width are written by the 'ir' exporter only"):
        ob.export(model, tmp_path / "t.onnx", dynamic_size=True, exporter="torch")


def test_compile_with_either_exporter(tmp_path: Path, cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """``--exporter ir`` (the default) and ``--exporter torch`` both verify, and say which wrote the file; the two
    files name every layer alike."""
    spec = str(ROOT / "specs" / "cifar" / "resnet20.yaml")
    maps = {}
    for exporter, recorded in ((None, "ir"), ("torch", "dynamo")):
        out = tmp_path / recorded
        r = cli("compile", spec, "-o", str(out), *(("--exporter", exporter) if exporter else ()))
        assert r.returncode == 0, r.stderr
        assert f"{exporter or 'ir'} exporter" in r.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["export"]["exporter"] == recorded and manifest["verification"]["passed"]
        maps[recorded] = ob.tensor_map(out / "model.onnx")
    assert maps["ir"] == maps["dynamo"]
    with pytest.raises(SystemExit) as e:  # argparse's own refusal of a choice
        cli("compile", spec, "-o", str(tmp_path / "x"), "--exporter", "jit")
    assert e.value.code == 2 and "--exporter: invalid choice: 'jit'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_module_that_overflows_is_refused_before_the_export(tmp_path: Path, cli: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Finite weights whose module's own logits overflow to inf: refused after one forward pass, before any
    export starts, naming the spec and both ways out; nothing written."""
    spec = ROOT / "specs" / "cifar" / "resnet20.yaml"
    model = from_graph(expand(load(spec)), seed=0)
    state = {k: (v * 1e30 if k.endswith("bn2.weight") else v) for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "huge.pt")
    monkeypatch.setattr(ob, "export", lambda *a, **k: pytest.fail("the export started"))
    r = cli("compile", str(spec), "-o", str(tmp_path / "out"), "--weights", str(tmp_path / "huge.pt"))
    assert r.returncode == 2, r.stderr
    assert "resnet20.yaml: the PyTorch module's own logits overflow to inf/NaN" in r.stderr
    assert "--weights" in r.stderr and "zero_init_residual: true" in r.stderr
    assert not (tmp_path / "out").exists()


def test_the_stem_s_output_beside_a_layer_of_the_same_name_is_named_alike_by_both_exporters(tmp_path: Path) -> None:
    """torchvision's stem conv is the layer "conv1", and outputs [conv1, ...] returns the stem's map as "conv1":
    both exporters keep the layer as "conv1/out" and agree on every layer and output."""
    doc = {**load(ROOT / "specs" / "resnet18.yaml").resolved,
           "outputs": ["conv1", "conv3_x", "logits"], "output_stride": 8}
    doc.pop("expect", None)
    path = tmp_path / "stem.yaml"
    path.write_text(json.dumps(doc))
    cross_check(path, tmp_path)
    info = ob.export(trained_looking(reduced(path)).eval(), tmp_path / "again.onnx")
    assert info.tensor_of["conv1"] == "conv1/out" and info.tensor_of["relu"] == "conv1"
    assert [o.name for o in onnx.load(info.path).graph.output] == ["conv1", "conv3_x", "logits"]
