"""--data mvtec:PATH: an MVTec-AD category written with Pillow, with its defect masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from image_files import noise, save
from PIL import Image

from aecore.errors import DataError
from aecore.sources import load_dataset
from aecore.testing import check_dataset
from aecore_images import MVTec, SkippedImagesWarning, UnmaskedDefectsWarning

#: Where the defect and its mask sit in the 40×40 test images: rows 8..11, columns 20..23.
ROWS, COLS = slice(8, 12), slice(20, 24)


def defect_image(width: int = 40, height: int = 40) -> np.ndarray:
    pixels = np.full((height, width, 3), 30, np.uint8)
    pixels[ROWS, COLS] = 250
    return pixels


def defect_mask(width: int = 40, height: int = 40) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[ROWS, COLS] = 255
    return mask


def category(root: Path, width: int = 40, height: int = 40) -> Path:
    """A category: 4 good training images, 2 good test images, crack (2, one masked), scratch (1)."""
    for i in range(4):
        save(root / "train" / "good" / f"{i:03d}.png", noise(i, (height, width, 3)))
    for i in range(2):
        save(root / "test" / "good" / f"{i:03d}.png", noise(10 + i, (height, width, 3)))
    for defect, count in (("scratch", 1), ("crack", 2)):
        for i in range(count):
            save(root / "test" / defect / f"{i:03d}.png", defect_image(width, height))
    save(root / "ground_truth" / "crack" / "000_mask.png", defect_mask(width, height))
    save(root / "ground_truth" / "scratch" / "000_mask.png", defect_mask(width, height))
    return root


def test_labels_masks_and_normal_classes(tmp_path):
    root = category(tmp_path / "bottle")
    with pytest.warns(UnmaskedDefectsWarning, match="1 of the 3 defect images"):
        data = load_dataset(f"mvtec:{root}?size=20")
    assert data.spec["label_names"] == ["good", "crack", "scratch"]
    assert data.spec["normal_classes"] == [0] and data.spec["unmasked_defects"] == 1
    assert data.spec["category"] == "bottle" and data.spec["mask_resample"] == "nearest"
    assert data.train.y.tolist() == [0, 0, 0, 0] and data.train.shape == (3, 20, 20)
    assert data.test.y.tolist() == [0, 0, 1, 1, 2]  # good first, then the defects by name
    mask = data.test.extras["mask"]
    assert mask.dtype == torch.uint8 and mask.shape == (5, 1, 20, 20)
    assert set(mask.unique().tolist()) == {0, 1}
    assert int(mask[:2].sum()) == 0  # good images: no anomalous pixel
    assert int(mask[3].sum()) == 0  # test/crack/001.png has no mask file
    # the 4×4 defect at rows 8..11, columns 20..23 of 40×40 is at rows 4..5, columns 10..11 of 20×20
    for row in (2, 4):
        expected = torch.zeros(20, 20, dtype=torch.uint8)
        expected[4:6, 10:12] = 1
        assert torch.equal(mask[row, 0], expected)
        image = data.test.x[row]
        assert (
            bool((image[:, 4:6, 10:12] > 150).all())
            and bool((image[:, 4:6, 7] < 60).all())
            and bool((image[:, :3] == 30).all())
        )
    assert "mask" not in data.train.extras  # training images are all good


def test_padded_masks_move_with_their_images(tmp_path):
    root = category(tmp_path / "wide", width=40, height=20)  # pad to 20×20: scaled by 1/2, 5 rows above
    with pytest.warns(UnmaskedDefectsWarning):
        data = load_dataset(f"mvtec:{root}?size=20&resize=pad")
    mask, image = data.test.extras["mask"][2, 0], data.test.x[2]
    expected = torch.zeros(20, 20, dtype=torch.uint8)
    expected[9:11, 10:12] = 1
    assert torch.equal(mask, expected)
    assert bool((image[:, 9:11, 10:12] > 150).all()) and bool((image[:, 9:11, 7] < 60).all())
    assert bool((image[:, :5] == 0).all()) and bool((image[:, 15:] == 0).all())  # the padding


def test_the_defaults_are_rgb_at_256(tmp_path):
    root = category(tmp_path / "c")
    with pytest.warns(UnmaskedDefectsWarning):
        data = load_dataset(f"mvtec:{root}")
    assert data.name == f"mvtec:{root}"
    assert data.train.shape == (3, 256, 256) and data.test.extras["mask"].shape == (5, 1, 256, 256)


def test_masks_survive_the_cache(tmp_path, cache, decodes):
    root = category(tmp_path / "c")
    with pytest.warns(UnmaskedDefectsWarning):
        first = load_dataset(f"mvtec:{root}?size=20")
    again = load_dataset(f"mvtec:{root}?size=20")
    assert len(decodes) == 9  # the second load decoded nothing
    assert torch.equal(again.test.extras["mask"], first.test.extras["mask"])
    assert torch.equal(again.test.x, first.test.x) and again.spec == first.spec
    save(root / "ground_truth" / "crack" / "001_mask.png", defect_mask())  # a new mask file is noticed
    third = load_dataset(f"mvtec:{root}?size=20")
    assert third.spec["unmasked_defects"] == 0 and int(third.test.extras["mask"][3].sum()) == 4


def test_a_mask_of_another_size_is_named(tmp_path):
    root = category(tmp_path / "c")
    save(root / "ground_truth" / "crack" / "000_mask.png", defect_mask(30, 30))
    with pytest.raises(DataError) as exc:
        load_dataset(f"mvtec:{root}?size=20")
    message = str(exc.value)
    assert "\n" not in message and str(root / "ground_truth" / "crack" / "000_mask.png") in message
    assert "30×30" in message and "40×40" in message


def test_a_damaged_mask_is_a_bad_file(tmp_path):
    root = category(tmp_path / "c")
    (root / "ground_truth" / "scratch" / "000_mask.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"cannot read the mask .*000_mask\.png"):
        load_dataset(f"mvtec:{root}?size=20")
    with pytest.warns(SkippedImagesWarning), pytest.warns(UnmaskedDefectsWarning):
        data = load_dataset(f"mvtec:{root}?size=20&skip_bad=true")
    assert data.spec["skipped"] == ["ground_truth/scratch/000_mask.png"]
    assert data.test.y.tolist() == [0, 0, 1, 1]  # its image is left out with it
    assert len(data.test.extras["mask"]) == 4


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda root: save(root / "train" / "crack" / "x.png", noise(0, (40, 40, 3))), "good images only"),
        (lambda root: save(root / "test" / "loose.png", noise(0, (40, 40, 3))), "directly"),
    ],
)
def test_a_category_that_is_not_laid_out_as_mvtec_is_refused(tmp_path, make, fragment):
    root = category(tmp_path / "c")
    make(root)
    with pytest.raises(DataError, match=fragment):
        load_dataset(f"mvtec:{root}?size=20")


def test_the_dataset_root_instead_of_a_category_names_the_fix(tmp_path):
    category(tmp_path / "mvtec" / "bottle")
    with pytest.raises(DataError) as exc:
        load_dataset(f"mvtec:{tmp_path / 'mvtec'}")
    assert f"e.g. mvtec:{tmp_path / 'mvtec' / 'bottle'}" in str(exc.value)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"mvtec:{tmp_path / 'nowhere'}")


def test_grayscale_categories_and_the_conformance_check(tmp_path):
    root = tmp_path / "grid"
    for split, n in (("train/good", 3), ("test/good", 1), ("test/bent", 2)):
        for i in range(n):
            save(root / split / f"{i:03d}.png", noise(i, (16, 16)))
    with pytest.warns(UnmaskedDefectsWarning):
        data = check_dataset(MVTec, str(root), params={"size": "8", "channels": "auto"})
    assert data.train.shape == (1, 8, 8) and data.spec["unmasked_defects"] == 2


@pytest.mark.parametrize(
    "mask",
    [
        (defect_mask() // 255).astype(np.uint16),  # a 16-bit mask of 0 and 1: its high byte is 0
        np.stack([np.zeros((40, 40), np.uint8)] * 2 + [defect_mask() // 255], axis=-1),  # faint blue
    ],
)
def test_any_nonzero_mask_value_is_an_anomalous_pixel(tmp_path, mask):
    root = category(tmp_path / "c")
    Image.fromarray(mask).save(root / "ground_truth" / "crack" / "000_mask.png")
    with pytest.warns(UnmaskedDefectsWarning):
        data = load_dataset(f"mvtec:{root}?size=40")
    assert torch.equal(data.test.extras["mask"][2, 0], torch.from_numpy(defect_mask() // 255))


def test_forked_workers_decode_images_and_masks_like_one_thread(tmp_path, monkeypatch):
    import aecore_images.decode
    from aecore.data import TensorStore

    class TwoWorkers(TensorStore):
        workers = 2

    made = []
    real = aecore_images.decode.ProcessPoolExecutor

    def recording(*args, **kwargs):
        made.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(aecore_images.decode, "ProcessPoolExecutor", recording)
    root = category(tmp_path / "c")
    source = MVTec(MVTec.Config(size="20"))
    (tmp_path / "store").mkdir()
    store = TwoWorkers(tmp_path / "store", show_progress=False)
    with pytest.warns(UnmaskedDefectsWarning):
        forked = source.load(str(root), data_dir=None, normalisation=None, store=store)
    with pytest.warns(UnmaskedDefectsWarning):
        threaded = source.load(str(root), data_dir=None, normalisation=None)
    assert made == [2]  # 40×40 images: small, and the store's files are shared with the workers
    assert torch.equal(forked.test.extras["mask"], threaded.test.extras["mask"])
    assert int(forked.test.extras["mask"].sum()) > 0
    for a, b in ((forked.train, threaded.train), (forked.test, threaded.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
