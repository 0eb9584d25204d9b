"""Graph -> ``nn.Module``: the trainable PyTorch lowering.

The module is built from the graph alone, so what the FLOP counter counted is
what runs. Parameterised nodes become real submodules at the node's dotted
name (``layer2.0.downsample.0``), giving torchvision's state_dict layout; the
forward pass walks the nodes in topological order, dropping each intermediate
after its last use so inference holds no more activations than a hand-written
ResNet would. The walk is a fixed Python loop, which ``torch.compile``,
``torch.export`` and the ONNX exporters unroll.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..expand import expand
from ..ir import Graph, Node
from ..options import DEFAULT_LIMITS, Limits
from ..spec import Spec, load
from .base import Plan, Written, refuse_providers

if TYPE_CHECKING:
    from ..manifest import Manifest
    from ..options import CompileOptions
    from ..progress import Progress


class ShortcutA(nn.Module):
    """Option A: identity that subsamples by ``stride`` and appends ``pad`` zero channels."""

    def __init__(self, stride: int, pad: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.pad)) if self.pad else x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad={self.pad}"


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): scale each channel by a gate computed from the global mean.

    Submodules ``fc1``/``fc2`` are 1x1 convs with bias, timm's ``SEModule`` layout, so timm's checkpoints load.
    """

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class EfficientChannelAttention(nn.Module):
    """ECA (Wang et al. 2020): a 1-D conv across the globally pooled channels, then a sigmoid gate.

    ``conv`` is a bias-free ``Conv1d(1, 1, kernel)``, timm's ``EcaModule`` layout.
    """

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel, padding=(kernel - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean((2, 3)).unsqueeze(1))  # (N, 1, C): channels as a sequence
        return x * torch.sigmoid(y.squeeze(1))[:, :, None, None]


class AvgPoolPadEnd(nn.AvgPool2d):
    """Average pooling over the input with ``pad_end`` zero rows and columns appended (bottom, right) and
    counted in the average: timm's ``AvgPool2dSame`` for a 2x2 stride-1 pool."""

    def __init__(self, kernel: int, stride: int, padding: int, ceil_mode: bool, count_include_pad: bool,
                 pad_end: int) -> None:
        super().__init__(kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
        self.pad_end = pad_end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (0, self.pad_end, 0, self.pad_end)))


