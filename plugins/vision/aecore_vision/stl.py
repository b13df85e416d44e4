"""STL-10 from its binary distribution, ``stl10_binary/``.

``*_X.bin`` files are raw uint8 images, 3×96×96 each, every channel stored
column by column (MATLAB's order); they come out upright, C×H×W.
``*_y.bin`` holds one byte per image, the classes 1 to 10, which become 0
to 9. ``?unlabeled=true`` adds the 100,000 unlabeled images to the training
split with the label -1 (torchvision's convention), so ``--classes`` drops
them and the labelled images keep their labels. Images are read in chunks
straight into the result, so memory stays bounded when the core streams to
its cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

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
    check_labels,
    download_param,
    file_size,
    progress,
    read_file,
)

__all__ = ["STL10", "STL10Config"]

_SIDE = 96
_IMAGE = 3 * _SIDE * _SIDE
_CHUNK = 1024  # images per read: 27 MiB
NAMES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
#: The label of an unlabeled image.
UNLABELED = -1


@dataclass(frozen=True)
class STL10Config:
    unlabeled: bool = param(False, "Add the 100,000 unlabeled images to the training split, with label -1.")
    download: bool = download_param()


class STL10(ImageSource):
    """5,000 training and 8,000 test images, 3×96×96, 10 classes: ``--data stl10`` (``?unlabeled=true``)."""

    Config = STL10Config
    name = "stl10"
    title = "STL-10"
    folder = "stl10_binary"

    def split_files(self) -> dict[str, list[tuple[str, str | None]]]:
        """(images, labels or None) files of each split."""
        unlabeled = [("unlabeled_X.bin", None)] if self.config.unlabeled else []
        return {"train": [("train_X.bin", "train_y.bin"), *unlabeled], "test": [("test_X.bin", "test_y.bin")]}

    def layout(self) -> Layout:
        listing = "train_X.bin, train_y.bin, test_X.bin and test_y.bin"
        if self.config.unlabeled:
            listing = listing.replace(" and ", ", ") + " and unlabeled_X.bin"
        return Layout(self.title, self.folder, listing, "stl10_binary.tar.gz")

    def paths(self, root: Path) -> list[Path]:
        folder = root / self.folder
        return [folder / n for files in self.split_files().values() for pair in files for n in pair if n]

    def fetch(self) -> Torchvision:
        return Torchvision("STL10", ({"split": "train"},))  # one archive holds every split

    def read(self, root: Path, store: Store | None) -> tuple[TensorData, TensorData, dict[str, Any]]:
        folder = root / self.folder
        checked: dict[str, list[tuple[Path, int, Tensor | None]]] = {}
        for split, files in self.split_files().items():  # every check before any image is read
            checked[split] = []
            for images, labels in files:
                x_path = folder / images
                size = file_size(x_path)
                if size == 0 or size % _IMAGE:
                    raise DataError(
                        f"{x_path} is {size:,} bytes, not a whole number of {_IMAGE:,}-byte 3×96×96 images; "
                        "the file is truncated or damaged (download it again)."
                    )
                n = size // _IMAGE
                y = None
                if labels is not None:
                    y_path = folder / labels
                    count = file_size(y_path)
                    if count != n:
                        raise DataError(f"{y_path} holds {count:,} labels for the {n:,} images of {images}.")
                    y = read_file(y_path, count)
                    check_labels(y, 1, 10, y_path, self.title)
                checked[split].append((x_path, n, y))
        splits = {}
        for split, parts in checked.items():
            total = sum(n for _, n, _ in parts)
            x = allocate(store, f"{split}.x", (total, 3, _SIDE, _SIDE), torch.uint8)
            y = allocate(store, f"{split}.y", (total,), torch.int64)
            advance = progress(store, total, f"STL-10 {split}")
            start = 0
            for x_path, n, labels in parts:
                _read_images(x_path, x[start : start + n], advance)
                if labels is None:
                    y[start : start + n] = UNLABELED
                else:
                    y[start : start + n] = labels.long() - 1  # 1..10 in the file
                start += n
            splits[split] = TensorData(x, y, UINT8_IMAGES)
        return splits["train"], splits["test"], {"label_names": list(NAMES)}


def _read_images(path: Path, out: Tensor, advance: Any) -> None:
    """Fill ``out`` (n×3×96×96) from ``path``, a chunk of images at a time, each turned upright."""
    n = len(out)
    buffer = torch.empty(min(_CHUNK, n) * _IMAGE, dtype=torch.uint8)
    try:
        with path.open("rb") as f:
            for start in range(0, n, _CHUNK):
                k = min(_CHUNK, n - start)
                chunk = buffer[: k * _IMAGE]
                if f.readinto(chunk.numpy()) != k * _IMAGE:
                    raise changed(path)
                out[start : start + k] = chunk.view(k, 3, _SIDE, _SIDE).transpose(2, 3)  # columns to rows
                advance(k)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {' '.join(str(exc).split())}.") from None
