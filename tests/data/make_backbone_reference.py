"""Generate reference data for resdsl's backbones: torchvision's and timm's own ResNets as feature extractors.

Usage::

    python tests/data/make_backbone_reference.py TORCHVISION_RESNET_PY TIMM_SRC [--timm-git-dir DIR] [--out-dir DIR]

``TORCHVISION_RESNET_PY`` is ``torchvision/models/resnet.py`` from a torchvision release (taken out of its wheel:
``pip download torchvision --no-deps``, then ``unzip`` that one file). torchvision cannot be imported beside the
CPU build of torch (its compiled ops need CUDA torch), so the file's own source from ``def conv3x3`` up to
``def _resnet`` (the conv helpers, ``BasicBlock``, ``Bottleneck`` and ``ResNet``) is executed as it is, with
``_log_api_usage_once`` (torchvision's usage logging, the only other name that code uses) a no-op. The feature
maps are the stem's ``relu`` and the outputs of ``layer1``..``layer4``, which is what torchvision's
``IntermediateLayerGetter`` returns for those layers; output stride 16 and 8 are
``replace_stride_with_dilation=[False, False, True]`` and ``[False, True, True]``.

``TIMM_SRC`` is a source tree of huggingface/pytorch-image-models, imported as in ``make_timm_reference.py``
(a torchvision stub first); the models are ``timm.create_model(name, features_only=True, output_stride=OS,
out_indices=(0, 1, 2, 3, 4))`` (``act1``, the stem's output, then layer1..layer4), whose state_dicts have no
``fc``.

Every model gets the deterministic weights of ``tests/data/reference-README.md`` (``tests.golden.
reference_weights`` over its own state_dict layout: BN running statistics far from 0 and 1) and, at each size,
the input ``sin(0.7 * i)`` over the flat index ``i`` of a (1, 3, H, W) tensor. Written next to this script:

``backbone-reference.json``
    Per model (``state_dicts``): its backbone's state_dict layout (keys and shapes, no ``fc``). Per case:
    library, model, output stride, the stage names it returns, the trainable parameter count, MACs
    (FlopCounterMode total / 2) at 1x3x224x224 and at 1x3x800x1216, and per size and output the shape; the
    source file's sha256 and timm's commit.
``backbone-reference.npz``
    Per case, size and output: ``CASE/HxW/OUTPUT/mean``, the per-channel mean over height and width (float64),
    and ``.../sample``, the values at 256 flat indices drawn once with ``numpy.random.default_rng(0)``
    (``.../index``).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for tests.golden
sys.path.insert(0, str(HERE))
from make_timm_reference import import_timm  # noqa: E402

from tests.golden import reference_weights  # noqa: E402

STAGES = ("conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x")  # the stem's output, then layer1..layer4
SIZES = ((64, 96), (97, 75))  # inside the range the tests compile (64x64 to 128x128); the second one odd
DILATE = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}
#: (case, library, model, output stride): the shipped backbone specs' own models, and the block types and
#: shortcuts whose dilated forms differ (BasicBlock is dilated by timm only; shortcut D's pool under dilation)
CASES = [
    ("tv-resnet50-os32", "torchvision", "resnet50", 32),
    ("tv-resnet50-os16", "torchvision", "resnet50", 16),
    ("tv-resnet50-os8", "torchvision", "resnet50", 8),
    ("tv-resnet101-os32", "torchvision", "resnet101", 32),
    ("tv-resnet101-os16", "torchvision", "resnet101", 16),
    ("tv-resnet101-os8", "torchvision", "resnet101", 8),
    ("timm-resnet50d-os32", "timm", "resnet50d", 32),
    ("timm-resnet50d-os16", "timm", "resnet50d", 16),
    ("timm-resnet50d-os8", "timm", "resnet50d", 8),
    ("timm-resnet18d-os8", "timm", "resnet18d", 8),
]
TV_LAYERS = {"resnet50": ("Bottleneck", [3, 4, 6, 3]), "resnet101": ("Bottleneck", [3, 4, 23, 3])}
N_SAMPLES = 256


def torchvision_namespace(path: Path) -> dict[str, Any]:
    """Execute torchvision's ResNet classes from its own file (see the module docstring)."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("def conv3x3"))
    end = next(i for i, line in enumerate(lines) if line.startswith("def _resnet"))
    ns: dict[str, Any] = {"torch": torch, "nn": nn, "Tensor": Tensor, "Any": Any, "Callable": Callable,
                          "Optional": Optional, "Union": Union, "_log_api_usage_once": lambda obj: None,
                          "__name__": "torchvision_models_resnet"}
    exec(compile("\n".join(lines[start:end]), str(path), "exec"), ns)  # torchvision's own code
    return ns


