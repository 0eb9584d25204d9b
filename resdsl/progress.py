"""Progress lines for long steps: shown on a terminal, silent in pipes and CI."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Progress:
    """``with progress.step("exporting ONNX"): ...`` prints the step and its duration on a TTY."""

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty() and not os.environ.get("CI")
        self.enabled = enabled

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        print(f"resdsl: {what} ...", file=sys.stderr, end="", flush=True)
        t = time.perf_counter()
        try:
            yield
        finally:
            print(f" {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)

    def note(self, line: str) -> None:
        if self.enabled:
            print(f"resdsl:   {line}", file=sys.stderr, flush=True)
