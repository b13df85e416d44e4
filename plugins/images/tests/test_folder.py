"""--data folder:PATH: image trees written with Pillow, decoded into uint8 tensors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from image_files import noise, save, tree, truncated_png
from PIL import Image
from typer.testing import CliRunner

import aecore
import aecore_images.decode
from aecore.cli import app
from aecore.data import UINT8_IMAGES, TensorStore, read_idx, write_idx
from aecore.errors import DataError, Notice
from aecore.sources import load_dataset
from aecore.testing import check_dataset
from aecore_images import ImageFolder, SkippedImagesWarning


def pixels_of(data) -> list[np.ndarray]:
    """The decoded images of a split as (H, W) or (H, W, C) arrays, as Pillow would hand them over."""
    return [img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0) for img in data.x.numpy()]


def all_images(dataset) -> list[np.ndarray]:
    return pixels_of(dataset.train) + pixels_of(dataset.test)


def one_line(exc: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- layouts -----------------------------------------------------------------------------------


def test_class_subfolders_are_labels_in_sorted_order(tmp_path):
    written = tree(tmp_path, {"dog": 4, "cat": 3, "bird": 3})
    data = load_dataset(f"folder:{tmp_path}")
    assert data.spec["label_names"] == ["bird", "cat", "dog"]
    assert data.spec["layout"] == "classes" and data.spec["split"] == "seeded"
    assert (len(data.train), len(data.test)) == (8, 2)
    assert data.train.x.dtype == torch.uint8 and data.train.shape == (1, 8, 8)
    assert data.train.y.dtype == torch.long
    assert data.train.normalisation == UINT8_IMAGES
    # every image comes back once, with its own class's label
    by_pixels = {arr.tobytes(): name for name, arr in written.items()}
    seen = []
    for split in (data.train, data.test):
        for image, label in zip(split.x.numpy(), split.y.tolist(), strict=True):
            name = by_pixels[image[0].tobytes()]
            assert name.split("/")[0] == data.spec["label_names"][label]
            seen.append(name)
    assert sorted(seen) == sorted(written)
    # both splits keep the sorted file order
    for split in (data.train, data.test):
        names = [by_pixels[image[0].tobytes()] for image in split.x.numpy()]
        assert names == sorted(names)


def test_a_flat_folder_has_no_labels(tmp_path):
    written = tree(tmp_path, {"": 5})
    data = load_dataset(f"folder:{tmp_path}")
    assert data.train.y is None and data.test.y is None
    assert data.spec["layout"] == "flat" and "label_names" not in data.spec
    assert sorted(a.tobytes() for a in all_images(data)) == sorted(a.tobytes() for a in written.values())


def test_train_and_test_folders_are_the_split_with_the_training_classes(tmp_path):
    tree(tmp_path, {"train/a": 2, "train/b": 3, "test/b": 2})
    data = load_dataset(f"folder:{tmp_path}")
    assert data.spec["split"] == "folders" and data.spec["label_names"] == ["a", "b"]
    assert (len(data.train), len(data.test)) == (5, 2)
    assert data.train.y.tolist() == [0, 0, 1, 1, 1]
    assert data.test.y.tolist() == [1, 1]  # b is class 1 of the training classes, not 0 of test's


def test_train_and_test_folders_may_be_flat(tmp_path):
    tree(tmp_path, {"train": 3, "test": 2})
    data = load_dataset(f"folder:{tmp_path}")
    assert (len(data.train), len(data.test)) == (3, 2) and data.train.y is None


@pytest.mark.parametrize(
    ("layout", "fragments"),
    [
        ({"train/a": 2, "test/a": 1, "test/c": 1}, ["the class 'c'", "train classes: a"]),
        ({"train/a": 2, "test": 1}, ["has class folders but", "holds its images directly"]),
        ({"train/a": 2}, ["has a train/ folder but no test/ folder"]),
        ({"train": 2, "test": 1, "val": 1}, ["and also val/"]),
        ({"": 2, "cats": 2}, ["beside class folders (cats/)"]),
        ({"train": 2, "test/x": 0}, ["no image files"]),
    ],
)
def test_layouts_that_do_not_add_up_are_refused_in_one_line(tmp_path, layout, fragments):
    tree(tmp_path, layout)
    for folder in layout:
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    with pytest.raises(DataError) as exc:
        load_dataset(f"folder:{tmp_path}")
    one_line(exc, *fragments)


def test_the_split_options_do_not_apply_to_given_train_and_test_folders(tmp_path):
    tree(tmp_path, {"train": 3, "test": 2})
    with pytest.raises(DataError) as exc:
        load_dataset(f"folder:{tmp_path}?seed=4")
    one_line(exc, "train/ and test/", "seed=")


def test_an_empty_folder_and_a_missing_one_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    (tmp_path / "empty" / "sub").mkdir()
    with pytest.raises(DataError) as exc:
        load_dataset(f"folder:{tmp_path / 'empty'}")
    one_line(exc, str(tmp_path / "empty"), "holds no image files", ".png")
    with pytest.raises(DataError) as exc:
        load_dataset(f"folder:{tmp_path / 'nowhere'}")
    one_line(exc, "does not exist")
    save(tmp_path / "one.png", noise(0))
    with pytest.raises(DataError) as exc:
        load_dataset(f"folder:{tmp_path / 'one.png'}")
    one_line(exc, "is a file")


def test_a_split_needs_two_images(tmp_path):
    save(tmp_path / "only.png", noise(0))
    with pytest.raises(DataError) as exc:
        load_dataset(f"folder:{tmp_path}")
    one_line(exc, "at least 2")


def test_hidden_files_and_folders_are_not_read(tmp_path):
    tree(tmp_path, {"a": 2, "b": 2})
    save(tmp_path / "a" / ".hidden.png", noise(7))
    (tmp_path / ".git").mkdir()
    save(tmp_path / ".git" / "x.png", noise(8))
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (tmp_path / "b" / "readme.txt").write_text("no image")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.spec["label_names"] == ["a", "b"] and len(data.train) + len(data.test) == 4
    assert len(ImageFolder(ImageFolder.Config()).files(str(tmp_path), data_dir=None)) == 4


def test_pattern_keeps_the_matching_files_only(tmp_path):
    tree(tmp_path, {"cats": 3, "dogs": 3})
    save(tmp_path / "cats" / "extra.jpg", noise(5, (8, 8)))
    data = load_dataset(f"folder:{tmp_path}?pattern=*.png")
    assert len(data.train) + len(data.test) == 6
    with_jpg = load_dataset(f"folder:{tmp_path}")
    assert len(with_jpg.train) + len(with_jpg.test) == 7
    cats = load_dataset(f"folder:{tmp_path}?pattern=cats/*")
    assert cats.spec["label_names"] == ["cats"] and len(cats.train) + len(cats.test) == 4
    assert cats.name == f"folder:{tmp_path}?pattern=cats/%2A"  # recorded, and it reloads the same files
    assert load_dataset(cats.name).spec["label_names"] == ["cats"]
    with pytest.raises(DataError) as exc:
        load_dataset(f"folder:{tmp_path}?pattern=*.bmp")
    one_line(exc, "matching pattern=*.bmp")


def test_the_seeded_split_is_deterministic_and_recorded(tmp_path):
    tree(tmp_path, {"": 20})
    a = load_dataset(f"folder:{tmp_path}?test_fraction=0.25&seed=3")
    b = load_dataset(f"folder:{tmp_path}?seed=3&test_fraction=0.25")
    other = load_dataset(f"folder:{tmp_path}?test_fraction=0.25&seed=4")
    assert len(a.test) == 5 and torch.equal(a.test.x, b.test.x) and torch.equal(a.train.x, b.train.x)
    assert not torch.equal(a.test.x, other.test.x)
    assert a.name == f"folder:{tmp_path}?test_fraction=0.25&seed=3"
    again = load_dataset(a.name)  # the recorded name reloads the same split
    assert torch.equal(again.test.x, a.test.x)
    default = load_dataset(f"folder:{tmp_path}")
    assert default.name == f"folder:{tmp_path}" and len(default.test) == 4


def test_a_relative_folder_is_recorded_as_an_absolute_path(tmp_path, monkeypatch):
    tree(tmp_path / "imgs", {"": 4})
    assert load_dataset("folder:imgs", tmp_path).name == f"folder:{tmp_path / 'imgs'}"
    monkeypatch.chdir(tmp_path)
    assert load_dataset("folder:imgs").name == f"folder:{tmp_path / 'imgs'}"


def test_a_link_back_up_the_tree_is_no_loop(tmp_path):
    tree(tmp_path, {"a": 2, "b": 2})
    os.symlink(tmp_path, tmp_path / "a" / "up")
    data = load_dataset(f"folder:{tmp_path}")
    assert len(data.train) + len(data.test) >= 4


def test_the_source_passes_the_conformance_check(tmp_path):
    tree(tmp_path, {"x": 3, "y": 3}, shape=(6, 5, 3))
    data = check_dataset(ImageFolder, str(tmp_path), params={"size": "4x4"})
    assert data.train.shape == (3, 4, 4)


# -- MNIST through PNG files is MNIST ---------------------------------------------------------


def test_mnist_as_grayscale_pngs_gives_exactly_the_idx_pixels_and_labels(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (30, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (30,), generator=g, dtype=torch.uint8)
    images[0] = 0  # the extremes survive too
    images[1] = 255
    write_idx(tmp_path / "images-idx3-ubyte", images)
    write_idx(tmp_path / "labels-idx1-ubyte", labels)
    x, y = read_idx(tmp_path / "images-idx3-ubyte"), read_idx(tmp_path / "labels-idx1-ubyte")
    root = tmp_path / "digits"
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        save(root / "train" / str(int(label)) / f"{i:05d}.png", image.numpy())
    for i in range(4):
        save(root / "test" / str(int(y[i])) / f"{i:05d}.png", x[i].numpy())
    data = load_dataset(f"folder:{root}")
    # folder order is class by class, files by name: the same images in that order
    order = sorted(range(len(x)), key=lambda i: (str(int(y[i])), f"{i:05d}"))
    expected_names = [str(c) for c in sorted({int(v) for v in y}, key=str)]
    assert data.spec["label_names"] == expected_names
    assert data.train.x.dtype == torch.uint8 and data.train.shape == (1, 28, 28)
    assert torch.equal(data.train.x, x[order].unsqueeze(1))
    names = data.spec["label_names"]
    assert [int(names[k]) for k in data.train.y.tolist()] == y[order].long().tolist()
    assert data.train.normalisation == UINT8_IMAGES  # what the mnist source uses: the same floats
    assert torch.equal(data.train.batch(slice(None)), x[order].unsqueeze(1).float() / 255.0)


# -- sizes, geometry, channels ------------------------------------------------------------------


def test_images_of_different_sizes_need_size(tmp_path):
    save(tmp_path / "a.png", noise(0, (8, 8)))
    save(tmp_path / "b.png", noise(1, (10, 6)))
    for channels in ("auto", "1"):
        with pytest.raises(DataError) as exc:
            load_dataset(f"folder:{tmp_path}?channels={channels}")
        one_line(exc, str(tmp_path / "b.png"), "6×10", str(tmp_path / "a.png"), "8×8", "size=")
    data = load_dataset(f"folder:{tmp_path}?size=7x9")
    assert data.train.shape == (1, 7, 9) and data.spec["shape"] == [1, 7, 9]
    assert data.spec["resize"] == "resize" and data.spec["resample"] == "bilinear"


def columns(width: int, height: int) -> np.ndarray:
    """A gray image whose value is 5 × the column number."""
    return np.tile((np.arange(width) * 5).astype(np.uint8), (height, 1))


def test_resize_stretches_to_height_by_width(tmp_path):
    save(tmp_path / "a.png", np.full((20, 40), 90, np.uint8))
    save(tmp_path / "b.png", np.full((30, 30), 90, np.uint8))
    data = load_dataset(f"folder:{tmp_path}?size=10x20")
    for image in (data.train.x, data.test.x):
        assert image.shape[1:] == (1, 10, 20) and bool((image == 90).all())


def test_crop_without_scaling_keeps_the_centre_exactly(tmp_path):
    for name in ("a.png", "b.png"):
        save(tmp_path / name, columns(40, 20))
    data = load_dataset(f"folder:{tmp_path}?size=20&resize=crop")
    image = data.train.x[0, 0].numpy()
    assert image.shape == (20, 20)
    assert (image == columns(40, 20)[:, 10:30]).all()


def test_crop_with_scaling_covers_the_size_and_keeps_the_centre(tmp_path):
    pixels = np.full((40, 80), 250, np.uint8)
    pixels[:, 20:60] = 100  # the centre square is all that must be left
    for name in ("a.png", "b.png"):
        save(tmp_path / name, pixels)
    data = load_dataset(f"folder:{tmp_path}?size=20&resize=crop")
    image = data.train.x[0, 0]
    assert image.shape == (20, 20)
    assert int(image[10, 10]) == 100 and bool((image[:, 3:17] == 100).all())


def test_pad_fits_the_image_and_centres_it_on_zeros(tmp_path):
    for name in ("a.png", "b.png"):
        save(tmp_path / name, np.full((20, 40), 200, np.uint8))
    data = load_dataset(f"folder:{tmp_path}?size=20&resize=pad")
    image = data.train.x[0, 0]
    assert image.shape == (20, 20)
    assert bool((image[:5] == 0).all()) and bool((image[15:] == 0).all())
    assert bool((image[5:15] == 200).all()) and int(image[10, 10]) == 200


def test_resize_policies_need_size(tmp_path):
    tree(tmp_path, {"": 3})
    with pytest.raises(DataError) as exc:
        load_dataset(f"folder:{tmp_path}?resize=crop")
    one_line(exc, "resize=crop needs size=")


def test_channels_one_from_rgb_is_pillows_luma_and_three_from_gray_repeats_it(tmp_path):
    rgb = noise(3, (6, 6, 3))
    rgb[0, 0] = (200, 200, 200)
    save(tmp_path / "c" / "rgb.png", rgb)
    save(tmp_path / "c" / "rgb2.png", rgb)
    gray = noise(4, (6, 6))
    save(tmp_path / "g" / "gray.png", gray)
    save(tmp_path / "g" / "gray2.png", gray)
    one = load_dataset(f"folder:{tmp_path}?channels=1&test_fraction=0.5")
    luma = np.asarray(Image.fromarray(rgb).convert("L"))
    images = {img.tobytes(): img for img in all_images(one)}
    assert luma.tobytes() in images and gray.tobytes() in images
    assert images[luma.tobytes()][0, 0] == 200  # gray stays gray
    three = load_dataset(f"folder:{tmp_path}?channels=3&test_fraction=0.5")
    assert three.train.shape == (3, 6, 6)
    stacked = np.stack([gray] * 3, axis=-1)
    assert any((img == stacked).all() for img in all_images(three) if img.shape == stacked.shape)
    assert any((img == rgb).all() for img in all_images(three) if img.shape == rgb.shape)


def test_channels_auto_is_one_only_when_every_image_is_gray(tmp_path):
    tree(tmp_path / "gray", {"": 3})
    assert load_dataset(f"folder:{tmp_path / 'gray'}").spec["shape"][0] == 1
    save(tmp_path / "gray" / "colour.png", noise(9, (8, 8, 3)))
    mixed = load_dataset(f"folder:{tmp_path / 'gray'}")
    assert mixed.spec["shape"][0] == 3 and mixed.train.shape == (3, 8, 8)


def test_channels_auto_opens_each_gray_or_colour_file_once(tmp_path, decodes, monkeypatch):
    probes = []
    real = aecore_images.decode.probe
    monkeypatch.setattr(aecore_images.decode, "probe", lambda path: probes.append(path) or real(path))
    tree(tmp_path / "gray", {"a": 4, "b": 4})
    save(tmp_path / "rgb" / "train" / "k" / "a.png", noise(1, (8, 8, 3)))
    save(tmp_path / "rgb" / "train" / "k" / "b.png", noise(2, (8, 8)))  # gray after colour: no second pass
    save(tmp_path / "rgb" / "test" / "k" / "c.png", noise(3, (8, 8)))
    for folder, channels, files in (("gray", 1, 8), ("rgb", 3, 3)):
        decodes.clear(), probes.clear()
        data = load_dataset(f"folder:{tmp_path / folder}")
        assert data.spec["shape"][0] == channels
        assert len(decodes) == files and len(probes) == 1  # the first file's header, then one decode each


@pytest.mark.parametrize("cached", [False, True])
def test_a_colour_file_after_gray_ones_decodes_everything_again_as_rgb(
    tmp_path, decodes, cached, monkeypatch
):
    if cached:
        monkeypatch.setenv("AECORE_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.delenv("AECORE_NO_DATA_CACHE", raising=False)
    else:
        monkeypatch.setenv("AECORE_NO_DATA_CACHE", "1")
    root = tmp_path / "mixed"
    tree(root, {"a": 40, "b": 30}, shape=(8, 8))
    save(root / "b" / "0020c.png", noise(5, (8, 8, 3)))  # after b/002.png: neither first nor last
    auto = load_dataset(f"folder:{root}?test_fraction=0.3")
    assert auto.spec["shape"] == [3, 8, 8] and auto.train.shape == (3, 8, 8)
    assert 71 < len(decodes) < 2 * 71  # the gray pass stopped at the colour file
    decodes.clear()
    three = load_dataset(f"folder:{root}?test_fraction=0.3&channels=3")
    assert len(decodes) == 71  # channels=3 is another cache entry, decoded once
    for a, b in ((auto.train, three.train), (auto.test, three.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    if cached:  # the gray pass's files are gone: the entry holds the RGB tensors only
        entries = list((tmp_path / "cache" / "datasets").iterdir())
        sizes = sorted(f.stat().st_size for e in entries for f in e.glob("*.x.safetensors"))
        assert sizes and all(size >= 3 * 8 * 8 * 21 for size in sizes)
        decodes.clear()
        again = load_dataset(f"folder:{root}?test_fraction=0.3")
        assert not decodes and torch.equal(again.train.x, auto.train.x)


def test_restarting_as_rgb_asks_the_store_again_and_deletes_the_gray_files(tmp_path):
    root = tmp_path / "imgs"
    tree(root, {"a": 3, "b": 3}, shape=(8, 8))
    save(root / "b" / "z.png", noise(6, (8, 8, 3)))
    (tmp_path / "store").mkdir()
    store = RecordingStore(tmp_path / "store", workers=1)
    data = ImageFolder(ImageFolder.Config(test_fraction=0.3)).load(
        str(root), data_dir=None, normalisation=None, store=store
    )
    assert store.keys == ["train.x", "train.y", "test.x", "test.y"] * 2
    assert [d for _, d in store.bars] == [
        "decoding images",
        "decoding images again as RGB (a colour one follows gray ones)",
    ]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == sorted(set(store.files.values()))
    assert store.files[id(data.train.storage["x"])] == "train.x.safetensors" and data.train.shape == (3, 8, 8)


@pytest.mark.parametrize("where", ["before", "after"])
def test_skip_bad_with_a_restart_lists_each_bad_file_once(tmp_path, where):
    root = tmp_path / "imgs"
    written = tree(root, {"a": 4, "b": 4}, shape=(8, 8))
    colour = noise(7, (8, 8, 3))
    save(root / "b" / "0001c.png", colour)
    bad = "a/0001x.png" if where == "before" else "b/0003x.png"
    truncated_png(root / bad, (8, 8))
    with pytest.warns(SkippedImagesWarning, match="skipped 1 "):
        data = load_dataset(f"folder:{root}?skip_bad=true&test_fraction=0.3")
    assert data.spec["skipped"] == [bad] and data.spec["shape"] == [3, 8, 8]
    images = {img.tobytes() for img in all_images(data)}
    assert len(images) == len(written) + 1 and colour.tobytes() in images
    assert all(np.stack([g] * 3, axis=-1).tobytes() in images for g in written.values())


def test_a_bad_file_before_the_first_readable_one_is_named(tmp_path):
    root = tmp_path / "imgs"
    tree(root, {"": 3})
    (root / "0.png").write_bytes(b"")
    with pytest.raises(DataError) as exc:
        load_dataset(f"folder:{root}")
    one_line(exc, f"cannot read the image {root / '0.png'}: the file is empty", "skip_bad=true")


def test_alpha_is_dropped_not_blended(tmp_path):
    rgba = noise(1, (5, 5, 4))
    rgba[..., 3] = 0  # fully transparent: blending would make it black
    save(tmp_path / "a.png", rgba)
    save(tmp_path / "b.png", rgba)
    data = load_dataset(f"folder:{tmp_path}")
    assert data.train.shape == (3, 5, 5)
    assert (pixels_of(data.train)[0] == rgba[..., :3]).all()


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_sixteen_bit_gray_keeps_the_high_byte(tmp_path, ext):
    values = np.array([[0, 255, 256, 257 * 77], [65535, 32768, 1000, 511]], dtype=np.uint16)
    for name in ("a", "b"):
        path = tmp_path / f"{name}.{ext}"
        Image.fromarray(values).save(path)
        assert Image.open(path).mode.startswith("I")  # really 16 bits on disk
    data = load_dataset(f"folder:{tmp_path}")
    assert data.train.shape == (1, 2, 4)
    assert (pixels_of(data.train)[0] == (values >> 8).astype(np.uint8)).all()


@pytest.mark.parametrize(
    ("ext", "options"),
    [("bmp", {}), ("tif", {}), ("tiff", {"compression": "tiff_deflate"}), ("webp", {"lossless": True})],
)
def test_bmp_tiff_and_webp_decode_exactly(tmp_path, ext, options):
    rgb = noise(2, (7, 9, 3))
    for name in ("a", "B"):
        save(tmp_path / f"{name}.{ext.upper() if name == 'B' else ext}", rgb, **options)
    data = load_dataset(f"folder:{tmp_path}")
    for image in all_images(data):
        assert (image == rgb).all()


def test_jpeg_decodes_as_pillow_decodes_it(tmp_path):
    rgb = noise(2, (16, 16, 3))
    for name in ("a.jpg", "b.JPEG"):
        save(tmp_path / name, rgb, quality=90)
    expected = np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB"))
    data = load_dataset(f"folder:{tmp_path}")
    for image in all_images(data):
        assert (image == expected).all()


# -- bad files --------------------------------------------------------------------------------


def bad_files(root: Path) -> list[str]:
    truncated_png(root / "a" / "cut.png")
    (root / "a" / "text.jpg").write_text("this is not a JPEG\n")
    (root / "b" / "zero.png").write_bytes(b"")
    return ["a/cut.png", "a/text.jpg", "b/zero.png"]


BAD = {
    "truncated": lambda path: truncated_png(path.with_suffix(".png")),
    "text": lambda path: path.with_suffix(".jpg").write_text("this is not a JPEG\n"),
    "empty": lambda path: path.with_suffix(".png").write_bytes(b""),
}


@pytest.mark.parametrize("channels", ["auto", "1"])  # auto may decode twice: a bad file still stops it
@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_file_stops_loading_in_one_line_naming_it(tmp_path, channels, kind):
    tree(tmp_path, {"a": 3, "b": 3}, shape=(28, 28))
    BAD[kind](tmp_path / "b" / "bad")
    path = next((tmp_path / "b").glob("bad.*"))
    with pytest.raises(DataError) as exc:
        load_dataset(f"folder:{tmp_path}?channels={channels}")
    one_line(exc, f"cannot read the image {path}:", "skip_bad=true")


@pytest.mark.parametrize("channels", ["auto", "1"])
def test_skip_bad_leaves_bad_files_out_warns_and_lists_them(tmp_path, channels):
    written = tree(tmp_path, {"a": 3, "b": 3}, shape=(28, 28))
    skipped = bad_files(tmp_path)
    with pytest.warns(SkippedImagesWarning, match=r"skipped 3 unreadable image file"):
        data = load_dataset(f"folder:{tmp_path}?skip_bad=true&channels={channels}&test_fraction=0.4")
    assert data.spec["skipped"] == skipped
    assert len(data.train) + len(data.test) == 6
    good = sorted(a.tobytes() for a in written.values())
    assert sorted(a.tobytes() for a in all_images(data)) == good
    by_pixels = {arr.tobytes(): name for name, arr in written.items()}
    for split in (data.train, data.test):  # the labels stay with their images
        for image, label in zip(pixels_of(split), split.y.tolist(), strict=True):
            assert by_pixels[image.tobytes()].startswith(data.spec["label_names"][label])


def test_skipped_files_are_left_out_of_a_cached_dataset_too(tmp_path, cache, decodes):
    written = tree(tmp_path, {"": 6}, shape=(28, 28))
    truncated_png(tmp_path / "003b.png")  # readable header: found bad only while decoding
    source = f"folder:{tmp_path}?skip_bad=true&channels=1&test_fraction=0.5"
    with pytest.warns(SkippedImagesWarning):
        first = load_dataset(source)
    with pytest.warns(Notice, match=r"leaves out 1 unreadable file.*003b\.png"):  # said again from the cache
        again = load_dataset(source)
    assert len(decodes) == 7
    assert again.spec["skipped"] == ["003b.png"] and len(again.train) + len(again.test) == 6
    assert torch.equal(first.train.x, again.train.x) and torch.equal(first.test.x, again.test.x)
    assert sorted(a.tobytes() for a in all_images(again)) == sorted(a.tobytes() for a in written.values())


def test_a_pickle_named_png_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    tree(tmp_path / "data", {"": 3})
    (tmp_path / "data" / "x.png").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(DataError) as exc:
        load_dataset(f"folder:{tmp_path / 'data'}")
    one_line(exc, str(tmp_path / "data" / "x.png"), "not a PNG, JPEG, BMP, TIFF or WebP image")
    assert not marker.exists()


@pytest.mark.parametrize("limit", [500, 100])  # Pillow warns above the limit and refuses above twice it
def test_a_decompression_bomb_is_a_bad_file(tmp_path, monkeypatch, limit):
    tree(tmp_path, {"": 3}, shape=(10, 10))
    save(tmp_path / "bomb.png", noise(0, (28, 28)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DataError) as exc:
        load_dataset(f"folder:{tmp_path}")
    one_line(exc, str(tmp_path / "bomb.png"), "decompression-bomb limit")
    with pytest.warns(SkippedImagesWarning):
        data = load_dataset(f"folder:{tmp_path}?skip_bad=true")
    assert data.spec["skipped"] == ["bomb.png"]


def test_every_file_bad_is_one_line(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.png").write_text("text")
    with pytest.raises(DataError) as exc:
        load_dataset(f"folder:{tmp_path}?skip_bad=true")
    one_line(exc, "none of the 2 image files", "the first, a.png: the file is empty")


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("resize=stretch", "resize"),
        ("channels=2", "channels"),
        ("size=abc", "size must be H or HxW"),
        ("size=0", "size sides must be from 1"),
        ("size=64x", "size must be H or HxW"),
        ("test_fraction=1.5", "test_fraction must be between 0 and 1"),
        ("skip_bad=maybe", "skip_bad"),
        ("sise=64", "unknown parameter 'folder.sise'"),
    ],
)
def test_bad_option_values_are_refused_in_one_line(tmp_path, query, fragment):
    tree(tmp_path, {"": 3})
    with pytest.raises(DataError) as exc:
        load_dataset(f"folder:{tmp_path}?{query}")
    one_line(exc, fragment)


# -- cache and command line ----------------------------------------------------------------------


def test_a_second_load_is_served_from_the_cache_until_a_file_changes(tmp_path, cache, decodes):
    tree(tmp_path, {"a": 3, "b": 3})
    first = load_dataset(f"folder:{tmp_path}")
    assert len(decodes) == 6
    second = load_dataset(f"folder:{tmp_path}")
    assert len(decodes) == 6  # nothing decoded again
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)
    assert second.spec == first.spec
    save(tmp_path / "b" / "new.png", noise(50, (8, 8)))
    third = load_dataset(f"folder:{tmp_path}")
    assert len(decodes) == 13 and len(third.train) + len(third.test) == 7


def test_train_then_eval_through_the_cli_reloads_the_same_images(tmp_path, monkeypatch, cache):
    tree(tmp_path / "imgs", {"a": 12, "b": 12}, shape=(12, 12))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    options = ["--encoder", "mlp", "--epochs", "1", "--latent-dim", "2", "--set", "encoder.hidden=8"]
    options += ["--device", "cpu", "-q"]
    trained = runner.invoke(app, ["train", "--data", "folder:imgs?size=8", *options, "--out", "run"])
    assert trained.exit_code == 0, trained.stderr
    meta = aecore.read_metadata(tmp_path / "run")
    assert meta["data"]["name"] == f"folder:{tmp_path / 'imgs'}?size=8"
    assert meta["data"]["label_names"] == ["a", "b"] and meta["data"]["shape"] == [1, 8, 8]
    line = [s for s in trained.stdout.splitlines() if s.startswith("test: ")]
    assert len(line) == 1
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    evaluated = runner.invoke(app, ["eval", "../run"])
    assert evaluated.exit_code == 0, evaluated.stderr
    assert [s for s in evaluated.stdout.splitlines() if s.startswith("test: ")] == line
    (tmp_path / "imgs" / "a" / "000.png").write_text("broken now")
    failed = runner.invoke(app, ["eval", "../run"])
    assert failed.exit_code == 2
    lines = failed.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read the image"), failed.stderr
    # skip_bad: one warning line, and the run directory lists the file left out
    monkeypatch.chdir(tmp_path)
    source = "folder:imgs?size=8&skip_bad=true"
    skipping = runner.invoke(app, ["train", "--data", source, *options, "--out", "run2"])
    assert skipping.exit_code == 0, skipping.stderr
    warned = [s for s in skipping.stderr.splitlines() if s.startswith("warning: skipped 1 unreadable")]
    assert len(warned) == 1 and "a/000.png" in warned[0]
    assert (tmp_path / "run2" / "skipped-files.txt").read_text() == "a/000.png\n"


def test_only_the_five_formats_are_ever_decoded(tmp_path):
    tree(tmp_path, {"": 3})
    Image.fromarray(noise(1, (8, 8))).save(tmp_path / "x.png", format="PPM")  # Pillow reads PPM, we do not
    with pytest.raises(DataError) as exc:
        load_dataset(f"folder:{tmp_path}")
    one_line(exc, str(tmp_path / "x.png"), "not a PNG, JPEG, BMP, TIFF or WebP image")


def test_palette_images_count_as_colour(tmp_path):
    palette = Image.fromarray(noise(1, (6, 6, 3))).convert("P")
    for name in ("a.png", "b.png"):
        palette.save(tmp_path / name)
    data = load_dataset(f"folder:{tmp_path}")
    assert data.train.shape == (3, 6, 6)
    assert (pixels_of(data.train)[0] == np.asarray(palette.convert("RGB"))).all()


class RecordingStore(TensorStore):
    """The core's store, recording what the source asks of it, with a chosen number of workers."""

    def __init__(self, directory: Path, workers: int) -> None:
        super().__init__(directory, show_progress=False)
        self.count = workers
        self.keys: list[str] = []
        self.bars: list[tuple[int, str]] = []

    @property
    def workers(self) -> int:
        return self.count

    def empty(self, key, shape, dtype=torch.uint8):
        self.keys.append(key)
        return super().empty(key, shape, dtype)

    def progress(self, total, description):
        self.bars.append((total, description))
        return super().progress(total, description)


