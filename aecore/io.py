"""Files: atomic writes, and a safetensors header read and checked before any tensor is.

Nothing here imports torch, so the checks can run before anything heavy.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

from aecore.errors import CheckpointError

__all__ = ["MAX_HEADER", "atomic_write_bytes", "read_header"]

#: The largest safetensors header aecore reads (a hostile file may claim more).
MAX_HEADER = 100 * 1024 * 1024


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary sibling, flush it to disk, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one under
    the real name, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked for size, truncation and shape."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (only {size} bytes).")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER, size - 8):
            raise CheckpointError(
                f"{path} is not a safetensors file, or is truncated (header claims {n} bytes)."
            )
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path} is not a safetensors file (unreadable header).") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (header is not a table).")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path} is not a safetensors file (its metadata is not a table of strings).")
    try:
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError, ValueError):
        raise CheckpointError(f"{path} is not a safetensors file (malformed tensor entries).") from None
    if 8 + n + end > size:
        raise CheckpointError(f"{path} is truncated: {size} bytes, header needs {8 + n + end}.")
    return header
