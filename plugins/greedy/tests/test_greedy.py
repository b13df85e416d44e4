"""The greedy trainer: refusals, pair weights copied into the model, separate metrics, a full run."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import aecore
import aecore_greedy
from aecore.composition import compose
from aecore.config import config_from_dict
from aecore.data import Dataset
from aecore.errors import ConfigError
from aecore.hooks import hookimpl, plugin_manager
from aecore.protocols import RunContext
from aecore.sources import load_dataset
from aecore.testing import check_trainer
from aecore.training import train
from aecore.training.default import DefaultTrainer, DefaultTrainerConfig
from aecore_greedy import GreedyTrainer, GreedyTrainerConfig, layer_slots

HIDDEN = (64, 32)
LATENT = 8
SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def small() -> Dataset:
    """2,000 training and 500 test images of the embedded sample."""
    full = load_dataset("embedded")
    return Dataset(
        "embedded",
        full.train.subset(torch.arange(2000)),
        full.test.subset(torch.arange(500)),
        {"name": "embedded"},
    )


class Recorder:
    """Every lifecycle call, in order."""

    def __init__(self) -> None:
        self.starts: list[tuple[int, int]] = []
        self.steps = 0
        self.epochs: list[dict[str, float]] = []

    @hookimpl
    def ae_train_start(self, run, total_epochs, steps_per_epoch):
        self.starts.append((total_epochs, steps_per_epoch))

    @hookimpl
    def ae_step_end(self, run, epoch, step, batch_size, loss):
        self.steps += 1

    @hookimpl
    def ae_epoch_end(self, run, epoch, metrics):
        self.epochs.append(dict(metrics))


def _trainer(**values) -> GreedyTrainer:
    return GreedyTrainer(config_from_dict(GreedyTrainerConfig, values, owner="trainer"))


def _model(params: dict | None = None, decoder: str | None = None):
    torch.manual_seed(0)
    params = params or {"encoder": {"hidden": HIDDEN}}
    return compose("mlp", decoder, input_shape=SHAPE, latent_dim=LATENT, params=params)


def _run(tmp_path: Path, *hooks: object, seed: int = 0) -> RunContext:
    pm = plugin_manager(hooks, exclude=("progress",))
    return RunContext(
        out_dir=tmp_path,
        device=torch.device("cpu"),
        loss_fn=F.mse_loss,
        seed=seed,
        hooks=pm.hook,
        save_checkpoint=lambda model, name, metrics: tmp_path / name,
    )


def test_config_extends_the_default_trainer():
    result = check_trainer(GreedyTrainer, params={"pretrain_epochs": 1, "pretrain_lr": 0.01, "epochs": 2})
    assert [m["epoch"] for m in result.history if "epoch" in m] == [1, 2]
    trainer = _trainer(pretrain_epochs=2, pretrain_lr=0.01, epochs=3)
    assert isinstance(trainer.config, DefaultTrainerConfig)
    finetune = trainer.config.finetune_config()
    assert type(finetune) is DefaultTrainerConfig
    assert (finetune.epochs, finetune.lr) == (3, 1e-3)
    with pytest.raises(ConfigError, match="pretrain_epochs cannot be negative"):
        _trainer(pretrain_epochs=-1)
    with pytest.raises(ConfigError, match="pretrain_lr must be positive"):
        _trainer(pretrain_lr=0)


def test_refuses_a_conv_encoder(small, tmp_path):
    model = compose("conv", input_shape=SHAPE, latent_dim=LATENT)
    with pytest.raises(ConfigError) as info:
        _trainer().fit(model, small.train, small.test, _run(tmp_path))
    message = str(info.value)
    assert "'conv' encoder" in message
    assert "fully connected layers" in message
    assert "--trainer default" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("decoder", "params", "expected"),
    [
        ("conv", {"encoder": {"hidden": HIDDEN}}, "'conv' decoder"),
        (None, {"encoder": {"hidden": HIDDEN, "residual": True}}, "encoder.residual=false"),
        (None, {"encoder": {"hidden": HIDDEN}, "decoder": {"residual": True}}, "decoder.residual=false"),
        (None, {"encoder": {"hidden": HIDDEN, "batch_norm": True}}, "encoder.batch_norm=false"),
        (None, {"encoder": {"hidden": HIDDEN}, "decoder": {"hidden": (64,)}}, "mirrors the encoder"),
    ],
    ids=["conv-decoder", "residual", "decoder-residual", "batch-norm", "not-a-mirror"],
)
def test_refuses_what_it_cannot_pair(decoder, params, expected):
    model = _model(params, decoder)
    with pytest.raises(ConfigError, match=expected):
        layer_slots(model)


def test_slots_pair_each_encoder_layer_with_its_mirror():
    model = _model({"encoder": {"hidden": HIDDEN, "dropout": 0.1}})
    slots = layer_slots(model)
    widths = [784, *HIDDEN, LATENT]
    assert [s.widths for s in slots] == list(itertools.pairwise(widths))
    assert slots[0].decode_linear is model.decoder.net[-3]  # the output layer
    assert isinstance(slots[0].decode_act, torch.nn.Sigmoid)
    assert slots[-1].encode_linear is model.encoder.net[-2]  # the layer to the code
    for slot in slots:
        assert slot.decode_linear.in_features == slot.encode_linear.out_features


def test_pretrain_copies_pairs_and_losses_decrease(small, tmp_path):
    recorder = Recorder()
    model = _model()
    before = [s.encode_linear.weight.detach().clone() for s in layer_slots(model)]
    result = _trainer(pretrain_epochs=3).pretrain(model, small.train, _run(tmp_path, recorder))
    assert len(result.pairs) == len(HIDDEN) + 1
    for slot, pair, old in zip(layer_slots(model), result.pairs, before, strict=True):
        assert not torch.equal(pair.encode_linear.weight, old)
        for name in ("encode_linear", "decode_linear"):
            for key, value in getattr(pair, name).state_dict().items():
                assert torch.equal(getattr(slot, name).state_dict()[key], value), f"{name}.{key}"
    for i, losses in enumerate(result.losses, start=1):
        assert len(losses) == 3
        assert losses[2] < losses[1] < losses[0], f"pair {i}: {losses}"
        assert result.metrics[f"pretrain_{i}_loss"] == losses[-1]
    assert [m["pretrain_pair"] for m in recorder.epochs] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert recorder.starts == []  # the core fires ae_train_start, not the trainer


def test_fine_tuning_starts_from_the_pretrained_weights(small, tmp_path, monkeypatch):
    trainer = _trainer(pretrain_epochs=1, epochs=1, batch_size=256)
    pretrained = trainer.pretrain(_model(), small.train, _run(tmp_path))
    seen = {}

    class Capturing(DefaultTrainer):
        def fit(self, model, train, val, run):
            seen["weights"] = [s.encode_linear.weight.detach().clone() for s in layer_slots(model)]
            seen["config"] = self.config
            return super().fit(model, train, val, run)

    monkeypatch.setattr(aecore_greedy, "DefaultTrainer", Capturing)
    trainer.fit(_model(), small.train, small.test, _run(tmp_path))
    assert type(seen["config"]) is DefaultTrainerConfig
    # Same seed, same model init: fit's pretraining is the one above, bit for bit.
    assert len(seen["weights"]) == len(pretrained.pairs)
    for weight, pair in zip(seen["weights"], pretrained.pairs, strict=True):
        assert torch.equal(weight, pair.encode_linear.weight)


def test_metrics_keep_the_phases_apart_and_runs_repeat(small, tmp_path):
    trainer_of_last_fit = _trainer(pretrain_epochs=2, epochs=2, batch_size=256)

    def fit():
        recorder = Recorder()
        model = _model()
        metrics = trainer_of_last_fit.fit(model, small.train, small.test, _run(tmp_path, recorder))
        return recorder, metrics, model

    recorder, metrics, model = fit()
    pairs = len(HIDDEN) + 1
    assert {f"pretrain_{i}_loss" for i in range(1, pairs + 1)} <= set(metrics)
    assert {"train_loss", "train_recon", "val_recon", "best_val_recon"} <= set(metrics)
    assert recorder.starts == []  # the core announces the run, from schedule():
    assert trainer_of_last_fit.schedule(model, small.train) == (2 * pairs + 2, 8)  # 2,000 / 256 -> 8 steps
    assert recorder.steps == (2 * pairs + 2) * 8
    pretrain = [m for m in recorder.epochs if "pretrain_pair" in m]
    finetune = [m for m in recorder.epochs if "train_loss" in m]
    assert len(pretrain) == 2 * pairs and len(finetune) == 2
    assert all("train_loss" not in m for m in pretrain)
    assert [m["epoch"] for m in finetune] == [1, 2]

    _, again, model_again = fit()
    assert again == metrics
    for a, b in zip(model.state_dict().values(), model_again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_train_end_to_end_saves_a_loadable_checkpoint(small, tmp_path):
    out = tmp_path / "run"
    recorder = Recorder()
    result = train(
        hooks=[recorder],
        encoder="mlp",
        trainer="greedy",
        data=small,
        latent_dim=LATENT,
        params={
            "encoder": {"hidden": HIDDEN},
            "trainer": {"pretrain_epochs": 1, "epochs": 1, "batch_size": 256},
        },
        out=out,
    )
    assert result.checkpoint == out / "model.safetensors"
    assert {"pretrain_1_loss", "pretrain_3_loss", "train_loss", "test_mse_per_pixel"} <= set(result.metrics)
    meta = aecore.read_metadata(result.checkpoint)
    assert meta["training"]["trainer"]["name"] == "greedy"
    assert meta["training"]["trainer"]["params"]["pretrain_epochs"] == 1
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [m.get("pretrain_pair") for m in history] == [1, 2, 3, None]
    train_size = len(small.train) - round(len(small.train) * 0.1)  # the default validation share
    # The core announced both phases once, with greedy's schedule: 3 pairs + 1 fine-tuning epoch.
    assert recorder.starts == [(3 + 1, math.ceil(train_size / 256))]

    loaded = aecore.load(result.checkpoint)
    x = small.test.batch(slice(0, 16))
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))


def test_no_pretraining_is_plain_fine_tuning(small, tmp_path):
    recorder = Recorder()
    trainer = _trainer(pretrain_epochs=0, epochs=1, batch_size=256)
    model = _model()
    metrics = trainer.fit(model, small.train, small.test, _run(tmp_path, recorder))
    assert not any(k.startswith("pretrain") for k in metrics)
    assert trainer.schedule(model, small.train) == (1, 8)
    assert len(recorder.epochs) == 1


class TwoLayerEncoder(torch.nn.Module):
    """Not aecore-mlp's: any encoder that offers layer_stack() can be pretrained."""

    @dataclass(frozen=True)
    class Config:
        width: int = 12

    def __init__(self, config, *, input_shape, latent_dim):
        super().__init__()
        self.config, self.input_shape, self.latent_dim = config, tuple(input_shape), latent_dim
        size = math.prod(self.input_shape)
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(size, config.width),
            torch.nn.ReLU(),
            torch.nn.Linear(config.width, latent_dim),
        )

    def forward(self, x):
        return self.net(x)

    def layer_stack(self):
        return [(self.net[1], self.net[2]), (self.net[3], torch.nn.Identity())]


class NoStack(TwoLayerEncoder):
    layer_stack = None


def test_greedy_pretrains_any_encoder_that_offers_layer_stack_and_refuses_others(small, tmp_path):
    from aecore import registry

    params = {"decoder": {"hidden": (12,)}, "trainer": {"pretrain_epochs": 1, "epochs": 1, "batch_size": 256}}
    with registry.registered("encoder", "twolayer", TwoLayerEncoder):
        result = train(
            encoder="twolayer", decoder="mlp", trainer="greedy", data=small, latent_dim=LATENT,
            params=params, out=tmp_path / "run", progress=False,
        )  # fmt: skip
    assert {"pretrain_1_loss", "pretrain_2_loss", "test_mse_per_pixel"} <= set(result.metrics)
    with registry.registered("encoder", "nostack", NoStack), pytest.raises(ConfigError, match="layer_stack"):
        train(
            encoder="nostack", decoder="mlp", trainer="greedy", data=small, latent_dim=LATENT,
            params=params, out=tmp_path / "refused", progress=False,
        )  # fmt: skip
    assert not (tmp_path / "refused").exists()  # refused before the run directory was made
