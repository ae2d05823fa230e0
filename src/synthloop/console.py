"""The CLI's rich consoles. Without a terminal (cron, a pipe, a log file) rich would wrap at 80 columns and
split numbers across lines: there, lines are not wrapped at all, unless $COLUMNS asks for a width."""

from __future__ import annotations

import os
import sys

from rich.console import Console

UNWRAPPED = 100_000  # columns: wider than any line the CLI prints; tables keep their natural width


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    terminal = hasattr(stream, "isatty") and stream.isatty()
    return Console(stderr=stderr, width=None if terminal or os.environ.get("COLUMNS") else UNWRAPPED)
