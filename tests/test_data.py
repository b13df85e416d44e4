"""Datasets: the embedded MNIST subset, the IDX reader, and a real local MNIST copy."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch
from helpers import require_real_mnist

from aecore.data import Dataset, TensorData
from aecore.data.idx import read_idx, write_idx
from aecore.errors import AecoreError, DataError
from aecore.sources import load_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_missing_real_copy_skips_locally_but_fails_on_ci(tmp_path, monkeypatch):
    monkeypatch.setenv("AECORE_MNIST_DIR", str(tmp_path / "absent"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="absent"):
        require_real_mnist()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must test the real data path"):
        require_real_mnist()
    (tmp_path / "absent" / "MNIST" / "raw").mkdir(parents=True)
    assert require_real_mnist() == tmp_path / "absent"


# -- the embedded subset ----------------------------------------------------------------------


def test_embedded_dataset_shapes_and_types(embedded):
    assert isinstance(embedded, Dataset)
    assert embedded.name == "embedded"
    assert embedded.spec == {"name": "embedded"}
    for split, n in ((embedded.train, 10_000), (embedded.test, 2_000)):
        assert isinstance(split, TensorData)
        assert len(split) == n
        assert split.x.shape == (n, 1, 28, 28)
        assert split.x.dtype == torch.uint8
        assert split.shape == (1, 28, 28)
        assert split.y.shape == (n,) and split.y.dtype == torch.int64
        assert set(split.y.unique().tolist()) == set(range(10))
        assert split.normalisation == {"kind": "scale", "divisor": 255.0}
    # real digits, not blank or constant images
    assert embedded.train.x.max() == 255 and embedded.train.x.min() == 0
    assert 20 < embedded.train.x.float().mean() < 50


def test_default_dataset_is_embedded():
    assert load_dataset().name == "embedded"
    assert load_dataset(None).name == "embedded"


def test_batches_are_floats_in_unit_range(embedded):
    batches = list(embedded.test.batches(512))
    assert [b.shape[0] for b in batches] == [512, 512, 512, 464]
    for b in batches:
        assert b.dtype == torch.float32
        assert b.shape[1:] == (1, 28, 28)
        assert b.min() >= 0.0 and b.max() <= 1.0
    assert batches[0].max() == 1.0
    assert torch.equal(batches[0][0], embedded.test.x[0].float() / 255)
    assert embedded.test.x.dtype == torch.uint8  # the stored data is not converted in place


def test_shuffled_batches_are_a_seeded_permutation(embedded):
    data = embedded.test.subset(torch.arange(300))

    def order(seed):
        return torch.cat(list(data.batches(64, generator=torch.Generator().manual_seed(seed), shuffle=True)))

    a, b, c = order(1), order(1), order(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape[0] == 300
    # same images, different order
    assert torch.equal(a.sum(dim=(1, 2, 3)).sort().values, c.sum(dim=(1, 2, 3)).sort().values)


def test_tensor_data_normalisation_with_mean_and_std():
    x = torch.tensor([[0.0, 2.0], [4.0, 6.0]])
    data = TensorData(x, None, {"kind": "standard", "mean": [2.0, 4.0], "std": [2.0, 2.0]})
    assert torch.equal(data.batch(slice(None)), torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    assert torch.equal(x, torch.tensor([[0.0, 2.0], [4.0, 6.0]]))  # not modified in place
    with pytest.raises(ValueError, match="2 samples but 3 labels"):
        TensorData(x, torch.zeros(3))


def test_embedded_takes_no_data_dir(tmp_path):
    with pytest.raises(DataError, match="takes no --data-dir; use --data mnist"):
        load_dataset("embedded", tmp_path)


def test_unknown_dataset_suggests():
    with pytest.raises(AecoreError) as excinfo:
        load_dataset("mnsit")
    message = str(excinfo.value)
    assert "unknown dataset 'mnsit'" in message
    assert "Did you mean: mnist" in message  # the closest first
    installed = message.partition("Installed datasets: ")[2].partition(" (")[0].split(", ")
    assert {"csv", "embedded", "mnist", "npy"} <= set(installed) and installed == sorted(installed)


# -- the IDX reader ---------------------------------------------------------------------------


def _idx(data: bytes, dims: tuple[int, ...], magic: bytes = b"\x00\x00\x08") -> bytes:
    return magic + bytes([len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + data


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    data = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    path = tmp_path / f"x-idx3-ubyte{suffix}"
    write_idx(path, data)
    back = read_idx(path)
    assert back.dtype == torch.uint8
    assert torch.equal(back, data)
    if suffix:
        assert gzip.decompress(path.read_bytes())[:4] == b"\x00\x00\x08\x03"


def test_idx_reads_a_hand_made_file(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(_idx(bytes([7, 1, 9]), (3,)))
    assert read_idx(path).tolist() == [7, 1, 9]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (_idx(bytes(10), (2, 3, 2)), "truncated: 26 bytes where its header declares 28"),
        (_idx(bytes(14), (2, 3, 2)), "padded"),
        (_idx(bytes(12), (2, 3, 2), magic=b"\x00\x00\x0d"), "bad magic number"),  # float data
        (_idx(bytes(12), (2, 3, 2), magic=b"\x08\x03\x00"), "bad magic number"),
        (b"PK\x03\x04not idx at all", "bad magic number"),
        (b"\x00\x00", "bad magic number"),
        (b"", "is empty"),
    ],
)
def test_idx_rejects_malformed_files(tmp_path, payload, fragment):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=fragment):
        read_idx(path)


def test_idx_header_cut_short(tmp_path):
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")  # says 3 dims, holds half of one
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_idx_truncated_gzip(tmp_path):
    full = gzip.compress(_idx(bytes(range(200)), (200,)))
    path = tmp_path / "cut-idx1-ubyte.gz"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="cannot read"):
        read_idx(path)


def test_idx_not_gzip_despite_the_name(tmp_path):
    path = tmp_path / "plain-idx1-ubyte.gz"
    path.write_bytes(_idx(bytes(3), (3,)))
    with pytest.raises(DataError, match="cannot read"):
        read_idx(path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "nothing-here")


def test_reused_batches_match_fresh_ones_and_share_one_buffer():
    from aecore.data import TensorData
    from aecore.data.tensors import UINT8_IMAGES

    x = torch.randint(0, 256, (10, 1, 3, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = TensorData(x, None, UINT8_IMAGES)
    fresh = list(data.batches(4))
    pointers, reused = set(), []
    for xb in data.batches(4, reuse=True):
        pointers.add(xb.data_ptr())
        reused.append(xb.clone())
    assert len(pointers) == 1  # one buffer for every batch, the last (2 rows) a view of its start
    assert [b.shape[0] for b in reused] == [4, 4, 2]
    for a, b in zip(fresh, reused, strict=True):
        assert torch.equal(a, b)  # the same bits as the one-call conversion
    view = data.subset(torch.tensor([7, 1, 3]))
    out = torch.empty(5, 1, 3, 3)
    assert torch.equal(view.batch([2, 0], out=out), view.batch([2, 0]))
