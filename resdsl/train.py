"""``resdsl train``: the paper's CIFAR recipe (section 4.2) on a spec, resumable and exactly reproducible.

Everything random in the loop is a pure function of ``(seed, iteration)``: the data order (one permutation per
epoch, drawn from ``(seed, epoch)``; the sample stream runs across epoch ends, nothing is dropped) and the
augmentation (zero-pad by min(H, W) / 8, i.e. the paper's 4 pixels at 32x32, random crop,
horizontal flip, drawn for the whole global batch from ``(seed, iteration)``). A checkpoint therefore needs only
the weights, the optimizer's momentum buffers, the scheduler, the iteration and the running metric sums to
continue bit for bit (on CPU; cuDNN may pick non-deterministic kernels); torch's global RNG state is saved and
restored too. Schedules: ``step`` (milestones in iterations), ``cosine`` (over all iterations), ``plateau``
(ReduceLROnPlateau on the test error, stepped at every evaluation, patience counted in evaluations).

Inputs are ``x / 255 - mean`` with the per-pixel mean of the training set (stored in the checkpoint as
``pixel_mean``); zero padding happens after the subtraction, so it pads with the mean image's value.
``metrics.csv`` gives errors in percent; ``loss`` and ``train_error`` are means over the evaluation interval
(augmented batches, training mode, as in the paper's curves), ``images_per_s`` counts training steps only.

Under ``torchrun`` each of the W processes takes its slice of the same global batch (batch / W images) and
DistributedDataParallel averages the gradients, so the learning rate is the global batch's. BatchNorm statistics
are synchronised over all processes by default (``torch.nn.SyncBatchNorm`` on GPUs, a gloo all-reduce version
here on CPUs): the run then equals one process with the global batch up to float rounding, whatever W, and can be
resumed under another W. ``sync_bn=False`` normalises per process, as the paper's two-GPU runs did (faster, but
the result depends on W). Only rank 0 writes.
"""

from __future__ import annotations

import csv
import io
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .atomic import write_bytes_atomic
from .data import Dataset, Sampler, augment, load_dataset, stream_generator
from .errors import InputError, ResdslError
from .options import DEFAULT_LIMITS, Limits
from .progress import Progress
from .spec import Spec, load

FORMAT = "resdsl.checkpoint/1"
CSV_FIELDS = ("iteration", "epoch", "loss", "train_error", "test_error", "lr", "images_per_s")


class Interrupted(ResdslError):
    """SIGINT/SIGTERM: the run stopped between two steps after saving ``last.pt``."""

    exit_code = 130


@dataclass(frozen=True)
class TrainOptions:
    """What ``resdsl train`` takes; ``None`` means: the spec's ``train`` section (or the checkpoint's)."""

    spec: str | Path
    data: str | Path
    out: str | Path | None = None
    iterations: int | None = None
    batch: int | None = None
    lr: float | None = None
    milestones: tuple[int, ...] | None = None
    resume: bool = False
    seed: int | None = None
    workers: int = 0
    eval_every: int | None = None
    sync_bn: bool = True
    device: str = "auto"
    progress: bool | None = None  # False: quiet; else a line per evaluation (and a live counter on a terminal)
    limits: Limits = DEFAULT_LIMITS  # size limits, checked once before the module is built


