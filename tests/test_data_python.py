"""Data from Python: arrays, tensors and torch Datasets train directly, and reloads ask for --data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import aecore
from aecore.cli import app
from aecore.data import UINT8_IMAGES, Dataset, TensorData, as_dataset
from aecore.errors import DataError
from tests.helpers import one_line_error

MLP = {"encoder": {"hidden": (16,)}, "trainer": {"epochs": 1, "batch_size": 32}}


def test_an_array_is_split_by_a_seeded_fraction():
    x = np.arange(100 * 6, dtype=np.float64).reshape(100, 6)
    data = as_dataset(x)
    assert (len(data.train), len(data.test)) == (80, 20)
    assert data.train.x.dtype == torch.float32 and data.train.normalisation == {"kind": "identity"}
    rows = torch.cat([data.train.x[:, 0], data.test.x[:, 0]]) / 6
    assert sorted(rows.long().tolist()) == list(range(100))  # every row exactly once
    assert torch.equal(as_dataset(x).test.x, data.test.x)  # the same seed gives the same split
    assert not torch.equal(as_dataset(x, seed=1).test.x, data.test.x)
    assert data.spec["split"] == {"test_fraction": 0.2, "seed": 0} and data.spec["in_memory"] is True


def test_uint8_images_stay_uint8_and_are_scaled_a_batch_at_a_time():
    x = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8)
    data = as_dataset((x[:20], x[20:]))
    assert data.train.x.dtype == torch.uint8 and data.train.normalisation == UINT8_IMAGES
    assert torch.equal(data.test.x, x[20:]) and data.spec["split"] == {"given": True}
    assert torch.allclose(data.train.batch(slice(0, 2)), x[:2].float() / 255)


def test_torch_datasets_of_samples_and_of_pairs():
    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return torch.full((1, 2, 2), float(i)), torch.tensor(i % 3)

    data = as_dataset(Pairs())
    assert data.train.shape == (1, 2, 2)
    values = torch.cat([data.train.x[:, 0, 0, 0], data.test.x[:, 0, 0, 0]]).long()
    labels = torch.cat([data.train.y, data.test.y])
    assert torch.equal(labels, values % 3)  # each label stays with its sample
    tensors = as_dataset(torch.utils.data.TensorDataset(torch.rand(10, 4), torch.arange(10)))
    assert tensors.train.y.dtype == torch.long and len(tensors.train) == 8


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (np.zeros(5), "at least two axes"),
        (np.zeros((0, 3)), "no samples"),
        (np.zeros((1, 3)), "at least 2"),
        ((np.zeros((5, 3)), np.zeros(5)), "TensorDataset"),
        ((np.zeros((5, 3)), np.zeros((5, 4))), "same sample shape"),
        ((np.zeros((5, 3), np.uint8), np.zeros((5, 3))), "same type"),
        (np.array([[1.0, np.nan], [0.0, 0.0]]), "sample 0"),
        (np.array([[1e300, 0.0], [0.0, 0.0]]), "float32"),
        (np.array([["a", "b"], ["c", "d"]]), "not numbers"),
        (np.zeros((3, 2), dtype=np.complex64), "complex"),
        ("table.csv", "str"),
        (torch.utils.data.TensorDataset(torch.rand(4, 2), torch.tensor([0.5, 1, 2, 3])), "integers"),
    ],
    ids=[
        "1d",
        "empty",
        "one-sample",
        "x-y-pair",
        "shapes-differ",
        "types-differ",
        "nan",
        "beyond-float32",
        "strings",
        "complex",
        "a-name",
        "float-labels",
    ],
)
def test_data_that_cannot_be_used_is_one_line(data, fragment):
    with pytest.raises(DataError, match=fragment) as info:
        as_dataset(data)
    assert "\n" not in str(info.value)


def test_train_takes_an_array_and_records_in_memory_data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((120, 10)).astype(np.float32)
    result = aecore.train(encoder="mlp", data=x, out=str(tmp_path / "run"), params=MLP, progress=False)
    meta = aecore.load(result.run_dir).metadata["data"]
    assert meta["in_memory"] is True and meta["sample_shape"] == [10] and meta["origin"] == "numpy.ndarray"
    assert meta["normalisation"] == {"kind": "identity"}
    # reloading with a command needs --data: it never silently falls back to another dataset
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "run")])
    one_line_error(result, "in memory", "--data")


def test_train_takes_a_torch_dataset_pair_and_resume_takes_the_data_again(tmp_path):
    images = torch.randint(0, 256, (80, 1, 8, 8), dtype=torch.uint8)
    pair = (torch.utils.data.TensorDataset(images[:64]), torch.utils.data.TensorDataset(images[64:]))
    result = aecore.train(encoder="mlp", data=pair, out=str(tmp_path / "run"), params=MLP, progress=False)
    assert result.model.input_shape == (1, 8, 8)
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "test_mse_per_pixel" in json.dumps(record)


def test_an_aecore_dataset_is_used_as_it_is():
    data = Dataset("mine", TensorData(torch.zeros(4, 2)), TensorData(torch.zeros(2, 2)))
    assert as_dataset(data) is data
