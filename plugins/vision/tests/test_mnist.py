"""The MNIST data source: torchvision's on-disk layout read straight into uint8 tensors."""

from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from aecore.cli import app
from aecore.data import write_idx
from aecore.errors import DataError
from aecore.sources import load_dataset


def _mnist_dir() -> Path:
    env = os.environ.get("AECORE_MNIST_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def real_mnist_dir() -> Path:
    """The real MNIST copy (../shared/data/mnist or $AECORE_MNIST_DIR); skips loudly, fails on CI."""
    path = _mnist_dir()
    if not (path / "MNIST" / "raw").is_dir():
        reason = f"the real MNIST copy is not at {path}; set AECORE_MNIST_DIR to a folder holding MNIST/raw/"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must test the real data path: {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def embedded():
    return load_dataset("embedded")


# -- torchvision MNIST from a local folder ----------------------------------------------------


def test_missing_data_dir_names_the_fix(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", tmp_path / "nowhere")
    message = str(excinfo.value)
    assert "--data-dir" in message and "nowhere" in message
    assert "does not exist" in message
    assert "MNIST/raw/" in message


def test_data_dir_without_mnist_names_the_fix(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", tmp_path)
    message = str(excinfo.value)
    assert "MNIST file train-images-idx3-ubyte not found in" in message and str(tmp_path) in message
    assert "MNIST/raw/ holding train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "--data-dir" in message and "mnist?download=true" in message


def test_without_data_dir_nothing_is_downloaded_unless_asked(tmp_path, monkeypatch):
    from torchvision import datasets

    calls = []
    monkeypatch.setenv("AECORE_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "MNIST", lambda *args, **kwargs: calls.append((args, kwargs)))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist")
    assert f"not found in {tmp_path / 'cache' / 'MNIST' / 'raw'}" in str(excinfo.value)
    assert "?download=true" in str(excinfo.value)
    assert calls == []


def test_failed_download_explains_the_offline_fix(tmp_path, monkeypatch):
    from torchvision import datasets

    def offline(root, train, download):
        assert download is True and root == str(tmp_path / "cache")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setenv("AECORE_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "MNIST", offline)
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist?download=true")
    message = str(excinfo.value)
    assert f"could not download MNIST to {tmp_path / 'cache'}" in message
    assert "pass --data-dir with a local copy" in message and "\n" not in message


def test_missing_data_dir_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["train", "-e", "mlp", "--data", "mnist", "--data-dir", str(tmp_path / "nowhere"), "-q"]
    )
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --data-dir")
    assert "MNIST/raw/" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_real_mnist_copy(real_mnist_dir, embedded):
    dataset = load_dataset("mnist", real_mnist_dir)
    assert dataset.name == "mnist"
    assert len(dataset.train) == 60_000 and len(dataset.test) == 10_000
    assert dataset.train.x.shape == (60_000, 1, 28, 28) and dataset.train.x.dtype == torch.uint8
    assert dataset.test.y.shape == (10_000,) and dataset.test.y.dtype == torch.int64
    assert dataset.train.normalisation == {"kind": "scale", "divisor": 255.0}
    assert dataset.spec == {"name": "mnist", "data_dir": str(real_mnist_dir.resolve())}
    # the embedded subset is exactly the first 10,000 / 2,000 real images
    assert torch.equal(embedded.train.x, dataset.train.x[:10_000])
    assert torch.equal(embedded.train.y, dataset.train.y[:10_000])
    assert torch.equal(embedded.test.x, dataset.test.x[:2_000])
    assert torch.equal(embedded.test.y, dataset.test.y[:2_000])


@pytest.mark.slow
def test_train_and_eval_on_real_mnist_through_the_cli(real_mnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "train",
            "-e",
            "mlp",
            "--set",
            "encoder.hidden=16",
            "--latent-dim",
            "4",
            "--epochs",
            "1",
            "--batch-size",
            "2000",
            "--data",
            "mnist",
            "--data-dir",
            str(real_mnist_dir),
            "--out",
            "real",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.stderr
    trained = [line for line in result.stdout.splitlines() if line.startswith("test: ")]
    assert len(trained) == 1

    import aecore

    meta = aecore.read_metadata(tmp_path / "real")
    assert meta["data"]["name"] == "mnist"
    assert meta["data"]["data_dir"] == str(real_mnist_dir.resolve())

    # eval finds the data again from the recorded data_dir, and reports the same figures
    evaluated = runner.invoke(app, ["eval", "real"])
    assert evaluated.exit_code == 0, evaluated.stderr
    assert "on mnist test (10000 images)" in evaluated.stdout
    assert [line for line in evaluated.stdout.splitlines() if line.startswith("test: ")] == trained


def _write_mnist(root: Path, n_train: int = 6, n_test: int = 4, *, gz: bool = False) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    suffix = ".gz" if gz else ""
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            raw / f"{prefix}-images-idx3-ubyte{suffix}", torch.randint(0, 256, (n, 28, 28), generator=g)
        )
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", torch.randint(0, 10, (n,), generator=g))
    return raw


@pytest.mark.parametrize("gz", [False, True])
def test_reads_torchvisions_layout_plain_or_gzipped(tmp_path, gz):
    _write_mnist(tmp_path, gz=gz)
    dataset = load_dataset("mnist", tmp_path)
    assert dataset.name == "mnist"
    assert dataset.train.x.shape == (6, 1, 28, 28) and dataset.train.x.dtype == torch.uint8
    assert dataset.test.y.shape == (4,) and dataset.test.y.dtype == torch.int64
    assert dataset.spec["data_dir"] == str(tmp_path.resolve())


def test_label_count_that_disagrees_with_the_images_is_named(tmp_path):
    raw = _write_mnist(tmp_path)
    write_idx(raw / "train-labels-idx1-ubyte", torch.zeros(5, dtype=torch.uint8))
    with pytest.raises(DataError, match="5 labels for the 6 images of train-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"", "is empty"),
        (b"\x00\x00\x09\x03" + bytes(12), "bad magic number"),
        (b"\x13" * 64, "bad magic"),
    ],
)
def test_corrupt_image_file_is_one_clear_error(tmp_path, payload, fragment):
    raw = _write_mnist(tmp_path)
    (raw / "t10k-images-idx3-ubyte").write_bytes(payload)
    with pytest.raises(DataError, match=fragment) as excinfo:
        load_dataset("mnist", tmp_path)
    assert "t10k-images-idx3-ubyte" in str(excinfo.value)


def test_truncated_file_is_reported_as_truncated_not_missing(tmp_path):
    raw = _write_mnist(tmp_path)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", tmp_path)


# -- headers that lie, and what MNIST cannot hold (issue 15) -----------------------------------


def _idx_header(*dims: int) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize(
    ("name", "payload", "gz", "fragment"),
    [
        ("t10k-images-idx3-ubyte", _idx_header(2**31, 2**31, 2**31) + bytes(64), False, "is truncated"),
        ("t10k-images-idx3-ubyte", _idx_header(2**20, 28, 28) + bytes(64), True, "more than a"),
        ("t10k-images-idx3-ubyte", _idx_header(4, 28, 28) + bytes(4 * 784 + 10**6), True, "is padded"),
        ("t10k-images-idx3-ubyte", _idx_header(4) + bytes(4), False, "not 28×28 images"),
        ("t10k-labels-idx1-ubyte", _idx_header(4, 2) + bytes(8), False, "not one label per image"),
        ("t10k-labels-idx1-ubyte", _idx_header(4) + bytes([0, 1, 200, 3]), False, "the label 200"),
        ("t10k-images-idx3-ubyte", _idx_header(0, 28, 28), False, "labels for the 0 images"),
    ],
)
def test_an_idx_file_that_lies_about_its_size_or_content_is_one_error(tmp_path, name, payload, gz, fragment):
    raw = _write_mnist(tmp_path, gz=gz)
    path = raw / (name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(payload) if gz else payload)
    with pytest.raises(DataError, match=re.escape(fragment)) as excinfo:
        load_dataset("mnist", tmp_path)
    assert "\n" not in str(excinfo.value)


def test_a_gzip_bomb_is_not_decompressed_beyond_what_its_header_declares(tmp_path, monkeypatch):
    raw = _write_mnist(tmp_path, gz=True)
    bomb = gzip.compress(_idx_header(4, 28, 28) + bytes(200_000_000))  # 200 MB of zeros in ~200 kB
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(bomb)
    sizes = []
    real = gzip.GzipFile.read

    def read(self, size=-1):
        sizes.append(size)
        return real(self, size)

    monkeypatch.setattr(gzip.GzipFile, "read", read)
    with pytest.raises(DataError, match="is padded"):
        load_dataset("mnist", tmp_path)
    assert -1 not in sizes and max(sizes) <= 1 << 20  # read in bounded chunks, never all at once
