"""A cache of prepared datasets, so a second run skips decoding and parsing.

A prepared dataset (its uint8 or float tensors, labels, normalisation and
description) is written once as safetensors under
``<cache dir>/datasets/`` (``$AECORE_CACHE_DIR``, default ``~/.cache/aecore``).
The key covers the dataset name, its options, the normalisation asked for,
and the size and modification time of every source file, so an edited CSV
or a new download is prepared again. ``AECORE_NO_DATA_CACHE=1`` turns the
cache off. A damaged cache file is ignored and rebuilt; writing is best
effort and never fails a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from aecore.data import Dataset, TensorData
from aecore.errors import DataError
from aecore.paths import cache_dir

__all__ = ["cache_key", "cached_dataset"]

_FORMAT = 1
_META = "aecore.dataset"


def cache_key(name: str, options: dict[str, Any], sources: Sequence[Path]) -> str | None:
    """A key for this dataset and the current state of its files; None if a file is missing."""
    files = []
    for path in sources:
        try:
            stat = path.stat()
        except OSError:
            return None
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    blob = json.dumps({"format": _FORMAT, "name": name, "options": options, "files": files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_dataset(
    name: str,
    options: dict[str, Any],
    sources: Callable[[], Sequence[Path]],
    build: Callable[[], Dataset],
) -> Dataset:
    """The dataset from the cache when its sources are unchanged, else ``build()`` and store it."""
    if os.environ.get("AECORE_NO_DATA_CACHE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return build()
    key = cache_key(name, options, sources())
    path = _path(name, key) if key else None
    if path is not None and path.exists():
        loaded = _read(path)
        if loaded is not None:
            return loaded
    dataset = build()
    key = key or cache_key(name, options, sources())  # a download creates the files
    if key:
        _write(_path(name, key), dataset)
    return dataset


def _path(name: str, key: str) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in name.split("?")[0])[-40:].strip("-")
    return cache_dir() / "datasets" / f"{slug}-{key}.safetensors"


def _read(path: Path) -> Dataset | None:
    try:
        tensors = load_file(path)
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            meta = json.loads(json.loads(f.read(n))["__metadata__"][_META])
        splits = {}
        for split in ("train", "test"):
            y = tensors.get(f"{split}.y")
            splits[split] = TensorData(tensors[f"{split}.x"], y, meta["normalisation"][split])
        if not isinstance(meta["name"], str) or not isinstance(meta["spec"], dict):
            return None
    # Anything odd in a cache file (ours, but on disk) means: prepare the data again.
    except (OSError, KeyError, ValueError, TypeError, RecursionError, SafetensorError, DataError):
        return None
    return Dataset(meta["name"], splits["train"], splits["test"], meta["spec"])


def _write(path: Path, dataset: Dataset) -> None:
    """Stream the tensors to a temporary file and rename it: no second copy of the data in memory."""
    tensors: dict[str, torch.Tensor] = {}
    for split in ("train", "test"):
        data: TensorData = getattr(dataset, split)
        tensors[f"{split}.x"] = data.x.contiguous()
        if data.y is not None:
            tensors[f"{split}.y"] = data.y.contiguous()
    meta = {
        "name": dataset.name,
        "spec": dataset.spec,
        "normalisation": {"train": dataset.train.normalisation, "test": dataset.test.normalisation},
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, tmp, metadata={_META: json.dumps(meta)})
        os.replace(tmp, path)
    except OSError:  # a read-only or full cache disk must not fail the run
        with contextlib.suppress(OSError):
            tmp.unlink()
