"""Resource limits checked on the analytic counts, before any tensor is allocated.

A spec can describe a network no machine can hold (width 65536, 10000 blocks);
resdsl refuses it with the estimate instead of running out of memory halfway.
The defaults admit every network in the papers with room to spare (the
largest, wide_resnet101_2, has 0.13e9 parameters and 22.8 GMACs).
"""

from __future__ import annotations

from .errors import InputError
from .flops import FlopReport

DEFAULT_MAX_PARAMS = 2_000_000_000  # 8 GB of float32 weights
DEFAULT_MAX_GMACS = 2_000.0         # 2 TMACs for one image


def check(report: FlopReport, source: str, max_params: int | None = None, max_gmacs: float | None = None) -> None:
    """Raise InputError when the network exceeds the limits (None: the defaults)."""
    max_params = DEFAULT_MAX_PARAMS if max_params is None else max_params
    max_gmacs = DEFAULT_MAX_GMACS if max_gmacs is None else max_gmacs
    gmacs = report.macs / 1e9
    if report.params > max_params:
        raise InputError(f"{source}: the network has {report.params:,} parameters ({report.params * 4 / 1e9:.1f} GB "
                         f"in float32), more than the limit of {max_params:,}; shrink the spec or raise --max-params")
    if gmacs > max_gmacs:
        raise InputError(f"{source}: the network needs {gmacs:,.1f} GMACs per image, more than the limit of "
                         f"{max_gmacs:,.1f}; shrink the spec or the input, or raise --max-gmacs")
