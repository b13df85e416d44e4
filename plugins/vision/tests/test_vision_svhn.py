"""SVHN from its MATLAB v5 files: X is H×W×C×N, y is 1..10 with 10 for the digit 0."""

from __future__ import annotations

import re
import struct
import sys

import numpy as np
import pytest
import scipy.io
import torch
from vision_helpers import images, write_svhn, write_svhn_mat

from aecore.errors import DataError
from aecore.sources import load_dataset


def test_svhn_reads_n_c_h_w_images_and_the_digit_as_label(tmp_path):
    x, _ = write_svhn(tmp_path)
    dataset = load_dataset("svhn", tmp_path)
    assert dataset.name == "svhn"
    assert dataset.train.x.shape == (5, 3, 32, 32) and dataset.train.x.dtype == torch.uint8
    assert torch.equal(dataset.train.x, torch.from_numpy(x[:5]))
    assert torch.equal(dataset.test.x, torch.from_numpy(x[5:8]))
    assert dataset.train.y.dtype == torch.int64
    assert dataset.train.y.tolist() == [0, 1, 2, 3, 4]  # the file says 10 for the first: the digit 0
    assert dataset.test.y.tolist() == [5, 6, 7]
    assert "label_names" not in dataset.spec and dataset.spec["data_dir"] == str(tmp_path.resolve())


def test_x_is_indexed_height_width_channel_image(tmp_path):
    """MATLAB's X[row, col, channel, image] is our x[image, channel, row, col]."""
    x = np.zeros((32, 32, 3, 2), dtype=np.uint8)
    x[2, 7, 1, 1] = 200  # second image, green, row 2, column 7
    for name in ("train_32x32.mat", "test_32x32.mat"):
        scipy.io.savemat(tmp_path / name, {"X": x, "y": np.array([[10.0], [3.0]])})
    train = load_dataset("svhn", tmp_path).train
    assert train.x[1, 1, 2, 7] == 200 and int(train.x.sum()) == 200
    assert train.y.tolist() == [0, 3]


def test_extra_adds_the_extra_images_to_training_only_when_asked(tmp_path):
    x, digits = write_svhn(tmp_path, n_extra=4)
    plain = load_dataset("svhn", tmp_path)
    assert len(plain.train) == 5
    dataset = load_dataset("svhn?extra=true", tmp_path)
    assert dataset.name == "svhn?extra=true"
    assert torch.equal(dataset.train.x, torch.from_numpy(np.concatenate([x[:5], x[8:]])))
    assert dataset.train.y.tolist() == [*digits[:5], *digits[8:]]
    assert len(dataset.test) == 3


def test_extra_without_its_file_names_it(tmp_path):
    write_svhn(tmp_path)
    with pytest.raises(DataError, match=r"SVHN file extra_32x32\.mat not found") as excinfo:
        load_dataset("svhn?extra=true", tmp_path)
    assert "--data 'svhn?extra=true&download=true'" in str(excinfo.value)


def test_compressed_mat_files_are_read_too(tmp_path):
    x = images(3, 3, 32, seed=9)
    write_svhn_mat(tmp_path / "train_32x32.mat", x, np.array([1, 2, 0]), do_compression=True)
    write_svhn_mat(tmp_path / "test_32x32.mat", x[:1], np.array([9]), do_compression=True)
    dataset = load_dataset("svhn", tmp_path)
    assert torch.equal(dataset.train.x, torch.from_numpy(x)) and dataset.train.y.tolist() == [1, 2, 0]


@pytest.mark.parametrize(
    ("variables", "fragment"),
    [
        ({"y": np.ones((2, 1))}, "has no uint8 array X of shape 32×32×3×N"),
        ({"X": np.zeros((32, 32, 1, 2), np.uint8), "y": np.ones((2, 1))}, "has no uint8 array X"),
        ({"X": np.zeros((32, 32, 3, 2), np.float64), "y": np.ones((2, 1))}, "has no uint8 array X"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8)}, "has no array y of 2 numeric labels"),
        (
            {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))},
            "has no array y of 2 numeric labels",
        ),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array(["ab"])}, "has no array y"),
        (
            {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1.0], [11.0]])},
            "holds the label 11; SVHN",
        ),
        (
            {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[0], [1]], np.uint8)},
            "holds the label 0; SVHN",
        ),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1.5], [1.0]])}, "holds the label 1.5"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[np.nan], [1.0]])}, "holds the label nan"),
    ],
)
def test_a_mat_file_without_the_right_x_and_y_is_refused(tmp_path, variables, fragment):
    write_svhn(tmp_path)
    scipy.io.savemat(tmp_path / "test_32x32.mat", variables)
    with pytest.raises(DataError, match=re.escape(fragment)) as excinfo:
        load_dataset("svhn", tmp_path)
    assert "test_32x32.mat" in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_a_header_that_declares_more_images_than_the_file_holds_is_refused_unread(tmp_path, monkeypatch):
    write_svhn(tmp_path)
    path = tmp_path / "train_32x32.mat"
    data = path.read_bytes()
    dims = struct.pack("<4i", 32, 32, 3, 5)
    assert data.count(dims) == 1
    path.write_bytes(data.replace(dims, struct.pack("<4i", 32, 32, 3, 10**7)))
    monkeypatch.setattr(scipy.io, "loadmat", lambda *a, **k: pytest.fail("loadmat ran on a lying header"))
    with pytest.raises(DataError, match="declares 10,000,000 images"):
        load_dataset("svhn", tmp_path)


@pytest.mark.parametrize("keep", [0, 100, 128, 4000])
def test_a_truncated_mat_file_is_refused(tmp_path, keep):
    write_svhn(tmp_path)
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(DataError) as excinfo:
        load_dataset("svhn", tmp_path)
    assert "train_32x32.mat" in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_a_matlab_73_file_is_named_as_such(tmp_path):
    write_svhn(tmp_path)
    header = b"MATLAB 7.3 MAT-file".ljust(116) + bytes(8) + b"\x00\x02IM"
    (tmp_path / "test_32x32.mat").write_bytes(header + b"\x89HDF\r\n\x1a\n" + bytes(512))
    with pytest.raises(DataError, match=r"MATLAB 7\.3 \(HDF5\) file"):
        load_dataset("svhn", tmp_path)


def test_without_scipy_the_error_says_what_to_install(tmp_path, monkeypatch):
    write_svhn(tmp_path)
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # import scipy.io now fails
    with pytest.raises(DataError, match=re.escape("pip install scipy")):
        load_dataset("svhn", tmp_path)
