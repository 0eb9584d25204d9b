"""Whole-process time of ``resdsl flops`` against building the torch module and running FlopCounterMode.

Goal: ``resdsl flops`` under 0.3 s and at least 10x faster than the torch route.
Run: ``python bench/flops.py [SPEC] [--repeat N]``; prints the median of N runs of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TORCH_ROUTE = """
import sys, torch
from torch.utils.flop_counter import FlopCounterMode
from resdsl import build, load
spec = load(sys.argv[1])
model = build(spec).eval()
with torch.no_grad(), FlopCounterMode(display=False) as c:
    model(torch.zeros(1, spec.in_channels, *spec.in_size))
print(c.get_total_flops() // 2)
"""


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", nargs="?", default="specs/resnet152.yaml")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    ours = [timed([sys.executable, "cli.py", "flops", a.spec]) for _ in range(a.repeat)]
    peer = [timed([sys.executable, "-c", TORCH_ROUTE, a.spec]) for _ in range(a.repeat)]
    o, p = statistics.median(ours), statistics.median(peer)
    print(f"spec: {a.spec}  runs: {a.repeat} each (median, whole process)")
    print(f"resdsl flops:                    {o:.3f} s   (goal < 0.3 s: {'met' if o < 0.3 else 'NOT met'})")
    print(f"torch build + FlopCounterMode:   {p:.3f} s")
    print(f"speed-up: {p / o:.1f}x   (goal >= 10x: {'met' if p / o >= 10 else 'NOT met'})")


if __name__ == "__main__":
    main()
