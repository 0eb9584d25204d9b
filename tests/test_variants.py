"""The spec language beyond Table 1: deep stems, shortcut D, squeeze-and-excitation and ECA, checked against timm.

The oracles are timm's own models built from its source (tests/data/timm-reference.md): their state_dict
layouts, parameter and multiply-add counts, published parameter counts and logits under fixed weights; torch
itself for the pooled shapes; and images the int8 scales never saw.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from resdsl import build, count, expand, load, loads
from resdsl.layout import state_layout
from resdsl.manifest import read
from resdsl.pipeline import CompileOptions, compile_spec
from resdsl.spec import Spec

from .conftest import DATA, SPECS
from .golden import reference_weights

TIMM = json.loads((DATA / "timm-resnet-reference.json").read_text())
GOLDEN = json.loads((DATA / "timm-golden-logits.json").read_text())
SHIPPED = sorted(p.stem for p in (SPECS / "timm").glob("*.yaml"))
#: timm nets with a "tiered" deep stem (24, 32, 64 channels), checked through specs written here (not shipped).
TIERED = {"resnet26t": [2, 2, 2, 2], "resnet50t": [3, 4, 6, 3]}
TIERED_SPEC = """
resdsl: 1
name: {name}
block: bottleneck
downsample: 3x3
shortcut: D
stem: {{conv: {{channels: [24, 32, 64], kernel: 3, stride: 2}}, pool: {{}}}}
stages:
  - {{width: 64, blocks: {0}}}
  - {{width: 128, blocks: {1}, stride: 2}}
  - {{width: 256, blocks: {2}, stride: 2}}
  - {{width: 512, blocks: {3}, stride: 2}}
"""


def _spec(name: str) -> Spec:
    if name in TIERED:
        return loads(TIERED_SPEC.format(*TIERED[name], name=name))
    return load(SPECS / "timm" / f"{name}.yaml")


def test_the_issue_s_nets_are_shipped() -> None:
    assert set(SHIPPED) >= {"resnet18d", "resnet26d", "resnet34d", "resnet50d", "resnet101d", "resnet152d",
                            "resnet50c", "resnet50s", "seresnet50", "seresnext50_32x4d", "ecaresnet50d"}
    assert set(SHIPPED) <= set(TIMM["models"])


@pytest.mark.parametrize("name", SHIPPED + sorted(TIERED))
def test_counts_and_layout_equal_timm_s_own_model(name: str) -> None:
    """state_dict keys and shapes, parameters and MACs (conv and fc multiply-adds) exactly as timm's model."""
    ref = TIMM["models"][name]
    graph = expand(_spec(name))
    assert [(k, list(s)) for k, s in state_layout(graph)] == [(k, s) for k, s in ref["state_dict"]]
    report = count(graph)
    assert (report.params, report.macs) == (ref["num_params"], ref["macs"])


@pytest.mark.parametrize("name", SHIPPED)
def test_expect_carries_timm_s_published_parameter_count(name: str) -> None:
    ref = TIMM["models"][name]
    spec = load(SPECS / "timm" / f"{name}.yaml")
    published = ref["published_param_count_m"]
    assert published is not None, f"{name}: no published count in the reference data"
    assert spec.expect.mparams == float(published)
    decimals = len(published.split(".")[1]) if "." in published else 0
    assert round(ref["num_params"] / 1e6, decimals) == float(published)
    assert spec.expect.params == ref["num_params"]


CASES = [(name, case) for name, case in sorted(GOLDEN["models"].items())] + \
    [(case["model"], case) for case in GOLDEN["extra_cases"]]


@pytest.mark.parametrize(("name", "case"), CASES, ids=[f"{n}-{c['input_size'][0]}" for n, c in CASES])
def test_logits_equal_timm_s_under_the_same_weights(name: str, case: dict) -> None:
    """timm's state_dict loads strictly (the reference data loaded it into timm's module too), and the logits and
    the pooled features before fc agree within 1e-5 relative. At 72x72 the pooled shortcuts see odd maps (9x9,
    5x5), where ceil mode decides the shape."""
    model = build(_spec(name)).eval()
    model.load_state_dict(reference_weights(TIMM["models"][name]["state_dict"]), strict=True)
    h, w = case["input_size"]
    x = torch.linspace(-1, 1, 3 * h * w).reshape(1, 3, h, w)
    with torch.no_grad():
        out = model.forward_intermediates(x, ["avgpool", "fc"])
    for key, got in (("logits", out["fc"]), ("pre_logits", out["avgpool"])):
        if key in case:
            gold = np.array(case[key])
            assert gold.std() > 0
            np.testing.assert_allclose(got[0].double().numpy(), gold, rtol=1e-5, atol=1e-5 * np.abs(gold).max())


