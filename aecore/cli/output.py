"""Console output shared by the commands: Rich for tables, plain lines for errors."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


class _DeferredConsole:
    """Rich's Console, made on first use: ``--help`` and one-line errors never import Rich."""

    def __init__(self) -> None:
        object.__setattr__(self, "_console", None)

    def _real(self) -> Console:
        if self._console is None:
            from rich.console import Console

            object.__setattr__(self, "_console", Console(highlight=False))
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._real(), name, value)


console: Console = _DeferredConsole()  # type: ignore[assignment]


def rich_console() -> Console:
    """The Console behind ``console`` (made now if it was not yet), for settings such as its width."""
    return console._real()  # type: ignore[attr-defined]


def fail_line(message: str) -> None:
    """Print a one-line error on stderr (no wrapping, no markup, no traceback)."""
    text = " ".join(str(message).split())
    sys.stderr.write(f"error: {text}\n")
    sys.stderr.flush()


def warning_line(message: str) -> None:
    """Print a one-line notice on stderr: something the user should know that does not stop the work."""
    text = " ".join(str(message).split())
    sys.stderr.write(f"warning: {text}\n")
    sys.stderr.flush()
