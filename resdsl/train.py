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
``pixel_mean``), or, when the spec gives ``input.mean`` and ``input.std``, ``(x / 255 - mean) / std`` per channel
(stored as ``normalize``); :func:`resdsl.data.preprocessing` is the rule, which evaluation and int8 calibration
repeat. Zero padding happens after the normalisation, so it pads with the mean's value.
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

from . import distributed, metrics
from .atomic import write_bytes_atomic
from .data import Dataset, Preprocess, Sampler, augment, preprocessing, stream_generator
from .errors import InputError, ResdslError
from .options import DEFAULT_LIMITS, Limits
from .progress import Progress
from .readers import load_dataset
from .spec import Spec, load

FORMAT = "resdsl.checkpoint/1"


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
    resize: bool = False  # images of another size than the spec's are resized (else refused)


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
def evaluate(model: nn.Module, ds: Dataset, prep: Preprocess, rank: int = 0, world: int = 1) -> float:
    """Top-1 error in % on the test split (this process's share; summed over processes)."""
    model.eval()
    dev = prep.mean.device
    x_all, y_all = ds.test_x[rank::world], ds.test_y[rank::world]
    wrong = torch.zeros((), dtype=torch.int64, device=dev)
    for xb, yb in zip(torch.split(x_all, 500), torch.split(y_all, 500), strict=True):
        wrong += (model(prep.apply(xb)).argmax(1) != yb.to(dev)).sum()
    model.train()
    counts = torch.stack([wrong, torch.tensor(len(x_all), device=dev)])
    if world > 1:
        dist.all_reduce(counts)
    return 100.0 * counts[0].item() / max(1, counts[1].item())


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
    world = distributed.world_size()
    if rec["batch"] % world:
        raise InputError(f"batch {rec['batch']} does not divide over {world} processes; choose a batch that is a "
                         f"multiple of {world} (each process takes batch / {world} images)")
    rank, world, dev = distributed.setup(o.device)
    try:
        return _train(o, spec, rec, rank, world, dev)
    finally:
        distributed.teardown(world)


def _train(o: TrainOptions, spec: Spec, rec: dict[str, Any], rank: int, world: int,
           dev: torch.device) -> dict[str, Any]:
    """The run, dropped on return: DDP's communication threads must be gone before the process group is
    destroyed, or a process can abort at exit ("terminate called without an active exception")."""
    run = _Run(o, spec, rec, rank, world, dev)
    run.loop()
    return run.summary()


