"""The options both image sources share, and what they need from the core's tensor store."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch import Tensor

from aecore.config import param

__all__ = ["ImageOptions", "TensorStore", "parse_size", "resolve"]

#: The largest side ``size=`` accepts: far beyond any training image, small enough to fail early.
MAX_SIDE = 16384

_SIZE = re.compile(r"\s*(\d+)\s*(?:[xX×]\s*(\d+)\s*)?")


def parse_size(text: str) -> tuple[int, int]:
    """``"64"`` or ``"64x48"`` as (height, width); a ValueError naming the accepted forms."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"size must be H or HxW in pixels (e.g. 64 or 64x48), got {text!r}")
    height = int(match[1])
    width = int(match[2]) if match[2] is not None else height
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise ValueError(f"size sides must be from 1 to {MAX_SIDE} pixels, got {text!r}")
    return height, width


@dataclass(frozen=True)
class ImageOptions:
    """How images become tensors: one size, one channel count, decoded the same way on every machine."""

    size: str | None = param(
        None,
        "Output size H or HxW (height first); none: every image must already have the same size.",
    )
    resize: Literal["resize", "crop", "pad"] = param(
        "resize",
        "resize: stretch to HxW; crop: cover HxW, then cut the centre; pad: fit inside HxW, centred on 0.",
    )
    channels: Literal["auto", 1, 3] = param(
        "auto", "1 (grayscale) or 3 (RGB); auto: 1 when every image is grayscale, else 3."
    )
    skip_bad: bool = param(
        False, "Leave unreadable files out (counted, warned about, listed in the spec) instead of failing."
    )

    def __post_init__(self) -> None:
        if self.size is not None:
            parse_size(self.size)
        elif self.resize != "resize":
            raise ValueError(f"resize={self.resize} needs size=H or size=HxW to resize to")
        if self.resize not in ("resize", "crop", "pad"):
            raise ValueError(f"resize must be resize, crop or pad, got {self.resize!r}")
        if self.channels not in ("auto", 1, 3) or isinstance(self.channels, bool):
            raise ValueError(f"channels must be auto, 1 or 3, got {self.channels!r}")

    @property
    def target(self) -> tuple[int, int] | None:
        """The output (height, width), or None to keep the images' own common size."""
        return None if self.size is None else parse_size(self.size)


class TensorStore(Protocol):
    """What a source's ``load`` may get from the core as ``store`` (see ``aecore.data.TensorStore``)."""

    workers: int

    def empty(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor: ...

    def discard(self, key: str) -> None: ...

    def progress(self, total: int, description: str) -> Callable[[int], None]: ...


def empty(store: TensorStore | None, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """A writable tensor from the store (memory-mapped into the cache file), else plain memory."""
    return torch.empty(shape, dtype=dtype) if store is None else store.empty(key, shape, dtype)


def discard(store: TensorStore | None, key: str) -> None:
    """Give back a tensor from :func:`empty` that will not be used (its cache file is deleted)."""
    if store is not None:
        store.discard(key)


def workers(store: TensorStore | None) -> int:
    """The CPU cores this process may use: the store's count, else the scheduler's affinity."""
    count = getattr(store, "workers", None)
    if isinstance(count, int) and count >= 1:
        return count
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def progress(store: TensorStore | None, total: int, description: str) -> Callable[[int], None]:
    """The store's progress callback, or one that does nothing."""
    if store is None:
        return lambda n: None
    return store.progress(total, description)


def resolve(text: str, data_dir: Path | None) -> Path:
    """``text`` as an absolute path: a relative one starts at ``data_dir``, else the working directory."""
    path = Path(text).expanduser()
    base = data_dir if data_dir is not None else Path.cwd()
    return (path if path.is_absolute() else base / path).resolve()
