"""The data sources: activation shards (npy, safetensors) and the synthetic sparse features."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from aecore.data import TensorStore
from aecore.errors import DataError
from aecore.sources import load_dataset
from aecore.testing import check_dataset
from aecore_sae.activations import Activations, ActivationsConfig
from aecore_sae.synthetic import SparseFeatures, SparseFeaturesConfig, zipf_probabilities


def _vectors(rows: int, dim: int = 8, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(dtype)


# -- activations -------------------------------------------------------------------------------------


def test_a_folder_of_npy_and_safetensors_shards_conforms_and_keeps_every_row(tmp_path):
    shards = [_vectors(30, seed=0), _vectors(25, seed=1), _vectors(45, seed=2)]
    np.save(tmp_path / "a.npy", shards[0])
    save_file({"acts": torch.from_numpy(shards[1])}, str(tmp_path / "b.safetensors"))
    np.save(tmp_path / "c.npy", shards[2])
    data = check_dataset(Activations, str(tmp_path), params={"test_fraction": 0.2, "seed": 3})
    assert (len(data.train), len(data.test)) == (80, 20)
    assert data.train.shape == (8,) and data.spec["shards"] == 3
    every = torch.cat([data.train.x, data.test.x])
    expected = torch.from_numpy(np.concatenate(shards))
    # the split is a seeded partition of the rows, in order within each part
    assert sorted(map(tuple, every.tolist())) == sorted(map(tuple, expected.tolist()))
    again = Activations(ActivationsConfig(test_fraction=0.2, seed=4)).load(
        str(tmp_path), data_dir=None, normalisation=None
    )
    assert not torch.equal(again.test.x, data.test.x)  # another seed, another split


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_shards_keep_their_dtype_in_the_store_and_batches_are_float32(tmp_path, dtype):
    values = torch.from_numpy(_vectors(40)).to(getattr(torch, dtype))
    save_file({"x": values}, str(tmp_path / "s.safetensors"))
    (tmp_path / "prepared").mkdir()
    store = TensorStore(tmp_path / "prepared", show_progress=False)  # what the data cache passes
    try:
        data = Activations(ActivationsConfig()).load(
            str(tmp_path / "s.safetensors"), data_dir=None, normalisation=None, store=store
        )
    finally:
        store.close()
    assert data.train.storage["x"].dtype == getattr(torch, dtype)
    assert (tmp_path / "prepared" / "all.x.safetensors").stat().st_size >= 40 * 8 * values.element_size()
    batch = data.train.batch(torch.arange(3))
    assert batch.dtype == torch.float32


def test_npy_shards_are_memory_mapped_not_read_whole(tmp_path, monkeypatch):
    np.save(tmp_path / "big.npy", _vectors(200))
    calls = []
    real = np.load

    def spying(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "load", spying)
    Activations(ActivationsConfig()).load(str(tmp_path / "big.npy"), data_dir=None, normalisation=None)
    assert calls and all(c.get("mmap_mode") == "r" and c.get("allow_pickle") is False for c in calls)


def test_a_glob_picks_its_shards_through_the_cli_name(tmp_path):
    np.save(tmp_path / "layer1-a.npy", _vectors(10))
    np.save(tmp_path / "layer1-b.npy", _vectors(10, seed=5))
    np.save(tmp_path / "layer2-a.npy", _vectors(10, dim=4))  # another width: not matched
    data = load_dataset(f"activations:{tmp_path}/layer1-*.npy")
    assert len(data.train) + len(data.test) == 20
    assert data.name.startswith("activations:/")


def test_shards_of_different_widths_are_refused_in_one_line(tmp_path):
    np.save(tmp_path / "a.npy", _vectors(10, dim=8))
    np.save(tmp_path / "b.npy", _vectors(10, dim=6))
    with pytest.raises(DataError) as info:
        Activations(ActivationsConfig()).load(str(tmp_path), data_dir=None, normalisation=None)
    message = str(info.value)
    assert "\n" not in message and "b.npy" in message and "a.npy" in message


def test_shards_of_different_dtypes_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", _vectors(10))
    np.save(tmp_path / "b.npy", _vectors(10, dtype=np.float16))
    with pytest.raises(DataError, match=r"b\.npy"):
        Activations(ActivationsConfig()).load(str(tmp_path), data_dir=None, normalisation=None)


def test_a_pickled_npy_is_refused_without_being_unpickled(tmp_path):
    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(ran), "w"))

    np.save(tmp_path / "evil.npy", np.array([Payload()], dtype=object), allow_pickle=True)
    with pytest.raises(DataError) as info:
        Activations(ActivationsConfig()).load(str(tmp_path / "evil.npy"), data_dir=None, normalisation=None)
    assert "evil.npy" in str(info.value)
    assert not ran.exists()
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(DataError, match=r"neither \.npy nor \.safetensors"):
        Activations(ActivationsConfig()).load(str(tmp_path / "raw.pkl"), data_dir=None, normalisation=None)
    assert not ran.exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_vectors_are_refused_naming_the_row(tmp_path, bad):
    values = _vectors(20)
    values[13, 2] = bad
    np.save(tmp_path / "a.npy", values)
    with pytest.raises(DataError, match="row 13"):
        Activations(ActivationsConfig()).load(str(tmp_path / "a.npy"), data_dir=None, normalisation=None)


@pytest.mark.parametrize(
    "make,problem",
    [
        (lambda p: np.save(p / "a.npy", np.zeros((4, 3, 2), np.float32)), "shape"),
        (lambda p: np.save(p / "a.npy", np.zeros((4, 3), np.int64)), "int64"),
        (lambda p: np.save(p / "a.npy", np.zeros((4, 3), ">f4")), "big-endian float32"),
        (lambda p: np.save(p / "a.npy", np.zeros((1, 3), np.float32)), "at least 2"),
        (lambda p: (p / "a.npy").write_bytes(b"\x93NUMPY\x01\x00garbage"), "cannot read"),
        (
            lambda p: (p / "a.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      "),
            "cannot read",
        ),
        (
            lambda p: save_file({"a": torch.zeros(3, 2), "b": torch.zeros(3, 2)}, str(p / "a.safetensors")),
            "key=NAME",
        ),
        (lambda p: save_file({"a": torch.zeros(3, 2, dtype=torch.float64)}, str(p / "a.safetensors")), "F64"),
        (lambda p: None, "holds no .npy"),
    ],
)
def test_bad_shards_are_one_line_errors(tmp_path, make, problem):
    make(tmp_path)
    with pytest.raises(DataError) as info:
        Activations(ActivationsConfig()).load(str(tmp_path), data_dir=None, normalisation=None)
    assert problem in str(info.value) and "\n" not in str(info.value)


def test_a_named_safetensors_key_is_read(tmp_path):
    save_file({"resid": torch.ones(6, 3), "other": torch.zeros(6, 5)}, str(tmp_path / "a.safetensors"))
    data = Activations(ActivationsConfig(key="resid")).load(str(tmp_path), data_dir=None, normalisation=None)
    assert data.train.shape == (3,) and bool((data.train.x == 1).all())
    with pytest.raises(DataError, match="no tensor 'missing'"):
        Activations(ActivationsConfig(key="missing")).load(str(tmp_path), data_dir=None, normalisation=None)


def test_mean_squared_norm_scaling_is_recorded_and_reused(tmp_path):
    values = _vectors(100, dim=8) * 7.0
    np.save(tmp_path / "a.npy", values)
    source = Activations(ActivationsConfig(scale="mean_squared_norm"))
    data = source.load(str(tmp_path / "a.npy"), data_dir=None, normalisation=None)
    norm = data.train.normalisation
    assert norm["kind"] == "mean_squared_norm" and norm["mean_squared_norm"] == 8.0
    train = data.train.batch(torch.arange(len(data.train)))
    assert float(train.pow(2).sum(dim=1).mean()) == pytest.approx(8.0, rel=1e-5)
    # the divisor comes from the training rows only, and a model's record is reused as it is
    reloaded = source.load(str(tmp_path / "a.npy"), data_dir=None, normalisation={**norm, "divisor": 2.0})
    torch.testing.assert_close(reloaded.test.batch(torch.arange(2)), reloaded.test.x[:2].float() / 2.0)
    plain = Activations(ActivationsConfig()).load(str(tmp_path / "a.npy"), data_dir=None, normalisation=None)
    assert plain.train.normalisation == {"kind": "identity"}


# -- sparse-features ----------------------------------------------------------------------------------


def test_the_synthetic_source_conforms_and_is_seeded():
    params = {"features": 64, "dim": 16, "l0": 3.0, "rows": 400, "test_rows": 100}
    data = check_dataset(SparseFeatures, params=params)
    other = SparseFeatures(SparseFeaturesConfig(**params, seed=1)).load(
        None, data_dir=None, normalisation=None
    )
    assert not torch.equal(other.train.x, data.train.x)
    assert not torch.equal(other.tensors["true_dictionary"], data.tensors["true_dictionary"])


def test_zipf_probabilities_sum_to_the_target_and_fall_by_rank():
    p = zipf_probabilities(1000, 16.0, 1.0)
    assert p.sum() == pytest.approx(16.0, rel=1e-9)
    assert (p <= 1).all() and (np.diff(p) <= 0).all()
    free = p < 1  # below the cap, p_i·i is constant: Zipf's law with exponent 1
    ranks = np.arange(1, 1001)[free]
    assert np.allclose(p[free] * ranks, p[free][0] * ranks[0])
    assert np.allclose(zipf_probabilities(10, 2.5, 0.0), 0.25)


def test_the_synthetic_data_has_its_l0_and_zipf_frequencies():
    # fewer features than dimensions, magnitudes of one: each sample's 0/1 code is exactly recoverable
    config = SparseFeaturesConfig(features=24, dim=64, l0=4.0, zipf=0.8, magnitude="one", rows=8000)
    data = SparseFeatures(config).load(None, data_dir=None, normalisation=None)
    dictionary = data.tensors["true_dictionary"]
    torch.testing.assert_close(dictionary.norm(dim=1), torch.ones(24))
    codes = torch.linalg.lstsq(dictionary.T.double(), data.train.x.T.double()).solution.T
    torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)
    codes = codes.round()
    assert set(codes.unique().tolist()) == {0.0, 1.0}
    assert float(codes.sum(dim=1).mean()) == pytest.approx(4.0, rel=0.02)
    frequency = codes.mean(dim=0).float()
    expected = torch.from_numpy(zipf_probabilities(24, 4.0, 0.8)).float()
    torch.testing.assert_close(frequency, expected, atol=0.015, rtol=0)
    assert float(expected[0] / expected[-1]) == pytest.approx(24**0.8)  # no cap reached here
    torch.testing.assert_close(data.tensors["feature_probability"], expected)


def test_the_true_dictionary_travels_through_the_cache():
    name = "sparse-features?features=32&dim=8&l0=2&rows=300&test_rows=50"
    first = load_dataset(name)
    second = load_dataset(name)  # from the mapped cache this time
    torch.testing.assert_close(second.tensors["true_dictionary"], first.tensors["true_dictionary"])
    torch.testing.assert_close(second.train.x, first.train.x)
    assert second.spec["l0"] == 2.0


@pytest.mark.parametrize("values", [{"l0": 0}, {"l0": 100, "features": 10}, {"zipf": -1}, {"noise": -0.5}])
def test_bad_synthetic_settings_are_refused(values):
    from aecore.config import config_from_dict
    from aecore.errors import ConfigError

    with pytest.raises(ConfigError):
        config_from_dict(SparseFeaturesConfig, values, owner="sparse-features")