SMALL = """
resdsl: 1
name: small-{att}
input: {{size: {size}}}
block: bottleneck
downsample: 3x3
shortcut: D
attention: {{kind: {att}}}
stem: {{conv: {{channels: [8, 8, 16], kernel: 3, stride: 2}}, pool: {{}}}}
stages: [{{width: 8, blocks: 2}}, {{width: 16, blocks: 1, stride: 2}}, {{width: 16, blocks: 1, stride: 2}}]
head: {{classes: 7}}
"""


@pytest.mark.parametrize("att", ["se", "eca"])
@pytest.mark.parametrize("size", ["97", "[75, 50]"])
def test_shapes_and_counts_at_odd_sizes_follow_torch(att: str, size: str) -> None:
    """Every node's shape is what torch computes (the ceil-mode pools of shortcut D at odd sizes included), and
    MACs equal FlopCounterMode's count."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = loads(SMALL.format(att=att, size=size))
    graph = expand(spec)
    model = build(spec).eval()
    x = torch.randn(1, 3, *spec.in_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        outs = model.forward_intermediates(x)
    assert {n.name: n.shape for n in graph.nodes} == {k: tuple(v.shape[1:]) for k, v in outs.items()}
    assert counter.get_total_flops() == 2 * count(graph).macs
    pools = [n for n in graph.nodes if n.op == "avgpool"]
    assert pools and all(n.attrs["ceil_mode"] and not n.attrs["count_include_pad"] for n in pools)


def test_shortcut_d_pools_only_where_the_stride_is_two() -> None:
    graph = expand(load(SPECS / "timm" / "resnet50d.yaml"))
    pools = {n.name for n in graph.nodes if n.op == "avgpool"}
    assert pools == {"layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"}
    assert graph.node("layer1.0.downsample.1").attrs["stride"] == 1  # stride 1, channels 64 -> 256: no pool


def test_a_timm_checkpoint_of_another_net_names_the_spec_it_fits(tmp_path: Path, cli: Any) -> None:
    """timm's resnet50d weights given to torchvision's ResNet-50: the error names specs/timm/resnet50d.yaml."""
    state = {k: torch.zeros(s) for k, s in TIMM["models"]["resnet50d"]["state_dict"]}
    torch.save(state, tmp_path / "resnet50d.pth")
    r = cli("compile", str(SPECS / "torchvision" / "resnet50.yaml"), "--target", "torch", "-o",
            str(tmp_path / "out"), "--weights", str(tmp_path / "resnet50d.pth"))
    assert r.returncode == 2 and "timm/resnet50d.yaml" in r.stderr and "conv1.0.weight" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_report_shows_the_deep_stem_and_the_attention(cli: Any) -> None:
    r = cli("flops", str(SPECS / "timm" / "ecaresnet50d.yaml"))
    assert r.returncode == 0, r.stderr
    assert "3x3, 32-32-64, stride 2" in r.stdout and "ECA]" in r.stdout and "shortcut D" in r.stdout


# --------------------------------------------------------------------------- ONNX, fp16 and int8
# ResNet-20s with a deep stem, shortcut D and SE or ECA, trained on the digits (tests/data/digits-resnet20-se.md).

def _trained(att: str) -> tuple[Path, Path]:
    return DATA / f"digits-resnet20-{att}.yaml", DATA / f"digits-resnet20-{att}.pt"


@pytest.fixture(scope="module")
def quantized(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    d = tmp_path_factory.mktemp("variants-int8")
    out = {}
    for att in ("se", "eca"):
        spec, weights = _trained(att)
        for scheme in ("ort", "trt"):
            out[att, scheme] = compile_spec(spec, CompileOptions(
                target="onnx", out=d / f"{att}-{scheme}", weights=weights, precision="int8", calibration=digits,
                quant_scheme=scheme, calibration_samples=256, sensitivity_samples=0))[0]
    return out


@pytest.mark.parametrize("att", ["se", "eca"])
@pytest.mark.parametrize("scheme", ["ort", "trt"])
def test_int8_keeps_accuracy_with_pooled_shortcuts_and_attention(quantized: dict, att: str, scheme: str) -> None:
    """The average pool and the attention's pool-conv-sigmoid-multiply survive quantization: top-1 on the 300
    held-out digits within the 1-point budget of the fp32 module."""
    path = quantized[att, scheme]
    m = read(path)
    acc = m.verification["accuracy"]  # type: ignore[index]
    assert acc["passed"] and acc["images"] == 300 and acc["drop"] <= 1.0 and acc["module"]["top1"] > 80.0
    model = onnx.load(path / "model.onnx")
    ops = {n.op_type for n in model.graph.node}
    assert {"AveragePool", "Sigmoid", "Mul", "QuantizeLinear", "DequantizeLinear"} <= ops
    if scheme == "trt":
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        zps = [inits[n.input[2]] for n in model.graph.node if n.op_type.endswith("QuantizeLinear") and len(n.input) > 2]
        assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)


@pytest.mark.parametrize("att", ["se", "eca"])
def test_fp16_onnx_of_the_variants_verifies(att: str, tmp_path: Path, digits: Path) -> None:
    spec, weights = _trained(att)
    out, _ = compile_spec(spec, CompileOptions(target="onnx", out=tmp_path / "fp16", weights=weights,
                                               precision="fp16", eval_data=digits))
    m = read(out)
    assert m.precision == "fp16" and m.verification["accuracy"]["drop"] <= 1.0  # type: ignore[index]
    assert not math.isnan(m.verification["accuracy"]["artefact"]["top1"])  # type: ignore[index]


@pytest.mark.slow
@pytest.mark.parametrize("att", ["se", "eca"])
def test_aoti_of_the_variants_verifies(att: str, tmp_path: Path) -> None:
    """The AOTInductor target compiles the pooled shortcut and the attention and matches the module."""
    spec, weights = _trained(att)
    out, _ = compile_spec(spec, CompileOptions(target="aoti", out=tmp_path / "aoti", weights=weights))
    m = read(out)
    v = m.verification
    assert m.target == "aoti" and v is not None and v["passed"] and v["flops"]["passed"]
    assert v["checks"] and all(c["backend"] == "aoti" and c["rel"] <= 1e-4 for c in v["checks"])


@pytest.mark.parametrize("att", ["se", "eca"])
def test_int8_variants_reach_tensorrt_as_a_strongly_typed_build(quantized: dict, att: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the TensorRT stand-in (tests/fake_tensorrt.py): the Q/DQ model with the pooled shortcuts and the
    attention is parsed into a strongly typed network with fp32 I/O and no precision flag. (ECA's Conv1d reaches
    TensorRT's ONNX parser as a 1-D Conv, which the parser runs as a 2-D one over an unsqueezed axis.)"""
    from resdsl.backends import trt_build
    from resdsl.options import BatchProfile, TrtOptions

    from . import fake_tensorrt

    monkeypatch.setattr(trt_build, "_import_trt", lambda: fake_tensorrt)
    monkeypatch.setattr(trt_build, "_require_gpu", lambda: ("NVIDIA H100 80GB HBM3", "9.0"))
    onnx_file = quantized[att, "trt"] / "model.onnx"
    info = trt_build.build_engine(onnx_file, tmp_path / "m.engine", BatchProfile.parse("1:8:32"), TrtOptions(),
                                  precision="int8", io="fp32")
    engine = json.loads((tmp_path / "m.engine").read_bytes())
    assert engine["strongly_typed"] and engine["builder_flags"] == []
    assert [t[2] for t in engine["io"]] == ["float32", "float32"] and info["options"]["precision"] == "int8"