def test_images_are_decoded_by_the_stores_workers_straight_into_its_tensors(tmp_path, decodes, monkeypatch):
    import concurrent.futures
    import threading

    pools, threads = [], set()

    class Pool(concurrent.futures.ThreadPoolExecutor):
        def __init__(self, max_workers, **kwargs):
            pools.append(max_workers)
            super().__init__(max_workers, **kwargs)

    counting = aecore_images.decode.decode_image

    def where(path, *args, **kwargs):
        threads.add(threading.current_thread().name)
        return counting(path, *args, **kwargs)

    monkeypatch.setattr(aecore_images.decode, "ThreadPoolExecutor", Pool)
    monkeypatch.setattr(aecore_images.decode, "decode_image", where)
    tree(tmp_path / "imgs", {"a": 40, "b": 40}, shape=(64, 64))  # large enough for threads to pay
    (tmp_path / "store").mkdir()
    store = RecordingStore(tmp_path / "store", workers=3)
    source = ImageFolder(ImageFolder.Config(channels=1))
    data = source.load(str(tmp_path / "imgs"), data_dir=None, normalisation=None, store=store)
    assert store.keys == ["train.x", "train.y", "test.x", "test.y"]
    assert store.bars == [(80, "decoding images")]
    # filled in place: the split's tensor is the store's map onto its file, never a copy
    assert store.files[id(data.train.storage["x"])] == "train.x.safetensors"
    assert pools == [3] and len(decodes) == 80
    assert 1 <= len(threads) <= 3 and all(t.startswith("aecore-images") for t in threads)