def recipe(spec: Spec, o: TrainOptions) -> dict[str, Any]:
    """The spec's training recipe with the command line's overrides; the checkpoint stores it."""
    t = spec.train
    if t is None and None in (o.iterations, o.batch, o.lr):
        raise InputError(f"{spec.source} has no 'train' section; add one (see specs/cifar/resnet20.yaml) or give "
                         "--iterations, --batch and --lr")
    iters = o.iterations or (t.iterations if t else 0)
    opt = dict(t.optimizer) if t else {"kind": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
                                       "nesterov": False}
    sched = dict(t.schedule) if t else {"kind": "step", "milestones": [iters // 2, iters * 3 // 4], "gamma": 0.1,
                                        "patience": 10}
    if o.lr is not None:
        opt["lr"] = o.lr
    if o.milestones is not None:
        sched["milestones"] = list(o.milestones)
    return {"batch": o.batch or (t.batch if t else 0), "iterations": iters, "optimizer": opt, "schedule": sched,
            "seed": 0 if o.seed is None else o.seed}


def lr_at(rec: dict[str, Any], i: int) -> float:
    """The learning rate of update ``i`` (0-based) for the step and cosine schedules."""
    s, base = rec["schedule"], rec["optimizer"]["lr"]
    if s["kind"] == "cosine":
        return float(base * 0.5 * (1 + math.cos(math.pi * min(i, rec["iterations"]) / rec["iterations"])))
    return float(base * s["gamma"] ** sum(1 for m in s["milestones"] if i >= m))


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


def train_step(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD update; returns the (detached) mean loss and the number of misclassified images."""
    out = net(x)
    loss = F.cross_entropy(out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    return loss.detach(), (out.detach().argmax(1) != y).sum()


@torch.no_grad()
def evaluate(model: nn.Module, ds: Dataset, mean: torch.Tensor, rank: int = 0, world: int = 1) -> float:
    """Top-1 error in % on the test split (this process's share; summed over processes)."""
    model.eval()
    x_all, y_all = ds.test_x[rank::world], ds.test_y[rank::world]
    wrong = torch.zeros((), dtype=torch.int64, device=mean.device)
    for xb, yb in zip(torch.split(x_all, 500), torch.split(y_all, 500), strict=True):
        x = xb.to(mean.device).float().div_(255).sub_(mean)
        wrong += (model(x).argmax(1) != yb.to(mean.device)).sum()
    model.train()
    counts = torch.stack([wrong, torch.tensor(len(x_all), device=mean.device)])
    if world > 1:
        dist.all_reduce(counts)
    return 100.0 * counts[0].item() / max(1, counts[1].item())


def _setup_dist(device: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
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


def _save(path: Path, payload: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_bytes_atomic(path, buf.getvalue())


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_bytes_atomic(path, buf.getvalue().encode())


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of a ``metrics.csv`` as floats (empty fields dropped)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]


def _read_checkpoint(path: Path, spec: Spec, rec: dict[str, Any], o: TrainOptions) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"--resume: there is no {path} to continue from; run without --resume to start")
    try:
        ck: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"cannot read checkpoint {path} ({type(e).__name__}); it is not a resdsl training "
                         "checkpoint. Move it away and start again without --resume") from None
    meta = ck.get("resdsl") if isinstance(ck, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in ck:
        raise InputError(f"{path} is not a resdsl training checkpoint (written by `resdsl train`); it cannot be "
                         "resumed. Choose another --out")
    if ck["resdsl"]["spec_sha256"] != spec.digest():
        raise InputError(f"{path} was trained from a different spec ('{ck['resdsl']['spec']}', or an edited "
                         f"{spec.source}); resume with the same spec or choose another --out")
    old = ck["config"]
    given = {"batch": o.batch, "seed": o.seed, "lr": o.lr, "milestones": o.milestones}
    now = {"batch": old["batch"], "seed": old["seed"], "lr": old["optimizer"]["lr"],
           "milestones": tuple(old["schedule"]["milestones"])}
    for k, v in given.items():
        if v is not None and v != now[k]:
            raise InputError(f"{path} was trained with --{k} {now[k]}, not {v}; a resumed run keeps its recipe. "
                             f"Drop --{k}, or start a new run in another --out")
    if old["schedule"]["kind"] == "cosine" and o.iterations not in (None, old["iterations"]):
        raise InputError(f"{path} uses a cosine schedule over {old['iterations']} iterations; it cannot be "
                         "lengthened. Drop --iterations")
    rec.update(old, iterations=o.iterations or old["iterations"])
    return dict(ck)


def train(o: TrainOptions) -> dict[str, Any]:
    """Train (or resume) a run; return a summary. See the module docstring for what is exact."""
    spec = load(o.spec)
    rec = recipe(spec, o)
    if rec["batch"] < 1 or rec["iterations"] < 1:
        raise InputError("--batch and --iterations must be at least 1")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if rec["batch"] % world:
        raise InputError(f"batch {rec['batch']} does not divide over {world} processes; choose a batch that is a "
                         f"multiple of {world} (each process takes batch / {world} images)")
    rank, world, dev = _setup_dist(o.device)
    try:
        return _run(o, spec, rec, rank, world, dev)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _run(o: TrainOptions, spec: Spec, rec: dict[str, Any], rank: int, world: int, dev: torch.device) -> dict[str, Any]:
    from .backends.torch import build

    out = Path(o.out) if o.out is not None else Path("runs") / spec.name
    ckpt_path, csv_path = out / "last.pt", out / "metrics.csv"
    ck = _read_checkpoint(ckpt_path, spec, rec, o) if o.resume else None
    if ck is None and ckpt_path.exists():
        raise InputError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out")
    batch, iters, seed = rec["batch"], rec["iterations"], rec["seed"]
    ds = load_dataset(o.data, classes=spec.classes, size=spec.in_size, channels=spec.in_channels,
                      workers=o.workers or min(8, os.cpu_count() or 1))
    model = build(spec, seed=seed, limits=o.limits).to(dev)
    net: nn.Module = model
    if world > 1:
        if o.sync_bn:
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.__class__ = nn.SyncBatchNorm if dev.type == "cuda" else GlooSyncBatchNorm  # type: ignore[assignment]
                    setattr(m, "process_group", None)  # noqa: B010
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    oc = rec["optimizer"]
    opt = torch.optim.SGD(model.parameters(), lr=oc["lr"], momentum=oc["momentum"],
                          weight_decay=oc["weight_decay"], nesterov=oc["nesterov"])
    plateau = rec["schedule"]["kind"] == "plateau"
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, "min", factor=rec["schedule"]["gamma"],
                                                       patience=rec["schedule"]["patience"]) if plateau else None
    mean = ds.pixel_mean().to(dev)
    train_x = ds.train_x.to(dev) if dev.type == "cuda" and ds.train_x.numel() < 4 << 30 else ds.train_x
    sampler = Sampler(len(ds.train_x), batch, seed)
    b, pad = batch // world, max(1, min(spec.in_size) // 8)
    start, rows = 0, []
    meter = torch.zeros(3, dtype=torch.float64, device=dev)  # loss sum, wrong, seen (this process)
    count = torch.tensor(float(b), dtype=torch.float64, device=dev)
    elapsed = 0.0
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if sched is not None:
            sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"]["torch"])
        start, elapsed = int(ck["iteration"]), float(ck["meter"]["elapsed"])
        if rank == 0:
            meter += ck["meter"]["sums"].to(dev)
        rows = [r for r in (_csv_rows(csv_path) if csv_path.is_file() else []) if int(r["iteration"]) <= start]
    eval_every = o.eval_every or math.ceil(len(ds.train_x) / batch)
    progress = Progress(quiet=o.progress is False)
    show = rank == 0 and progress.enabled
    live = show and progress.tty  # the per-second counter redraws its line in place: terminals only
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for stale in [*out.glob(".last.pt.*"), *out.glob(".metrics.csv.*")]:  # temp files of a killed run
            stale.unlink(missing_ok=True)
        if ck is None and iters < max(rec["schedule"]["milestones"] or [0]) and not plateau:
            print(f"resdsl: note: {iters} iterations end before the milestones {rec['schedule']['milestones']}; "
                  "the learning rate never drops (rescale them with --milestones)", file=sys.stderr)

    def checkpoint(i: int, test_error: float | None) -> None:
        meta = {"format": FORMAT, "spec": spec.name, "spec_sha256": spec.digest(), "iteration": i,
                "test_error": test_error, "classes": ds.classes, "data": str(o.data), "world_size": world,
                "preprocess": "x / 255 - pixel_mean (per-pixel mean of the training set, [C, H, W])"}
        rng = {"torch": torch.get_rng_state()}
        _save(ckpt_path, {"resdsl": meta, "model": {k: v.cpu() for k, v in model.state_dict().items()},
                          "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched else {},
                          "iteration": i, "config": rec, "rng": rng, "pixel_mean": mean.cpu(),
                          "meter": {"sums": meter.cpu(), "elapsed": elapsed}})

    stop: list[int] = []
    handlers = _install_handlers(stop) if world == 1 else {}
    test_error, tick, last_show = None, time.perf_counter(), 0.0
    try:
        for i in range(start, iters):
            if stop:
                elapsed += time.perf_counter() - tick
                checkpoint(i, test_error)
                raise Interrupted(f"interrupted at iteration {i} of {iters}; saved {ckpt_path}. Continue with the "
                                  "same command and --resume")
            idx = sampler.indices(i)[rank * b:(rank + 1) * b]
            g = stream_generator(seed, "augment", i)
            oy, ox = torch.randint(0, 2 * pad + 1, (2, batch), generator=g)
            flip = torch.randint(0, 2, (batch,), generator=g).bool()
            part = slice(rank * b, (rank + 1) * b)
            x = train_x[idx.to(train_x.device)].to(dev, non_blocking=True).float().div_(255).sub_(mean)
            x = augment(x, pad, oy[part].to(dev), ox[part].to(dev), flip[part].to(dev))
            y = ds.train_y[idx].to(dev, non_blocking=True)
            lr = opt.param_groups[0]["lr"] if plateau else lr_at(rec, i)
            for group in opt.param_groups:
                group["lr"] = lr
            loss, wrong = train_step(net, opt, x, y)
            meter += torch.stack([loss.double() * b, wrong.double(), count])
            done = i + 1
            if live and time.perf_counter() - last_show > 1:
                last_show = time.perf_counter()
                print(f"\rresdsl: iteration {done}/{iters}  loss {loss.item():.3f}  lr {lr:g}", end="",
                      file=sys.stderr, flush=True)
            if done % eval_every and done != iters:
                continue
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            elapsed += time.perf_counter() - tick
            sums = meter.clone()
            if world > 1:
                dist.all_reduce(sums)
            if not math.isfinite(sums[0].item()):
                raise InputError(f"training diverged by iteration {done} (the loss is {sums[0].item()}); lower the "
                                 f"learning rate with --lr. {ckpt_path} keeps the last finite state")
            test_error = evaluate(model, ds, mean, rank, world)
            if sched is not None:
                sched.step(test_error)
            seen = max(1.0, sums[2].item())
            rows.append({"iteration": done, "epoch": round(done * batch / len(ds.train_x), 4),
                         "loss": round(sums[0].item() / seen, 6), "train_error": round(100 * sums[1].item() / seen, 4),
                         "test_error": round(test_error, 4), "lr": float(f"{lr:.8g}"),
                         "images_per_s": round(seen / max(elapsed, 1e-9), 2)})
            meter.zero_()
            elapsed = 0.0
            if rank == 0:
                _write_csv(csv_path, rows)
                checkpoint(done, test_error)
                if show:
                    r, lead = rows[-1], "\r" if live else ""
                    print(f"{lead}resdsl: iteration {done}/{iters}  loss {r['loss']:.3f}  "
                          f"train {r['train_error']:.2f}%  {ds.test_name} {test_error:.2f}%  lr {lr:g}  "
                          f"{r['images_per_s']:.0f} img/s",
                          file=sys.stderr, flush=True)
            tick = time.perf_counter()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    last = rows[-1] if rows else {}
    return {"out": str(out), "checkpoint": str(ckpt_path), "metrics": str(csv_path), "iteration": max(start, iters),
            "rank": rank, **{k: float(last[k]) for k in ("train_error", "test_error") if k in last}}


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [dict(r) for r in csv.DictReader(f)]


def _install_handlers(stop: list[int]) -> dict[int, Any]:
    """SIGINT/SIGTERM set ``stop``; the loop saves and stops between two steps. A second signal acts at once."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    old: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        stop.append(signum)
        signal.signal(signum, old[signum])

    for s in (signal.SIGINT, signal.SIGTERM):
        old[s] = signal.getsignal(s)
        signal.signal(s, handler)
    return old
