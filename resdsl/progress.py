"""Progress lines for long steps, on stderr: one line per step as it starts, unless quiet.

On a terminal the step's duration is appended to its line when it ends; in a pipe, a log file or CI each
step is one complete line written when it starts (a line left open would only appear when it ends), so a
long compile's log shows what it is doing. There are no bars. ``quiet`` prints nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Progress:
    """``with progress.step("exporting ONNX"): ...`` prints ``resdsl: exporting ONNX ...`` on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._open = False  # a terminal line waits for its step's duration

    @property
    def enabled(self) -> bool:
        """Whether anything is printed at all."""
        return not self.quiet

    @property
    def tty(self) -> bool:
        """Whether stderr is a terminal (lines may then be finished or redrawn in place)."""
        try:
            return bool(sys.stderr.isatty())
        except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
            return False

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        if self.quiet:
            yield
            return
        if not self.tty:
            print(f"resdsl: {what} ...", file=sys.stderr, flush=True)
            yield
            return
        self._close()
        print(f"resdsl: {what} ...", file=sys.stderr, end="", flush=True)
        self._open = True
        t = time.perf_counter()
        try:
            yield
        finally:
            took = f"{time.perf_counter() - t:.1f} s"
            if self._open:
                print(f" {took}", file=sys.stderr, flush=True)
            else:  # a note ended the line: say which step the duration belongs to
                print(f"resdsl: {what}: {took}", file=sys.stderr, flush=True)
            self._open = False

    def note(self, line: str) -> None:
        if not self.quiet:
            self._close()
            print(f"resdsl:   {line}", file=sys.stderr, flush=True)

    def _close(self) -> None:
        """End a terminal line still waiting for its duration (a note or a nested step comes first)."""
        if self._open:
            print(file=sys.stderr, flush=True)
            self._open = False
