"""``--data mvtec:PATH``: one category of the MVTec-AD anomaly-detection layout, with its defect masks.

A category folder holds::

    train/good/*.png                        normal images only
    test/good/*.png                         normal test images (label 0)
    test/<defect>/*.png                     anomalous test images (labels 1..K, defects sorted by name)
    ground_truth/<defect>/<stem>_mask.png   the anomalous pixels of test/<defect>/<stem>.png
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aecore.config import param
from aecore.data import Dataset
from aecore.errors import DataError, Notice
from aecore_images.decode import Item, read_splits
from aecore_images.options import ImageOptions, TensorStore, resolve
from aecore_images.scan import list_dir, walk_images

__all__ = ["MVTec", "MVTecConfig", "UnmaskedDefectsWarning"]


class UnmaskedDefectsWarning(Notice):
    """Defect images without a mask file: they get all-zero masks (often a misnamed ground_truth file)."""


@dataclass(frozen=True)
class MVTecConfig(ImageOptions):
    size: str | None = param(
        "256", "Output size H or HxW (height first); none: keep the images' own size (all the same)."
    )
    channels: Literal["auto", 1, 3] = param(
        3, "3 (RGB) or 1 (grayscale); auto: 1 when every image of the category is grayscale, else 3."
    )


@dataclass
class _Category:
    label_names: list[str]
    train: list[Item]
    test: list[Item]
    unmasked: int

    @property
    def files(self) -> list[Path]:
        paths = [item.path for item in (*self.train, *self.test)]
        return paths + [item.mask for item in self.test if item.mask is not None]


class MVTec:
    """One MVTec-AD category (``--data mvtec:PATH/bottle``): good training images, labelled test images.

    The test split carries the defect masks as the ``mask`` extra, uint8
    (N, 1, H, W) of 0 and 1, brought to the images' size by the same
    geometry (nearest neighbour); good images and defects without a mask
    file get all-zero masks. ``spec["normal_classes"]`` is ``[0]``.
    """

    Config = MVTecConfig
    takes_location = True

    def __init__(self, config: MVTecConfig) -> None:
        self.config = config
        self._categories: dict[str, _Category] = {}

    def locate(self, location: str, data_dir: Path | None) -> str:
        """The category folder as an absolute path (relative ones start at --data-dir, else the cwd)."""
        return str(resolve(location, data_dir))

    def files(self, location: str, *, data_dir: Path | None) -> list[Path]:
        """The images and masks the dataset is made of, so that a changed file is noticed."""
        return self._category(Path(location)).files

    def load(
        self,
        location: str,
        *,
        data_dir: Path | None,
        normalisation: dict[str, Any] | None,
        store: TensorStore | None = None,
    ) -> Dataset:
        """Decode the category into uint8 images, labels, and the test split's masks."""
        cfg = self.config
        root = Path(location)
        category = self._category(root)
        decoded, spec = read_splits(
            {"train": category.train, "test": category.test},
            root=root,
            channels=cfg.channels,
            size=cfg.target,
            policy=cfg.resize,
            skip_bad=cfg.skip_bad,
            masks=("test",),
            store=store,
        )
        if category.unmasked:
            defects = sum(1 for item in category.test if item.label)
            warnings.warn(
                f"{category.unmasked} of the {defects} defect images of {root} have no mask file "
                "(ground_truth/<defect>/<name>_mask.png); they get all-zero masks.",
                UnmaskedDefectsWarning,
                stacklevel=2,
            )
        described = {
            "format": "mvtec",
            "path": str(root),
            "category": root.name,
            "label_names": category.label_names,
            "normal_classes": [0],
            "unmasked_defects": category.unmasked,
        }
        return Dataset(
            f"mvtec:{root}", decoded["train"].data(), decoded["test"].data(), {**described, **spec}
        )

    def _category(self, root: Path) -> _Category:
        key = str(root)
        if key not in self._categories:
            self._categories[key] = _discover(root)
        return self._categories[key]


def _discover(root: Path) -> _Category:
    if not root.is_dir():
        what = "is a file" if root.is_file() else "does not exist"
        raise DataError(f"the MVTec-AD category folder {root} {what}.")
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        categories = sorted(
            p.name for p in root.iterdir() if (p / "train").is_dir() and (p / "test").is_dir()
        )
        hint = (
            f" It looks like the MVTec-AD root: give one category, e.g. mvtec:{root / categories[0]}."
            if categories
            else ""
        )
        raise DataError(f"{root} is not an MVTec-AD category: it needs train/good/ and test/ folders.{hint}")
    train_top = list_dir(root / "train", "train/", None)
    extra = [f"{name}/" for name, _ in train_top.folders if name != "good"]
    extra += [entry.path.name for entry in train_top.files]
    if extra:
        raise DataError(
            f"{root / 'train'} holds {extra[0]}, but MVTec-AD trains on good images only: keep them in "
            "train/good/ and move defects to test/<defect>/."
        )
    train = [Item(e.path, e.name, 0) for e in walk_images(root / "train" / "good", "train/good/", None)]
    if not train:
        raise DataError(f"{root / 'train' / 'good'} holds no images; MVTec-AD trains on those.")
    test_top = list_dir(root / "test", "test/", None)
    if test_top.files:
        raise DataError(
            f"{root / 'test'} holds the image {test_top.files[0].path.name} directly; put test images in "
            "test/good/ or test/<defect>/."
        )
    folders = {name: path for name, path in test_top.folders}
    found = {name: walk_images(path, f"test/{name}/", None) for name, path in folders.items()}
    defects = sorted(name for name, entries in found.items() if entries and name != "good")
    label_names = ["good", *defects]
    test = [Item(e.path, e.name, 0) for e in found.get("good", [])]
    unmasked = 0
    for label, defect in enumerate(defects, start=1):
        masks = _masks(root / "ground_truth" / defect)
        prefix = f"test/{defect}/"
        for entry in found[defect]:
            inside = entry.name[len(prefix) :]
            stem = inside.rsplit(".", 1)[0]
            mask = masks.get(f"{stem}_mask")
            unmasked += mask is None
            test.append(Item(entry.path, entry.name, label, mask))
    if not test:
        raise DataError(f"{root / 'test'} holds no images in good/ or a defect folder.")
    return _Category(label_names, train, test, unmasked)


def _masks(folder: Path) -> dict[str, Path]:
    """The mask files of one defect, by their path inside the folder without the extension."""
    if not folder.is_dir():
        return {}
    return {entry.name.rsplit(".", 1)[0]: entry.path for entry in walk_images(folder, "", None)}
