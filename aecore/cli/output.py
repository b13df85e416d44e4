"""Console output shared by the commands: Rich for tables, plain lines for errors."""

from __future__ import annotations

import sys

from rich.console import Console

console = Console(highlight=False)


def fail_line(message: str) -> None:
    """Print a one-line error on stderr (no wrapping, no markup, no traceback)."""
    text = " ".join(str(message).split())
    sys.stderr.write(f"error: {text}\n")
    sys.stderr.flush()
