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
    assert len(list(cache.glob("embedded-*.safetensors"))) == 1

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
    assert len(list(cache.glob("*.safetensors"))) == 2
    assert (
        not torch.equal(first.train.x, second.train.x)
        or first.train.normalisation != second.train.normalisation
    )


def test_a_damaged_cache_file_is_rebuilt(cache):
    first = load_dataset("embedded")
    (path,) = cache.glob("embedded-*.safetensors")
    path.write_bytes(b"not a safetensors file")
    _same(first, load_dataset("embedded"))
    assert path.stat().st_size > 1000  # written again


def test_the_cache_can_be_turned_off(cache, monkeypatch):
    monkeypatch.setenv("AECORE_NO_DATA_CACHE", "1")
    load_dataset("embedded")
    assert not cache.exists()


def test_mnist_from_cache_matches_the_decoded_files(cache, real_mnist_dir):
    first = load_dataset("mnist", real_mnist_dir)
    second = load_dataset("mnist", real_mnist_dir)
    _same(first, second)
    assert first.train.x.dtype == torch.uint8 and len(first.train) == 60_000
