"""``--data folder:PATH``: a folder of image files, with a class per subfolder or no labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aecore.config import param
from aecore.data import Dataset
from aecore.errors import DataError
from aecore_images.decode import Item, read_splits
from aecore_images.options import ImageOptions, TensorStore, resolve
from aecore_images.scan import EXTENSIONS, Listing, list_dir, walk_images

__all__ = ["FolderConfig", "ImageFolder"]


@dataclass(frozen=True)
class FolderConfig(ImageOptions):
    pattern: str | None = param(
        None, "Only files whose path inside the folder matches this glob (case-sensitive): *.png, cats/*."
    )
    test_fraction: float = param(0.2, "Share of the images held out for testing when there is no test/.")
    seed: int = param(0, "Seed of the train/test split of the images when there is no test/.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be between 0 and 1, got {self.test_fraction:g}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be between 0 and 2**63-1, got {self.seed}; choose a smaller one")
        if self.pattern is not None and not self.pattern.strip():
            raise ValueError("pattern is empty; leave it out to read every image")


@dataclass
class _Layout:
    """What a folder holds: its classes (empty: no labels), and the train and (maybe) test images."""

    classes: list[str]
    train: list[Item]
    test: list[Item] | None  # None: no test/ folder, so a seeded share of ``train`` is held out

    @property
    def items(self) -> list[Item]:
        return [*self.train, *(self.test or [])]


class ImageFolder:
    """Image files (PNG, JPEG, BMP, TIFF, WebP) under a folder: ``--data folder:PATH?size=64``.

    Each immediate subfolder is a class (sorted names are labels 0..K-1), or
    the images lie in the folder itself, without labels. ``train/`` and
    ``test/`` subfolders, when both exist, are the split (each laid out
    either way, with the same classes); otherwise a seeded share of the
    images is held out for testing.
    """

    Config = FolderConfig
    takes_location = True

    def __init__(self, config: FolderConfig) -> None:
        self.config = config
        self._layouts: dict[str, _Layout] = {}

    def locate(self, location: str, data_dir: Path | None) -> str:
        """The folder as an absolute path (relative paths start at --data-dir, else the working directory)."""
        return str(resolve(location, data_dir))

    def files(self, location: str, *, data_dir: Path | None) -> list[Path]:
        """The image files the dataset is made of, so a file added, removed or changed is noticed."""
        return [item.path for item in self._layout(Path(location)).items]

    def load(
        self,
        location: str,
        *,
        data_dir: Path | None,
        normalisation: dict[str, Any] | None,
        store: TensorStore | None = None,
    ) -> Dataset:
        """Decode the images into uint8 (N, C, H, W) tensors (``normalisation`` is unused: pixels ÷ 255)."""
        cfg = self.config
        root = Path(location)
        layout = self._layout(root)
        if layout.test is not None:
            if cfg.test_fraction != 0.2 or cfg.seed != 0:
                raise DataError(
                    f"{root} has train/ and test/ folders, which are the split: leave out test_fraction= "
                    "and seed=, which only split a folder without them."
                )
            train, test, split = layout.train, layout.test, "folders"
        else:
            train, test = _split(layout.train, cfg.test_fraction, cfg.seed, root)
            split = "seeded"
        decoded, spec = read_splits(
            {"train": train, "test": test},
            root=root,
            channels=cfg.channels,
            size=cfg.target,
            policy=cfg.resize,
            skip_bad=cfg.skip_bad,
            store=store,
        )
        described: dict[str, Any] = {
            "format": "folder",
            "path": str(root),
            "layout": "classes" if layout.classes else "flat",
            "split": split,
        }
        if layout.classes:
            described["label_names"] = layout.classes
        return Dataset(
            f"folder:{root}", decoded["train"].data(), decoded["test"].data(), {**described, **spec}
        )

    def _layout(self, root: Path) -> _Layout:
        key = str(root)
        if key not in self._layouts:
            self._layouts[key] = _discover(root, self.config.pattern)
        return self._layouts[key]


def _none_found(folder: Path, pattern: str | None) -> DataError:
    kinds = ", ".join(EXTENSIONS)
    matching = f" matching pattern={pattern}" if pattern is not None else ""
    return DataError(f"{folder} holds no image files ({kinds}){matching}; check the path.")


def _discover(root: Path, pattern: str | None) -> _Layout:
    if root.is_file():
        raise DataError(f"{root} is a file; folder: takes the folder that holds the images.")
    if not root.is_dir():
        raise DataError(f"the image folder {root} does not exist.")
    top = list_dir(root, "", pattern)
    names = {name for name, _ in top.folders}
    if "train" in names and "test" in names:
        others = sorted(names - {"train", "test"})
        if top.files or others:
            extra = top.files[0].name if top.files else f"{others[0]}/"
            raise DataError(
                f"{root} has train/ and test/ folders and also {extra}; keep only train/ and test/ "
                "there (or give one of them as the folder)."
            )
        train_classes, train = _one_folder(root / "train", "train/", pattern)
        test_classes, test = _one_folder(root / "test", "test/", pattern)
        if not train:
            raise _none_found(root / "train", pattern)
        if not test:
            raise _none_found(root / "test", pattern)
        if bool(train_classes) != bool(test_classes):
            has, lacks = ("train", "test") if train_classes else ("test", "train")
            raise DataError(
                f"{root / has} has class folders but {root / lacks} holds its images directly; lay both "
                "out the same way."
            )
        unknown = sorted(set(test_classes) - set(train_classes))
        if unknown:
            raise DataError(
                f"{root / 'test'} has the class '{unknown[0]}', which {root / 'train'} lacks; every test "
                f"class needs training images (train classes: {', '.join(train_classes)})."
            )
        index = {name: i for i, name in enumerate(train_classes)}
        test = [
            Item(item.path, item.name, index[test_classes[item.label]]) if item.label is not None else item
            for item in test
        ]
        return _Layout(train_classes, train, test)
    if "train" in names or "test" in names:
        has, lacks = ("train", "test") if "train" in names else ("test", "train")
        raise DataError(
            f"{root} has a {has}/ folder but no {lacks}/ folder; add {lacks}/ for a given split, or give "
            f"{root / has} as the folder to split it by test_fraction."
        )
    classes, items = _one_folder(root, "", pattern, top)
    if not items:
        raise _none_found(root, pattern)
    return _Layout(classes, items, None)


def _one_folder(
    folder: Path, prefix: str, pattern: str | None, listing: Listing | None = None
) -> tuple[list[str], list[Item]]:
    """One folder's classes (its subfolders holding images; none: no labels) and its images in order."""
    listing = listing if listing is not None else list_dir(folder, prefix, pattern)
    classes = []
    items: list[Item] = []
    for name, path in listing.folders:
        entries = walk_images(path, f"{prefix}{name}/", pattern)
        if entries:
            items.extend(Item(e.path, e.name, len(classes)) for e in entries)
            classes.append(name)
    if classes and listing.files:
        raise DataError(
            f"{folder} holds images ({listing.files[0].path.name}) beside class folders ({classes[0]}/); "
            "put every image in a class folder, or none in any."
        )
    if not classes:
        items = [Item(e.path, e.name) for e in listing.files]
    return classes, items


def _split(items: list[Item], fraction: float, seed: int, root: Path) -> tuple[list[Item], list[Item]]:
    """A seeded random share of the images for testing; both sides keep the sorted order."""
    n = len(items)
    if n < 2:
        raise DataError(f"{root} holds {n} image; a train/test split needs at least 2.")
    n_test = min(max(round(n * fraction), 1), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test = sorted(order[:n_test].tolist())
    train = sorted(order[n_test:].tolist())
    return [items[i] for i in train], [items[i] for i in test]
