"""The embedded data source: a real MNIST subset that ships inside aecore, so everything works offline."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from aecore.data.dataset import Dataset
from aecore.data.idx import read_idx
from aecore.data.tensors import UINT8_IMAGES, TensorData
from aecore.errors import DataError

__all__ = ["EmbeddedMNIST"]

PACKAGE = "aecore.data.mnist_sample"


@dataclass(frozen=True)
class EmbeddedConfig:
    """The embedded sample takes no options."""


class EmbeddedMNIST:
    """10,000 training and 2,000 test MNIST digits, 1×28×28 (see mnist_sample/README.md)."""

    Config = EmbeddedConfig

    def __init__(self, config: EmbeddedConfig) -> None:
        self.config = config

    def files(self, location: str | None, *, data_dir: Path | None) -> list[Path]:
        return sorted(Path(str(resources.files(PACKAGE))).glob("*-ubyte.gz"))

    def load(
        self, location: str | None, *, data_dir: Path | None, normalisation: dict[str, Any] | None
    ) -> Dataset:
        if data_dir is not None:
            raise DataError(
                "the embedded dataset takes no --data-dir; use --data mnist to read a local copy."
            )
        root = resources.files(PACKAGE)
        splits = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            with (
                resources.as_file(root / f"{prefix}-images-idx3-ubyte.gz") as images,
                resources.as_file(root / f"{prefix}-labels-idx1-ubyte.gz") as labels,
            ):
                x = read_idx(images).unsqueeze(1)
                y = read_idx(labels).long()
            splits[split] = TensorData(x, y, UINT8_IMAGES)
        return Dataset("embedded", splits["train"], splits["test"], {"name": "embedded"})
