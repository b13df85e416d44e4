"""Where aecore keeps files of its own (never inside a run directory)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

#: Set by ``ae train --nproc`` for the processes it launches: the folder where a failing one leaves its
#: message, for the launcher to print once (see :func:`aecore.distributed.launch`).
WORKER_REPORTS_ENV = "AECORE_WORKER_REPORTS"


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


def make_unique_dir(root: Path, name: str) -> Path:
    """Create and return ``root/name``, or ``root/name-2``, ``-3``...: the first that nobody else made first.

    Unlike :func:`unique_dir`, two processes asking at once never get the same folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    counter = 1
    while True:
        candidate = root / name if counter == 1 else root / f"{name}-{counter}"
        try:
            candidate.mkdir()
        except FileExistsError:
            counter += 1
        else:
            return candidate


def report_failure(text: str, code: int) -> bool:
    """Leave this process's failure for ``ae train --nproc`` to report; False when not launched by it.

    Only the first failure of a process counts (an interruption while it
    exits after an error does not replace the error).
    """
    folder, rank = os.environ.get(WORKER_REPORTS_ENV), os.environ.get("RANK", "")
    if not folder or not rank.isdigit():
        return False
    record = {"rank": int(rank), "code": code, "text": text, "time": time.time()}
    try:
        with open(Path(folder) / f"{rank}.json", "x", encoding="utf-8") as f:
            f.write(json.dumps(record))
    except FileExistsError:
        return True
    except OSError:
        return False
    return True