class GlobalAvgPool(nn.Module):
    """Average over H and W, then flatten: torchvision's ``avgpool`` + ``torch.flatten``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def _make(node: Node) -> nn.Module | None:
    a = node.attrs
    if node.op == "conv":
        return nn.Conv2d(a["in_channels"], a["out_channels"], a["kernel"], a["stride"], a["padding"],
                         dilation=a["dilation"], groups=a["groups"], bias=False)
    if node.op == "bn":
        return nn.BatchNorm2d(a["channels"])
    if node.op == "relu":
        return nn.ReLU()
    if node.op == "maxpool":
        return nn.MaxPool2d(a["kernel"], a["stride"], a["padding"])
    if node.op == "avgpool" and a["pad_end"]:
        return AvgPoolPadEnd(a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"],
                             a["pad_end"])
    if node.op == "avgpool":
        return nn.AvgPool2d(a["kernel"], a["stride"], a["padding"], ceil_mode=a["ceil_mode"],
                            count_include_pad=a["count_include_pad"])
    if node.op == "se":
        return SqueezeExcite(a["channels"], a["reduced"])
    if node.op == "eca":
        return EfficientChannelAttention(a["kernel"])
    if node.op == "shortcut_a":
        return ShortcutA(a["stride"], a["pad"])
    if node.op == "gap":
        return GlobalAvgPool()
    if node.op == "fc":
        return nn.Linear(a["in_features"], a["out_features"])
    return None  # input, add: no module


class ResNet(nn.Module):
    """A network lowered from a resdsl Graph; ``self.graph`` is kept for reports and verification.

    ``forward`` returns the one output's tensor (the logits, by default), or a dict of the outputs by name, in
    the spec's order, when the graph returns several (as torchvision's ``IntermediateLayerGetter`` does).
    """

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        index = {n.name: i for i, n in enumerate(graph.nodes)}
        last_use = {n.name: i for i, n in enumerate(graph.nodes)}
        for i, n in enumerate(graph.nodes):
            for src in n.inputs:
                last_use[src] = i
        steps: list[tuple[str, Callable[..., torch.Tensor], tuple[int, ...], tuple[int, ...]]] = []
        for i, n in enumerate(graph.nodes[1:], start=1):
            module = _make(n)
            if module is not None:
                _attach(self, n.name, module)
            fn: Callable[..., torch.Tensor] = module if module is not None else operator.add
            free = tuple(index[s] for s in set(n.inputs) if last_use[s] == i)
            steps.append((n.name, fn, tuple(index[s] for s in n.inputs), free))
        self._steps = steps
        self._size = len(graph.nodes)
        self._outputs = tuple((o.name, index[o.node]) for o in graph.outputs)
        self._kept = {i for _, i in self._outputs}

    def forward(self, x: torch.Tensor) -> Any:
        values: list[Any] = [None] * self._size
        values[0] = x
        kept = self._kept
        for i, (_, fn, args, free) in enumerate(self._steps, start=1):
            values[i] = fn(*[values[a] for a in args])
            for f in free:
                if f not in kept:
                    values[f] = None
        if len(self._outputs) == 1:
            return values[self._outputs[0][1]]
        return {name: values[i] for name, i in self._outputs}

    def forward_intermediates(self, x: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Run the net and return the outputs of the named nodes (all when ``names`` is None)."""
        want = set(names) if names is not None else {n.name for n in self.graph.nodes}
        values: list[Any] = [x]
        out: dict[str, torch.Tensor] = {"input": x} if "input" in want else {}
        for name, fn, args, _ in self._steps:
            values.append(fn(*[values[a] for a in args]))
            if name in want:
                out[name] = values[-1]
        return out


def _attach(root: nn.Module, dotted: str, module: nn.Module) -> None:
    """Register ``module`` at ``a.b.c``, creating plain containers on the way."""
    *parents, leaf = dotted.split(".")
    parent = root
    for p in parents:
        if not hasattr(parent, p):
            parent.add_module(p, nn.Module())
        parent = getattr(parent, p)
    parent.add_module(leaf, module)


def init_weights(model: ResNet, zero_init_residual: bool = False) -> None:
    """He et al. 2015 ("Delving deep") init for convs, as the paper does; BN scale 1, shift 0.

    ``zero_init_residual`` zeroes the last BN scale of each residual branch
    (Goyal et al. 2017); a pre-activation branch ends in a conv, whose weights
    are zeroed instead, so every unit starts as the identity either way. Attention's convs are He-initialised
    too (as timm initialises every Conv2d), with zero biases; ECA's 1-D conv keeps PyTorch's default init, redrawn.
    """
    for name, node in ((n.name, n) for n in model.graph.nodes):
        if node.op == "se":
            for fc in (model.get_submodule(f"{name}.fc1"), model.get_submodule(f"{name}.fc2")):
                assert isinstance(fc, nn.Conv2d) and fc.bias is not None
                nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(fc.bias)
        elif node.op == "eca":
            conv = model.get_submodule(f"{name}.conv")
            assert isinstance(conv, nn.Conv1d)
            conv.reset_parameters()
        m = model.get_submodule(name) if node.op in ("conv", "bn") else None
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if zero_init_residual and node.residual_end:
                nn.init.zeros_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            if zero_init_residual and node.residual_end:
                nn.init.zeros_(m.weight)


