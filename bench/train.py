"""Training throughput on CPU: ``resdsl train``'s loop against a plain PyTorch loop over the same module.

Both sides train resnet20-cifar (He init, seed 0) with SGD (lr 0.1, momentum 0.9, weight decay 1e-4) at the same
batch, from the same uint8 images in memory, with the same preprocessing and augmentation cost INCLUDED in both:
``x / 255 - mean``, then pad 4 / random crop / flip with :func:`resdsl.data.augment` (offsets drawn per batch from
a torch generator). Evaluation and checkpointing are EXCLUDED from both: resdsl trains 2 x STEPS iterations with
an evaluation after each STEPS, and its figure is the ``images_per_s`` it logs for the second interval (its timer
spans only the steps between two evaluations); the plain loop is timed over STEPS steps after STEPS warm-up steps.
The two run alternately, ROUNDS times, in one process with the same thread count; the ratio of
the medians is printed (goal: >= 0.95x). End-to-end wall time of ``train()`` (data loading, model build,
evaluations, checkpoints) is printed for information.

    PYTHONPATH=. python3 bench/train.py [--batch 128] [--steps 10] [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SPEC = ROOT / "specs" / "cifar" / "resnet20.yaml"


def write_data(d: Path, n: int, test: int = 50) -> Path:
    import numpy as np

    r = np.random.default_rng(0)
    for name, k in (("data_batch_1", n), ("test_batch", test)):
        batch = {b"data": r.integers(0, 256, (k, 3072), dtype=np.uint8), b"labels": r.integers(0, 10, k).tolist()}
        (d / name).write_bytes(pickle.dumps(batch))
    return d


def resdsl_loop(data: Path, out: Path, batch: int, steps: int) -> tuple[float, float]:
    """images/s of the second interval of ``steps`` (from metrics.csv) and the wall time of the whole ``train()``."""
    from resdsl.metrics import read as read_metrics
    from resdsl.train import TrainOptions, train

    t = time.perf_counter()
    train(TrainOptions(SPEC, data, out=out, iterations=2 * steps, batch=batch, eval_every=steps, milestones=(),
                       progress=False))
    wall = time.perf_counter() - t
    rows = read_metrics(out / "metrics.csv")
    assert [r["iteration"] for r in rows] == [steps, 2 * steps], rows
    return rows[-1]["images_per_s"], wall


def plain_loop(data: Path, batch: int, steps: int) -> float:
    """The same work written the obvious way in PyTorch; images/s over ``steps`` after ``steps`` of warm-up."""
    import torch
    import torch.nn.functional as F

    from resdsl.backends.torch import build
    from resdsl.data import augment
    from resdsl.readers import load_dataset

    ds = load_dataset(data, classes=10, size=(32, 32), channels=3)
    x_all, y_all, mean = ds.train_x, ds.train_y, ds.pixel_mean()
    model = build(SPEC, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x_all), generator=g)
    t = 0.0
    for i in range(2 * steps):
        if i == steps:
            t = time.perf_counter()
        idx = perm[(i * batch) % len(perm):][:batch]
        x = x_all[idx].float().div_(255).sub_(mean)
        oy, ox = torch.randint(0, 9, (2, batch), generator=g)
        x = augment(x, 4, oy, ox, torch.randint(0, 2, (batch,), generator=g).bool())
        loss = F.cross_entropy(model(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="measured iterations per run (and as many to warm up)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    ours, plain, walls = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp), a.batch * 2 * a.steps)
        for r in range(a.rounds):
            order = ("resdsl", "plain") if r % 2 == 0 else ("plain", "resdsl")
            for side in order:
                if side == "resdsl":
                    ips, wall = resdsl_loop(data, Path(tmp) / f"run{r}", a.batch, a.steps)
                    ours.append(ips)
                    walls.append(wall)
                else:
                    plain.append(plain_loop(data, a.batch, a.steps))
            print(f"round {r + 1}: resdsl {ours[-1]:7.1f} img/s   plain {plain[-1]:7.1f} img/s   "
                  f"ratio {ours[-1] / plain[-1]:.3f}x", flush=True)
    mo, mp = statistics.median(ours), statistics.median(plain)
    print(f"\nresnet20-cifar, batch {a.batch}, {torch.get_num_threads()} thread(s), {a.steps} steps after {a.steps}, "
          f"{a.rounds} rounds: resdsl train {mo:.1f} img/s, plain PyTorch {mp:.1f} img/s -> {mo / mp:.3f}x "
          f"(goal >= 0.95x); end-to-end train() {statistics.median(walls):.1f} s for {2 * a.steps} "
          "iterations incl. data loading, evaluations and checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
