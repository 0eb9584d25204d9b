"""Analytic counts against outside oracles: the paper, torchvision, FlopCounterMode, the module itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from resdsl import build, count, expand, load
from resdsl.report import check_expect

from .conftest import SPECS, VALID_SPECS, spec_id


@pytest.mark.parametrize("path", VALID_SPECS, ids=spec_id)
def test_analytic_counts_equal_flop_counter_and_module(path: Path) -> None:
    """MACs == FlopCounterMode / 2 exactly; params == the module's; on the meta device (no compute)."""
    spec = load(path)
    graph = expand(spec)
    report = count(graph)
    model = build(spec, device="meta")
    x = torch.empty(1, spec.in_channels, *spec.in_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        y = model(x)
    got = y if isinstance(y, dict) else {spec.outputs[0]: y}
    assert list(got) == list(spec.outputs)
    if spec.has_head:
        assert tuple(got["logits"].shape) == (1, spec.classes)
    assert {k: tuple(v.shape) for k, v in got.items()} == {o.name: (1, *graph.node(o.node).shape)
                                                          for o in graph.outputs}
    assert counter.get_total_flops() == 2 * report.macs
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == report.params


@pytest.mark.parametrize("path", VALID_SPECS, ids=spec_id)
def test_expect_holds(path: Path) -> None:
    spec = load(path)
    results = check_expect(spec, count(expand(spec)))
    assert all(r.ok for r in results), [str(r) for r in results if not r.ok]


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_table1_paper_and_exact_figures(name: str, figures: dict) -> None:
    ref = figures["table1"][name]
    v1 = count(expand(load(SPECS / f"{name}.yaml")))
    v15 = count(expand(load(SPECS / "torchvision" / f"{name}.yaml")))
    assert abs(v1.macs / 1e9 - ref["paper_gflops"]) < 0.1           # the Table 1 check
    assert round(v1.macs / 1e9, 4) == ref["v1_gmacs"]
    assert round(v15.macs / 1e9, 4) == ref["v15_gmacs"]
    assert v1.params == v15.params == ref["params"]
    tv = figures["torchvision_published"][name]
    assert round(v15.macs / 1e9, 3) == tv["gflops"] and v15.params == tv["params"]
    assert v1.depth == int(name.removeprefix("resnet"))


def test_option_a_resnet34_is_the_papers_36_billion(figures: dict) -> None:
    r = count(expand(load(SPECS / "resnet34-a.yaml")))
    assert round(r.macs / 1e9, 4) == figures["resnet34_option_a_gmacs"]


@pytest.mark.parametrize("depth", ["20", "32", "44", "56", "110", "1202"])
def test_cifar_params_match_the_paper(depth: str, figures: dict) -> None:
    r = count(expand(load(SPECS / "cifar" / f"resnet{depth}.yaml")))
    paper = figures["cifar_paper_mparams"][depth]
    digits = len(str(paper).split(".")[1])
    assert round(r.params / 1e6, digits) == paper
    assert r.depth == int(depth)


@pytest.mark.parametrize("depth", ["164", "1001"])
def test_preact_cifar_params_match_identity_mappings(depth: str, figures: dict) -> None:
    """The 2016 paper's counts are conv+fc weights (no BN scale/shift): see specs/preact/resnet1001.yaml."""
    spec = load(SPECS / "preact" / f"resnet{depth}.yaml")
    r = count(expand(spec))
    weights_only = sum(n.params for n in r.nodes if n.op in ("conv", "fc"))
    assert round(weights_only / 1e6, 1) == figures["preact_cifar_paper_mparams"][depth]
    assert r.depth == int(depth)


@pytest.mark.parametrize("depth", ["164", "1001"])
def test_preact_cifar_counts_equal_the_authors_code(depth: str, figures: dict) -> None:
    """Exact counts of resnet-pre-act.lua (KaimingHe/resnet-1k-layers), worked out by hand in paper-figures.json:
    the projection shortcut is a bare 1x1 conv (no BN), so BN parameters are the units' and the final BN's only."""
    ref = figures["preact_cifar_authors_code"][depth]
    r = count(expand(load(SPECS / "preact" / f"resnet{depth}.yaml")))
    assert (r.params, r.macs) == (ref["params"], ref["macs"])
    assert sum(n.params for n in r.nodes if n.op in ("conv", "fc")) == ref["conv_fc_params"]
    assert sum(n.params for n in r.nodes if n.op == "bn") == ref["bn_params"]
    # the README's note on ResNet-1001: 10.2M conv+fc weights in the paper, 10.33M with BN
    assert round(ref["params"] / 1e6, 2) == {"164": 1.70, "1001": 10.33}[depth]


def test_preact_projection_is_a_bare_conv_and_postact_keeps_its_bn() -> None:
    pre = expand(load(SPECS / "preact" / "resnet164.yaml"))
    names = {n.name for n in pre.nodes}
    shortcuts = sorted(n.name for n in pre.nodes if ".downsample" in n.name)
    assert shortcuts == ["layer1.0.downsample.0", "layer2.0.downsample.0", "layer3.0.downsample.0"]
    for i in (1, 2, 3):  # the unit's sum takes the conv's output directly
        assert pre.node(f"layer{i}.0.add").inputs == (f"layer{i}.0.conv3", f"layer{i}.0.downsample.0")
        assert pre.node(f"layer{i}.0.downsample.0").op == "conv"
    assert not any(n.endswith("downsample.1") for n in names)
    post = expand(load(SPECS / "resnet50.yaml"))  # torchvision's layout: conv then BN
    assert post.node("layer2.0.downsample.1").op == "bn"
    assert post.node("layer2.0.add").inputs == ("layer2.0.bn3", "layer2.0.downsample.1")


def test_plain_and_residual_nets_share_flops_under_option_a() -> None:
    plain, res = count(expand(load(SPECS / "plain34.yaml"))), count(expand(load(SPECS / "resnet34-a.yaml")))
    assert plain.macs == res.macs and plain.params == res.params


def test_stage_totals_add_up_and_shapes_follow_table1() -> None:
    r = count(expand(load(SPECS / "resnet50.yaml")))
    assert sum(s.macs for s in r.stages) == r.macs and sum(s.params for s in r.stages) == r.params
    assert [s.out_shape for s in r.stages] == [(64, 112, 112), (256, 56, 56), (512, 28, 28), (1024, 14, 14),
                                               (2048, 7, 7), (1000,)]
    assert [s.blocks for s in r.stages[1:5]] == [3, 4, 6, 3]


def test_flops_unit_is_twice_macs() -> None:
    r = count(expand(load(SPECS / "resnet18.yaml")))
    assert r.to_dict("flops")["total"] == 2 * r.to_dict("macs")["total"] == 2 * r.macs


@pytest.mark.parametrize(("name", "size"), [("torchvision/resnet50", (800, 1216)), ("timm/ecaresnet50d", (799, 1215)),
                                            ("cifar/resnet20", (33, 47))])
def test_counts_at_another_input_size(name: str, size: tuple[int, int], tmp_path: Path) -> None:
    """``resdsl flops --size`` (run without torch) equals FlopCounterMode on the module built at that size, and
    its stage outputs follow the conv arithmetic (odd sizes too, where padding and ceil-mode pooling round)."""
    import dataclasses
    import json
    import subprocess
    import sys

    from .conftest import ROOT

    code = ("import sys; sys.modules['torch'] = None; from resdsl.cli import main; "
            f"sys.exit(main(['flops', 'specs/{name}.yaml', '--size', '{size[0]}x{size[1]}', '--json']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["input"][1:] == list(size)
    assert all(e["key"] != "gflops" for e in doc["expect"])  # the spec's FLOPs are for its own size
    spec = dataclasses.replace(load(SPECS / f"{name}.yaml"), in_size=size)
    model = build(spec, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, spec.in_channels, *size, device="meta"))
    assert doc["total"] == sum(s["total"] for s in doc["stages"]) == counter.get_total_flops() // 2
    outs = {s["name"]: s["output"] for s in doc["stages"]}
    got = model.forward_intermediates(torch.empty(1, spec.in_channels, *size, device="meta"),
                                      [n.name for n in model.graph.nodes])
    last = {n.stage: n.name for n in model.graph.nodes}
    for stage, shape in outs.items():  # each stage's output: what the module computes at that size
        assert list(got[last[stage]].shape[1:]) == shape, stage
    if name == "torchvision/resnet50":  # by hand: 7x7/2 stem, 3x3/2 pool, then /2 per later stage
        assert [outs[s][1:] for s in ("conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x")] == [
            [400, 608], [200, 304], [100, 152], [50, 76], [25, 38]]
        assert doc["stages"][0]["total"] == 64 * 3 * 49 * 400 * 608  # conv1 alone: BN and ReLU count nothing


@pytest.mark.parametrize("bad", ["0x5", "800x", "800x99999", "big"])
def test_a_bad_size_names_the_flag(bad: str, cli: Any) -> None:
    r = cli("flops", str(SPECS / "resnet50.yaml"), "--size", bad)
    assert r.returncode == 2 and f"--size {bad!r}: give the input's height and width as HxW" in r.stderr


@pytest.mark.parametrize("name", ["cifar/resnet20", "timm/ecaresnet50d", "preact/resnet164", "resnet34-a"])
def test_counted_probe_equals_flop_counter_on_meta(name: str) -> None:
    """The compile's FLOP cross-check counts the real batch-1 pass (verify.counting_flops): the same total as
    torch's FlopCounterMode run as shipped on the meta device, and nothing of its dynamo shortcut left behind."""
    from torch.utils import flop_counter

    from resdsl.verify import Reference

    spec = load(SPECS / f"{name}.yaml")
    meta = build(spec, device="meta").eval()
    with FlopCounterMode(display=False) as counter:
        meta(torch.empty(1, spec.in_channels, *spec.in_size, device="meta"))
    raw = flop_counter._FlopCounterMode.__dict__["__torch_dispatch__"]
    raw = getattr(raw, "__wrapped__", raw)
    before = hasattr(raw, "__dynamo_disable")
    reference = Reference(lambda: build(spec, seed=0).eval())
    assert 2 * reference.traced_macs() == counter.get_total_flops() > 0
    assert hasattr(raw, "__dynamo_disable") == before


def test_compile_does_not_import_dynamo(tmp_path: Path) -> None:
    """An ONNX compile with the IR exporter never needs torch._dynamo (1.1 s of import): the FLOP cross-check
    counts without it. Run in a fresh process, since the test process may have imported it."""
    import subprocess
    import sys

    code = ("import sys; from resdsl.pipeline import CompileOptions, compile_spec; "
            f"compile_spec({str(SPECS / 'cifar' / 'resnet20.yaml')!r}, CompileOptions(target='onnx', out="
            f"__import__('pathlib').Path({str(tmp_path / 'a')!r}))); "
            "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo'))[:3])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "a" / "manifest.json").is_file()
