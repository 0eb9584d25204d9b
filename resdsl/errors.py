"""The exception hierarchy of resdsl.

Every error a user can cause is a :class:`ResdslError`; the CLI prints its
message (no traceback) and exits with its ``exit_code``. Anything else that
escapes is a bug in resdsl and keeps its traceback.

Exit codes (documented in the README): 0 ok, 1 verification failed, 2 bad
input, 3 missing backend or hardware.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class ResdslError(Exception):
    """Base class of every error caused by input, environment or verification."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One problem in a spec, located at ``file:line:col`` and a key path."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(ResdslError):
    """A spec that breaks the format's rules; carries every problem found."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("<spec>", 1, 1, "", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class InputError(ResdslError):
    """Bad input that is not a spec: a weights file, an artefact directory, an option."""

    exit_code = 2


class OptionError(InputError):
    """A bad option value. The message names options by ``{field}`` placeholders, filled in by :meth:`render`:
    the Python API shows ``CompileOptions.force``, the command line ``--force``."""

    exit_code = 2

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(template)

    def render(self, names: dict[str, str]) -> str:
        """The message with each ``{field}`` replaced by ``names[field]`` (the field itself when unlisted)."""
        return _PLACEHOLDER.sub(lambda m: names.get(m.group(1), m.group(1)), self.template)

    def __str__(self) -> str:
        return self.render(API_NAMES)


#: How the Python API names each option (``force`` -> ``CompileOptions.force``); filled by :mod:`resdsl.options`.
API_NAMES: dict[str, str] = {}
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


class BackendUnavailable(ResdslError):
    """A backend or the hardware it needs is missing; the message says how to get it."""

    exit_code = 3


class VerificationError(ResdslError):
    """An artefact does not compute what its spec and weights say it should."""

    exit_code = 1
