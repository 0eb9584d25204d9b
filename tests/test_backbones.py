"""ResNets as backbones: outputs of any stage, output stride 8/16 by dilation, input sizes that vary.

The oracles are torchvision's and timm's own ResNets, built from their source with the same deterministic
weights (tests/data/make_backbone_reference.py; the data in tests/data/backbone-reference.*): each feature map
of the compiled ONNX model, run in ONNX Runtime at two sizes inside the compiled range, must equal theirs within
1e-4 of its largest value (per-channel means over height and width, and 256 sampled values).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from resdsl import InputError, build, count, expand, load
from resdsl.errors import OptionError, SpecError
from resdsl.pipeline import CompileOptions, compile_spec
from resdsl.runtime import load as load_artefact
from resdsl.spec import from_resolved, loads

from .conftest import ROOT, SPECS
from .golden import reference_weights

DATA = ROOT / "tests" / "data"
REF = json.loads((DATA / "backbone-reference.json").read_text())
ARRAYS = np.load(DATA / "backbone-reference.npz")
STAGES = ["conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x"]  # the stem (timm's act1), then the four stages
RANGE = "64x64:96x96:128x128"  # holds both reference sizes, 64x96 and 97x75
#: the resdsl spec of each reference case: a shipped backbone where one is that model, else its classifier spec
#: with the stage outputs and the output stride set
SHIPPED = {"tv-resnet50-os32": "backbones/resnet50-fpn.yaml", "tv-resnet101-os32": "backbones/resnet101-fpn.yaml",
           "tv-resnet101-os16": "backbones/deeplab-resnet101-os16.yaml",
           "tv-resnet101-os8": "backbones/deeplab-resnet101-os8.yaml",
           "timm-resnet50d-os16": "backbones/timm-resnet50d-os16.yaml"}
CLASSIFIER = {"torchvision/resnet50": "torchvision/resnet50.yaml",
              "torchvision/resnet101": "torchvision/resnet101.yaml", "timm/resnet50d": "timm/resnet50d.yaml",
              "timm/resnet18d": "timm/resnet18d.yaml"}
#: compiled in make test: one of each library, the stride-8 torchvision layout, timm's basic blocks (which only
#: timm dilates) and timm's pooled shortcut under dilation; the other cases in make test-all
QUICK = {"tv-resnet50-os8", "timm-resnet50d-os16", "timm-resnet18d-os8"}


def case_spec(case: str) -> Any:
    """The spec of a reference case, with all four stages returned (a shipped spec may return fewer)."""
    c = REF["cases"][case]
    base = load(SPECS / SHIPPED.get(case, CLASSIFIER[f"{c['library']}/{c['model']}"]))
    doc = {**base.resolved, "outputs": STAGES, "output_stride": c["output_stride"], "expect": None}
    return from_resolved({k: v for k, v in doc.items() if v is not None}, base.source)


def reference_state(case: str) -> dict[str, torch.Tensor]:
    c = REF["cases"][case]
    return reference_weights(REF["state_dicts"][f"{c['library']}/{c['model']}"])


def input_at(h: int, w: int) -> np.ndarray:
    return np.sin(0.7 * np.arange(3 * h * w, dtype=np.float64)).astype(np.float32).reshape(1, 3, h, w)


def assert_equals_reference(case: str, got: dict[str, np.ndarray], h: int, w: int) -> None:
    for stage in STAGES:
        key = f"{case}/{h}x{w}/{stage}"
        a = got[stage][0].astype(np.float64)
        assert list(got[stage].shape) == REF["cases"][case]["shapes"][f"{h}x{w}/{stage}"], key
        mean, sample = ARRAYS[f"{key}/mean"], ARRAYS[f"{key}/sample"]
        assert np.abs(mean).max() > 0 and np.abs(sample).max() > 0
        for ours, theirs in ((a.mean(axis=(1, 2)), mean), (a.reshape(-1)[ARRAYS[f"{key}/index"]], sample)):
            rel = np.abs(ours - theirs).max() / np.abs(theirs).max()
            assert rel < 1e-4, (key, rel)


CASES = [pytest.param(c, marks=() if c in QUICK else pytest.mark.slow) for c in REF["cases"]]


@pytest.mark.parametrize("case", CASES)
def test_compiled_onnx_outputs_equal_torchvision_and_timm(case: str, tmp_path: Path) -> None:
    """The reference weights (a torchvision body's state_dict, or timm's features_only state_dict) load strictly,
    the compile verifies every output (the stem's and the four stages') at the range's sizes, and ONNX Runtime's
    feature maps equal the library's at both reference sizes."""
    spec = case_spec(case)
    weights = tmp_path / "w.pt"
    torch.save(reference_state(case), weights)
    out, m = compile_spec(_as_yaml(spec, tmp_path), CompileOptions(out=tmp_path / "a", weights=weights, size=RANGE,
                                                                   batch="1:1:2"))
    assert [t.name for t in m.outputs] == STAGES and m.inputs[0].shape == ["batch", 3, "height", "width"]
    strides = [t.stride for t in m.outputs]
    os_ = REF["cases"][case]["output_stride"]
    assert strides == [min(s, os_) for s in (2, 4, 8, 16, 32)]
    sizes = {tuple(c["size"]) for c in m.verification["checks"]}
    assert {(64, 64), (96, 96), (128, 128)} <= sizes and any(h % 2 and w % 2 for h, w in sizes)
    assert {c["output"] for c in m.verification["checks"]} == set(STAGES)
    art = load_artefact(out)
    for h, w in REF["sizes"]:
        got = art(input_at(h, w))
        assert list(got) == STAGES
        assert_equals_reference(case, got, h, w)


