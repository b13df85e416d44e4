"""SVHN, the Street View house numbers, from the cropped-digit ``.mat`` files.

``train_32x32.mat``, ``test_32x32.mat`` and ``extra_32x32.mat`` sit right
in the data root, as torchvision keeps them. Each is a MATLAB v5 file
(never unpickled) holding ``X``, uint8 of shape 32×32×3×N (height, width,
channel, image), and ``y``, N labels 1 to 10 where 10 stands for the digit
0. The images come out N×3×32×32 and the label 10 as 0, so a label is the
digit. Each file's header and variable list are checked (with
``scipy.io.whosmat``, which reads no data) before any array is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from aecore.config import param
from aecore.data import UINT8_IMAGES, TensorData
from aecore.errors import DataError
from aecore_vision.common import (
    ImageSource,
    Layout,
    Store,
    Torchvision,
    allocate,
    changed,
    download_param,
    file_size,
    progress,
)

__all__ = ["SVHN", "SVHNConfig"]

_SHAPE = (32, 32, 3)
_HEADER = 128
#: Deflate cannot shrink data by more than about 1032:1: what a compressed variable can hold, at most.
_MAX_RATIO = 1100
_NUMBERS = {"double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}


@dataclass(frozen=True)
class SVHNConfig:
    extra: bool = param(False, "Add the 531,131 easier extra images (extra_32x32.mat) to the training split.")
    download: bool = download_param()


class SVHN(ImageSource):
    """73,257 training and 26,032 test house-number digits, 3×32×32: ``--data svhn`` (``?extra=true``)."""

    Config = SVHNConfig
    name = "svhn"
    title = "SVHN"

    def split_files(self) -> dict[str, list[str]]:
        extra = ["extra_32x32.mat"] if self.config.extra else []
        return {"train": ["train_32x32.mat", *extra], "test": ["test_32x32.mat"]}

    def layout(self) -> Layout:
        listing = "train_32x32.mat and test_32x32.mat" + (" and extra_32x32.mat" if self.config.extra else "")
        return Layout(self.title, "", listing)

    def paths(self, root: Path) -> list[Path]:
        return [root / n for files in self.split_files().values() for n in files]

    def fetch(self) -> Torchvision:
        splits = ("train", "test", "extra") if self.config.extra else ("train", "test")
        return Torchvision("SVHN", tuple({"split": s} for s in splits))

    def read(self, root: Path, store: Store | None) -> tuple[TensorData, TensorData, dict[str, Any]]:
        sio = _scipy_io()
        labels: dict[str, list[np.ndarray]] = {}
        counts: dict[str, list[int]] = {}
        for split, files in self.split_files().items():  # every check before any image is loaded
            labels[split], counts[split] = [], []
            for name in files:
                path = root / name
                n = _check_variables(sio, path)
                y = _labels(_load(sio, path, "y"), path, n)
                labels[split].append(y)
                counts[split].append(n)
        splits = {}
        for split, files in self.split_files().items():
            total = sum(counts[split])
            x = allocate(store, f"{split}.x", (total, 3, *_SHAPE[:2]), torch.uint8)
            y = allocate(store, f"{split}.y", (total,), torch.int64)
            advance = progress(store, total, f"SVHN {split}")
            start = 0
            for name, n, ys in zip(files, counts[split], labels[split], strict=True):
                path = root / name
                images = _load(sio, path, "X")
                if images.shape != (*_SHAPE, n) or images.dtype != np.uint8:
                    raise changed(path)
                x[start : start + n].numpy()[...] = images.transpose(3, 2, 0, 1)  # H×W×C×N to N×C×H×W
                del images
                y[start : start + n] = torch.from_numpy(ys)
                start += n
                advance(n)
            y[y == 10] = 0  # SVHN's 10 is the digit 0
            splits[split] = TensorData(x, y, UINT8_IMAGES)
        return splits["train"], splits["test"], {}


def _scipy_io() -> ModuleType:
    try:
        import scipy.io
    except ImportError:
        raise DataError(
            "reading SVHN's .mat files needs scipy, which is not installed: pip install scipy."
        ) from None
    return scipy.io


def _check_variables(sio: ModuleType, path: Path) -> int:
    """The number of images in ``path``, after checking its header and its X and y without reading them."""
    size = file_size(path)
    try:
        with path.open("rb") as f:
            header = f.read(_HEADER)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {' '.join(str(exc).split())}.") from None
    endian = header[126:128]
    version = int.from_bytes(header[124:126], "little" if endian == b"IM" else "big")
    if len(header) == _HEADER and endian in (b"IM", b"MI") and version == 0x0200:
        raise DataError(
            f"{path} is a MATLAB 7.3 (HDF5) file; SVHN's files are MATLAB v5 (download it again)."
        )
    if len(header) < _HEADER or endian not in (b"IM", b"MI") or version != 0x0100:
        raise DataError(
            f"{path} is not a MATLAB v5 .mat file; it should be SVHN's {path.name} (download it again)."
        )
    try:
        found = {name: (tuple(shape), kind) for name, shape, kind in sio.whosmat(str(path))}
    except Exception as exc:  # scipy's parser on a damaged file: whatever it raises means "unreadable"
        raise DataError(
            f"cannot read {path} as a MATLAB v5 file ({type(exc).__name__}); download it again."
        ) from None
    x_shape, x_kind = found.get("X", ((), ""))
    if len(x_shape) != 4 or x_shape[:3] != _SHAPE or x_kind != "uint8" or x_shape[3] < 1:
        held = ", ".join(f"{k} {_dims(s)} {c}" for k, (s, c) in list(found.items())[:4]) or "nothing"
        raise DataError(
            f"{path} has no uint8 array X of shape 32×32×3×N (it holds {held}); download it again."
        )
    n = x_shape[3]
    needed = n * math.prod(_SHAPE)
    if needed > _MAX_RATIO * size:  # what loading would allocate, refused before scipy allocates it
        raise DataError(
            f"{path} declares {n:,} images ({needed:,} bytes), more than a {size:,}-byte file can hold; "
            "the file is damaged (download it again)."
        )
    y_shape, y_kind = found.get("y", ((), ""))
    if y_shape not in ((n, 1), (1, n)) or y_kind not in _NUMBERS:
        held = f"{_dims(y_shape)} {y_kind}" if y_kind else "missing"
        raise DataError(
            f"{path} has no array y of {n} numeric labels for its {n} images (y: {held}); download it again."
        )
    return n


def _dims(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def _load(sio: ModuleType, path: Path, name: str) -> np.ndarray:
    """One variable of a checked file (scipy never unpickles: MATLAB v5 is a plain binary format)."""
    try:
        value = sio.loadmat(str(path), variable_names=[name], squeeze_me=False, mat_dtype=False).get(name)
    except Exception as exc:  # as in _check_variables: a truncated or damaged file
        raise DataError(
            f"cannot read {path} as a MATLAB v5 file ({type(exc).__name__}); download it again."
        ) from None
    if not isinstance(value, np.ndarray):  # listed by whosmat, but its data could not be found
        raise DataError(f"{path} is truncated: its variable {name} cannot be read (download it again).")
    return value


def _labels(y: np.ndarray, path: Path, n: int) -> np.ndarray:
    """The labels of ``path`` as int64, each checked to be a whole number 1 to 10."""
    if y.size != n or not np.issubdtype(y.dtype, np.number) or np.iscomplexobj(y):
        raise changed(path)
    flat = y.reshape(-1)
    bad = (flat < 1) | (flat > 10)
    if np.issubdtype(flat.dtype, np.floating):
        bad |= ~np.isfinite(flat) | (flat != np.floor(flat))
    if bad.any():
        value = format(flat[bad][0].item(), "g")
        raise DataError(f"{path} holds the label {value}; SVHN labels are 1 to 10 (download it again).")
    return flat.astype(np.int64)
