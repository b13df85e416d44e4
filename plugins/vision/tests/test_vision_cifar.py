"""CIFAR-10 and CIFAR-100 from the binary distribution; the pickled one is refused by name."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from vision_helpers import CIFAR10_NAMES, cifar_records, write_cifar10, write_cifar100

from aecore.errors import DataError
from aecore.sources import load_dataset


def test_cifar10_reads_every_batch_in_order_with_its_label_names(tmp_path):
    x_train, y_train, x_test, y_test = write_cifar10(tmp_path)
    dataset = load_dataset("cifar10", tmp_path)
    assert dataset.name == "cifar10"
    assert dataset.train.x.shape == (12, 3, 32, 32) and dataset.train.x.dtype == torch.uint8
    assert dataset.test.x.shape == (5, 3, 32, 32)
    assert torch.equal(dataset.train.x, torch.from_numpy(x_train))  # batches 1 to 5, in that order
    assert torch.equal(dataset.test.x, torch.from_numpy(x_test))
    assert dataset.train.y.dtype == torch.int64 and dataset.train.y.tolist() == y_train.tolist()
    assert dataset.test.y.tolist() == y_test.tolist()
    assert dataset.spec["label_names"] == CIFAR10_NAMES
    assert dataset.spec["data_dir"] == str(tmp_path.resolve())
    assert dataset.train.normalisation == {"kind": "scale", "divisor": 255.0}


def test_a_record_is_the_label_then_red_green_blue_planes_row_by_row(tmp_path):
    """Byte 1 + 1024*c + 32*row + col of a record is pixel (c, row, col): one bright green pixel."""
    write_cifar10(tmp_path)
    record = bytearray(3073)
    record[0] = 7
    record[1 + 1024 * 1 + 32 * 2 + 5] = 255  # green, row 2, column 5
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(bytes(record))
    test = load_dataset("cifar10", tmp_path).test
    assert test.y.tolist() == [7]
    assert test.x[0, 1, 2, 5] == 255 and int(test.x.sum()) == 255


@pytest.mark.parametrize(("labels", "column", "count"), [("fine", 2, 100), ("coarse", 1, 20)])
def test_cifar100_gives_fine_or_coarse_labels(tmp_path, labels, column, count):
    x, coarse, fine = write_cifar100(tmp_path)
    text = "cifar100" if labels == "fine" else "cifar100?labels=coarse"
    dataset = load_dataset(text, tmp_path)
    assert dataset.name == text
    assert torch.equal(dataset.train.x, torch.from_numpy(x[:6]))
    assert torch.equal(dataset.test.x, torch.from_numpy(x[6:]))
    expected = fine if labels == "fine" else coarse
    assert (
        dataset.train.y.tolist() == expected[:6].tolist() and dataset.test.y.tolist() == expected[6:].tolist()
    )
    assert dataset.spec["label_names"] == [f"{labels}_{i}" for i in range(count)]


@pytest.mark.parametrize("cut", [1, 3072, -1])
def test_a_batch_that_is_not_whole_records_is_refused(tmp_path, cut):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut > 0 else data + b"\x00")
    with pytest.raises(DataError, match="not a whole number of 3,073-byte CIFAR-10 records") as excinfo:
        load_dataset("cifar10", tmp_path)
    assert "data_batch_3.bin" in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_cifar100_records_are_3074_bytes(tmp_path):
    write_cifar100(tmp_path)
    path = tmp_path / "cifar-100-binary" / "test.bin"
    path.write_bytes(path.read_bytes()[:-2])  # CIFAR-10-sized records: 4 * 3074 - 2 is no multiple of 3074
    with pytest.raises(DataError, match="3,074-byte CIFAR-100 records"):
        load_dataset("cifar100", tmp_path)


def test_an_empty_batch_is_refused(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin").write_bytes(b"")
    with pytest.raises(DataError, match=re.escape("data_batch_1.bin is 0 bytes")):
        load_dataset("cifar10", tmp_path)


def test_labels_out_of_range_are_refused(tmp_path):
    write_cifar10(tmp_path)
    x = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    (tmp_path / "cifar-10-batches-bin" / "data_batch_5.bin").write_bytes(cifar_records(x, [3, 10]))
    with pytest.raises(
        DataError, match=re.escape("data_batch_5.bin holds the label 10; CIFAR-10 labels are 0 to 9")
    ):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize(
    ("coarse", "fine", "fragment"), [(20, 5, "CIFAR-100 coarse"), (1, 100, "CIFAR-100 fine")]
)
def test_cifar100_checks_both_label_bytes(tmp_path, coarse, fine, fragment):
    write_cifar100(tmp_path)
    x = np.zeros((1, 3, 32, 32), dtype=np.uint8)
    (tmp_path / "cifar-100-binary" / "train.bin").write_bytes(cifar_records(x, [coarse], [fine]))
    with pytest.raises(
        DataError, match=re.escape(f"train.bin holds the label {max(coarse, fine)}; {fragment} labels")
    ):
        load_dataset("cifar100?labels=coarse", tmp_path)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("a\nb\nc\n", "names 3 classes, but CIFAR-10 has 10"), (b"\xff\xfe" * 10, "is not text")],
)
def test_a_label_names_file_that_is_not_ten_names_is_refused(tmp_path, text, fragment):
    write_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-bin" / "batches.meta.txt"
    meta.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError, match=fragment) as excinfo:
        load_dataset("cifar10", tmp_path)
    assert "batches.meta.txt" in str(excinfo.value)


def test_a_missing_binary_file_is_named_with_the_folder_and_the_fixes(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", tmp_path)
    message = str(excinfo.value)
    assert f"CIFAR-10 file test_batch.bin not found in {tmp_path / 'cifar-10-batches-bin'}" in message
    assert "data_batch_1.bin to data_batch_5.bin, test_batch.bin and batches.meta.txt" in message
    assert "--data-dir" in message and "--data 'cifar10?download=true'" in message


def test_cifar100_needs_only_the_names_file_of_its_labels(tmp_path):
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-binary" / "fine_label_names.txt").unlink()
    assert len(load_dataset("cifar100?labels=coarse", tmp_path).spec["label_names"]) == 20
    with pytest.raises(DataError, match=re.escape("fine_label_names.txt not found")):
        load_dataset("cifar100", tmp_path)


@pytest.mark.parametrize(
    ("source", "pickled", "folder", "archive"),
    [
        ("cifar10", "cifar-10-batches-py", "cifar-10-batches-bin/", "cifar-10-binary.tar.gz"),
        ("cifar100", "cifar-100-python", "cifar-100-binary/", "cifar-100-binary.tar.gz"),
    ],
)
def test_only_the_pickled_version_present_names_the_binary_one_to_get(
    tmp_path, source, pickled, folder, archive
):
    (tmp_path / pickled).mkdir()
    (tmp_path / pickled / "data_batch_1").write_bytes(b"\x80\x04not read")
    with pytest.raises(DataError) as excinfo:
        load_dataset(source, tmp_path)
    message = str(excinfo.value)
    assert f"{pickled}/" in message and "pickled" in message and "never reads" in message
    assert archive in message and folder in message
    assert "train.bin" in message if source == "cifar100" else "test_batch.bin" in message
    assert "\n" not in message