class _Run:
    """One training process: set up (and restore), then steps, with an evaluation, a log row and a checkpoint
    every ``eval_every`` steps. Attributes are the run's whole state; :meth:`checkpoint` saves all of it."""

    def __init__(self, o: TrainOptions, spec: Spec, rec: dict[str, Any], rank: int, world: int,
                 dev: torch.device) -> None:
        from .backends.torch import build

        self.o, self.spec, self.rec, self.rank, self.world, self.dev = o, spec, rec, rank, world, dev
        self.out = Path(o.out) if o.out is not None else Path("runs") / spec.name
        self.ckpt_path, self.csv_path = self.out / "last.pt", self.out / "metrics.csv"
        ck = _read_checkpoint(self.ckpt_path, spec, rec, o) if o.resume else None
        if ck is None and self.ckpt_path.exists():
            raise InputError(f"{self.ckpt_path} exists: pass --resume to continue that run, or choose another --out")
        self.batch, self.iters, self.seed = rec["batch"], rec["iterations"], rec["seed"]
        self.ds = load_dataset(o.data, classes=spec.classes, size=spec.in_size, channels=spec.in_channels,
                               workers=o.workers or min(8, os.cpu_count() or 1), resize=o.resize)
        if self.ds.resized and self.rank == 0:
            print(f"resdsl: note: {o.data}: {self.ds.resized}", file=sys.stderr)
        self.model = build(spec, seed=self.seed, limits=o.limits).to(dev)
        self.net = distributed.parallel(self.model, dev, world, o.sync_bn)
        oc, sc = rec["optimizer"], rec["schedule"]
        self.opt = torch.optim.SGD(self.model.parameters(), lr=oc["lr"], momentum=oc["momentum"],
                                   weight_decay=oc["weight_decay"], nesterov=oc["nesterov"])
        self.plateau = sc["kind"] == "plateau"
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, "min", factor=sc["gamma"],
                                                                patience=sc["patience"]) if self.plateau else None
        self.prep = preprocessing(spec.normalize, self.ds).to(dev)
        on_gpu = dev.type == "cuda" and self.ds.train_x.numel() < 4 << 30
        self.train_x = self.ds.train_x.to(dev) if on_gpu else self.ds.train_x
        self.sampler = Sampler(len(self.ds.train_x), self.batch, self.seed)
        self.b, self.pad = self.batch // world, max(1, min(spec.in_size) // 8)
        self.start = 0
        self.rows: list[dict[str, Any]] = []
        self.meter = torch.zeros(3, dtype=torch.float64, device=dev)  # loss sum, wrong, seen (this process)
        self.elapsed = 0.0
        self.test_error: float | None = None  # this process's last evaluation
        self.tick = time.perf_counter()
        self.eval_every = o.eval_every or math.ceil(len(self.ds.train_x) / self.batch)
        progress = Progress(quiet=o.progress is False)
        self.show = rank == 0 and progress.enabled
        self.live = self.show and progress.tty  # the per-second counter redraws its line in place: terminals only
        if ck is not None:
            self.restore(ck)
        if rank == 0:
            self._prepare_out(fresh=ck is None)

    def restore(self, ck: dict[str, Any]) -> None:
        """Continue from a checkpoint: weights, optimizer, scheduler, RNG, iteration, metric sums, log rows."""
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        if self.sched is not None:
            self.sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"]["torch"])
        self.start, self.elapsed = int(ck["iteration"]), float(ck["meter"]["elapsed"])
        if self.rank == 0:
            self.meter += ck["meter"]["sums"].to(self.dev)
        old = metrics.read(self.csv_path) if self.csv_path.is_file() else []
        self.rows = [r for r in old if r["iteration"] <= self.start]

    def _prepare_out(self, fresh: bool) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in [*self.out.glob(".last.pt.*"), *self.out.glob(".metrics.csv.*")]:  # temp files of a killed run
            stale.unlink(missing_ok=True)
        milestones = self.rec["schedule"]["milestones"]
        if fresh and self.iters < max(milestones or [0]) and not self.plateau:
            print(f"resdsl: note: {self.iters} iterations end before the milestones {milestones}; "
                  "the learning rate never drops (rescale them with --milestones)", file=sys.stderr)

    def loop(self) -> None:
        """Steps from ``start`` to the last iteration; SIGINT/SIGTERM save and stop between two steps."""
        stop: list[int] = []
        handlers = _install_handlers(stop) if self.world == 1 else {}
        self.tick, last_show = time.perf_counter(), 0.0
        try:
            for i in range(self.start, self.iters):
                if stop:
                    self.elapsed += time.perf_counter() - self.tick
                    self.checkpoint(i)
                    raise Interrupted(f"interrupted at iteration {i} of {self.iters}; saved {self.ckpt_path}. "
                                      "Continue with the same command and --resume")
                lr, loss = self.step(i)
                done = i + 1
                if self.live and time.perf_counter() - last_show > 1:
                    last_show = time.perf_counter()
                    print(f"\rresdsl: iteration {done}/{self.iters}  loss {loss.item():.3f}  lr {lr:g}", end="",
                          file=sys.stderr, flush=True)
                if done % self.eval_every == 0 or done == self.iters:
                    self.evaluate_and_log(done, lr)
                    self.tick = time.perf_counter()
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)

    def step(self, i: int) -> tuple[float, torch.Tensor]:
        """Update ``i``: this process's share of the global batch, augmented from ``(seed, i)``."""
        b, rank, dev = self.b, self.rank, self.dev
        idx = self.sampler.indices(i)[rank * b:(rank + 1) * b]
        g = stream_generator(self.seed, "augment", i)
        oy, ox = torch.randint(0, 2 * self.pad + 1, (2, self.batch), generator=g)
        flip = torch.randint(0, 2, (self.batch,), generator=g).bool()
        part = slice(rank * b, (rank + 1) * b)
        x = self.prep.apply(self.train_x[idx.to(self.train_x.device)])
        x = augment(x, self.pad, oy[part].to(dev), ox[part].to(dev), flip[part].to(dev))
        y = self.ds.train_y[idx].to(dev, non_blocking=True)
        lr = self.opt.param_groups[0]["lr"] if self.plateau else lr_at(self.rec, i)
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss, wrong = train_step(self.net, self.opt, x, y)
        self.meter += torch.stack([loss.double() * b, wrong.double(), torch.tensor(float(b), dtype=torch.float64,
                                                                                   device=dev)])
        return lr, loss

    def evaluate_and_log(self, done: int, lr: float) -> None:
        """Test error, a row of metrics.csv and a checkpoint (rank 0) after update ``done``."""
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        self.elapsed += time.perf_counter() - self.tick
        sums = self.meter.clone()
        if self.world > 1:
            dist.all_reduce(sums)
        if not math.isfinite(sums[0].item()):
            raise InputError(f"training diverged by iteration {done} (the loss is {sums[0].item()}); lower the "
                             f"learning rate with --lr. {self.ckpt_path} keeps the last finite state")
        self.test_error = test_error = evaluate(self.model, self.ds, self.prep, self.rank, self.world)
        if self.sched is not None:
            self.sched.step(test_error)
        seen = max(1.0, sums[2].item())
        row = {"iteration": done, "epoch": round(done * self.batch / len(self.ds.train_x), 4),
               "loss": round(sums[0].item() / seen, 6), "train_error": round(100 * sums[1].item() / seen, 4),
               "test_error": round(test_error, 4), "lr": float(f"{lr:.8g}"),
               "images_per_s": round(seen / max(self.elapsed, 1e-9), 2)}
        self.rows.append(row)
        self.meter.zero_()
        self.elapsed = 0.0
        if self.rank != 0:
            return
        metrics.write(self.csv_path, self.rows)
        self.checkpoint(done)
        if self.show:
            lead = "\r" if self.live else ""
            print(f"{lead}resdsl: iteration {done}/{self.iters}  loss {row['loss']:.3f}  "
                  f"train {row['train_error']:.2f}%  {self.ds.test_name} {test_error:.2f}%  lr {lr:g}  "
                  f"{row['images_per_s']:.0f} img/s", file=sys.stderr, flush=True)

    def checkpoint(self, i: int) -> None:
        """Write ``last.pt``: everything :meth:`restore` needs to continue at update ``i`` bit for bit."""
        norm = self.spec.normalize
        meta = {"format": FORMAT, "spec": self.spec.name, "spec_sha256": self.spec.digest(), "iteration": i,
                "test_error": self.test_error, "classes": self.ds.classes, "data": str(self.o.data),
                "world_size": self.world,
                "preprocess": "x / 255 - pixel_mean (per-pixel mean of the training set, [C, H, W])" if norm is None
                else "(x / 255 - mean) / std per channel (the spec's input.mean and input.std; 'normalize')"}
        # what evaluation and int8 calibration must repeat (resdsl.data.Trained reads it back)
        inputs = {"pixel_mean": self.prep.mean.cpu()} if norm is None else \
            {"normalize": {"mean": list(norm.mean), "std": list(norm.std)}}
        payload = {"resdsl": meta, "model": {k: v.cpu() for k, v in self.model.state_dict().items()},
                   "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict() if self.sched else {},
                   "iteration": i, "config": self.rec, "rng": {"torch": torch.get_rng_state()},
                   **inputs, "meter": {"sums": self.meter.cpu(), "elapsed": self.elapsed}}
        buf = io.BytesIO()
        torch.save(payload, buf)
        write_bytes_atomic(self.ckpt_path, buf.getvalue())

    def summary(self) -> dict[str, Any]:
        last = self.rows[-1] if self.rows else {}
        return {"out": str(self.out), "checkpoint": str(self.ckpt_path), "metrics": str(self.csv_path),
                "iteration": max(self.start, self.iters), "rank": self.rank,
                **{k: float(last[k]) for k in ("train_error", "test_error") if k in last}}


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
