"""The IDX family: MNIST, Fashion-MNIST, KMNIST and EMNIST, in torchvision's ``NAME/raw/`` layout.

All four are 28×28 uint8 images and uint8 labels in IDX files (plain or
``.gz``), read with :func:`aecore.data.read_idx`, which checks each header
against the file's size before reading. EMNIST stores its images transposed
(column by column); they are turned upright here, so every source of the
family gives images the same way up.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from aecore.config import param
from aecore.data import UINT8_IMAGES, TensorData, read_idx
from aecore.errors import DataError
from aecore_vision.common import ImageSource, Layout, Store, Torchvision, check_labels, download_param, keep

__all__ = ["EMNIST", "KMNIST", "MNIST", "EMNISTConfig", "FashionMNIST", "IdxConfig", "IdxSource"]

_SIDE = 28
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

EMNISTSplit = Literal["byclass", "bymerge", "balanced", "letters", "digits", "mnist"]
_MERGED = "abdefghnqrt"  # the lowercase letters bymerge and balanced keep apart from their capitals
_EMNIST_NAMES: dict[str, list[str] | None] = {
    "byclass": list(string.digits + string.ascii_uppercase + string.ascii_lowercase),
    "bymerge": list(string.digits + string.ascii_uppercase + _MERGED),
    "balanced": list(string.digits + string.ascii_uppercase + _MERGED),
    "letters": ["N/A", *string.ascii_lowercase],  # labels 1..26 as published; 0 is never used
    "digits": None,
    "mnist": None,
}


@dataclass(frozen=True)
class IdxConfig:
    """MNIST, Fashion-MNIST and KMNIST take one option."""

    download: bool = download_param()


@dataclass(frozen=True)
class EMNISTConfig:
    """Which of EMNIST's six splits (different datasets); balanced, the one its authors recommend."""

    split: EMNISTSplit = param(
        "balanced",
        "byclass (62 classes), bymerge, balanced (47), letters (26), digits or mnist (10).",
    )
    download: bool = download_param()


class IdxSource(ImageSource):
    """A dataset of 28×28 images in torchvision's ``FOLDER/raw/`` IDX layout; subclasses name it."""

    Config: ClassVar[type] = IdxConfig
    #: How messages name the dataset, and torchvision's class (and folder) for it.
    title: ClassVar[str]
    folder: ClassVar[str]
    classes: ClassVar[int] = 10
    label_names: ClassVar[tuple[str, ...] | None] = None
    #: Whether the files hold each image transposed (EMNIST).
    transposed: ClassVar[bool] = False

    def file_names(self) -> dict[str, tuple[str, str]]:
        """(images, labels) file names of each split."""
        return _MNIST_FILES

    def describe(self) -> tuple[str, int, int, list[str] | None]:
        """(title, lowest label, highest label, label names) for these options."""
        names = None if self.label_names is None else list(self.label_names)
        return self.title, 0, self.classes - 1, names

    def layout(self) -> Layout:
        names = [n for pair in self.file_names().values() for n in pair]
        listing = f"{', '.join(names[:-1])} and {names[-1]} (plain or .gz)"
        return Layout(self.describe()[0], f"{self.folder}/raw", listing)

    def paths(self, root: Path) -> list[Path]:
        raw = root / self.folder / "raw"
        return [_find(raw, name) for pair in self.file_names().values() for name in pair]

    def fetch(self) -> Torchvision:
        return Torchvision(self.folder, ({"train": True},))  # one call fetches both splits

    def check_download(self, root: Path) -> None:
        processed = root / self.folder / "processed"
        if processed.is_dir() and any(processed.glob("*.pt")):  # torchvision would torch.load them
            raise DataError(
                f"{processed} holds torchvision's old .pt files, which its download would unpickle; move "
                f"that folder away (aecore reads only {self.folder}/raw/) and ask again."
            )

    def read(self, root: Path, store: Store | None) -> tuple[TensorData, TensorData, dict[str, Any]]:
        title, low, high, names = self.describe()
        raw = root / self.folder / "raw"
        checked = {}
        for split, (images, labels) in self.file_names().items():
            x, y = _find(raw, images), _find(raw, labels)
            xs, ys = read_idx(x), read_idx(y)
            if xs.dim() != 3 or tuple(xs.shape[1:]) != (_SIDE, _SIDE):
                raise DataError(
                    f"{x} holds an array of shape {tuple(xs.shape)}, not {_SIDE}×{_SIDE} images; "
                    f"it is not a {title} image file (download it again)."
                )
            if ys.dim() != 1:
                raise DataError(
                    f"{y} holds an array of shape {tuple(ys.shape)}, not one label per image; "
                    f"it is not a {title} label file (download it again)."
                )
            if len(ys) != len(xs):
                raise DataError(f"{y} holds {len(ys)} labels for the {len(xs)} images of {x.name}.")
            if len(xs) == 0:
                raise DataError(f"{x} holds no images; the file is damaged (download it again).")
            check_labels(ys, low, high, y, title)
            checked[split] = xs, ys
        splits = {}
        for split, (xs, ys) in checked.items():
            upright = xs.transpose(1, 2) if self.transposed else xs
            data_x = keep(store, f"{split}.x", upright.unsqueeze(1))
            splits[split] = TensorData(data_x, keep(store, f"{split}.y", ys.long()), UINT8_IMAGES)
        return splits["train"], splits["test"], {} if names is None else {"label_names": names}


def _find(raw: Path, name: str) -> Path:
    """The file, plain or gzipped (the plain one when neither exists, for the error message)."""
    plain = raw / name
    gz = raw / f"{name}.gz"
    return gz if not plain.exists() and gz.exists() else plain


class MNIST(IdxSource):
    """The 60,000 training and 10,000 test MNIST digits, 1×28×28: ``--data mnist``."""

    name = "mnist"
    title = "MNIST"
    folder = "MNIST"


class FashionMNIST(IdxSource):
    """Zalando's 60,000 / 10,000 clothing images, 1×28×28, 10 classes: ``--data fashion-mnist``."""

    name = "fashion-mnist"
    title = "Fashion-MNIST"
    folder = "FashionMNIST"
    label_names = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )


class KMNIST(IdxSource):
    """Kuzushiji-MNIST: 60,000 / 10,000 cursive Japanese characters, 1×28×28: ``--data kmnist``."""

    name = "kmnist"
    title = "KMNIST"
    folder = "KMNIST"
    label_names = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")


class EMNIST(IdxSource):
    """NIST handwritten characters in MNIST's format, one of six splits: ``--data emnist?split=letters``.

    The files hold each image transposed; the images come out upright. Labels
    are kept as published (``letters``: 1 to 26 for a to z).
    """

    Config = EMNISTConfig
    name = "emnist"
    folder = "EMNIST"
    transposed = True

    def file_names(self) -> dict[str, tuple[str, str]]:
        split = self.config.split
        return {
            part: (f"emnist-{split}-{part}-images-idx3-ubyte", f"emnist-{split}-{part}-labels-idx1-ubyte")
            for part in ("train", "test")
        }

    def describe(self) -> tuple[str, int, int, list[str] | None]:
        split = self.config.split
        title = f"EMNIST {split}"
        if split == "letters":
            return title, 1, 26, _EMNIST_NAMES[split]
        names = _EMNIST_NAMES[split]
        return title, 0, (9 if names is None else len(names) - 1), names

    def fetch(self) -> Torchvision:
        return Torchvision("EMNIST", ({"split": self.config.split, "train": True},))  # all splits at once
