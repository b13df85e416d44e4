"""Fashion-MNIST, KMNIST and EMNIST: torchvision's NAME/raw/ IDX layout, images upright."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from vision_helpers import images, write_emnist, write_mnist_like

from aecore.data import write_idx
from aecore.errors import DataError
from aecore.sources import load_dataset
from aecore_vision import FashionMNIST

FASHION = [
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
]
KUZUSHIJI = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]


@pytest.mark.parametrize(
    ("source", "folder", "names"),
    [("fashion-mnist", "FashionMNIST", FASHION), ("kmnist", "KMNIST", KUZUSHIJI), ("mnist", "MNIST", None)],
)
def test_mnist_like_sources_read_their_torchvision_folder(tmp_path, source, folder, names):
    x = images(7, 1, 28, seed=4)
    y = np.array([9, 0, 3, 1, 2, 8, 5])
    write_mnist_like(tmp_path, folder, x[:4], y[:4], x[4:], y[4:])
    dataset = load_dataset(source, tmp_path)
    assert dataset.name == source
    assert dataset.train.x.shape == (4, 1, 28, 28) and dataset.train.x.dtype == torch.uint8
    assert torch.equal(dataset.train.x, torch.from_numpy(x[:4]))
    assert torch.equal(dataset.test.x, torch.from_numpy(x[4:]))
    assert dataset.train.y.dtype == torch.int64 and dataset.train.y.tolist() == [9, 0, 3, 1]
    assert dataset.test.y.tolist() == [2, 8, 5]
    assert dataset.spec.get("label_names") == names
    assert dataset.spec["data_dir"] == str(tmp_path.resolve())
    assert dataset.train.normalisation == {"kind": "scale", "divisor": 255.0}


def test_a_source_reads_only_its_own_folder(tmp_path):
    x = images(4, 1, 28, seed=0)
    write_mnist_like(tmp_path, "MNIST", x[:2], [0, 1], x[2:], [2, 3])
    with pytest.raises(
        DataError, match=r"Fashion-MNIST file train-images-idx3-ubyte not found in .*FashionMNIST"
    ):
        load_dataset("fashion-mnist", tmp_path)


def test_gzipped_files_are_read_too(tmp_path):
    x = images(3, 1, 28, seed=1)
    raw = write_mnist_like(tmp_path, "KMNIST", x[:2], [0, 1], x[2:], [2])
    for path in list(raw.iterdir()):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert torch.equal(load_dataset("kmnist", tmp_path).test.x, torch.from_numpy(x[2:]))


def test_emnist_images_are_stored_transposed_and_come_out_upright(tmp_path):
    """A lone pixel at row 2, column 7 of the upright image sits at byte 7*28 + 2 of the stored one."""
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    stored = torch.zeros(1, 28, 28, dtype=torch.uint8)
    stored.view(-1)[7 * 28 + 2] = 200  # the file holds the image column by column
    for part in ("train", "test"):
        write_idx(raw / f"emnist-digits-{part}-images-idx3-ubyte", stored)
        write_idx(raw / f"emnist-digits-{part}-labels-idx1-ubyte", torch.tensor([3], dtype=torch.uint8))
    x = load_dataset("emnist?split=digits", tmp_path).train.x
    assert x[0, 0, 2, 7] == 200 and x[0, 0, 7, 2] == 0 and int(x.sum()) == 200


@pytest.mark.parametrize(
    ("split", "low", "high", "n_names"),
    [
        ("byclass", 0, 61, 62),
        ("bymerge", 0, 46, 47),
        ("balanced", 0, 46, 47),
        ("letters", 1, 26, 27),
        ("digits", 0, 9, None),
        ("mnist", 0, 9, None),
    ],
)
def test_emnist_splits_keep_their_published_labels(tmp_path, split, low, high, n_names):
    x = images(4, 1, 28, seed=2)
    write_emnist(tmp_path, split, x[:2], [low, high], x[2:], [high, low])
    dataset = load_dataset(f"emnist?split={split}", tmp_path)
    assert dataset.name == ("emnist" if split == "balanced" else f"emnist?split={split}")  # defaults unnamed
    assert torch.equal(dataset.train.x, torch.from_numpy(x[:2]))
    assert dataset.train.y.tolist() == [low, high] and dataset.test.y.tolist() == [high, low]
    names = dataset.spec.get("label_names")
    assert (names is None) if n_names is None else len(names) == n_names
    if split == "letters":
        assert names[1] == "a" and names[26] == "z"
    if split == "byclass":
        assert names[:11] == [*"0123456789", "A"] and names[-1] == "z"
    if split == "balanced":
        assert names[36:] == list("abdefghnqrt")


@pytest.mark.parametrize(
    ("split", "label"), [("letters", 0), ("letters", 27), ("balanced", 47), ("digits", 10)]
)
def test_emnist_label_outside_its_split_is_refused(tmp_path, split, label):
    x = images(2, 1, 28, seed=3)
    raw = write_emnist(tmp_path, split, x[:1], [1], x[1:], [1])
    write_idx(raw / f"emnist-{split}-test-labels-idx1-ubyte", torch.tensor([label], dtype=torch.uint8))
    with pytest.raises(DataError, match=f"holds the label {label}; EMNIST {split} labels are") as excinfo:
        load_dataset(f"emnist?split={split}", tmp_path)
    assert f"emnist-{split}-test-labels-idx1-ubyte" in str(excinfo.value)


def test_emnist_defaults_to_the_balanced_split_and_refuses_an_unknown_one(tmp_path):
    with pytest.raises(DataError, match="emnist-balanced-train-images-idx3-ubyte"):
        load_dataset("emnist", tmp_path)  # balanced is looked for: here its files are missing
    with pytest.raises(DataError, match="choose one of byclass"):
        load_dataset("emnist?split=upper", tmp_path)


def test_emnist_missing_files_name_the_split_files(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_dataset("emnist?split=letters", tmp_path)
    message = str(excinfo.value)
    assert "EMNIST letters file emnist-letters-train-images-idx3-ubyte not found" in message
    assert "EMNIST/raw/ holding" in message
    assert "--data 'emnist?split=letters&download=true'" in message  # the options it needs, kept


def test_fashion_label_out_of_range_is_refused(tmp_path):
    x = images(2, 1, 28, seed=5)
    write_mnist_like(tmp_path, "FashionMNIST", x[:1], [10], x[1:], [0])
    with pytest.raises(DataError, match="holds the label 10; Fashion-MNIST labels are 0 to 9"):
        load_dataset("fashion-mnist", tmp_path)


def test_images_of_the_wrong_size_are_refused(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", torch.zeros(2, 32, 32, dtype=torch.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", torch.zeros(2, dtype=torch.uint8))
    with pytest.raises(DataError, match="not 28×28 images; it is not a Fashion-MNIST image file"):
        load_dataset("fashion-mnist", tmp_path)


def test_files_lists_what_load_reads(tmp_path):
    x = images(2, 1, 28, seed=6)
    raw = write_mnist_like(tmp_path, "FashionMNIST", x[:1], [0], x[1:], [1])
    listed = FashionMNIST(FashionMNIST.Config()).files(None, data_dir=tmp_path)
    assert sorted(listed) == sorted(raw.iterdir())
