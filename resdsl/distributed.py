"""Processes for ``resdsl train`` under ``torchrun``: joining the group and synchronised BatchNorm on CPUs.

Each of the W processes takes its slice of the global batch and DistributedDataParallel averages the gradients.
With ``sync_bn`` every BatchNorm normalises over the global batch (``torch.nn.SyncBatchNorm`` on GPUs,
:class:`GlooSyncBatchNorm` on CPUs, where torch has none), so a run equals one process with the whole batch up
to float rounding, whatever W.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import InputError


def world_size() -> int:
    """The number of processes ``torchrun`` started (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str) -> tuple[int, int, torch.device]:
    """Join the process group if there is one; return ``(rank, world, device)``. ``device``: auto, cpu, cuda."""
    world = world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible to this PyTorch; use --device cpu")
    dev = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return (dist.get_rank(), world, dev) if world > 1 else (0, 1, dev)


def teardown(world: int) -> None:
    """Leave the process group joined by :func:`setup`."""
    if world > 1 and dist.is_initialized():
        import gc

        gc.collect()  # DDP's reducer sits in reference cycles: free it (and its threads) before the group goes
        dist.destroy_process_group()


def parallel(model: nn.Module, dev: torch.device, world: int, sync_bn: bool) -> nn.Module:
    """The module the training step calls: ``model`` itself, or DDP around it (BatchNorms synchronised first)."""
    if world == 1:
        return model
    if sync_bn:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.__class__ = nn.SyncBatchNorm if dev.type == "cuda" else GlooSyncBatchNorm  # type: ignore[assignment]
                setattr(m, "process_group", None)  # noqa: B010
    return nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        g = g.clone()
        dist.all_reduce(g)
        return g


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with statistics over every process's batch (two differentiable all-reduces); works on CPU.

    torch's SyncBatchNorm runs on GPUs only. Two passes (mean, then the squared deviations) keep the statistics as
    accurate as ``F.batch_norm``'s; running statistics update as in BatchNorm2d, with the global count.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        local = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        s = _AllReduceSum.apply(torch.cat([x.sum((0, 2, 3)), local]))  # type: ignore[no-untyped-call]
        n = s[-1].detach()
        mean = s[:-1] / n
        d = x - mean[None, :, None, None]
        var = _AllReduceSum.apply((d * d).sum((0, 2, 3))) / n  # type: ignore[no-untyped-call]
        with torch.no_grad():
            assert self.running_mean is not None and self.running_var is not None
            m = 0.1 if self.momentum is None else self.momentum
            self.running_mean.mul_(1 - m).add_(mean, alpha=m)
            self.running_var.mul_(1 - m).add_(var * n / (n - 1), alpha=m)
            self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
        scale = (torch.rsqrt(var + self.eps) * self.weight)[None, :, None, None]
        out: torch.Tensor = d * scale + self.bias[None, :, None, None]
        return out
