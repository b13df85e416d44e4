"""Named datasets and how to load them into :class:`TensorData` splits.

``embedded``  (default) a real MNIST subset shipped inside the package: works offline.
``mnist``     torchvision's MNIST: downloads when online, or reads ``--data-dir``.
``csv:PATH``, ``npy:PATH``  numeric tables (see :mod:`aecore.data.tabular`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aecore.data.idx import read_idx
from aecore.data.tensors import UINT8_IMAGES, TensorData
from aecore.errors import DataError, suggest

__all__ = ["DATASETS", "Dataset", "load_dataset"]

EMBEDDED_PACKAGE = "aecore.data.mnist_sample"


@dataclass
class Dataset:
    """Train and test splits plus the description recorded in checkpoints."""

    name: str
    train: TensorData
    test: TensorData
    spec: dict[str, Any] = field(default_factory=dict)


def load_embedded(data_dir: Path | None) -> Dataset:
    """The MNIST subset that ships with aecore (see mnist_sample/README.md)."""
    if data_dir is not None:
        raise DataError("the embedded dataset takes no --data-dir; use --data mnist to read a local copy.")
    root = resources.files(EMBEDDED_PACKAGE)
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


def default_data_root() -> Path:
    """Where downloads go: ``$AECORE_DATA_DIR`` or ``~/.cache/aecore/data``."""
    env = os.environ.get("AECORE_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "aecore" / "data"


def load_mnist(data_dir: Path | None) -> Dataset:
    """torchvision's MNIST, converted once to uint8 tensors."""
    try:
        from torchvision import datasets
    except Exception as exc:  # a CPU/CUDA mismatch raises RuntimeError, not ImportError
        raise DataError(
            f"--data mnist needs torchvision, which failed to import ({type(exc).__name__}: {exc}). "
            "Install torch and torchvision together ('pip install --upgrade torch torchvision') "
            "so their builds match."
        ) from None
    download = data_dir is None
    root = default_data_root() if data_dir is None else data_dir
    if data_dir is not None and not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir} does not exist; point it at a folder holding MNIST/raw/.")
    splits = {}
    for split in ("train", "test"):
        try:
            ds = datasets.MNIST(str(root), train=split == "train", download=download)
        except (RuntimeError, OSError) as exc:
            if download:
                raise DataError(
                    f"could not download MNIST to {root} ({exc}); "
                    "go online, or pass --data-dir with a local copy."
                ) from None
            raise DataError(
                f"MNIST not found under {root} ({exc}); pass --data-dir pointing at a folder with MNIST/raw/."
            ) from None
        splits[split] = TensorData(ds.data.unsqueeze(1).contiguous(), ds.targets.long(), UINT8_IMAGES)
    spec = {"name": "mnist", "data_dir": str(Path(root).resolve())}
    return Dataset("mnist", splits["train"], splits["test"], spec)


def _embedded_sources(data_dir: Path | None) -> list[Path]:
    root = Path(str(resources.files(EMBEDDED_PACKAGE)))
    return sorted(root.glob("*-ubyte.gz"))


def _mnist_sources(data_dir: Path | None) -> list[Path]:
    raw = (default_data_root() if data_dir is None else data_dir) / "MNIST" / "raw"
    names = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    return [raw / n for n in names]


#: Dataset name -> the files whose state decides whether a cached copy is still good.
_SOURCES: dict[str, Callable[[Path | None], list[Path]]] = {
    "embedded": _embedded_sources,
    "mnist": _mnist_sources,
}

#: Dataset name -> loader(data_dir).
DATASETS: dict[str, Callable[[Path | None], Dataset]] = {
    "embedded": load_embedded,
    "mnist": load_mnist,
}


def load_dataset(
    name: str | None = None,
    data_dir: str | Path | None = None,
    *,
    normalisation: dict[str, Any] | None = None,
) -> Dataset:
    """Load a named dataset (default: the embedded MNIST subset) into memory.

    ``normalisation`` is a trained model's record: tables (``csv:``/``npy:``)
    then reuse its statistics instead of computing them; named image sets
    have a fixed scaling and ignore it.
    """
    from aecore.data.cache import cached_dataset

    name = name or "embedded"
    root = Path(data_dir).expanduser() if data_dir is not None else None
    if name.partition(":")[0] in ("csv", "npy") and ":" in name:
        from aecore.data.tabular import load_table, parse_source

        source = parse_source(name, root)
        dataset = cached_dataset(
            source.canonical(),
            {"normalisation": normalisation},
            lambda: [p for p in (source.path, source.test) if p is not None],
            lambda: load_table(name, root, normalisation),
        )
    else:
        loader = DATASETS.get(name)
        if loader is None:
            raise DataError(
                f"unknown dataset '{name}'.{suggest(name, DATASETS)} Known datasets: "
                f"{', '.join(DATASETS)}, csv:PATH, npy:PATH."
            )
        elif name not in _SOURCES:  # a loader registered at run time: no files to key a cache on
            dataset = loader(root)
        else:
            dataset = cached_dataset(
                name,
                {"data_dir": None if root is None else str(root.resolve())},
                lambda: _SOURCES[name](root),
                lambda: loader(root),
            )
    if len(dataset.train) == 0 or len(dataset.test) == 0:
        raise DataError(f"dataset '{name}' is empty; check the files it reads.")
    return dataset
