"""The degradation problem (He et al. 2015, Fig. 6): plain-20/56 against ResNet-20/56 on a fixed budget.

Trains the four CIFAR specs through ``resdsl.train`` (the same loop as ``resdsl train``) and reports the training
error of the deeper and shallower nets of each family. Without ``--data`` it uses scikit-learn's 8x8 digits
(1,797 images, bundled with scikit-learn, no download), upsampled bilinearly to 32x32 and copied to 3 channels,
written in CIFAR's python layout; with ``--data DIR`` it uses CIFAR-10 from DIR.

    PYTHONPATH=. python3 experiments/degradation.py --iterations 300 --batch 32 --threads 1

Writes OUT/summary.csv, OUT/plain.png and OUT/resnet.png (training error dashed, test error bold, as in Fig. 6
left and middle), and one run directory per net. The paper's schedule is kept in proportion: lr 0.1 per batch of
128 (scaled linearly with --batch: 0.025 at 32), divided by 10 at 50% and 75% of the iterations (32k and 48k of
64k); at batch 32 the unscaled 0.1 makes both 56-layer nets blow up in the first iterations (the paper, too, had to
warm ResNet-110 up at 0.01). The "final" training error is the mean over the last
evaluation interval, measured on augmented batches in training mode, like the paper's curves.
"""

from __future__ import annotations

import argparse
import csv
import pickle
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NETS = ("plain20", "plain56", "resnet20", "resnet56")


def write_digits(out: Path, seed: int = 0, test_fraction: float = 1 / 6, images: Any = None,
                 targets: Any = None) -> Path:
    """sklearn's digits as a CIFAR-10 python directory (32x32 RGB uint8), split 5:1 with a fixed shuffle.

    ``images`` ([N, 8, 8], values 0..16) and ``targets`` default to ``sklearn.datasets.load_digits()``'s; the
    test suite passes the same arrays from tests/data/digits.npz so that it does not need scikit-learn."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    if images is None or targets is None:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            sys.exit("degradation.py needs scikit-learn for the digits data: pip install scikit-learn "
                     "(or pass --data with CIFAR-10)")
        digits = load_digits()
        images, targets = digits.images, digits.target
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) * (255.0 / 16.0))[:, None]  # [N, 1, 8, 8], 0..255
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).round().clamp(0, 255)
    x = x.to(torch.uint8).expand(-1, 3, -1, -1).numpy()
    y = np.asarray(targets, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = round(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    out.mkdir(parents=True, exist_ok=True)
    for name, idx in (("data_batch_1", train), ("test_batch", test)):
        batch = {b"data": np.ascontiguousarray(x[idx]).reshape(len(idx), -1), b"labels": y[idx].tolist()}
        (out / name).write_bytes(pickle.dumps(batch))
    (out / "batches.meta").write_bytes(pickle.dumps({b"label_names": [str(i).encode() for i in range(10)]}))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="CIFAR-10 python directory (default: sklearn digits at 32x32)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "degradation")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, help="initial lr (default 0.1 x batch / 128: the paper's lr per image)")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 is faster on a busy machine)")
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=NETS)
    a = ap.parse_args(argv)

    import torch

    from resdsl.metrics import read as read_metrics
    from resdsl.train import TrainOptions, train
    from resdsl.train_cli import plot_runs

    if a.threads:
        torch.set_num_threads(a.threads)
    data = a.data or write_digits(a.out / "digits-cifar")
    it = a.iterations
    a.lr = a.lr if a.lr is not None else 0.1 * a.batch / 128
    results = []
    for net in a.nets:
        out = a.out / net
        t = time.perf_counter()
        train(TrainOptions(ROOT / "specs" / "cifar" / f"{net}.yaml", data, out=out, iterations=it, batch=a.batch,
                           lr=a.lr, milestones=(it // 2, it * 3 // 4), seed=a.seed, eval_every=a.eval_every,
                           progress=False, resume=(out / "last.pt").is_file()))
        last = read_metrics(out / "metrics.csv")[-1]
        results.append({"net": net, "iterations": it, "batch": a.batch, "train_error": last["train_error"],
                        "test_error": last["test_error"], "loss": last["loss"],
                        "seconds": round(time.perf_counter() - t, 1)})
        print(f"{net:>9}: train error {last['train_error']:6.2f}%  test error {last['test_error']:6.2f}%  "
              f"loss {last['loss']:.3f}  ({results[-1]['seconds']:.0f} s)", flush=True)
    with open(a.out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)
    what = "CIFAR-10" if a.data else "sklearn digits (8x8 -> 32x32)"
    for family in ("plain", "resnet"):
        runs = [a.out / n for n in a.nets if n.startswith(family)]
        if runs:
            png = plot_runs(runs, a.out / f"{family}.png", f"{family}-20/56, {what}, {it} it. x {a.batch}")
            print(f"wrote {png}")
    err = {r["net"]: r["train_error"] for r in results}
    print(f"\n{what}, {it} iterations of batch {a.batch} (lr {a.lr}, /10 at {it // 2} and {it * 3 // 4}), "
          f"seed {a.seed}, one run each:")
    for shallow, deep in (("plain20", "plain56"), ("resnet20", "resnet56")):
        if shallow in err and deep in err:
            d = err[deep] - err[shallow]
            verdict = ("no clear difference" if abs(d) < 1 else
                       "the deeper net trains WORSE (degradation)" if d > 0 else "the deeper net trains better")
            print(f"  {deep} vs {shallow}: training error {err[deep]:.2f}% vs {err[shallow]:.2f}% "
                  f"({d:+.2f} points): {verdict}")
    print("  caveats: a tiny budget and a small, easy data set; single seed; differences of a point or two are "
          "within run-to-run noise. The paper's claim is about full CIFAR-10 training (64k iterations).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
