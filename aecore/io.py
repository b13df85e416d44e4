"""Files: atomic writes, and a safetensors header read and checked before any tensor is.

Nothing here imports torch, so the checks can run before anything heavy.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import struct
import tempfile
from pathlib import Path
from typing import Any

from aecore.errors import CheckpointError, FileSystemError

__all__ = ["DTYPE_SIZES", "MAX_HEADER", "atomic_write_bytes", "read_header", "tensor_entries"]

#: The largest safetensors header aecore reads (a hostile file may claim more).
MAX_HEADER = 100 * 1024 * 1024


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary sibling, flush it to disk, then rename over ``path``.

    A crash at any moment leaves either the old file or the new one under
    the real name, never half of one. A fault of the file system (read-only,
    full, a missing folder or a file where a folder should be) is a one-line
    :class:`~aecore.errors.FileSystemError` naming ``path``, and the file that
    was there stays as it was.
    """
    try:
        _write_and_rename(path, payload)
    except OSError as exc:
        if isinstance(exc, FileSystemError) or exc.errno not in FILE_SYSTEM_ERRNOS:
            raise
        raise file_system_error(exc, path) from exc


def _write_and_rename(path: Path, payload: bytes) -> None:
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
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


#: Temporaries that :func:`atomic_write_bytes` makes (``.NAME.XXXXXXXX.tmp``, mkstemp's eight characters).
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")

#: errno -> (what went wrong, what to do): the faults of a file system that the user can fix.
_CAUSES = {
    errno.EROFS: ("the file system is read-only", "choose a writable location"),
    errno.ENOSPC: ("no space is left on the device", "free some space and try again"),
    getattr(errno, "EDQUOT", -1): ("the disk quota is exceeded", "free some space and try again"),
    errno.EFBIG: ("the file is too large for this file system", "choose another location"),
    errno.EACCES: ("permission denied", "choose a location you may write to"),
    errno.EPERM: ("the operation is not permitted there", "choose another location"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another path"),
    errno.EEXIST: ("a file is in the way of a folder on the path", "choose another path"),
    errno.EISDIR: ("it is a folder", "choose a file path"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
    errno.ELOOP: ("the path has too many symbolic links", "choose another path"),
    errno.EIO: ("an input/output error (a failing disk or network share)", "check the device"),
}
#: The errno values :func:`file_system_error` describes.
FILE_SYSTEM_ERRNOS = frozenset(code for code in _CAUSES if code >= 0)


def file_system_error(
    exc: OSError, path: str | Path | None = None, *, action: str = "write", fix: str | None = None
) -> FileSystemError:
    """A one-line :class:`~aecore.errors.FileSystemError` for ``exc``: the path, the cause and the fix.

    ``path`` defaults to the file the error names; ``fix`` replaces the generic advice.
    """
    shown = path if path is not None else exc.filename
    cause, advice = _CAUSES.get(exc.errno or 0, (exc.strerror or str(exc), "check the path"))
    if exc.errno == errno.ENOENT and action != "use":  # making something, not finding it
        cause, advice = "a folder on the path does not exist or cannot hold files", "choose another path"
    target = f"cannot {action} {shown if shown is not None else 'a file'}"
    name = None if shown is None else str(shown)
    return FileSystemError(f"{target}: {cause}; {fix or advice}.", errno=exc.errno, filename=name)


#: Bytes per element of each safetensors dtype aecore reads.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked entry by entry before any tensor is read.

    Every tensor entry has a known dtype, a shape of non-negative integers and
    offsets that hold exactly that many bytes; together the tensors cover the
    data section with no gap, overlap or excess, so whatever this accepts the
    safetensors reader accepts too, and a tensor's size is known from here.
    """
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
        except (ValueError, UnicodeDecodeError, RecursionError):  # JSONDecodeError is a ValueError
            raise CheckpointError(f"{path} is not a safetensors file (unreadable header).") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (header is not a table).")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path} is not a safetensors file (its metadata is not a table of strings).")
    spans = sorted(
        (_tensor_span(path, key, entry), key) for key, entry in header.items() if key != "__metadata__"
    )
    end = 0
    for (begin, stop), key in spans:
        if begin != end:
            raise CheckpointError(
                f"{path} is not a safetensors file (tensor '{key}' does not start where the one before it "
                "ends)."
            )
        end = stop
    if 8 + n + end > size:
        raise CheckpointError(f"{path} is truncated: {size} bytes, header needs {8 + n + end}.")
    if 8 + n + end < size:
        raise CheckpointError(
            f"{path} is not a safetensors file ({size - 8 - n - end} bytes after its last tensor)."
        )
    return header


def tensor_entries(header: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of the tensors a header from :func:`read_header` declares."""
    return {
        key: (entry["dtype"], tuple(entry["shape"])) for key, entry in header.items() if key != "__metadata__"
    }


def _tensor_span(path: Path, key: str, entry: Any) -> tuple[int, int]:
    """The checked ``(begin, end)`` byte offsets of one tensor entry."""

    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    problem = None
    if not isinstance(entry, dict):
        problem = "is not a table"
    elif entry.get("dtype") not in DTYPE_SIZES:
        problem = f"has an unknown dtype {_short(entry.get('dtype'))}"
    elif not isinstance(entry.get("shape"), list) or not all(count(s) for s in entry["shape"]):
        problem = f"has a shape {_short(entry.get('shape'))} that is not a list of sizes"
    else:
        offsets = entry.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(count(o) for o in offsets)):
            problem = f"has data offsets {_short(offsets)} that are not two byte positions"
        elif offsets[1] - offsets[0] != math.prod(entry["shape"]) * DTYPE_SIZES[entry["dtype"]]:
            problem = (
                f"has offsets {_short(offsets)} that do not hold a {entry['dtype']} tensor "
                f"of shape {_short(entry['shape'])}"
            )
    if problem is not None:
        shown = key if len(key) <= 80 else key[:77] + "..."
        raise CheckpointError(f"{path} is not a safetensors file (tensor {shown!r} {problem}).")
    return entry["data_offsets"][0], entry["data_offsets"][1]


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: hostile values can be any size."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
