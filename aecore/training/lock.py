"""One writer per run directory: an operating-system lock on ``RUN/.aecore.lock``.

A run (``train()``, ``resume()``, so ``ae train`` with or without
``--resume`` or ``--overwrite``) holds the lock for as long as it may write
to its directory, and a second writer fails at once with a one-line
:class:`~aecore.errors.RunLockedError` naming the holder. The lock is the
operating system's (``flock`` on POSIX, ``msvcrt.locking`` on Windows), so it
goes with its process: a run that crashed or was killed holds nothing, and
the next one takes the directory over. The lock file records the holder's
pid, host, start time and command for that message; it is removed when the
lock is released (on Windows, which cannot remove an open file safely, it
stays and means nothing). Where the platform or the file system has no
locks, the run goes on unlocked and says so in a notice.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

from aecore.errors import Notice, RunLockedError
from aecore.io import FILE_SYSTEM_ERRNOS, TEMPORARY, file_system_error

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RunLock", "holds_work", "remove_temporaries"]

LOCK_FILE = ".aecore.lock"

#: Where msvcrt locks its one byte: past the holder's description, which other processes read.
_WINDOWS_LOCK_OFFSET = 1 << 20


class _NoLocks(Exception):
    """This platform or file system offers no file locks."""


class RunLock:
    """The lock on one run directory; release it with :meth:`release` or by leaving a ``with`` block."""

    def __init__(self, run_dir: Path, fd: int | None) -> None:
        self.run_dir = run_dir
        self._fd = fd

    @classmethod
    def acquire(cls, run_dir: Path, *, busy: str, unwritable: str) -> RunLock:
        """Lock ``run_dir`` (an existing directory) now, or fail at once.

        ``busy`` ends the one-line error when another run holds the lock,
        ``unwritable`` the one when the directory cannot be written.
        """
        path = run_dir / LOCK_FILE
        for _ in range(100):  # a holder that releases just as we open its file: open the new one
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                if exc.errno not in FILE_SYSTEM_ERRNOS:
                    raise
                raise file_system_error(exc, run_dir, action="write to", fix=unwritable) from exc
            try:
                locked = _try_lock(fd)
            except _NoLocks:
                os.close(fd)
                warnings.warn(
                    Notice(
                        f"{run_dir} is on a file system without file locks: another run writing there at "
                        "the same time would go unnoticed."
                    ),
                    stacklevel=2,
                )
                return cls(run_dir, None)
            except BaseException:
                os.close(fd)
                raise
            if not locked:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunLockedError(f"run directory {run_dir} is in use by {_describe(holder)}; {busy}.")
            if _same_file(fd, path):
                break
            _unlock(fd)
            os.close(fd)
        else:  # pragma: no cover - a lock file replaced a hundred times in a row
            raise RunLockedError(f"run directory {run_dir} is in use by another run; {busy}.")
        lock = cls(run_dir, fd)
        try:
            _write_holder(fd)
        except OSError as exc:
            lock.release()
            if exc.errno not in FILE_SYSTEM_ERRNOS:
                raise
            raise file_system_error(exc, run_dir, action="write to", fix=unwritable) from exc
        except BaseException:
            lock.release()
            raise
        return lock

    @property
    def held(self) -> bool:
        """Whether this holds an operating-system lock (not once released, nor where there is none)."""
        return self._fd is not None

    def release(self) -> None:
        """Give the directory up (safe to call twice)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        path = self.run_dir / LOCK_FILE
        try:
            if fcntl is not None and _same_file(fd, path):
                with contextlib.suppress(OSError):
                    path.unlink()  # while still locked: a newcomer then locks a file of its own
        finally:
            with contextlib.suppress(OSError):
                _unlock(fd)
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def holds_work(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds anything but a lock file and leftover write temporaries."""
    with os.scandir(run_dir) as entries:
        return any(e.name != LOCK_FILE and not TEMPORARY.fullmatch(e.name) for e in entries)


def remove_temporaries(run_dir: Path) -> None:
    """Delete the ``.NAME.XXXXXXXX.tmp`` files an atomic write killed half-way leaves (hold the lock)."""
    with os.scandir(run_dir) as entries:
        leftovers = [
            e.path for e in entries if TEMPORARY.fullmatch(e.name) and e.is_file(follow_symlinks=False)
        ]
    for leftover in leftovers:
        with contextlib.suppress(OSError):
            os.unlink(leftover)


def _try_lock(fd: int) -> bool:
    """Lock ``fd`` without waiting: True when locked, False when another process holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise _NoLocks from exc
            raise
        return True
    if msvcrt is not None:  # pragma: no cover - Windows
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    raise _NoLocks  # pragma: no cover - neither POSIX nor Windows


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    elif msvcrt is not None:  # pragma: no cover - Windows
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a releasing holder removes it)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _program() -> str:
    """How this process was started, briefly: ``ae``, ``python -m aecore``, ``python -c``, ``script.py``."""
    first = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if first is None or sys.argv[0] == "-c":
        return "python -c" if first is not None else "python"
    return f"python -m {first.parent.name}" if first.name == "__main__.py" else first.name


def _write_holder(fd: int) -> None:
    command = " ".join([_program(), *sys.argv[1:]])
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(command.split())[:200],
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(record).encode())


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        record = json.loads(os.read(fd, 4096).decode())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    """'another run (pid 12, started 2024-05-01 10:00:00: ae train ...)', from what the holder wrote."""
    parts = []
    if isinstance(holder.get("pid"), int):
        where = holder.get("host")
        parts.append(
            f"pid {holder['pid']}"
            + (f" on {where}" if isinstance(where, str) and where != socket.gethostname() else "")
        )
    if isinstance(holder.get("started"), str):
        parts.append(f"started {holder['started']}")
    detail = ", ".join(parts)
    if isinstance(holder.get("command"), str) and holder["command"]:
        detail += f": {holder['command']}" if detail else holder["command"]
    return f"another run ({detail})" if detail else "another run"