def _as_yaml(spec: Any, tmp_path: Path) -> Path:
    """A spec file holding ``spec``'s resolved document (JSON is YAML)."""
    path = tmp_path / f"{spec.name}.yaml"
    path.write_text(json.dumps(spec.resolved))
    return path


@pytest.mark.parametrize("case", list(REF["cases"]))
def test_counts_at_a_detection_size_equal_flop_counter_on_the_library_s_model(case: str) -> None:
    """``resdsl flops --size 800x1216`` (no torch) equals FlopCounterMode on torchvision's/timm's body there, and
    the parameters equal theirs."""
    from dataclasses import replace

    spec = case_spec(case)
    c = REF["cases"][case]
    report = count(expand(replace(spec, in_size=(800, 1216))))
    assert report.macs == c["macs_800x1216"]
    assert count(expand(replace(spec, in_size=(224, 224)))).macs == c["macs_224"]
    assert report.params == c["num_params"]


def test_flops_cli_lists_outputs_with_strides_and_dilations(cli: Any) -> None:
    r = cli("flops", str(SPECS / "backbones" / "deeplab-resnet101-os8.yaml"), "--size", "800x1216", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["input"] == [3, 800, 1216]
    assert doc["outputs"] == [{"name": "conv4_x", "shape": [1024, 100, 152], "channels": 1024, "stride": 8},
                              {"name": "conv5_x", "shape": [2048, 100, 152], "channels": 2048, "stride": 8}]
    assert doc["total"] == REF["cases"]["tv-resnet101-os8"]["macs_800x1216"]
    text = cli("flops", str(SPECS / "backbones" / "deeplab-resnet101-os8.yaml")).stdout
    assert "conv4_x dilation 2, conv5_x dilation 4" in text


def test_a_stage_may_not_take_the_stem_s_name() -> None:
    with pytest.raises(SpecError, match=r"stages\[0\]\.name: 'conv1' names the stem, the logits or the head"):
        loads(BAD.format(extra="").replace("[{width: 16, blocks: 1},", "[{name: conv1, width: 16, blocks: 1},"))


def test_the_stem_alone_is_a_net_too() -> None:
    """outputs [conv1]: the stem only (no pool, no stage), its map at the stem's stride."""
    spec = loads(BAD.format(extra="outputs: [conv1]").replace("stride: 1}}", "stride: 2}}"))
    graph = expand(spec)
    assert graph.stages == ("conv1",) and [n.op for n in graph.nodes] == ["input", "conv", "bn", "relu"]
    assert [(o.name, o.stride) for o in graph.outputs] == [("conv1", 2)]
    assert tuple(build(spec).eval()(torch.zeros(1, 3, 32, 32)).shape) == (1, 16, 16, 16)


def test_a_backbone_builds_no_head_and_stops_at_its_last_output() -> None:
    """Faster R-CNN's C4 extractor returns conv4_x: no conv5_x, pool or fc, so a classification checkpoint's
    layer4 and fc keys are dropped."""
    spec = load(SPECS / "backbones" / "faster-rcnn-resnet101-c4.yaml")
    graph = expand(spec)
    assert graph.stages == ("conv1", "conv2_x", "conv3_x", "conv4_x")
    assert not any(n.name.startswith(("layer4", "fc", "avgpool")) for n in graph.nodes)
    assert [(o.name, o.stride) for o in graph.outputs] == [("conv4_x", 16)]
    assert graph.node(graph.outputs[0].node).shape == (1024, 14, 14)


def test_classification_and_detection_checkpoints_load_into_a_backbone(tmp_path: Path) -> None:
    """A classifier's state_dict loads with its head dropped and said so; the feature maps equal the classifier
    module's own stage outputs (its forward_intermediates). A torchvision detection checkpoint (backbone.body.*
    beside FPN and head keys) loads too. Anything else stays strict: a missing body key is refused."""
    from resdsl.weights import load_into

    classifier = build(SPECS / "torchvision" / "resnet50.yaml", seed=3).eval()
    state = classifier.state_dict()
    torch.save(state, tmp_path / "cls.pt")
    backbone = build(SPECS / "backbones" / "resnet50-fpn.yaml", seed=0).eval()
    entry = load_into(backbone, tmp_path / "cls.pt")
    assert entry["dropped"] == 2 and "fc" in entry["note"]
    x = torch.randn(1, 3, 67, 91)
    names = {o.name: o.node for o in backbone.graph.outputs}
    with torch.no_grad():
        want = classifier.forward_intermediates(x, list(names.values()))
        got = backbone(x)
    for stage, node in names.items():
        torch.testing.assert_close(got[stage], want[node], rtol=0, atol=0)
    detector = {f"backbone.body.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    detector["backbone.fpn.inner_blocks.0.0.weight"] = torch.zeros(256, 256, 1, 1)
    detector["rpn.head.conv.0.0.weight"] = torch.zeros(256, 256, 3, 3)
    torch.save({"model": detector}, tmp_path / "det.pt")
    other = build(SPECS / "backbones" / "resnet50-fpn.yaml", seed=1).eval()
    entry = load_into(other, tmp_path / "det.pt")
    assert entry["dropped"] == 2 and "backbone.body" in entry["note"]
    with torch.no_grad():
        torch.testing.assert_close(other(x)["conv5_x"], got["conv5_x"], rtol=0, atol=0)
    broken = {k: v for k, v in state.items() if k != "layer2.0.conv1.weight"}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(InputError, match=r"1 missing: layer2\.0\.conv1\.weight"):
        load_into(build(SPECS / "backbones" / "resnet50-fpn.yaml").eval(), tmp_path / "broken.pt")
    with pytest.raises(InputError, match="unexpected"):  # a classifier spec stays strict about extra keys
        torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
        load_into(build(SPECS / "torchvision" / "resnet50.yaml").eval(), tmp_path / "extra.pt")


BAD = """
resdsl: 1
name: bad
block: basic
input: {{size: 32}}
stem: {{conv: {{channels: 16, kernel: 3, stride: 1}}}}
stages: [{{width: 16, blocks: 1}}, {{width: 32, blocks: 1, stride: 2}}, {{width: 64, blocks: 1, stride: 2}}]
head: {{classes: 10}}
{extra}
"""


@pytest.mark.parametrize(("extra", "message"), [
    ("outputs: [conv3_x, conv9_x]", r"outputs\[1\]: 'conv9_x' is not a stage of this spec"),
    ("outputs: [conv3_x, conv3_x]", r"outputs\[1\]: 'conv3_x' is listed twice"),
    ("outputs: []", r"outputs: needs at least one output"),
    ("outputs: [logit]", r"'logit' is not a stage of this spec \(did you mean 'logits'\?\)"),
    ("output_stride: 8", r"output_stride: 8 is not a stride this net reaches after its stem or a stage \(1, 2, 4\)"),
    ("output_stride: 3", r"output_stride: 3 is not a stride"),
])
def test_bad_outputs_and_output_strides_are_refused_with_their_key(extra: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        loads(BAD.format(extra=extra))


def test_a_cifar_net_dilates_below_its_own_stride_and_keeps_its_logits() -> None:
    """output_stride on a net with a head: the logits stay (DeepLab fine-tunes that way); conv4_x dilated by 2,
    the feature map stays 16x16, and the module's logits equal a hand-dilated torch equivalent's shapes."""
    spec = loads(BAD.format(extra="outputs: [conv3_x, logits]\noutput_stride: 2"))
    graph = expand(spec)
    assert [(o.name, o.stride) for o in graph.outputs] == [("conv3_x", 2), ("logits", 0)]
    convs = {n.name: n for n in graph.nodes if n.op == "conv"}
    assert convs["layer3.0.conv1"].attrs["dilation"] == 1 and convs["layer3.0.conv2"].attrs["dilation"] == 2
    assert convs["layer3.0.conv2"].attrs["padding"] == 2 and convs["layer3.0.conv2"].shape == (64, 16, 16)
    out = build(spec).eval()(torch.randn(2, 3, 32, 32))
    assert list(out) == ["conv3_x", "logits"] and out["logits"].shape == (2, 10)


def test_what_needs_logits_is_refused_for_a_backbone(tmp_path: Path) -> None:
    spec = SPECS / "backbones" / "resnet50-fpn.yaml"
    with pytest.raises(OptionError, match=r"CompileOptions.eval_data .* returns conv2_x, conv3_x, conv4_x, conv5_x, "
                                          r"not logits"):
        compile_spec(spec, CompileOptions(out=tmp_path / "a", eval_data=tmp_path, random_weights_ok=True))
    with pytest.raises(OptionError, match=r"CompileOptions.precision int8 .* not logits"):
        compile_spec(spec, CompileOptions(out=tmp_path / "a", precision="int8", calibration=tmp_path,
                                          random_weights_ok=True))
    assert not (tmp_path / "a").exists()


@pytest.fixture(scope="module")
def ranged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR ResNet-20 (a classifier) compiled over a size range."""
    out = tmp_path_factory.mktemp("ranged") / "r20"
    compile_spec(SPECS / "cifar" / "resnet20.yaml", CompileOptions(out=out, size="24x24:32x32:48x40"))
    return out


def test_a_classifier_over_a_size_range_serves_and_refuses_sizes(ranged: Path) -> None:
    m = json.loads((ranged / "manifest.json").read_text())
    assert m["inputs"][0]["shape"] == ["batch", 3, "height", "width"] and m["outputs"][0]["shape"] == ["batch", 10]
    assert m["size"] == {"min": [24, 24], "opt": [32, 32], "max": [48, 40], "dynamic": True}
    assert {tuple(c["size"]) for c in m["verification"]["checks"]} == {(24, 24), (32, 32), (48, 40), (37, 33)}
    import onnx

    graph = onnx.load(ranged / "model.onnx").graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    art = load_artefact(ranged)
    x = np.random.default_rng(0).standard_normal((2, 3, 41, 27)).astype(np.float32)
    with torch.no_grad():
        ref = build(SPECS / "cifar" / "resnet20.yaml", seed=0).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(art(x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    with pytest.raises(InputError, match=r"input size 50x30 is outside .* range 24x24 to 48x40"):
        art(np.zeros((1, 3, 50, 30), np.float32))


def test_verify_re_runs_every_size_of_the_range(ranged: Path, cli: Any) -> None:
    r = cli("verify", str(ranged))
    assert r.returncode == 0, r.stderr
    assert "37x33" in r.stdout + r.stderr


def test_a_fixed_size_compiles_the_spec_at_that_size(tmp_path: Path) -> None:
    out, m = compile_spec(SPECS / "cifar" / "resnet20.yaml", CompileOptions(out=tmp_path / "a", size="40x24",
                                                                            target="torch"))
    assert m.inputs[0].shape == [1, 3, 40, 24] or m.inputs[0].shape == ["batch", 3, 40, 24]
    assert m.spec["resolved"]["input"]["size"] == [40, 24]
    assert load_artefact(out)(np.zeros((1, 3, 40, 24), np.float32)).shape == (1, 10)


def test_compile_cli_goes_from_a_shipped_backbone_to_a_verified_multi_output_onnx(tmp_path: Path, cli: Any) -> None:
    """The README's backbone command, at a small range: one command, every output verified."""
    r = cli("compile", str(SPECS / "backbones" / "timm-resnet50d-os16.yaml"), "--size", "64x64:96x96:128x128",
            "-o", str(tmp_path / "bb"), "--batch", "1")
    assert r.returncode == 0, r.stderr
    assert "every output (conv2_x, conv3_x, conv4_x, conv5_x) equals the module's" in r.stdout
    m = json.loads((tmp_path / "bb" / "manifest.json").read_text())
    assert [(t["name"], t["stride"]) for t in m["outputs"]] == [("conv2_x", 4), ("conv3_x", 8), ("conv4_x", 16),
                                                                 ("conv5_x", 16)]


def test_flops_does_not_import_torch_for_a_backbone() -> None:
    code = ("import sys; from resdsl.cli import main; main(['flops', "
            f"{str(SPECS / 'backbones' / 'resnet50-fpn.yaml')!r}, '--size', '800x1216']); "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False"


def test_draw_marks_the_returned_stages_and_the_dilations() -> None:
    from resdsl.figure import Block, node_text, picture, stage_lines

    spec = load(SPECS / "backbones" / "deeplab-resnet101-os8.yaml")
    graph = expand(spec)
    pic = picture(spec, graph, count(graph))
    names = [stage_lines(s)[0] for s in pic.stages]
    assert names == ["conv1", "conv2_x", "conv3_x", "conv4_x \u2192 output, stride 8",
                     "conv5_x \u2192 output, stride 8"]
    texts = {s.name: [b.text for item in s.items if isinstance(item, Block) for b in item.boxes] for s in pic.stages}
    assert "3x3 conv, 256, dil 2" in texts["conv4_x"] and "3x3 conv, 256" in texts["conv4_x"]  # first unit: 1
    assert "3x3 conv, 512, dil 2" in texts["conv5_x"] and "3x3 conv, 512, dil 4" in texts["conv5_x"]
    assert node_text(graph.node("layer2.0.conv2")) == "3x3 conv, 128, /2"


def test_bench_times_a_size_inside_the_range_and_counts_it_there(ranged: Path) -> None:
    from dataclasses import replace

    from resdsl.benchmark import bench
    from resdsl.options import BenchOptions

    r = bench(ranged, BenchOptions(bench_size="41x27", iterations=2, warmup=0))
    spec = load(SPECS / "cifar" / "resnet20.yaml")
    assert r.input_size == [41, 27] and r.gmacs == round(count(expand(replace(spec, in_size=(41, 27)))).macs / 1e9, 4)
    assert "at 41x27" in r.table()
    with pytest.raises(OptionError, match=r"BenchOptions.bench_size 60x60: outside .* input sizes 24x24 to 48x40"):
        bench(ranged, BenchOptions(bench_size="60x60", iterations=1))


def test_evaluate_refuses_a_net_without_logits(tmp_path: Path, digits: Path) -> None:
    from resdsl.evaluate import evaluate
    from resdsl.options import EvalOptions

    out, _ = compile_spec(SPECS / "backbones" / "resnet50-fpn.yaml", CompileOptions(out=tmp_path / "a",
                                                                                     size="32x32", batch="1"))
    with pytest.raises(InputError, match=r"returns conv2_x, conv3_x, conv4_x, conv5_x .* not logits"):
        evaluate(out, EvalOptions(data=digits))


FAMILIES = ["cifar/resnet20", "cifar/plain20", "preact/resnet164", "resnet34-c", "fashion/resnet20-se-d",
            "timm/ecaresnet50d", "timm/seresnext50_32x4d", "resnet50"]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_as_a_dilated_backbone_with_logits_through_onnx(name: str, tmp_path: Path) -> None:
    """Every block, shortcut (A, B, C, D, none), stem and attention as a backbone: all stages and the logits
    returned, the last strided stage dilated; at two sizes of a symbolic-size ONNX model every output equals the
    torch module's (at most two units per stage, inputs up to 64 pixels)."""
    from resdsl.backends import onnx as ob

    from .test_onnx_backend import rel_err, trained_looking

    base = load(SPECS / f"{name}.yaml")
    doc = json.loads(json.dumps(base.resolved))
    doc["stages"] = [{**s, "blocks": min(s["blocks"], 2)} for s in doc["stages"]]
    doc.pop("expect", None)
    names = [s.name for s in base.stages]
    strides = [s.stride for s in base.stages]
    net = base.stem.stride
    reached = [net := net * s for s in strides]
    doc.update(outputs=[*names, "logits"], output_stride=reached[-2])  # the last strided stage dilates
    spec = from_resolved(doc, base.source)
    graph = expand(spec)
    assert [o.stride for o in graph.outputs[:-1]] == [min(r, reached[-2]) for r in reached]
    assert any(n.attrs.get("dilation", 1) == 2 for n in graph.nodes)
    model = trained_looking(spec).eval()
    info = ob.export(model, tmp_path / "m.onnx", dynamic_size=True)
    sess = ob.session(info.path, providers=["CPUExecutionProvider"])
    c = spec.in_channels
    for h, w in ((40, 56), (33, 47)):
        x = np.random.default_rng(h).standard_normal((2, c, h, w)).astype(np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x))
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x}), strict=True))
        assert list(got) == [*names, "logits"]
        for k, v in want.items():
            assert got[k].shape == tuple(v.shape) and rel_err(got[k], v.numpy()) < 1e-5, (name, k, h, w)


