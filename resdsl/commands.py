"""Subcommands that lower and verify (compile, verify); registered by :mod:`resdsl.cli`."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the lowering commands (filled in as the backends land)."""
