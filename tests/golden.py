"""The deterministic reference weights of tests/data/reference-README.md, shared by the golden-logit tests and by
tests/data/make_timm_reference.py, which made timm's golden logits with them."""

from __future__ import annotations

import math

import numpy as np
import torch


def reference_weights(entries: list) -> dict[str, torch.Tensor]:
    """The deterministic weights of the reference README, in torchvision's key order."""
    sd: dict[str, torch.Tensor] = {}
    i = 0
    for key, shape in entries:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(0)
            continue
        n = int(np.prod(shape)) if shape else 1
        base = np.sin(0.37 * np.arange(n, dtype=np.float64) + i).reshape(shape)
        if key.endswith("running_var"):
            v = 1 + 0.25 * (1 + base)
        elif len(shape) > 1:
            v = base / math.sqrt(n / shape[0])
        elif key.endswith("weight"):
            v = 1 + 0.1 * base
        else:
            v = 0.1 * base
        sd[key] = torch.from_numpy(v.astype(np.float32))
        i += 1
    return sd