def test_a_timm_safetensors_checkpoint_compiles_and_gives_timm_s_logits(tmp_path: Path, cli: Any) -> None:
    """timm publishes its weights as safetensors: such a file (here timm's layout under the reference weights)
    compiles with --weights and the artefact gives the logits timm's own model gave; a truncated copy is refused
    with nothing written."""
    from safetensors.torch import save_file

    from resdsl.runtime import load as load_artefact

    name = "resnet50d"  # the artefact takes the spec's 224x224 input: timm's logits at 224
    case = next(c for c in GOLDEN["extra_cases"] if c["model"] == name and c["input_size"] == [224, 224])
    save_file(reference_weights(TIMM["models"][name]["state_dict"]), tmp_path / "model.safetensors")
    r = cli("compile", str(SPECS / "timm" / f"{name}.yaml"), "--target", "torch", "-o", str(tmp_path / "art"),
            "--weights", str(tmp_path / "model.safetensors"))
    assert r.returncode == 0, r.stderr
    assert read(tmp_path / "art").weights["format"] == "safetensors"  # type: ignore[index]
    h, w = case["input_size"]
    x = np.linspace(-1, 1, 3 * h * w, dtype=np.float32).reshape(1, 3, h, w)
    gold = np.array(case["logits"])
    np.testing.assert_allclose(load_artefact(tmp_path / "art")(x)[0], gold, rtol=1e-5, atol=1e-5 * np.abs(gold).max())
    blob = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) // 2])
    r = cli("compile", str(SPECS / "timm" / f"{name}.yaml"), "--target", "torch", "-o", str(tmp_path / "cut"),
            "--weights", str(tmp_path / "cut.safetensors"))
    assert r.returncode == 2 and "cut.safetensors" in r.stderr and "truncated" in r.stderr, r.stderr
    assert not (tmp_path / "cut").exists()