class Hooked(nn.Module):
    """torchvision's ResNet returning the stem's output (its ``relu``) and layer1..layer4's outputs
    (IntermediateLayerGetter's result for return_layers relu, layer1, ..., layer4)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> list[Tensor]:
        n = self.net
        x = n.relu(n.bn1(n.conv1(x)))
        out = [x]
        x = n.maxpool(x)
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            out.append(x)
        return out


def make_input(h: int, w: int) -> Tensor:
    return torch.sin(0.7 * torch.arange(3 * h * w, dtype=torch.float64)).float().reshape(1, 3, h, w)


def macs(model: nn.Module, h: int, w: int) -> int:
    """FlopCounterMode total / 2 on a copy of ``model`` on the meta device (shapes only, no compute)."""
    meta = copy.deepcopy(model).to("meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(torch.empty(1, 3, h, w, device="meta"))
    return int(counter.get_total_flops()) // 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("torchvision_resnet", type=Path)
    ap.add_argument("timm_src", type=Path)
    ap.add_argument("--timm-git-dir", type=Path)
    ap.add_argument("--out-dir", type=Path, default=HERE)
    args = ap.parse_args()
    tv = torchvision_namespace(args.torchvision_resnet)
    timm = import_timm(args.timm_src)
    git = args.timm_git_dir or args.timm_src / ".git"
    commit = subprocess.run(["git", f"--git-dir={git}", "log", "-1", "--format=%H %cI"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    doc: dict[str, Any] = {
        "how": "tests/data/make_backbone_reference.py (its docstring says how each model was built)",
        "torchvision_source": {"file": "torchvision/models/resnet.py",
                               "sha256": hashlib.sha256(args.torchvision_resnet.read_bytes()).hexdigest(),
                               "version": _tv_version(args.torchvision_resnet)},
        "timm_commit": commit, "sizes": [list(s) for s in SIZES], "samples": N_SAMPLES,
        "input": "sin(0.7 * i) over the flat index i of the (1, 3, H, W) input",
        "macs_convention": "FlopCounterMode total / 2: multiply-adds of convs and linears",
        "state_dicts": {}, "cases": {}}
    arrays: dict[str, np.ndarray] = {}
    torch.manual_seed(0)
    for case, library, name, os_ in CASES:
        if library == "torchvision":
            block, layers = TV_LAYERS[name]
            net = tv["ResNet"](tv[block], layers, replace_stride_with_dilation=DILATE[os_])
            del net.fc, net.avgpool  # a backbone: IntermediateLayerGetter drops what follows layer4
            model: nn.Module = Hooked(net)
            state_model = net
        else:
            model = timm.create_model(name, features_only=True, output_stride=os_, out_indices=(0, 1, 2, 3, 4))
            state_model = model
        layout = [(k, tuple(v.shape)) for k, v in state_model.state_dict().items()]
        doc["state_dicts"].setdefault(f"{library}/{name}", [[k, list(s)] for k, s in layout])
        state_model.load_state_dict(reference_weights(layout), strict=True)
        model.eval()
        entry: dict[str, Any] = {
            "library": library, "model": name, "output_stride": os_, "outputs": list(STAGES),
            "num_params": sum(p.numel() for p in state_model.parameters()),
            "macs_224": macs(model, 224, 224), "macs_800x1216": macs(model, 800, 1216), "shapes": {}}
        for h, w in SIZES:
            with torch.no_grad():
                feats = model(make_input(h, w))
            for stage, f in zip(STAGES, feats, strict=True):
                a = f[0].double().numpy()
                key = f"{case}/{h}x{w}/{stage}"
                index = np.random.default_rng(0).choice(a.size, N_SAMPLES, replace=False)
                arrays[f"{key}/mean"] = a.mean(axis=(1, 2))
                arrays[f"{key}/index"] = index.astype(np.int32)
                arrays[f"{key}/sample"] = a.reshape(-1)[index]
                entry["shapes"][f"{h}x{w}/{stage}"] = list(f.shape)
        doc["cases"][case] = entry
        print(case, entry["num_params"], entry["macs_224"], flush=True)
    (args.out_dir / "backbone-reference.json").write_text(json.dumps(doc, indent=1) + "\n")
    np.savez_compressed(args.out_dir / "backbone-reference.npz", **arrays)


def _tv_version(resnet_py: Path) -> str:
    version = resnet_py.parent.parent / "version.py"
    for line in version.read_text().splitlines() if version.is_file() else []:
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("'\"")
    return "unknown"


if __name__ == "__main__":
    main()
