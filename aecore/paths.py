"""Where aecore keeps files of its own (never inside a run directory)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$AECORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/aecore``, else ``~/.cache/aecore``."""
    env = os.environ.get("AECORE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "aecore"


def unique_dir(root: Path, name: str) -> Path:
    """``root/name``, or ``root/name-2``, ``-3``... : the first that does not exist yet."""
    candidate, counter = root / name, 2
    while candidate.exists():
        candidate = root / f"{name}-{counter}"
        counter += 1
    return candidate