def test_a_size_range_with_torch_s_exporter_is_refused_before_any_work(tmp_path: Path, cli: Any) -> None:
    r = cli("compile", str(SPECS / "cifar" / "resnet20.yaml"), "--exporter", "torch", "--size", "24x24:32x32:40x40",
            "-o", str(tmp_path / "a"))
    assert r.returncode == 2 and "--exporter torch with --size 24x24:32x32:40x40" in r.stderr
    assert "building" not in r.stderr and not (tmp_path / "a").exists()


def test_a_net_returning_feature_maps_beside_its_logits_goes_int8_and_is_judged_on_its_logits(
        tmp_path: Path, digits: Path) -> None:
    """outputs [conv3_x, logits]: int8 calibrates, ranks layers and checks top-1 on the logits output, and
    evaluate reads the logits among the outputs: its top-1 equals the one recomputed here from the artefact's
    logits output on the same preprocessed images."""
    from resdsl.evaluate import evaluate
    from resdsl.options import EvalOptions

    base = load(SPECS / "cifar" / "resnet20.yaml")
    spec = from_resolved({**base.resolved, "outputs": ["conv3_x", "logits"]}, base.source)
    out, m = compile_spec(_as_yaml(spec, tmp_path), CompileOptions(
        out=tmp_path / "a", precision="int8", calibration=digits, eval_data=digits, random_weights_ok=True,
        calibration_samples=64, sensitivity_samples=32))
    assert [t.name for t in m.outputs] == ["conv3_x", "logits"] and m.verification["accuracy"]["passed"]
    r = evaluate(out, EvalOptions(data=digits, limit=64))
    from resdsl.data import preprocessing
    from resdsl.readers import load_dataset

    ds = load_dataset(digits, classes=10, size=(32, 32), channels=3)
    x = preprocessing(spec.normalize, ds, None).apply(ds.test_x[:64]).numpy()
    art = load_artefact(out)
    parts = [art(x[i:i + 32]) for i in (0, 32)]  # within its batch range, 1..32
    assert all(list(p) == ["conv3_x", "logits"] for p in parts)
    logits = np.concatenate([p["logits"] for p in parts])
    assert logits.shape == (64, 10)
    top1 = 100.0 * float((logits.argmax(1) == ds.test_y[:64].numpy()).mean())
    assert r.images == 64 and r.artefact.top1 == pytest.approx(top1)


def test_a_manifest_with_symbolic_sides_but_no_size_range_is_refused(ranged: Path, tmp_path: Path) -> None:
    import shutil

    damaged = shutil.copytree(ranged, tmp_path / "damaged")
    m = json.loads((damaged / "manifest.json").read_text())
    del m["size"]
    (damaged / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match=r"height and width are symbols .* but there is no 'size' range"):
        load_artefact(damaged)
