"""A cache of prepared datasets: decoded once, then memory-mapped by every later run.

A prepared dataset (its uint8 or float tensors, labels, per-sample extras,
normalisation and description) is one folder under
``<cache dir>/datasets/`` (``$AECORE_CACHE_DIR``, default ``~/.cache/aecore``):
``dataset.json`` and one mapped tensor file per tensor
(:mod:`aecore.data.store`). Loading it maps the files, so a dataset larger
than memory trains without ever being resident as a whole.

The key covers the dataset name, its options, the normalisation asked for,
and the size and modification time of every source file, so an edited CSV
or a new download is prepared again. A source may fill the entry's files
directly as it decodes (``load(..., store=...)``), which keeps memory
bounded; the entry is prepared under a temporary name and renamed into
place only when complete, so an interrupted preparation never leaves an
entry that looks complete. ``AECORE_NO_DATA_CACHE=1`` turns the cache off.
A damaged entry is ignored and rebuilt; writing is best effort and never
fails a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from aecore.data import Dataset, TensorData
from aecore.data.store import TensorStore, create_mapped, open_mapped
from aecore.errors import DataError
from aecore.paths import cache_dir

__all__ = ["cache_key", "cached_dataset"]

_FORMAT = 2
_META = "dataset.json"
_META_LIMIT = 64 * 1024 * 1024
_PREFIX = ".prep-"


def cache_key(name: str, options: dict[str, Any], sources: Sequence[Path]) -> str | None:
    """A key for this dataset and the current state of its files; None if a file is missing."""
    files = []
    # Strings, and each folder resolved once: a tree of many files then costs one stat per file,
    # not a path object and a chain of lstat calls each.
    folders: dict[str, str] = {}
    for path in sources:
        head, base = os.path.split(os.fspath(path))
        try:
            stat = os.stat(path)
            folder = folders.get(head)
            if folder is None:
                folder = folders[head] = os.path.realpath(head or ".")
        except OSError:
            return None
        files.append([os.path.join(folder, base), stat.st_size, stat.st_mtime_ns])
    blob = json.dumps({"format": _FORMAT, "name": name, "options": options, "files": files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cache_off() -> bool:
    """Whether ``AECORE_NO_DATA_CACHE`` turns the dataset cache off."""
    return os.environ.get("AECORE_NO_DATA_CACHE", "").strip().lower() in {"1", "true", "yes", "on"}


def cached_dataset(
    name: str,
    options: dict[str, Any],
    sources: Callable[[], Sequence[Path]],
    build: Callable[[TensorStore], Dataset],
) -> Dataset:
    """The dataset from the cache when its sources are unchanged, else ``build(store)`` and store it."""
    if cache_off():
        store = TensorStore(None)
        try:
            return build(store)
        finally:
            store.close()
    key = cache_key(name, options, sources())
    entry = _entry(name, key) if key else None
    damaged = False
    if entry is not None and (entry / _META).exists():
        loaded = _read(entry)
        if loaded is not None:
            return loaded
        damaged = True
    scratch = _scratch_dir()
    store = TensorStore(scratch)
    try:
        dataset = build(store)
    except BaseException:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        store.close()
    if scratch is None:
        return dataset
    key = key or cache_key(name, options, sources())  # a download creates the files
    if not key or not _commit(scratch, _entry(name, key), dataset, store, replace=damaged):
        shutil.rmtree(scratch, ignore_errors=True)
        return dataset
    return _read(_entry(name, key)) or dataset


def _entry(name: str, key: str) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in name.split("?")[0])[-40:].strip("-")
    return cache_dir() / "datasets" / f"{slug}-{key}"


def _scratch_dir() -> Path | None:
    """A fresh folder to prepare an entry in (None if the cache folder is not writable)."""
    root = cache_dir() / "datasets"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(root)
        return Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=root))
    except OSError:
        return None


def _remove_abandoned(root: Path) -> None:
    """Delete the scratch folders of preparations whose process is gone (killed, say)."""
    for path in root.glob(f"{_PREFIX}*"):
        try:
            pid = int(path.name[len(_PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _commit(scratch: Path, entry: Path, dataset: Dataset, store: TensorStore, *, replace: bool) -> bool:
    """Write what the store does not already hold, then rename the scratch folder to ``entry``.

    A damaged entry (``replace``) is first renamed out of the way, never
    rewritten in place: a process that still maps its files keeps valid pages.
    """
    try:
        files = dict(store.files)  # id(tensor) -> file, for tensors the source wrote through the store
        splits: dict[str, Any] = {}
        for split in ("train", "test"):
            data: TensorData = getattr(dataset, split)
            record: dict[str, Any] = {"normalisation": data.normalisation, "extras": {}}
            for part, tensor in data.storage.items():
                name = files.get(id(tensor))
                if name is None:
                    name = f"{split}.{part}.safetensors"
                    create_mapped(scratch / name, tuple(tensor.shape), tensor.dtype).copy_(tensor)
                    files[id(tensor)] = name
                if part.startswith("extras."):
                    record["extras"][part.removeprefix("extras.")] = name
                else:
                    record[part] = name
            splits[split] = record
        whole: dict[str, str] = {}
        for key, tensor in dataset.tensors.items():
            if not key.isidentifier():
                return False  # not a name a file may carry: prepare it again next time
            name = files.get(id(tensor))
            if name is None:
                name = f"dataset.{key}.safetensors"
                create_mapped(scratch / name, tuple(tensor.shape), tensor.dtype).copy_(tensor)
                files[id(tensor)] = name
            whole[key] = name
        meta = {
            "format": _FORMAT,
            "name": dataset.name,
            "spec": dataset.spec,
            "splits": splits,
            "tensors": whole,
        }
        (scratch / _META).write_text(json.dumps(meta))
        for path in scratch.iterdir():  # on disk before the entry is named complete
            with path.open("rb+") as f:
                os.fsync(f.fileno())
        if replace or (entry.exists() and not (entry / _META).exists()):
            with contextlib.suppress(FileNotFoundError):
                old = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-old-", dir=entry.parent))
                entry.rename(old / entry.name)
                shutil.rmtree(old, ignore_errors=True)
        try:
            scratch.rename(entry)
        except OSError:
            if (entry / _META).exists():  # another process prepared it first: use theirs
                return False
            raise
    except (OSError, TypeError, ValueError):  # a full or read-only disk, or a spec that is not JSON
        return False
    return True


def _read(entry: Path) -> Dataset | None:
    """The dataset of a complete entry, memory-mapped; None if anything about it is odd."""
    try:
        path = entry / _META
        if path.stat().st_size > _META_LIMIT:
            return None
        meta = json.loads(path.read_text())
        if meta.get("format") != _FORMAT or not isinstance(meta.get("name"), str):
            return None
        if not isinstance(meta.get("spec"), dict):
            return None
        opened: dict[str, torch.Tensor] = {}

        def tensor(name: Any) -> torch.Tensor:
            if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
                raise ValueError(f"bad file name {name!r}")
            if name not in opened:
                opened[name] = open_mapped(entry / name)
            return opened[name]

        splits = {}
        for split in ("train", "test"):
            record = meta["splits"][split]
            x = tensor(record["x"])
            y = tensor(record["y"]) if "y" in record else None
            rows = tensor(record["rows"]) if "rows" in record else None
            if rows is not None and not _row_numbers(rows, len(x)):
                return None
            extras = {key: tensor(name) for key, name in dict(record["extras"]).items()}
            splits[split] = TensorData(x, y, record["normalisation"], rows=rows, extras=extras)
        whole = {key: tensor(name) for key, name in dict(meta.get("tensors", {})).items()}
    # Anything odd in a cache entry (ours, but on disk) means: prepare the data again.
    except _ODD:
        return None
    return Dataset(meta["name"], splits["train"], splits["test"], meta["spec"], whole)


_ODD = (OSError, KeyError, ValueError, TypeError, AttributeError, RecursionError, DataError, RuntimeError)


def _row_numbers(rows: torch.Tensor, n: int) -> bool:
    """Whether ``rows`` are row numbers into ``n`` rows (a view's positions)."""
    if rows.dim() != 1 or rows.dtype != torch.long:
        return False
    return len(rows) == 0 or (int(rows.min()) >= 0 and int(rows.max()) < n)
