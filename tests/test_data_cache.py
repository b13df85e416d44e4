"""The prepared-dataset cache: a second load skips decoding, and changes to the sources are noticed."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from aecore.data.embedded import EmbeddedMNIST
from aecore.sources import load_dataset


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AECORE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("AECORE_NO_DATA_CACHE", raising=False)
    return tmp_path / "cache" / "datasets"


def _same(a, b):
    for split in ("train", "test"):
        x, y = getattr(a, split), getattr(b, split)
        assert torch.equal(x.x, y.x) and x.x.dtype == y.x.dtype
        assert torch.equal(x.y, y.y)
        assert x.normalisation == y.normalisation
    assert a.spec == b.spec and a.name == b.name


def test_second_load_comes_from_the_cache_without_decoding(cache, monkeypatch):
    first = load_dataset("embedded")
    assert len(list(cache.glob("embedded-*/dataset.json"))) == 1

    def no_decoding(self, location, *, data_dir, normalisation):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(EmbeddedMNIST, "load", no_decoding)
    _same(first, load_dataset("embedded"))


def test_a_changed_source_file_is_prepared_again(cache, tmp_path):
    table = tmp_path / "t.npy"
    np.save(table, np.arange(40, dtype=np.float64).reshape(10, 4))
    first = load_dataset(f"npy:{table}")
    time.sleep(0.01)
    np.save(table, np.arange(40, dtype=np.float64).reshape(10, 4) * 2)
    os.utime(table, ns=(time.time_ns(), time.time_ns()))
    second = load_dataset(f"npy:{table}")
    assert len(list(cache.glob("*/dataset.json"))) == 2
    assert (
        not torch.equal(first.train.x, second.train.x)
        or first.train.normalisation != second.train.normalisation
    )


@pytest.mark.parametrize(
    "damage",
    [
        lambda entry: (entry / "train.x.safetensors").write_bytes(b"not a safetensors file"),
        lambda entry: (entry / "train.x.safetensors").unlink(),
        lambda entry: (entry / "dataset.json").write_text("{"),
        lambda entry: (entry / "dataset.json").write_text(
            '{"format": 2, "name": "e", "spec": {}, "splits": 3}'
        ),
        lambda entry: (entry / "dataset.json").write_text(
            (entry / "dataset.json").read_text().replace("train.x.safetensors", "../../../etc/passwd")
        ),
        lambda entry: (entry / "test.y.safetensors").write_bytes(
            (entry / "train.x.safetensors").read_bytes()  # a valid tensor file, of the wrong length
        ),
    ],
    ids=["garbage", "missing", "bad-json", "bad-splits", "path-escape", "wrong-rows"],
)
def test_a_damaged_cache_entry_is_rebuilt(cache, damage, monkeypatch):
    # The reference is read without the cache: damaging a file in place would pull the pages from under
    # a map of it (that is why aecore replaces entries by renaming, never by rewriting files in place).
    monkeypatch.setenv("AECORE_NO_DATA_CACHE", "1")
    first = load_dataset("embedded")
    monkeypatch.delenv("AECORE_NO_DATA_CACHE")
    load_dataset("embedded")
    (entry,) = (p.parent for p in cache.glob("embedded-*/dataset.json"))
    damage(entry)
    _same(first, load_dataset("embedded"))
    assert (entry / "train.x.safetensors").stat().st_size > 1000  # prepared again


def test_the_cache_can_be_turned_off(cache, monkeypatch):
    monkeypatch.setenv("AECORE_NO_DATA_CACHE", "1")
    load_dataset("embedded")
    assert not cache.exists()


def test_mnist_from_cache_matches_the_decoded_files(cache, real_mnist_dir):
    first = load_dataset("mnist", real_mnist_dir)
    second = load_dataset("mnist", real_mnist_dir)
    _same(first, second)
    assert first.train.x.dtype == torch.uint8 and len(first.train) == 60_000


def test_the_key_covers_name_options_and_every_files_place_size_and_time(tmp_path):
    from aecore.cache import cache_key

    folder = tmp_path / "data"
    folder.mkdir()
    files = []
    for i in range(3):
        path = folder / f"{i}.bin"
        path.write_bytes(b"x" * (i + 1))
        files.append(path)
    key = cache_key("csv:a", {"k": 1}, files)
    assert key == cache_key("csv:a", {"k": 1}, list(files))  # stable
    assert key != cache_key("csv:b", {"k": 1}, files)  # the dataset's name counts
    assert key != cache_key("csv:a", {"k": 2}, files)
    assert key != cache_key("csv:a", {"k": 1}, files[:2])
    # the same files reached through a linked folder or a relative path give the same key
    (tmp_path / "link").symlink_to(folder)
    assert cache_key("csv:a", {"k": 1}, [tmp_path / "link" / p.name for p in files]) == key
    cwd = os.getcwd()
    try:
        os.chdir(folder)
        assert cache_key("csv:a", {"k": 1}, [type(files[0])(p.name) for p in files]) == key
    finally:
        os.chdir(cwd)
    files[1].write_bytes(b"changed!")  # another size
    assert cache_key("csv:a", {"k": 1}, files) != key
    stat = files[1].stat()
    before = cache_key("csv:a", {"k": 1}, files)
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same size, a later time
    assert cache_key("csv:a", {"k": 1}, files) != before
    files[2].unlink()
    assert cache_key("csv:a", {"k": 1}, files) is None  # a missing file: no key
