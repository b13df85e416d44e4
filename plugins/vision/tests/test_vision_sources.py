"""What every vision source shares: downloads only when asked, nothing unpickled, the store, the CLI."""

from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner
from vision_helpers import (
    hostile_pickle,
    images,
    one_line_error,
    write_cifar10,
    write_cifar100,
    write_emnist,
    write_mnist_like,
    write_stl10,
    write_svhn,
)

import aecore
from aecore import registry
from aecore.cli import app
from aecore.config import config_from_dict
from aecore.errors import DataError
from aecore.sources import load_dataset, parse_data
from aecore.testing import check_dataset
from aecore_vision import CIFAR10, CIFAR100, EMNIST, KMNIST, MNIST, STL10, SVHN, FashionMNIST, common
from aecore_vision.common import Archive, Torchvision


def _idx(folder):
    def write(root: Path) -> None:
        x = images(3, 1, 28, seed=0)
        write_mnist_like(root, folder, x[:2], [1, 2], x[2:], [3])

    return write


def _emnist(root: Path) -> None:
    x = images(3, 1, 28, seed=0)
    write_emnist(root, "letters", x[:2], [1, 2], x[2:], [3])


_URL = "https://www.cs.toronto.edu/~kriz/"
#: (--data text, its class, a writer of its small sample, the folder its files are in, how it downloads)
SOURCES = [
    ("mnist", MNIST, _idx("MNIST"), "MNIST/raw/", Torchvision("MNIST", ({"train": True},))),
    (
        "fashion-mnist",
        FashionMNIST,
        _idx("FashionMNIST"),
        "FashionMNIST/raw/",
        Torchvision("FashionMNIST", ({"train": True},)),
    ),
    ("kmnist", KMNIST, _idx("KMNIST"), "KMNIST/raw/", Torchvision("KMNIST", ({"train": True},))),
    (
        "emnist?split=letters",
        EMNIST,
        _emnist,
        "EMNIST/raw/",
        Torchvision("EMNIST", ({"split": "letters", "train": True},)),
    ),
    (
        "cifar10",
        CIFAR10,
        write_cifar10,
        "cifar-10-batches-bin/",
        Archive(_URL + "cifar-10-binary.tar.gz", CIFAR10.md5),
    ),
    (
        "cifar100",
        CIFAR100,
        write_cifar100,
        "cifar-100-binary/",
        Archive(_URL + "cifar-100-binary.tar.gz", CIFAR100.md5),
    ),
    (
        "svhn",
        SVHN,
        write_svhn,
        "train_32x32.mat",
        Torchvision("SVHN", ({"split": "train"}, {"split": "test"})),
    ),
    ("stl10", STL10, write_stl10, "stl10_binary/", Torchvision("STL10", ({"split": "train"},))),
]
IDS = [text.partition("?")[0] for text, *_ in SOURCES]


@pytest.fixture
def downloads(monkeypatch):
    """Replace the one download function: record each call instead of going online."""
    calls = []
    monkeypatch.setattr(common, "download", lambda title, root, how: calls.append((title, root, how)))
    return calls


@pytest.mark.parametrize(("text", "cls", "write", "folder", "how"), SOURCES, ids=IDS)
def test_each_source_is_published_under_its_name(text, cls, write, folder, how):
    assert registry.get("dataset", text.partition("?")[0]) is cls


@pytest.mark.parametrize(("text", "cls", "write", "folder", "how"), SOURCES, ids=IDS)
def test_each_source_conforms(tmp_path, text, cls, write, folder, how):
    write(tmp_path)
    dataset = check_dataset(cls, params=parse_data(text)[2], data_dir=tmp_path)
    assert dataset.train.x.dtype == torch.uint8 and dataset.train.y.dtype == torch.int64
    assert dataset.train.shape[0] in (1, 3)


@pytest.mark.parametrize(("text", "cls", "write", "folder", "how"), SOURCES, ids=IDS)
def test_missing_files_download_nothing_and_name_the_folder_and_both_fixes(
    tmp_path, downloads, text, cls, write, folder, how
):
    with pytest.raises(DataError) as excinfo:
        load_dataset(text, tmp_path)
    message = str(excinfo.value)
    assert folder in message and "--data-dir" in message and "download=true" in message
    assert "\n" not in message
    assert downloads == []


