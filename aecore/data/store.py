"""Tensors in files, memory-mapped: how a prepared dataset is written in chunks and read back.

Each tensor is one safetensors file holding one tensor named ``t``, its
header padded with spaces (the format allows it) so that the data starts on
a 64-byte boundary. Such a file is read by any safetensors reader, and
``torch.from_file`` maps it, so a dataset far larger than memory is trained
from the page cache: nothing but the batch in use is resident as anonymous
memory, and nothing is ever unpickled.

A source that prepares a large dataset asks :class:`TensorStore` for empty
tensors and fills them a chunk at a time; with the data cache on they are
writable maps onto the files being prepared, so memory stays bounded.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aecore.errors import CheckpointError, DataError
from aecore.io import read_header, tensor_entries

__all__ = ["TensorStore", "accepts_store", "available_memory", "create_mapped", "open_mapped"]

#: The data section of a mapped tensor file starts on a multiple of this.
ALIGN = 64
_NAME = "t"

_CODES = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
}
_DTYPES = {code: dtype for dtype, code in _CODES.items()}


def create_mapped(path: Path, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """A new tensor file at ``path``, returned as a writable tensor mapped onto it.

    The whole file is reserved on disk first (``posix_fallocate`` where the
    system has it), so a full disk is an ``OSError`` here rather than a
    crash while the map is being written.
    """
    if dtype not in _CODES:
        raise TypeError(f"a dataset tensor cannot be {dtype}")
    if any(not isinstance(s, int) or s < 0 for s in shape):
        raise ValueError(f"a tensor shape is a tuple of sizes, got {shape}")
    nbytes = _numel(shape) * torch.empty((), dtype=dtype).element_size()
    header = json.dumps({_NAME: {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [0, nbytes]}})
    blob = header.encode()
    blob += b" " * (-(8 + len(blob)) % ALIGN)
    offset = 8 + len(blob)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        if nbytes:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(f.fileno(), offset, nbytes)
            else:  # pragma: no cover - macOS and Windows
                f.truncate(offset + nbytes)
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    data = torch.from_file(str(path), shared=True, size=offset + nbytes, dtype=torch.uint8)
    return data[offset:].view(dtype).view(shape)


def open_mapped(path: Path) -> Tensor:
    """The tensor of a file from :func:`create_mapped`, mapped read-only (copy-on-write).

    The header is checked entry by entry before anything is mapped; a file
    that is not one such tensor is a :class:`~aecore.errors.DataError`.
    """
    try:
        header = read_header(path)
    except CheckpointError as exc:
        raise DataError(str(exc)) from None
    entries = tensor_entries(header)
    if set(entries) != {_NAME} or entries[_NAME][0] not in _DTYPES:
        raise DataError(f"{path} is not a prepared dataset tensor (it holds {sorted(entries)[:3]}).")
    code, shape = entries[_NAME]
    dtype = _DTYPES[code]
    size = path.stat().st_size
    nbytes = _numel(shape) * torch.empty((), dtype=dtype).element_size()
    offset = size - nbytes
    if offset % ALIGN:
        raise DataError(f"{path} is not a prepared dataset tensor (its data is not aligned).")
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    data = torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8)
    return data[offset:].view(dtype).view(shape)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for s in shape:
        count *= s
    return count


def accepts_store(load: Any) -> bool:
    """Whether a source's ``load`` takes the ``store`` keyword (so it may stream its preparation)."""
    try:
        parameters = inspect.signature(load).parameters
    except (TypeError, ValueError):
        return False
    return "store" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def available_memory() -> int | None:
    """Bytes of memory the system could give this process now (Linux ``MemAvailable``), or None."""
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def cpu_count() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)  # pragma: no cover - macOS and Windows


class TensorStore:
    """Where a data source puts the tensors it prepares (passed to ``load(..., store=...)``).

    With the data cache on, :meth:`empty` gives writable maps onto files in
    the cache entry being prepared; the core renames the entry into place
    only after ``load`` returns, so an interrupted preparation leaves nothing
    that looks complete. With the cache off (or its disk full) the tensors are
    ordinary memory.
    """

    def __init__(self, directory: Path | None = None, *, show_progress: bool | None = None) -> None:
        self.directory = directory
        self.files: dict[int, str] = {}  # id(tensor) -> file name inside directory
        self._tensors: dict[str, Tensor] = {}
        self._show = sys.stderr.isatty() if show_progress is None else show_progress
        self._bars: list[Any] = []

    @property
    def workers(self) -> int:
        """How many worker threads or processes a source may use (the cores this process may run on)."""
        return cpu_count()

    def empty(self, key: str, shape: tuple[int, ...], dtype: torch.dtype = torch.uint8) -> Tensor:
        """A writable tensor for ``key`` (``train.x``, ``test.extras.mask``...), to be filled in place."""
        if not key or not all(c.isalnum() or c in "._-" for c in key) or key.startswith("."):
            raise ValueError(f"a store key is letters, digits, '.', '_' and '-', got {key!r}")
        if key in self._tensors:
            raise ValueError(f"the store already holds '{key}'")
        shape = tuple(int(s) for s in shape)
        tensor = None
        if self.directory is not None:
            name = f"{key}.safetensors"
            try:
                tensor = create_mapped(self.directory / name, shape, dtype)
                self.files[id(tensor)] = name
            except OSError:  # a full or read-only cache disk: prepare in memory, cache nothing
                with contextlib.suppress(OSError):
                    (self.directory / name).unlink()
                tensor = None
        if tensor is None:
            tensor = torch.empty(shape, dtype=dtype)
        self._tensors[key] = tensor
        return tensor

    def discard(self, key: str) -> None:
        """Forget ``key``'s tensor and delete its file, so the key can be asked for again.

        For a source that learns only while filling a tensor that it needs
        another shape (the image folders' ``channels=auto`` meeting a colour
        file after gray ones). A tensor still referenced keeps its pages (a
        deleted file stays mapped), but it no longer belongs to the dataset.
        """
        tensor = self._tensors.pop(key, None)
        if tensor is None:
            raise KeyError(f"the store holds no '{key}'")
        name = self.files.pop(id(tensor), None)
        if name is not None and self.directory is not None:
            with contextlib.suppress(OSError):
                (self.directory / name).unlink()

    def progress(self, total: int, description: str) -> Callable[[int], None]:
        """``advance(n)`` for a progress bar of ``total`` steps on stderr (silent off a terminal)."""
        if not self._show or total <= 0:
            return lambda n=1: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        bar.start()
        self._bars.append(bar)
        task = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            bar.update(task, advance=n)

        return advance

    def close(self) -> None:
        """Stop every progress bar."""
        for bar in self._bars:
            with contextlib.suppress(Exception):
                bar.stop()
        self._bars.clear()