class Pools:
    """Which pools decoding made: ("thread" | "process", workers), recorded through the real classes."""

    def __init__(self, monkeypatch) -> None:
        import concurrent.futures

        self.made: list[tuple[str, int]] = []
        made = self.made

        class Threads(concurrent.futures.ThreadPoolExecutor):
            def __init__(self, max_workers, **kwargs):
                made.append(("thread", max_workers))
                super().__init__(max_workers, **kwargs)

        class Processes(concurrent.futures.ProcessPoolExecutor):
            def __init__(self, max_workers, **kwargs):
                made.append(("process", max_workers))
                super().__init__(max_workers, **kwargs)

        monkeypatch.setattr(aecore_images.decode, "ThreadPoolExecutor", Threads)
        monkeypatch.setattr(aecore_images.decode, "ProcessPoolExecutor", Processes)


def _load_into(source, folder: Path, store_dir: Path | None, workers: int):
    store = None
    if store_dir is not None:
        store_dir.mkdir(parents=True)
        store = RecordingStore(store_dir, workers=workers)
    return source.load(str(folder), data_dir=None, normalisation=None, store=store)


def test_small_images_decode_in_forked_processes_into_the_cache_files(tmp_path, monkeypatch):
    """Below 64×64 pixels threads lose to the interpreter lock: processes decode them, to the same pixels."""
    pools = Pools(monkeypatch)
    written = tree(tmp_path / "small", {"a": 60, "b": 60}, shape=(63, 64))  # 4,032 pixels: small
    tree(tmp_path / "large", {"a": 6, "b": 6}, shape=(64, 64))
    source = ImageFolder(ImageFolder.Config(channels=1))
    small = _load_into(source, tmp_path / "small", tmp_path / "s", workers=4)
    _load_into(source, tmp_path / "large", tmp_path / "l", workers=4)
    in_memory = _load_into(source, tmp_path / "small", None, workers=4)  # not shared: one thread
    assert pools.made == [("process", 4), ("thread", 4), ("thread", 1)]
    rows = torch.cat([small.train.x, small.test.x])
    expected = sorted(bytes(p.tobytes()) for p in written.values())
    assert sorted(bytes(r.numpy().tobytes()) for r in rows) == expected  # every image, to the pixel
    for a, b in ((small.train, in_memory.train), (small.test, in_memory.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_where_forking_is_not_possible_small_images_decode_in_one_thread(tmp_path, monkeypatch):
    pools = Pools(monkeypatch)
    monkeypatch.setattr(aecore_images.decode, "_can_fork", lambda: False)  # macOS, Windows
    tree(tmp_path / "small", {"a": 6, "b": 6}, shape=(8, 8))
    data = _load_into(ImageFolder(ImageFolder.Config(channels=1)), tmp_path / "small", tmp_path / "s", 4)
    assert pools.made == [("thread", 1)] and len(data.train) + len(data.test) == 12


def test_forked_workers_report_bad_files_and_restart_as_rgb_like_threads(tmp_path, monkeypatch):
    pools = Pools(monkeypatch)
    root = tmp_path / "imgs"
    tree(root, {"a": 50, "b": 50}, shape=(8, 8))
    save(root / "b" / "0040c.png", noise(8, (8, 8, 3)))
    truncated_png(root / "a" / "0002x.png", (8, 8))
    source = ImageFolder(ImageFolder.Config(skip_bad=True))
    with pytest.warns(SkippedImagesWarning, match="skipped 1 "):
        forked = _load_into(source, root, tmp_path / "s", workers=2)
    assert pools.made == [("process", 2), ("process", 2)]  # gray, then again as RGB
    with pytest.warns(SkippedImagesWarning, match="skipped 1 "):
        threaded = _load_into(source, root, None, workers=2)
    assert forked.spec == threaded.spec and forked.spec["skipped"] == ["a/0002x.png"]
    for a, b in ((forked.train, threaded.train), (forked.test, threaded.test)):
        assert a.x.shape[1] == 3 and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_a_bad_file_stops_forked_decoding_in_one_line(tmp_path, monkeypatch):
    Pools(monkeypatch)
    root = tmp_path / "imgs"
    tree(root, {"a": 50, "b": 50}, shape=(8, 8))
    truncated_png(root / "b" / "0030x.png", (8, 8))
    with pytest.raises(DataError) as exc:
        _load_into(ImageFolder(ImageFolder.Config()), root, tmp_path / "s", workers=2)
    one_line(exc, f"cannot read the image {root / 'b' / '0030x.png'}:", "skip_bad=true")


def test_a_worker_process_that_dies_is_one_line(tmp_path, monkeypatch):
    import os

    Pools(monkeypatch)
    root = tmp_path / "imgs"
    tree(root, {"": 40}, shape=(8, 8))
    real = aecore_images.decode.decode_image
    parent = os.getpid()

    def crash(path, *args, **kwargs):
        if os.getpid() != parent and path.name == "020.png":
            os._exit(11)  # what a decoder's segmentation fault looks like to the pool
        return real(path, *args, **kwargs)

    monkeypatch.setattr(aecore_images.decode, "decode_image", crash)
    with pytest.raises(DataError) as exc:
        _load_into(ImageFolder(ImageFolder.Config()), root, tmp_path / "s", workers=2)
    one_line(exc, f"a process decoding the images under {root} died", "AECORE_NO_DATA_CACHE=1")


def test_folders_loaded_at_once_from_several_threads_each_get_their_own_images(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    trees = {name: tree(tmp_path / name, {"a": 40, "b": 40}, shape=(8, 8)) for name in ("p", "q", "r")}
    save(tmp_path / "q" / "b" / "z.png", noise(3, (8, 8, 3)))  # q restarts as RGB meanwhile
    source = ImageFolder(ImageFolder.Config())

    def load(name: str):
        store_dir = tmp_path / f"store-{name}" if name != "r" else None  # p, q forked; r in threads
        return _load_into(source, tmp_path / name, store_dir, workers=2)

    with ThreadPoolExecutor(3) as pool:
        loaded = dict(zip(trees, pool.map(load, trees), strict=True))
    for name, written in trees.items():
        data = loaded[name]
        images = {img.tobytes() for img in all_images(data)}
        if name == "q":
            assert data.spec["shape"][0] == 3 and len(images) == 81
            assert all(np.stack([g] * 3, axis=-1).tobytes() in images for g in written.values())
        else:
            assert images == {g.tobytes() for g in written.values()}
