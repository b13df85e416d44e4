"""Prepared datasets on disk: mapped tensor files, streaming preparation, extras, views and block order."""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import aecore
from aecore import registry
from aecore.data import UINT8_IMAGES, Dataset, TensorData, TensorStore
from aecore.data.store import create_mapped, open_mapped
from aecore.data.tensors import _rank_of_position
from aecore.errors import DataError
from aecore.sources import load_dataset


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AECORE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("AECORE_NO_DATA_CACHE", raising=False)
    return tmp_path / "cache" / "datasets"


def _rss_anon() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.int64, torch.bfloat16, torch.bool])
def test_a_mapped_tensor_file_is_a_safetensors_file(tmp_path, dtype):
    path = tmp_path / "t.safetensors"
    written = create_mapped(path, (5, 3, 2), dtype)
    written.copy_(torch.arange(30).view(5, 3, 2).to(dtype))
    del written
    assert torch.equal(load_file(path)["t"], torch.arange(30).view(5, 3, 2).to(dtype))
    back = open_mapped(path)
    assert back.dtype == dtype and torch.equal(back, torch.arange(30).view(5, 3, 2).to(dtype))
    back.zero_()  # the map is private: the file is not changed by writing to the tensor
    assert torch.equal(open_mapped(path), torch.arange(30).view(5, 3, 2).to(dtype))


def test_an_empty_tensor_file_round_trips(tmp_path):
    path = tmp_path / "e.safetensors"
    create_mapped(path, (0, 4), torch.uint8)
    assert open_mapped(path).shape == (0, 4)


