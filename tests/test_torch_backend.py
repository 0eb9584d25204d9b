"""The PyTorch lowering: torchvision's layout and logits, training, the papers' shortcut and unit semantics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from resdsl import build, load
from resdsl.spec import loads

from .conftest import DEEP, SPECS, VALID_SPECS, spec_id
from .golden import reference_weights

TINY = """resdsl: 1
name: tiny
input: {channels: 3, size: 16}
block: %s
shortcut: %s
stem: {conv: {channels: 8, kernel: 3, stride: 1}}
stages:
  - {width: 8, blocks: 1}
  - {width: 16, blocks: 2, stride: 2}
head: {classes: 5}
"""


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_layout_and_golden_logits(arch: str, tv_layout: dict, tv_logits: dict) -> None:
    model = build(SPECS / "torchvision" / f"{arch}.yaml").eval()
    ref = tv_layout[arch]
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [(k, s) for k, s in ref["state_dict"]]
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]
    model.load_state_dict(reference_weights(ref["state_dict"]), strict=True)
    x = torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)
    with torch.no_grad():
        y = model(x)[0].double().numpy()
    gold = np.array(tv_logits[arch])
    np.testing.assert_allclose(y, gold, rtol=1e-4, atol=1e-5 * np.abs(gold).max())


def test_paper_layout_differs_from_torchvision_in_numbers_not_names(tv_layout: dict) -> None:
    model = build(SPECS / "resnet50.yaml")
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == \
        [(k, s) for k, s in tv_layout["resnet50"]["state_dict"]]
    assert model.get_submodule("layer2.0.conv1").stride == (2, 2)   # v1: stride on the 1x1
    tv = build(SPECS / "torchvision" / "resnet50.yaml")
    assert tv.get_submodule("layer2.0.conv2").stride == (2, 2)      # v1.5: stride on the 3x3


SMALL = [p for p in VALID_SPECS if p.name not in DEEP and p.parent.name in ("cifar", "preact")]


@pytest.mark.parametrize("path", SMALL, ids=spec_id)
def test_small_specs_train_one_step(path: Path) -> None:
    model = build(path)
    spec = load(path)
    x = torch.randn(4, spec.in_channels, *spec.in_size)
    target = torch.randint(0, spec.classes, (4,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = model.get_submodule("conv1").weight.detach().clone()
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.get_submodule("conv1").weight)
    assert all(p.grad is not None for p in model.parameters())


def test_he_initialisation_and_seed() -> None:
    a, b, c = build(SPECS / "resnet18.yaml", seed=1), build(SPECS / "resnet18.yaml", seed=1), \
        build(SPECS / "resnet18.yaml", seed=2)
    w = a.get_submodule("layer3.0.conv1").weight
    assert torch.equal(w, b.get_submodule("layer3.0.conv1").weight)
    assert not torch.equal(w, c.get_submodule("layer3.0.conv1").weight)
    fan_out = w.shape[0] * w.shape[2] * w.shape[3]
    assert abs(w.std().item() - math.sqrt(2 / fan_out)) < 0.05 * math.sqrt(2 / fan_out)
    assert torch.equal(a.get_submodule("fc").weight, b.get_submodule("fc").weight)
    bn = a.get_submodule("layer1.0.bn2")
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_train_and_eval_batchnorm_modes() -> None:
    model = build(loads(TINY % ("basic", "B")))
    x = torch.randn(8, 3, 16, 16) * 3 + 1
    model.train()
    model(x)
    bn = model.get_submodule("bn1")
    assert bn.num_batches_tracked.item() == 1 and not torch.all(bn.running_mean == 0)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x[:1]), model(x)[:1], atol=1e-5)  # eval: samples independent


@pytest.mark.parametrize("block", ["basic", "bottleneck", "preact_basic", "preact_bottleneck"])
def test_zero_init_residual_makes_every_unit_the_identity_map(block: str) -> None:
    spec = loads(TINY.replace("stages:", "zero_init_residual: true\nstages:") % (block, "B"))
    model = build(spec).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = model.forward_intermediates(x)
    for node in model.graph.nodes:
        if node.op == "add":
            assert torch.equal(out[node.name], out[node.inputs[1]])  # residual branch contributes zeros


def test_option_a_subsamples_and_zero_pads_without_parameters() -> None:
    model = build(loads(TINY % ("basic", "A"))).eval()
    assert not any("downsample" in k for k in model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = model.forward_intermediates(x)
    block_in = out["layer1.0.relu"]            # 8 x 16 x 16
    short = out["layer2.0.downsample"]         # 16 x 8 x 8
    assert torch.equal(short[:, :8], block_in[:, :, ::2, ::2])
    assert torch.all(short[:, 8:] == 0)


def test_option_c_projects_every_block_and_plain_nets_have_no_add() -> None:
    c = build(loads(TINY % ("basic", "C")))
    assert {k.split(".downsample")[0] for k in c.state_dict() if ".downsample." in k} == \
        {"layer1.0", "layer2.0", "layer2.1"}
    plain = build(loads(TINY % ("basic", "none")))
    assert not any(n.op == "add" for n in plain.graph.nodes)


def test_preact_unit_order_and_final_bn() -> None:
    """Identity Mappings: BN-ReLU-conv in the branch, no ReLU after the add, a final BN-ReLU."""
    model = build(loads(TINY % ("preact_basic", "B")))
    g = model.graph
    assert g.node("layer2.1.conv1").inputs == ("layer2.1.relu1",)
    assert g.node("layer2.1.relu1").inputs == ("layer2.1.bn1",)
    assert g.node("layer2.1.bn1").inputs == ("layer2.0.add",)        # no ReLU after the previous add
    assert g.node("layer2.1.add").inputs == ("layer2.1.conv2", "layer2.0.add")  # clean identity path
    # the first unit of a stage shares its BN-ReLU with the projection shortcut (authors' code)
    assert g.node("layer2.0.downsample.0").inputs == ("layer2.0.relu1",)
    assert [n.name for n in g.nodes[-4:]] == ["bn_final", "relu_final", "avgpool", "fc"]
    assert "bn1" not in dict(model.named_modules())                   # stem is conv only


def test_forward_frees_intermediates_but_matches_full_walk() -> None:
    model = build(loads(TINY % ("bottleneck", "B"))).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_intermediates(x, ["fc"])["fc"])


def test_torch_compile_matches_eager() -> None:
    model = build(loads(TINY % ("basic", "A"))).eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager() -> None:
    model = build(loads(TINY % ("bottleneck", "B"))).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA; this machine has none")
def test_cuda_matches_cpu() -> None:
    model = build(SPECS / "resnet18.yaml").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.cuda()(x.cuda()).cpu(), model.cpu()(x), rtol=1e-3, atol=1e-3)


def test_average_pool_stem() -> None:
    spec = loads(TINY.replace("stem: {conv: {channels: 8, kernel: 3, stride: 1}}",
                              "stem: {conv: {channels: 8, kernel: 3, stride: 1}, pool: {kind: avg, kernel: 3, "
                              "stride: 2}}") % ("basic", "B"))
    model = build(spec).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        out = model.forward_intermediates(x, ["relu", "stem_avgpool"])
    pooled = nn.functional.avg_pool2d(out["relu"], 3, 2, 1)
    torch.testing.assert_close(out["stem_avgpool"], pooled)


@pytest.mark.parametrize("name", ["timm/ecaresnet50d", "fashion/resnet20-se-d", "preact/resnet164", "resnet34-c"])
def test_a_seeded_build_sets_every_tensor(name: str) -> None:
    """A seeded build skips the layers' default init (their storage starts uninitialised): every tensor must equal
    that of a module whose layers were made the ordinary way, then initialised from the same seed."""
    from resdsl.backends.torch import ResNet, from_graph, init_weights
    from resdsl.expand import expand
    from resdsl.spec import load as load_spec

    spec = load_spec(SPECS / f"{name}.yaml")
    graph = expand(spec)
    ordinary = ResNet(graph)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        init_weights(ordinary, spec.zero_init_residual)
        ordinary.get_submodule("fc").reset_parameters()
    fast = from_graph(graph, seed=3, zero_init_residual=spec.zero_init_residual)
    a, b = ordinary.state_dict(), fast.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
