"""Errors that mean "the user asked for something we cannot do".

Every `AecoreError` carries a one-line message that names the problem and,
where there is one, the fix. The CLI prints it on one line and exits with
code 2; library callers catch it like any exception.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AecoreError(Exception):
    """Base class for user-facing errors (bad names, values, files)."""

    exit_code = 2


class Notice(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints it on one line)."""


class UnknownComponentError(AecoreError, LookupError):
    """A name (of any kind of plugin) that no installed plugin provides."""


class AmbiguousComponentError(AecoreError, LookupError):
    """A name that two distributions both provide."""


class HookError(AecoreError):
    """A hook plugin raised during a run in strict mode (``strict_hooks``, ``AECORE_STRICT_HOOKS=1``)."""

    exit_code = 1


class HookWarning(Notice):
    """A hook plugin raised during a run; it was disabled and the run went on."""


class PluginLoadError(AecoreError, ImportError):
    """A plugin whose entry point could not be imported or is not a component."""


class ConfigError(AecoreError, ValueError):
    """A component parameter that does not exist or has a bad value."""


class ShapeError(AecoreError, ValueError):
    """Components or data whose shapes do not fit together."""


class CheckpointError(AecoreError):
    """A checkpoint file that is missing, corrupt or cannot be rebuilt."""


class DataError(AecoreError):
    """A dataset that is missing, unreadable or malformed."""


class RunDirectoryError(AecoreError, FileExistsError):
    """A run directory that already holds work we would overwrite."""


class RunLockedError(RunDirectoryError):
    """A run directory that another run (or resume) is writing to right now."""


class FileSystemError(AecoreError, OSError):
    """A path that cannot be written or read: read-only, full, missing, not a folder, not permitted.

    ``errno`` and ``filename`` are those of the operating system's error.
    """

    def __init__(self, message: str, *, errno: int | None = None, filename: str | None = None) -> None:
        super().__init__(message)
        self.errno, self.filename = errno, filename

    def __str__(self) -> str:
        return str(self.args[0])


def suggest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean: a, b?' for close matches, or an empty string."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""
