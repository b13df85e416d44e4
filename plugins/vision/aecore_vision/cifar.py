"""CIFAR-10 and CIFAR-100 from their BINARY distributions, never the pickled Python one.

Each ``.bin`` file is a run of fixed-size records: the label byte(s), then
3×32×32 pixels, the red plane, the green, the blue, each row by row. So a
whole file is one ``(N, record)`` uint8 tensor, its pixel columns are
already the images in C×H×W order, and a file whose size is not a whole
number of records is damaged. The pickled version (``cifar-10-batches-py``,
``cifar-100-python``) is refused by name: unpickling a file can run code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from aecore.config import param
from aecore.data import UINT8_IMAGES, TensorData
from aecore.errors import DataError
from aecore_vision.common import (
    Archive,
    ImageSource,
    Layout,
    Store,
    allocate,
    check_labels,
    download_param,
    file_size,
    read_file,
    read_names,
)

__all__ = ["CIFAR10", "CIFAR100", "CIFAR10Config", "CIFAR100Config"]

_PIXELS = 3 * 32 * 32
_URL = "https://www.cs.toronto.edu/~kriz/"


@dataclass(frozen=True)
class CIFAR10Config:
    """CIFAR-10 takes one option."""

    download: bool = download_param()


@dataclass(frozen=True)
class CIFAR100Config:
    labels: Literal["fine", "coarse"] = param("fine", "fine: the 100 classes; coarse: their 20 superclasses.")
    download: bool = download_param()


class _Cifar(ImageSource):
    """The shared reader; subclasses name the files and the label columns."""

    title: ClassVar[str]
    folder: ClassVar[str]
    archive: ClassVar[str]
    md5: ClassVar[str]
    pickled: ClassVar[str]
    #: (column in the record, number of classes, what messages call it) of each label byte.
    columns: ClassVar[tuple[tuple[int, int, str], ...]]

    def split_files(self) -> dict[str, list[str]]:
        raise NotImplementedError

    def names_file(self) -> tuple[str, int, int]:
        """(label-names file, its number of names, the record column the labels come from)."""
        raise NotImplementedError

    def listing(self) -> str:
        raise NotImplementedError

    def layout(self) -> Layout:
        why = f"{self.title}'s pickled Python version"
        origin = f"as {self.archive} unpacks"
        return Layout(self.title, self.folder, self.listing(), self.archive, {self.pickled: why}, origin)

    def paths(self, root: Path) -> list[Path]:
        folder = root / self.folder
        names = [n for files in self.split_files().values() for n in files]
        return [folder / n for n in (*names, self.names_file()[0])]

    def fetch(self) -> Archive:
        return Archive(_URL + self.archive, self.md5)

    def read(self, root: Path, store: Store | None) -> tuple[TensorData, TensorData, dict[str, Any]]:
        folder = root / self.folder
        record = len(self.columns) + _PIXELS
        sizes = {}
        for files in self.split_files().values():
            for name in files:
                path = folder / name
                size = file_size(path)
                if size == 0 or size % record:
                    raise DataError(
                        f"{path} is {size:,} bytes, not a whole number of {record:,}-byte {self.title} "
                        "records (label and 3×32×32 pixels); the file is truncated or not a binary batch "
                        "(download it again)."
                    )
                sizes[path] = size
        names_name, count, label_column = self.names_file()
        label_names = read_names(folder / names_name, count, self.title)
        records = {}
        for split, files in self.split_files().items():
            records[split] = []
            for name in files:
                path = folder / name
                rows = read_file(path, sizes[path]).view(-1, record)
                for column, classes, what in self.columns:
                    check_labels(rows[:, column], 0, classes - 1, path, what)
                records[split].append(rows)
        splits = {}
        for split, parts in records.items():
            n = sum(len(rows) for rows in parts)
            x = allocate(store, f"{split}.x", (n, 3, 32, 32), torch.uint8)
            y = allocate(store, f"{split}.y", (n,), torch.int64)
            start = 0
            for rows in parts:
                stop = start + len(rows)
                x[start:stop] = rows[:, len(self.columns) :].view(-1, 3, 32, 32)
                y[start:stop] = rows[:, label_column]
                start = stop
            splits[split] = TensorData(x, y, UINT8_IMAGES)
        return splits["train"], splits["test"], {"label_names": label_names}


class CIFAR10(_Cifar):
    """60,000 colour images, 3×32×32, 10 classes (50,000 train, 10,000 test): ``--data cifar10``."""

    Config = CIFAR10Config
    name = "cifar10"
    title = "CIFAR-10"
    folder = "cifar-10-batches-bin"
    archive = "cifar-10-binary.tar.gz"
    md5 = "c32a1d4ab5d03f1284b67883e8d87530"
    pickled = "cifar-10-batches-py"
    columns = ((0, 10, "CIFAR-10"),)

    def split_files(self) -> dict[str, list[str]]:
        return {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}

    def names_file(self) -> tuple[str, int, int]:
        return "batches.meta.txt", 10, 0

    def listing(self) -> str:
        return "data_batch_1.bin to data_batch_5.bin, test_batch.bin and batches.meta.txt"


class CIFAR100(_Cifar):
    """60,000 colour images, 3×32×32, 100 classes in 20 superclasses: ``--data cifar100?labels=coarse``."""

    Config = CIFAR100Config
    name = "cifar100"
    title = "CIFAR-100"
    folder = "cifar-100-binary"
    archive = "cifar-100-binary.tar.gz"
    md5 = "03b5dce01913d631647c71ecec9e9cb8"
    pickled = "cifar-100-python"
    columns = ((0, 20, "CIFAR-100 coarse"), (1, 100, "CIFAR-100 fine"))

    def split_files(self) -> dict[str, list[str]]:
        return {"train": ["train.bin"], "test": ["test.bin"]}

    def names_file(self) -> tuple[str, int, int]:
        if self.config.labels == "coarse":
            return "coarse_label_names.txt", 20, 0
        return "fine_label_names.txt", 100, 1

    def listing(self) -> str:
        return "train.bin, test.bin, fine_label_names.txt and coarse_label_names.txt"
