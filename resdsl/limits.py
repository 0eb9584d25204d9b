"""Resource limits checked on the analytic counts, before any tensor is allocated.

A spec can describe a network no machine can hold (width 65536, 10000 blocks); resdsl refuses it with the
estimate instead of running out of memory halfway. The limits and their defaults are
:class:`resdsl.options.Limits`; they are checked once, with the caller's values, before a module is built.
"""

from __future__ import annotations

from .errors import OptionError
from .flops import FlopReport
from .options import Limits


def check(report: FlopReport, source: str, limits: Limits) -> None:
    """Raise OptionError when the network exceeds ``limits``."""
    gmacs = report.macs / 1e9
    if report.params > limits.max_params:
        raise OptionError(f"{source}: the network has {report.params:,} parameters ({report.params * 4 / 1e9:.1f} GB "
                          f"in float32), more than the limit of {limits.max_params:,}; shrink the spec or raise "
                          "{max_params}")
    if gmacs > limits.max_gmacs:
        raise OptionError(f"{source}: the network needs {gmacs:,.1f} GMACs per image, more than the limit of "
                          f"{limits.max_gmacs:,.1f}; shrink the spec or the input, or raise {{max_gmacs}}")
