"""What a model family may add: its own per-epoch and evaluation figures, data-driven set-up,
and tensors that belong to a dataset as a whole."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

import aecore
from aecore import registry
from aecore.cli import app
from aecore.components import RegularizerBase
from aecore.config import param
from aecore.data import UINT8_IMAGES, Dataset, TensorData
from aecore.evaluate import component_metrics
from aecore.sources import load_dataset


@dataclass(frozen=True)
class CountingConfig:
    weight: float = param(1e-3, "Penalty weight.")


class Counting(RegularizerBase):
    """Counts the codes it sees per epoch, centres codes on the data's mean code, reports at eval."""

    Config = CountingConfig
    initialised = 0

    def __init__(self, config: CountingConfig, *, latent_dim: int) -> None:
        super().__init__(config, latent_dim=latent_dim)
        self.register_buffer("centre", torch.zeros(latent_dim))
        self.seen = 0

    def initialise(self, data: TensorData) -> None:
        type(self).initialised += 1
        self.centre.fill_(float(data.batch(slice(0, 50)).mean()))
        torch.rand(1000)  # its own random draws must not disturb the run's stream

    def transform_code(self, z: Tensor) -> Tensor:
        if self.training:
            self.seen += z.shape[0]
        return z

    def penalty(self, x: Tensor, z: Tensor, recon: Tensor, model: nn.Module) -> Tensor:
        return self.config.weight * (z - self.centre).pow(2).mean()

    def epoch_metrics(self) -> dict[str, float]:
        seen, self.seen = self.seen, 0
        return {"counting_seen": seen}

    def eval_metrics(self, model, dataset, *, device, out_dir=None) -> dict[str, float]:
        if out_dir is not None:
            (out_dir / "counting.txt").write_text("written by eval_metrics\n")
        codes = model.encode(dataset.test.batch(slice(0, len(dataset.test))).to(device))
        return {"counting_code_mean": codes.mean(), "counting_test_size": len(dataset.test)}


@pytest.fixture
def counting():
    Counting.initialised = 0
    with registry.registered("regularizer", "counting", Counting):
        yield Counting


def _train(data, out, **fields):
    return aecore.train(
        encoder="mlp",
        regularizers=["counting"],
        data=data,
        out=str(out),
        params={"encoder": {"hidden": (16,)}, "trainer": {"epochs": 2, "batch_size": 100}},
        progress=False,
        **fields,
    )


def test_epoch_metrics_join_each_epochs_figures(counting, tiny_data, tmp_path):
    result = _train(tiny_data, tmp_path / "run", val_fraction=0.1)
    assert [h["counting_seen"] for h in result.history] == [900, 900]  # reset every epoch
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "900" in json.dumps(history)


def test_initialise_runs_once_before_a_fresh_run_and_keeps_the_random_stream(counting, tiny_data, tmp_path):
    from aecore.training.run import initialise_components

    result = _train(tiny_data, tmp_path / "a")
    assert counting.initialised == 1
    expected = float(tiny_data.train.batch(slice(0, 50)).mean())
    assert float(result.model.regularizers["counting"].centre[0]) != 0.0
    model = aecore.compose("mlp", regularizers=["counting"], input_shape=(1, 28, 28), latent_dim=4)
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    initialise_components(model, tiny_data.train)
    assert torch.equal(torch.random.get_rng_state(), before)  # its torch.rand(1000) left no trace
    assert float(model.regularizers["counting"].centre[0]) == pytest.approx(expected)


def test_initialise_is_not_repeated_on_resume(counting, tiny_data, tmp_path):
    run = tmp_path / "r"
    aecore.train(
        encoder="mlp",
        regularizers=["counting"],
        data=tiny_data,
        out=str(run),
        params={"encoder": {"hidden": (16,)}, "trainer": {"epochs": 1, "batch_size": 100}},
        progress=False,
    )
    assert counting.initialised == 1
    state = json.loads((run / "metrics.json").read_text())
    assert state  # finished: resuming a finished run trains nothing and initialises nothing
    aecore.resume(run, data=tiny_data, progress=False)
    assert counting.initialised == 1


def test_eval_metrics_are_reported_by_ae_eval_and_written_to_its_csv(counting, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "train",
            "-e",
            "mlp",
            "--reg",
            "counting",
            "--epochs",
            "1",
            "--set",
            "encoder.hidden=16",
            "--out",
            "run",
        ],
    )
    assert result.exit_code == 0, result.stderr
    result = runner.invoke(app, ["eval", "run", "--no-pca", "--out", "eval.csv"])
    assert result.exit_code == 0, result.stderr
    assert "counting_code_mean" in result.stdout and "counting_test_size" in result.stdout
    rows = dict(line.split(",", 2)[:2] for line in (tmp_path / "eval.csv").read_text().splitlines()[1:])
    assert float(rows["counting_test_size"]) == 2000.0  # the embedded sample's test split
    assert (tmp_path / "run" / "counting.txt").is_file()  # out_dir reached the method


def test_component_metrics_refuses_a_method_that_returns_no_table(counting, tiny_data):
    model = aecore.compose("mlp", regularizers=["counting"], input_shape=(1, 28, 28), latent_dim=4)
    model.regularizers["counting"].eval_metrics = lambda model, dataset, *, device: [1.0]
    with pytest.raises(TypeError, match=r"counting\.eval_metrics"):
        component_metrics(model, tiny_data)


def test_dataset_tensors_are_cached_with_the_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("AECORE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("AECORE_NO_DATA_CACHE", raising=False)

    @dataclass(frozen=True)
    class NoOptions:
        """None."""

    class WithDictionary:
        Config = NoOptions
        loads = 0

        def __init__(self, config):
            self.config = config

        def files(self, location, *, data_dir):
            return []

        def load(self, location, *, data_dir, normalisation):
            type(self).loads += 1
            x = TensorData(torch.zeros(8, 1, 2, 2, dtype=torch.uint8), None, UINT8_IMAGES)
            return Dataset("dict", x, x, {}, tensors={"true_dictionary": torch.eye(4)})

    with registry.registered("dataset", "with-dictionary", WithDictionary):
        first = load_dataset("with-dictionary")
        second = load_dataset("with-dictionary")
    assert WithDictionary.loads == 1
    assert torch.equal(first.tensors["true_dictionary"], torch.eye(4))
    assert torch.equal(second.tensors["true_dictionary"], torch.eye(4))
