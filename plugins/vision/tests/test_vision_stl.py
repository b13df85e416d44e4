"""STL-10 from stl10_binary/: column-major 3×96×96 images, labels 1..10 stored, 0..9 given."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from vision_helpers import write_stl10

from aecore.errors import DataError
from aecore.sources import load_dataset
from aecore_vision import stl as stl_module

NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def test_stl10_gives_upright_images_and_labels_from_zero(tmp_path):
    x, classes = write_stl10(tmp_path)
    dataset = load_dataset("stl10", tmp_path)
    assert dataset.name == "stl10"
    assert dataset.train.x.shape == (4, 3, 96, 96) and dataset.train.x.dtype == torch.uint8
    assert torch.equal(dataset.train.x, torch.from_numpy(x[:4]))
    assert torch.equal(dataset.test.x, torch.from_numpy(x[4:7]))
    assert dataset.train.y.dtype == torch.int64
    assert (
        dataset.train.y.tolist() == classes[:4].tolist() and dataset.test.y.tolist() == classes[4:].tolist()
    )
    assert dataset.spec["label_names"] == NAMES


def test_a_channel_is_stored_column_by_column(tmp_path):
    """Byte 9216*c + 96*col + row of an image is pixel (c, row, col)."""
    write_stl10(tmp_path)
    stored = bytearray(3 * 96 * 96)
    stored[9216 * 2 + 96 * 7 + 2] = 250  # blue, row 2, column 7
    folder = tmp_path / "stl10_binary"
    (folder / "test_X.bin").write_bytes(bytes(stored))
    (folder / "test_y.bin").write_bytes(bytes([10]))
    test = load_dataset("stl10", tmp_path).test
    assert test.x[0, 2, 2, 7] == 250 and int(test.x.sum()) == 250
    assert test.y.tolist() == [9]  # truck


def test_unlabeled_images_join_training_with_label_minus_one(tmp_path):
    x, classes = write_stl10(tmp_path, n_unlabeled=3)
    assert len(load_dataset("stl10", tmp_path).train) == 4  # not read unless asked
    dataset = load_dataset("stl10?unlabeled=true", tmp_path)
    assert dataset.name == "stl10?unlabeled=true"
    assert torch.equal(dataset.train.x, torch.from_numpy(np.concatenate([x[:4], x[7:]])))
    assert dataset.train.y.tolist() == [*classes[:4].tolist(), -1, -1, -1]
    assert len(dataset.test) == 3 and int(dataset.test.y.min()) >= 0


def test_images_are_read_in_chunks(tmp_path, monkeypatch):
    x, _ = write_stl10(tmp_path, n_train=5)
    monkeypatch.setattr(stl_module, "_CHUNK", 2)  # 5 images: chunks of 2, 2 and 1
    assert torch.equal(load_dataset("stl10", tmp_path).train.x, torch.from_numpy(x[:5]))


@pytest.mark.parametrize("name", ["train_X.bin", "test_X.bin", "unlabeled_X.bin"])
def test_an_image_file_that_is_not_whole_images_is_refused(tmp_path, name):
    write_stl10(tmp_path, n_unlabeled=1)
    path = tmp_path / "stl10_binary" / name
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="not a whole number of 27,648-byte 3×96×96 images") as excinfo:
        load_dataset("stl10?unlabeled=true", tmp_path)
    assert name in str(excinfo.value)


def test_a_label_count_that_disagrees_with_the_images_is_refused(tmp_path):
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "train_y.bin").write_bytes(bytes([1, 2, 3]))
    with pytest.raises(
        DataError, match=re.escape("train_y.bin holds 3 labels for the 4 images of train_X.bin")
    ):
        load_dataset("stl10", tmp_path)


@pytest.mark.parametrize("label", [0, 11, 255])
def test_labels_outside_one_to_ten_are_refused(tmp_path, label):
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "test_y.bin").write_bytes(bytes([1, label, 2]))
    with pytest.raises(DataError, match=f"holds the label {label}; STL-10 labels are 1 to 10"):
        load_dataset("stl10", tmp_path)


def test_missing_files_name_the_folder(tmp_path):
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "test_y.bin").unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("stl10", tmp_path)
    message = str(excinfo.value)
    assert f"STL-10 file test_y.bin not found in {tmp_path / 'stl10_binary'}" in message
    assert "stl10_binary/ holding train_X.bin, train_y.bin, test_X.bin and test_y.bin" in message
    (tmp_path / "stl10_binary" / "test_y.bin").write_bytes(bytes([1, 2, 3]))
    with pytest.raises(DataError, match=re.escape("STL-10 file unlabeled_X.bin not found")):
        load_dataset("stl10?unlabeled=true", tmp_path)
