"""Standard image datasets as aecore data sources, read from their published on-disk formats.

``--data mnist`` reads torchvision's layout, ``DATA_DIR/MNIST/raw/`` with the
four IDX files (plain or gzipped), straight into uint8 tensors: nothing is
unpickled, and a damaged file is an error naming it. Without ``--data-dir``
the files are downloaded once (through torchvision) to ``$AECORE_DATA_DIR``
or ``~/.cache/aecore/data``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aecore.data import UINT8_IMAGES, Dataset, TensorData, read_idx
from aecore.errors import DataError

__all__ = ["MNIST", "default_data_root"]

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def default_data_root() -> Path:
    """Where downloads go: ``$AECORE_DATA_DIR`` or ``~/.cache/aecore/data``."""
    env = os.environ.get("AECORE_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "aecore" / "data"


@dataclass(frozen=True)
class MNISTConfig:
    """MNIST takes no options."""


class MNIST:
    """The 60,000 training and 10,000 test MNIST digits, 1×28×28, in torchvision's layout."""

    Config = MNISTConfig

    def __init__(self, config: MNISTConfig) -> None:
        self.config = config

    def files(self, location: str | None, *, data_dir: Path | None) -> list[Path]:
        raw = (default_data_root() if data_dir is None else data_dir) / "MNIST" / "raw"
        return [_find(raw, name) for names in _FILES.values() for name in names]

    def load(
        self, location: str | None, *, data_dir: Path | None, normalisation: dict[str, Any] | None
    ) -> Dataset:
        root = default_data_root() if data_dir is None else data_dir
        if data_dir is not None and not data_dir.is_dir():
            raise DataError(f"--data-dir {data_dir} does not exist; point it at a folder holding MNIST/raw/.")
        raw = root / "MNIST" / "raw"
        if data_dir is None and not all(_find(raw, n).exists() for names in _FILES.values() for n in names):
            _download(root)
        splits = {}
        for split, (images, labels) in _FILES.items():
            x, y = _find(raw, images), _find(raw, labels)
            for path in (x, y):
                if not path.exists():
                    raise DataError(
                        f"MNIST file {path.name} not found in {raw}; pass --data-dir pointing at a folder "
                        "with MNIST/raw/ (torchvision's layout)."
                    )
            xs, ys = read_idx(x), read_idx(y)
            if xs.dim() != 3 or tuple(xs.shape[1:]) != (28, 28):
                raise DataError(
                    f"{x} holds an array of shape {tuple(xs.shape)}, not 28×28 images; "
                    "it is not an MNIST image file (download it again)."
                )
            if ys.dim() != 1:
                raise DataError(
                    f"{y} holds an array of shape {tuple(ys.shape)}, not one label per image; "
                    "it is not an MNIST label file (download it again)."
                )
            if len(ys) != len(xs):
                raise DataError(f"{y} holds {len(ys)} labels for the {len(xs)} images of {x.name}.")
            if len(xs) == 0:
                raise DataError(f"{x} holds no images; the file is damaged (download it again).")
            if len(ys) and int(ys.max()) > 9:
                raise DataError(
                    f"{y} holds the label {int(ys.max())}; MNIST labels are 0 to 9 (download it again)."
                )
            splits[split] = TensorData(xs.unsqueeze(1).contiguous(), ys.long(), UINT8_IMAGES)
        return Dataset("mnist", splits["train"], splits["test"], {"data_dir": str(Path(root).resolve())})


def _find(raw: Path, name: str) -> Path:
    """The file, plain or gzipped (the plain one when neither exists, for the error message)."""
    plain = raw / name
    gz = raw / f"{name}.gz"
    return gz if not plain.exists() and gz.exists() else plain


def _download(root: Path) -> None:
    try:
        from torchvision import datasets
    except Exception as exc:  # a CPU/CUDA mismatch raises RuntimeError, not ImportError
        raise DataError(
            f"downloading MNIST needs torchvision, which failed to import ({type(exc).__name__}: {exc}); "
            "install torch and torchvision together, or pass --data-dir with a local copy."
        ) from None
    try:
        for train in (True, False):
            datasets.MNIST(str(root), train=train, download=True)
    except (RuntimeError, OSError) as exc:
        raise DataError(
            f"could not download MNIST to {root} ({exc}); go online, or pass --data-dir with a local copy."
        ) from None