@pytest.mark.parametrize(("text", "cls", "write", "folder", "how"), SOURCES, ids=IDS)
def test_a_missing_data_dir_is_named_and_nothing_is_downloaded(
    tmp_path, downloads, text, cls, write, folder, how
):
    with pytest.raises(DataError, match="does not exist; point it at a folder holding") as excinfo:
        load_dataset(text, tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(excinfo.value) and folder in str(excinfo.value)
    assert downloads == []


@pytest.mark.parametrize(("text", "cls", "write", "folder", "how"), SOURCES, ids=IDS)
def test_download_true_fetches_once_what_is_missing_then_reads_it(
    tmp_path, monkeypatch, text, cls, write, folder, how
):
    calls = []

    def fake_download(title, root, fetch):
        calls.append((title, root, fetch))
        write(root)  # what a real download leaves behind

    monkeypatch.setattr(common, "download", fake_download)
    asked = f"{text}{'&' if '?' in text else '?'}download=true"
    dataset = load_dataset(asked, tmp_path / "new")  # a --data-dir that does not exist yet is made
    assert len(dataset.train) > 0 and len(dataset.test) > 0
    assert calls == [(calls[0][0], tmp_path / "new", how)]
    load_dataset(asked, tmp_path / "new")  # the files are there now: no second download
    assert len(calls) == 1


def test_cifar_downloads_the_binary_archive_not_the_pickled_one(downloads, tmp_path):
    for text in ("cifar10?download=true", "cifar100?download=true"):
        with pytest.raises(DataError):
            load_dataset(text, tmp_path)
    urls = [how.url for _, _, how in downloads]
    assert urls == [
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    ]
    assert all(len(how.md5) == 32 for _, _, how in downloads)


def test_without_data_dir_the_root_is_aecore_data_dir(tmp_path, monkeypatch, downloads):
    monkeypatch.setenv("AECORE_DATA_DIR", str(tmp_path / "root"))
    with pytest.raises(DataError, match=f"not found in {tmp_path / 'root' / 'stl10_binary'}"):
        load_dataset("stl10")
    assert downloads == []
    with pytest.raises(DataError):
        load_dataset("stl10?download=true")
    assert [(title, root) for title, root, _ in downloads] == [("STL-10", tmp_path / "root")]
    write_cifar10(tmp_path / "root")
    assert load_dataset("cifar10").spec["data_dir"] == str((tmp_path / "root").resolve())


def test_offline_archive_download_is_one_line(tmp_path, monkeypatch):
    from torchvision.datasets import utils

    seen = []

    def offline(url, download_root, **kwargs):
        seen.append((url, download_root, kwargs.get("md5")))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(utils, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10?download=true", tmp_path)
    message = str(excinfo.value)
    assert message.startswith(f"could not download CIFAR-10 to {tmp_path} (")
    assert "go online, or pass --data-dir with a local copy" in message and "\n" not in message
    assert seen == [("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", str(tmp_path), CIFAR10.md5)]


def test_offline_torchvision_download_is_one_line(tmp_path, monkeypatch):
    from torchvision import datasets

    seen = []

    def offline(root, *, download, split):
        seen.append((root, download, split))
        raise OSError("Network is unreachable\nsecond line")

    monkeypatch.setattr(datasets, "SVHN", offline)
    with pytest.raises(DataError, match=r"^could not download SVHN to .*go online") as excinfo:
        load_dataset("svhn?download=true", tmp_path)
    assert "\n" not in str(excinfo.value)
    assert seen == [(str(tmp_path), True, "train")]  # it stopped at the first failure


# -- nothing is ever unpickled ----------------------------------------------------------------


def test_the_hostile_payload_does_run_code_when_unpickled(tmp_path):
    """So the tests below, where it must not run, can fail."""
    marker = tmp_path / "ran"
    pickle.loads(hostile_pickle(marker))
    assert marker.exists()


def _pickled_cifar_only(root: Path, payload: bytes) -> str:
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "test_batch", "batches.meta"):
        (folder / name).write_bytes(payload)
    return "cifar10"


def _replace(text: str, write, relative: str):
    def plant(root: Path, payload: bytes) -> str:
        write(root)
        (root / relative).write_bytes(payload)
        return text

    return plant


@pytest.mark.parametrize(
    "plant",
    [
        _pickled_cifar_only,
        _replace("cifar10", write_cifar10, "cifar-10-batches-bin/data_batch_1.bin"),
        _replace("cifar10", write_cifar10, "cifar-10-batches-bin/batches.meta.txt"),
        _replace("cifar100", write_cifar100, "cifar-100-binary/train.bin"),
        _replace("svhn", write_svhn, "train_32x32.mat"),
        _replace("stl10", write_stl10, "stl10_binary/train_X.bin"),
        _replace("kmnist", _idx("KMNIST"), "KMNIST/raw/train-images-idx3-ubyte"),
    ],
    ids=[
        "cifar10-python",
        "cifar10-bin",
        "cifar10-meta",
        "cifar100-bin",
        "svhn-mat",
        "stl10-bin",
        "kmnist-idx",
    ],
)
def test_a_pickle_where_data_should_be_is_refused_and_never_run(tmp_path, plant):
    marker = tmp_path / "ran"
    root = tmp_path / "data"
    root.mkdir()
    text = plant(root, hostile_pickle(marker))
    with pytest.raises(DataError) as excinfo:
        load_dataset(text, root)
    assert "\n" not in str(excinfo.value)
    assert not marker.exists()


@pytest.mark.parametrize(("text", "folder"), [("mnist", "MNIST"), ("emnist?split=digits", "EMNIST")])
def test_no_download_where_torchvision_would_unpickle_its_old_pt_files(tmp_path, downloads, text, folder):
    processed = tmp_path / folder / "processed"
    processed.mkdir(parents=True)
    marker = tmp_path / "ran"
    for name in ("training.pt", "test.pt", "training_digits.pt", "test_digits.pt"):
        (processed / name).write_bytes(hostile_pickle(marker))
    with pytest.raises(DataError, match=r"old \.pt files, which its download would unpickle") as excinfo:
        load_dataset(f"{text}{'&' if '?' in text else '?'}download=true", tmp_path)
    assert str(processed) in str(excinfo.value)
    assert downloads == [] and not marker.exists()


# -- the core's tensor store ---------------------------------------------------------------------


class FakeStore:
    """What aecore.data.TensorStore offers a source: empty(key, shape, dtype) and progress(total, text)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.advanced: dict[str, int] = {}

    def empty(self, key, shape, dtype):
        assert key not in self.tensors, key
        self.tensors[key] = torch.full(
            tuple(shape), 77, dtype=dtype
        )  # not zeros: every value must be written
        return self.tensors[key]

    def progress(self, total, description):
        self.advanced[description] = 0

        def advance(n):
            self.advanced[description] += n

        return advance


@pytest.mark.parametrize(("text", "cls", "write", "folder", "how"), SOURCES, ids=IDS)
def test_a_source_fills_the_store_and_returns_its_tensors(tmp_path, text, cls, write, folder, how):
    write(tmp_path)
    expected = load_dataset(text, tmp_path)
    _, _, options = parse_data(text)
    config = config_from_dict(cls.Config, options)
    store = FakeStore()
    dataset = cls(config).load(None, data_dir=tmp_path, normalisation=None, store=store)
    assert set(store.tensors) == {"train.x", "train.y", "test.x", "test.y"}
    for split in ("train", "test"):
        data = getattr(dataset, split)
        assert data.x.data_ptr() == store.tensors[f"{split}.x"].data_ptr()
        assert data.y.data_ptr() == store.tensors[f"{split}.y"].data_ptr()
        assert torch.equal(data.x, getattr(expected, split).x) and torch.equal(
            data.y, getattr(expected, split).y
        )
    for description, count in store.advanced.items():  # where a source reports progress, it adds up
        split = "train" if "train" in description else "test"
        assert count == len(getattr(dataset, split)), description


# -- through the CLI ---------------------------------------------------------------------------------


def test_train_and_eval_on_cifar10_through_the_cli(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_cifar10(data)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    small = ["--set", "encoder.hidden=8", "--latent-dim", "2", "--batch-size", "4", "--out", "run", "-q"]
    result = runner.invoke(
        app,
        ["train", "--data", "cifar10", "--data-dir", str(data), "--encoder", "mlp", "--epochs", "1", *small],
    )
    assert result.exit_code == 0, result.stderr
    trained = [line for line in result.stdout.splitlines() if line.startswith("test: ")]
    assert len(trained) == 1
    meta = aecore.read_metadata(tmp_path / "run")
    assert meta["data"]["name"] == "cifar10" and meta["data"]["data_dir"] == str(data.resolve())
    assert meta["data"]["label_names"][0] == "airplane"
    assert meta["model"]["input_shape"] == [3, 32, 32]

    evaluated = runner.invoke(app, ["eval", "run"])  # finds the data again from the recorded data_dir
    assert evaluated.exit_code == 0, evaluated.stderr
    assert "on cifar10 test (5 images)" in evaluated.stdout
    assert [line for line in evaluated.stdout.splitlines() if line.startswith("test: ")] == trained


def test_a_missing_dataset_through_the_cli_is_one_line_and_no_run(tmp_path, monkeypatch, downloads):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["train", "-e", "mlp", "--data", "svhn", "--data-dir", str(tmp_path), "-q"]
    )
    one_line_error(result, "SVHN file train_32x32.mat not found", "--data 'svhn?download=true'")
    assert not (tmp_path / "runs").exists() and downloads == []


def test_download_is_not_part_of_the_recorded_name(tmp_path, monkeypatch):
    """``?download=true`` says how to get the files, not what they are: a reload names the plain source."""
    from aecore.sources import _canonical
    from aecore_vision import CIFAR10

    config = CIFAR10.Config(download=True)
    assert _canonical("cifar10", None, config) == "cifar10"