@pytest.mark.parametrize("mapped", [True, False])
def test_a_discarded_key_loses_its_file_and_can_be_asked_for_again(tmp_path, mapped):
    store = TensorStore(tmp_path if mapped else None, show_progress=False)
    first = store.empty("train.x", (4, 1, 2, 2))
    first.fill_(7)
    with pytest.raises(ValueError, match="already holds"):
        store.empty("train.x", (4, 3, 2, 2))
    store.discard("train.x")
    assert not (tmp_path / "train.x.safetensors").exists() and id(first) not in store.files
    again = store.empty("train.x", (4, 3, 2, 2))
    again.fill_(9)
    assert again.shape == (4, 3, 2, 2)
    if mapped:  # the new file is the new tensor's, whatever the old map still holds
        assert store.files[id(again)] == "train.x.safetensors"
        assert torch.equal(
            open_mapped(tmp_path / "train.x.safetensors"), torch.full((4, 3, 2, 2), 9, dtype=torch.uint8)
        )
    with pytest.raises(KeyError, match=r"holds no 'test\.x'"):
        store.discard("test.x")


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 7, b"\xff" * 8 + b"{}", b"\x02\x00\x00\x00\x00\x00\x00\x00{}"],
    ids=["empty", "short", "huge-header", "no-tensor"],
)
def test_a_hostile_tensor_file_is_a_data_error(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(DataError):
        open_mapped(path)


def test_a_file_with_other_tensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "two.safetensors"
    save_file({"a": torch.zeros(2), "b": torch.zeros(3)}, path)
    with pytest.raises(DataError):
        open_mapped(path)


@dataclass(frozen=True)
class _NoOptions:
    """No options."""


class _Streaming:
    """A test source that fills the store in chunks; can fail halfway, and counts its loads."""

    Config = _NoOptions
    loads = 0
    fail_after: int | None = None
    rows = 600

    def __init__(self, config: _NoOptions) -> None:
        self.config = config

    def files(self, location, *, data_dir):
        return [Path(__file__)]

    def load(self, location, *, data_dir, normalisation, store=None):
        type(self).loads += 1
        store = store or TensorStore(None)
        x = store.empty("all.x", (self.rows, 1, 4, 4))
        y = store.empty("all.y", (self.rows,), torch.int64)
        mask = store.empty("all.extras.mask", (self.rows, 1, 4, 4))
        advance = store.progress(self.rows, "filling")
        for start in range(0, self.rows, 100):  # a chunk at a time, as a decoder would
            if self.fail_after is not None and start >= self.fail_after:
                raise KeyboardInterrupt
            rows = torch.arange(start, start + 100)
            x[start : start + 100] = (rows % 251).view(-1, 1, 1, 1).to(torch.uint8)
            y[start : start + 100] = rows % 10
            mask[start : start + 100] = (rows % 2).view(-1, 1, 1, 1).to(torch.uint8)
            advance(100)
        whole = TensorData(x, y, UINT8_IMAGES, extras={"mask": mask})
        test = torch.arange(self.rows) % 5 == 0
        return Dataset(
            "streaming", whole.subset(~test), whole.subset(test), {"label_names": list("abcdefghij")}
        )


@pytest.fixture
def streaming(cache):
    _Streaming.loads, _Streaming.fail_after = 0, None
    with registry.registered("dataset", "streaming", _Streaming):
        yield _Streaming


def test_a_streamed_dataset_is_cached_as_its_files_and_mapped_back(streaming, cache):
    first = load_dataset("streaming")
    (entry,) = (p.parent for p in cache.glob("streaming-*/dataset.json"))
    # The store's files are the entry's files: views of one tensor are stored once, with their row numbers.
    assert sorted(p.name for p in entry.iterdir()) == [
        "all.extras.mask.safetensors",
        "all.x.safetensors",
        "all.y.safetensors",
        "dataset.json",
        "test.rows.safetensors",
        "train.rows.safetensors",
    ]
    second = load_dataset("streaming")
    assert streaming.loads == 1
    for split in ("train", "test"):
        a, b = getattr(first, split), getattr(second, split)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert torch.equal(a.extras["mask"], b.extras["mask"])
        assert torch.equal(a.extra_batch("mask", [0, 3]), a.extras["mask"][[0, 3]])
    assert len(second.test) == 120 and torch.equal(second.test.y, (torch.arange(0, 600, 5) % 10))
    assert second.spec["label_names"][0] == "a"


def test_an_interrupted_preparation_leaves_nothing_that_looks_complete(streaming, cache):
    streaming.fail_after = 300
    with pytest.raises(KeyboardInterrupt):
        load_dataset("streaming")
    assert not list(cache.glob("*/dataset.json"))
    assert not [p for p in cache.iterdir() if p.name.startswith(".prep-")]  # its scratch folder is gone
    streaming.fail_after = None
    load_dataset("streaming")
    assert streaming.loads == 2 and len(list(cache.glob("streaming-*/dataset.json"))) == 1


def test_the_scratch_folder_of_a_killed_preparation_is_removed(streaming, cache):
    cache.mkdir(parents=True)
    dead = cache / ".prep-999999999-abcd"  # no such process
    dead.mkdir()
    (dead / "all.x.safetensors").write_bytes(b"half")
    alive = cache / f".prep-{os.getppid()}-abcd"  # a preparation that is still running
    alive.mkdir()
    load_dataset("streaming")
    assert not dead.exists() and alive.exists()


def test_with_the_cache_off_the_store_is_memory(streaming, cache, monkeypatch):
    monkeypatch.setenv("AECORE_NO_DATA_CACHE", "1")
    data = load_dataset("streaming")
    assert len(data.train) == 480 and not cache.exists()


def test_a_full_cache_disk_prepares_in_memory(streaming, cache, monkeypatch):
    import aecore.cache
    import aecore.data.store

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(aecore.data.store, "create_mapped", full)
    monkeypatch.setattr(aecore.cache, "create_mapped", full)
    data = load_dataset("streaming")
    assert len(data.train) == 480 and not list(cache.glob("*/dataset.json"))


@pytest.mark.skipif(_rss_anon() is None, reason="needs /proc/self/status")
def test_a_cached_dataset_is_mapped_not_copied_into_memory(streaming, cache):
    streaming.rows = 100_000  # 1.6 MB of pixels: too small to tell; make the rows wide instead
    try:

        class Wide(_Streaming):
            rows = 200

            def load(self, location, *, data_dir, normalisation, store=None):
                x = store.empty("train.x", (self.rows, 3, 256, 256))  # 39 MB
                for i in range(self.rows):
                    x[i] = i % 256
                t = store.empty("test.x", (10, 3, 256, 256))
                t.zero_()
                return Dataset("wide", TensorData(x, None, UINT8_IMAGES), TensorData(t, None, UINT8_IMAGES))

        with registry.registered("dataset", "wide", Wide):
            load_dataset("wide")
            before = _rss_anon()
            data = load_dataset("wide")
            total = int(data.train.batch(slice(0, 200)).sum() > 0)  # touch every page
            grown = _rss_anon() - before
        assert total == 1
        assert grown < 39_000_000 + 20_000_000  # the float batch (157 MB) is freed; the pixels never copied
        assert data.train._x.untyped_storage().nbytes() >= 200 * 3 * 256 * 256
    finally:
        streaming.rows = 600


def test_a_legacy_source_without_store_is_still_cached(cache):
    load_dataset("embedded")
    (entry,) = (p.parent for p in cache.glob("embedded-*/dataset.json"))
    assert (entry / "train.x.safetensors").exists() and (entry / "test.y.safetensors").exists()


def test_a_source_returning_something_else_is_one_line(cache):
    class Odd(_Streaming):
        def load(self, location, *, data_dir, normalisation):
            return {"train": 1}

    with registry.registered("dataset", "odd", Odd), pytest.raises(DataError, match="odd"):
        load_dataset("odd")


# --- the order of a shuffled epoch -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "batch", "world"), [(10, 4, 2), (1000, 128, 3), (7, 7, 7), (5, 128, 2), (1001, 10, 4)]
)
def test_rank_of_position_matches_how_batches_are_split(n, batch, world):
    reference = torch.empty(n, dtype=torch.long)
    for start in range(0, n, batch):
        size = min(batch, n - start)
        for rank in range(world):
            reference[start + rank * size // world : start + (rank + 1) * size // world] = rank
    assert torch.equal(_rank_of_position(n, batch, world), reference)


def test_block_order_is_a_permutation_that_keeps_blocks_together():
    data = TensorData(torch.zeros(1000, 1, dtype=torch.uint8)).in_blocks(100)
    order = data.order(torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(1000))
    blocks = (order // 100).view(10, 100)
    assert all(len(set(row.tolist())) == 1 for row in blocks)  # one block at a time
    assert blocks[:, 0].tolist() != list(range(10))  # in a shuffled block order
    assert order[:100].tolist() != sorted(order[:100].tolist())  # and shuffled within a block
    full = TensorData(torch.zeros(1000, 1, dtype=torch.uint8)).order(torch.Generator().manual_seed(0))
    assert len(set((full[:100] // 100).tolist())) > 5


def test_block_order_under_ranks_reads_each_ranks_own_shard_and_covers_everything():
    data = TensorData(torch.arange(1000).view(1000, 1)).in_blocks(50)
    world, batch = 4, 64
    seen = []
    shards = []
    for rank in range(world):
        got = torch.cat(
            list(
                data.batches(
                    batch, generator=torch.Generator().manual_seed(3), shuffle=True, part=(rank, world)
                )
            )
        )
        seen.append(got.flatten().long())
        shards.append((int(got.min()), int(got.max())))
    assert sorted(torch.cat(seen).tolist()) == list(range(1000))
    for (_, hi), (next_lo, _) in itertools.pairwise(shards):
        assert hi < next_lo  # each rank's rows are one contiguous share, disjoint from the others'


def test_views_keep_the_block_order_and_their_extras():
    data = TensorData(torch.arange(20).view(20, 1), extras={"m": torch.arange(20) * 10}).in_blocks(5)
    view = data.subset(torch.arange(10, 20))
    assert view.block_rows == 5 and view.extra_names == ("m",)
    assert torch.equal(view.extras["m"], torch.arange(10, 20) * 10)
    order = view.order(torch.Generator().manual_seed(1))
    assert sorted(order.tolist()) == list(range(10))


@pytest.mark.parametrize(
    ("extras", "problem"),
    [
        ({"m": torch.zeros(3)}, "rows"),
        ({"not a name": torch.zeros(4)}, "identifier"),
        ({"m": torch.tensor(1.0)}, "rows"),
    ],
)
def test_misshapen_extras_are_refused(extras, problem):
    with pytest.raises(ValueError, match=problem):
        TensorData(torch.zeros(4, 2), extras=extras)


# --- the order a run uses ----------------------------------------------------------------------------


def test_auto_order_is_block_only_for_data_beyond_free_memory(monkeypatch):
    import aecore.training.run as run

    data = TensorData(torch.zeros(1000, 1, 64, 64, dtype=torch.uint8))  # 4 MB
    monkeypatch.setattr(run, "available_memory", lambda: 1 << 30)
    assert run.choose_order(data, "auto")[1] == "full"
    monkeypatch.setattr(run, "available_memory", lambda: 4 << 20)
    blocked, order = run.choose_order(data, "auto")
    assert order == "block" and blocked.block_rows == run.BLOCK_BYTES // 4096
    assert run.choose_order(data, "full")[0].block_rows is None
    assert run.choose_order(data, "block")[1] == "block"


def test_a_block_shuffled_run_trains_and_records_its_order(tmp_path, tiny_data):
    result = aecore.train(
        encoder="mlp",
        data=tiny_data,
        shuffle="block",
        out=str(tmp_path / "run"),
        params={"trainer": {"epochs": 1}},
        progress=False,
    )
    assert aecore.load(result.run_dir).metadata["training"]["shuffle"] == "block"
    assert math.isfinite(result.metrics["test_mse_per_pixel"])


def test_skipped_files_are_listed_in_the_run_directory(tmp_path, tiny_data):
    tiny_data.spec = {**tiny_data.spec, "skipped": ["cats/broken.png", "dogs/empty.jpg"]}
    result = aecore.train(
        encoder="mlp",
        data=tiny_data,
        out=str(tmp_path / "run"),
        params={"trainer": {"epochs": 1}},
        progress=False,
    )
    assert (result.run_dir / "skipped-files.txt").read_text() == "cats/broken.png\ndogs/empty.jpg\n"


def test_the_kit_checks_a_streaming_source_both_ways():
    from aecore.testing import check_dataset

    data = check_dataset(_Streaming)
    assert data.train.extras["mask"].shape == (480, 1, 4, 4)

    class Differs(_Streaming):
        def load(self, location, *, data_dir, normalisation, store=None):
            data = super().load(location, data_dir=data_dir, normalisation=normalisation, store=store)
            if store is not None:
                data.train.storage["x"][0] += 1  # the store's copy differs from the in-memory one
            return data

    with pytest.raises(AssertionError, match="TensorStore"):
        check_dataset(Differs)