def build(spec: Spec | str | Path, *, seed: int | None = 0, device: str | torch.device | None = None,
          limits: Limits | None = DEFAULT_LIMITS) -> ResNet:
    """Build the trainable module of a spec (a path or a loaded Spec).

    Weights are He-initialised from ``seed`` without touching the global RNG (``seed=None`` uses it).
    ``device='meta'`` builds shapes only, for counting. Networks beyond ``limits`` (see
    :mod:`resdsl.limits`) are refused before any tensor is allocated; ``limits=None`` skips the check, for
    callers that made it already.
    """
    if not isinstance(spec, Spec):
        spec = load(spec)
    graph = expand(spec)
    if limits is not None and str(device) != "meta":  # shapes-only modules cost no memory
        from ..flops import count
        from ..limits import check

        check(count(graph), spec.source, limits)
    return from_graph(graph, seed=seed, device=device, zero_init_residual=spec.zero_init_residual)


def from_graph(graph: Graph, *, seed: int | None = 0, device: str | torch.device | None = None,
               zero_init_residual: bool = False) -> ResNet:
    """The module of an expanded graph, initialised as :func:`build` does (no limits checked).

    With a seed, the layers are made on the meta device and given uninitialised storage: every tensor is then
    set below (weights by :func:`init_weights` and ``fc.reset_parameters``, BN statistics by
    ``reset_running_stats``), so the layers' own default initialisation, drawn only to be overwritten, is skipped
    (a third of building ResNet-152). ``seed=None`` keeps it, since it advances the global RNG the caller chose.
    """
    if str(device) == "meta" or seed is None:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = ResNet(graph)
        if seed is None and str(device) != "meta":
            init_weights(model, zero_init_residual)
        return model
    with torch.device("meta"):
        model = ResNet(graph)
    model = model.to_empty(device=device if device is not None else "cpu")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        init_weights(model, zero_init_residual)
        if graph.has_head:  # nn.Linear's own default init draws from the global RNG at construction: drawn here
            fc = model.get_submodule("fc")
            assert isinstance(fc, nn.Linear)
            fc.reset_parameters()
    return model


# --------------------------------------------------------------------------- the torch target
# model.pt, a resdsl checkpoint (float32), verified by loading it back into a fresh module.

NAME, BASE, PRECISIONS = "torch", None, ("fp32",)
CHECKPOINT = "model.pt"


def check_environment(options: CompileOptions) -> None:
    """Nothing beyond torch itself, which is imported already."""


def write(stage: Path, model: ResNet, spec: Spec, options: CompileOptions, progress: Progress) -> Written:
    """Save the module's state as a resdsl checkpoint (``--weights`` reads it back)."""
    from ..weights import save_checkpoint

    with progress.step(f"saving {CHECKPOINT}"):
        save_checkpoint(model, stage / CHECKPOINT, {"spec": spec.resolved, "name": spec.name})
    return Written((CHECKPOINT,), packages=("torch", "numpy", "pyyaml"))


class _Runner:
    backend = "torch"

    def __init__(self, model: ResNet) -> None:
        self.model = model

    def __call__(self, x: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        with torch.no_grad():
            out = self.model(torch.from_numpy(x))
        return {k: v.numpy() for k, v in out.items()} if isinstance(out, dict) else np.asarray(out.numpy())


def open(directory: Path, manifest: Manifest, threads: int | None = None, providers: Sequence[str] | None = None
         ) -> _Runner:
    """A fresh module from the manifest's spec with the checkpoint's weights (strict)."""
    refuse_providers(NAME, providers)
    from ..spec import from_resolved
    from ..weights import read_state

    model = ResNet(expand(from_resolved(manifest.spec["resolved"], str(directory / "manifest.json"))))
    state, _ = read_state(directory / CHECKPOINT)
    model.load_state_dict(state, strict=True)
    return _Runner(model.eval())


def plan(manifest: Manifest) -> Plan:
    return Plan()


def localiser(directory: Path, manifest: Manifest) -> None:
    return None
