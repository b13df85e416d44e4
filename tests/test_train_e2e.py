"""Training end to end: the real CLI on the embedded data, and reproducibility."""

from __future__ import annotations

import importlib.metadata
import json
import math
import re

import pytest
import safetensors.torch
import torch
from typer.testing import CliRunner

import aecore
from aecore.cli import app
from aecore.errors import ConfigError
from aecore.hooks import hookimpl
from aecore.training import train

pytestmark = pytest.mark.slow


def test_cli_train_then_eval_reports_the_same_test_error(tmp_path, monkeypatch, fresh_registry, tiny_data):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--encoder", "conv", "--reg", "sparse", "--epochs", "1"])
    assert result.exit_code == 0, result.stderr + result.stdout

    run_dir = tmp_path / "runs" / "conv-sparse"
    ckpt = run_dir / "model.safetensors"
    assert ckpt.is_file()
    assert (run_dir / "metrics.json").is_file()
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]

    # the progress display ran (on stderr) and the summary is on stdout
    assert "training" in result.stderr and "encoder=conv" in result.stderr
    assert "epoch 1:" in result.stderr
    trained = [line for line in result.stdout.splitlines() if line.startswith("test: ")]
    assert len(trained) == 1
    assert re.fullmatch(r"test: MSE/pixel [0-9.e-]+ · SSE/image [0-9.e+-]+ · PSNR [0-9.]+ dB", trained[0])
    assert f"saved {ckpt.relative_to(tmp_path)}" in result.stdout

    meta = aecore.read_metadata(ckpt)
    model = meta["model"]
    assert (model["encoder"]["name"], model["encoder"]["dist"]) == ("conv", "aecore-conv")
    assert (model["decoder"]["name"], model["decoder"]["dist"]) == ("conv", "aecore-conv")
    assert [(r["name"], r["dist"]) for r in model["regularizers"]] == [("sparse", "aecore-sparse")]
    assert model["encoder"]["params"]["channels"] == [32, 64]
    assert model["decoder"]["params"]["channels"] == [32, 64]  # mirrored from the encoder
    assert model["regularizers"][0]["params"]["kind"] == "l1"
    assert model["regularizers"][0]["params"]["weight"] > 0
    assert model["input_shape"] == [1, 28, 28] and model["latent_dim"] == 32
    assert meta["data"]["name"] == "embedded"
    assert meta["data"]["normalisation"] == {"kind": "scale", "divisor": 255.0}
    assert meta["training"]["trainer"]["name"] == "default"
    assert meta["training"]["trainer"]["params"]["epochs"] == 1
    assert meta["training"]["seed"] == 0 and meta["training"]["loss"] == "mse"
    assert meta["versions"]["aecore-sparse"] == importlib.metadata.version("aecore-sparse")

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["history"]) == 1
    epoch = metrics["history"][0]
    assert epoch["epoch"] == 1
    for key in ("train_loss", "train_recon", "train_sparse", "val_recon"):
        assert math.isfinite(epoch[key]) and epoch[key] > 0, key
    assert epoch["train_loss"] == pytest.approx(epoch["train_recon"] + epoch["train_sparse"])
    final = metrics["final"]
    assert meta["metrics"] == final
    assert 0 < final["test_mse_per_pixel"] < 0.2
    assert final["test_sse_per_image"] == pytest.approx(final["test_mse_per_pixel"] * 784)

    evaluated = runner.invoke(app, ["eval", str(ckpt.relative_to(tmp_path))])
    assert evaluated.exit_code == 0, evaluated.stderr
    assert "on embedded test (2000 images)" in evaluated.stdout
    assert [line for line in evaluated.stdout.splitlines() if line.startswith("test: ")] == trained

    # a second run with the same components never reuses the directory
    before = ckpt.read_bytes()
    second = train(
        "conv",
        regularizers=["sparse"],
        params={"encoder": {"channels": "4"}, "trainer": {"epochs": 1}},
        data=tiny_data,
        runs_root="runs",
        progress=False,
    )
    assert second.run_dir.resolve() == tmp_path / "runs" / "conv-sparse-2"
    assert second.checkpoint.is_file()
    assert ckpt.read_bytes() == before


def _train(data, out, seed, **kwargs):
    return train(
        "mlp",
        regularizers=["sparse"],
        params={"encoder": {"hidden": "32", "dropout": "0.1"}, "trainer": {"epochs": 2, "batch_size": 100}},
        latent_dim=8,
        data=data,
        seed=seed,
        device="cpu",
        out=out,
        progress=False,
        **kwargs,
    )


def test_same_seed_gives_bit_identical_weights(tiny_data, tmp_path):
    a = _train(tiny_data, tmp_path / "a", seed=7)
    b = _train(tiny_data, tmp_path / "b", seed=7)
    c = _train(tiny_data, tmp_path / "c", seed=8)
    wa = safetensors.torch.load_file(str(a.checkpoint))
    wb = safetensors.torch.load_file(str(b.checkpoint))
    wc = safetensors.torch.load_file(str(c.checkpoint))
    assert wa.keys() == wb.keys() and wa
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert a.metrics == b.metrics
    assert a.history == b.history
    assert any(not torch.equal(wa[k], wc[k]) for k in wa), "a different seed must give different weights"


def test_library_train_result_and_reload(tiny_data, tmp_path):
    result = _train(tiny_data, tmp_path / "run", seed=0)
    assert result.run_dir == tmp_path / "run"
    assert result.checkpoint == tmp_path / "run" / "model.safetensors"
    assert [h["epoch"] for h in result.history] == [1, 2]
    # training improves on the first epoch
    assert result.history[1]["train_recon"] < result.history[0]["train_recon"]
    loaded = aecore.load(result.run_dir)
    x = tiny_data.test.batch(slice(0, 16))
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model.eval()(x))
    from aecore.evaluate import reconstruction_metrics

    again = reconstruction_metrics(loaded, tiny_data.test)
    assert again["mse_per_pixel"] == result.metrics["test_mse_per_pixel"]


def test_training_errors_before_writing_anything(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        train("mlp", params={"trainer": {"epochs": 0}}, data=tiny_data, out=tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match=r"unknown parameter 'trainer\.epoch'"):
        train("mlp", params={"trainer": {"epoch": 1}}, data=tiny_data, out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_diverging_loss_stops_with_a_clear_error(tmp_path):
    from aecore.data import Dataset, TensorData
    from aecore.training.default import TrainingDiverged

    x = torch.rand(64, 4)
    x[3, 1] = float("nan")
    data = Dataset("nan", TensorData(x), TensorData(torch.rand(8, 4)), {"name": "nan"})
    with pytest.raises(TrainingDiverged) as excinfo:
        train(
            "mlp",
            params={"encoder": {"hidden": "4"}, "trainer": {"epochs": 2}},
            latent_dim=2,
            data=data,
            out=tmp_path / "nan",
            progress=False,
            val_fraction=0.0,
        )
    message = str(excinfo.value)
    assert "the loss became nan in epoch 1" in message
    assert str(tmp_path / "nan") in message
    assert "--lr" in message
    assert not (tmp_path / "nan" / "model.safetensors").exists()  # no checkpoint of a diverged model


def test_divergence_mid_run_names_epoch_and_step_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    from aecore.checkpoint import load
    from aecore.hooks import hookimpl
    from aecore.training.default import TrainingDiverged

    class Poison:
        """Breaks the weights after step 3 of epoch 2, as an exploding update would."""

        @hookimpl
        def ae_step_end(self, run, epoch, step, batch_size, loss):
            if (epoch, step) == (2, 3):
                model = self.model
                with torch.no_grad():
                    next(model.parameters()).fill_(float("inf"))

    poison = Poison()
    from aecore.training import run as run_module

    real_compose = run_module.compose

    def compose_and_remember(*args, **kwargs):
        poison.model = real_compose(*args, **kwargs)
        return poison.model

    run_module.compose = compose_and_remember
    try:
        with pytest.raises(TrainingDiverged) as excinfo:
            train(
                "mlp",
                params={"encoder": {"hidden": "16"}, "trainer": {"epochs": 3}},
                latent_dim=4,
                data=tiny_data,
                out=tmp_path / "run",
                progress=False,
                hooks=[poison],
            )
    finally:
        run_module.compose = real_compose
    message = str(excinfo.value)
    assert "in epoch 2, step 5" in message  # the first step that computed a loss with the broken weights
    assert "grad_clip" in message and "--lr" in message
    kept = load(tmp_path / "run")  # epoch 1's checkpoint, untouched by the bad step
    assert kept.metadata["metrics"]["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in kept.parameters())


# -- the loss check on an accelerator: a device flag read every few steps, never a sync per step -----------


class _PoisonAt:
    """Makes the weights infinite after a given step, as an exploding update would."""

    def __init__(self, epoch: int, step: int) -> None:
        self.at = (epoch, step)

    @hookimpl
    def ae_after_step(self, run, model, epoch, step):
        if (epoch, step) == self.at:
            next(model.parameters()).fill_(float("inf"))


class _LossReads:
    """Counts how often a loss is turned into a Python number (each is a device sync on a GPU)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = torch.Tensor.item

        def item(tensor):
            self.count += 1
            return real(tensor)

        monkeypatch.setattr(torch.Tensor, "item", item)


def _deferred(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU checks the loss as an accelerator would: every ``trainer.loss_check_every`` steps."""
    from aecore.training import default

    monkeypatch.setattr(default, "_loss_check_steps", lambda device, every: every)


def _train_small(tiny_data, out, every: int = 4, **kwargs):
    return train(
        "mlp",
        params={
            "encoder": {"hidden": "16"},
            "trainer": {"epochs": 3, "batch_size": 50, "loss_check_every": every},
        },
        latent_dim=4,
        data=tiny_data,
        out=out,
        progress=False,
        val_fraction=0.0,
        **kwargs,
    )


def test_the_cpu_reads_the_loss_every_step_and_an_accelerator_does_not(tiny_data, tmp_path, monkeypatch):
    from aecore.training.default import DefaultTrainerConfig, _loss_check_steps

    every = DefaultTrainerConfig().loss_check_every
    assert every > 1
    assert _loss_check_steps(torch.device("cpu"), every) == 1
    assert _loss_check_steps(torch.device("cuda", 0), every) == every
    steps = 3 * 20  # 3 epochs of 1,000 images in batches of 50
    reads = _LossReads(monkeypatch)
    checked_each_step = _train_small(tiny_data, tmp_path / "every")
    per_step = reads.count
    assert per_step >= steps
    _deferred(monkeypatch)
    reads.count = 0
    windowed = _train_small(tiny_data, tmp_path / "windowed")
    assert per_step - reads.count >= steps  # no read per step
    for name, tensor in checked_each_step.model.state_dict().items():  # the check changes nothing else
        assert torch.equal(windowed.model.state_dict()[name], tensor), name


def test_a_deferred_check_names_the_window_and_saves_nothing_diverged(tiny_data, tmp_path, monkeypatch):
    from aecore.checkpoint import load
    from aecore.state import read_resume
    from aecore.training.default import TrainingDiverged

    _deferred(monkeypatch)
    with pytest.raises(TrainingDiverged) as excinfo:
        train(
            "mlp",
            params={
                "encoder": {"hidden": "16"},
                "trainer": {"epochs": 3, "batch_size": 50, "save_every_steps": 7, "loss_check_every": 4},
            },
            latent_dim=4,
            data=tiny_data,
            out=tmp_path / "run",
            progress=False,
            val_fraction=0.0,
            hooks=[_PoisonAt(2, 5)],
        )
    message = str(excinfo.value)
    # Step 7 (the poisoned weights' first loss) lies in the window of steps 5 to 7, closed early by
    # the save due after step 7: the check runs before anything is written.
    assert "the loss became NaN or infinite in epoch 2, steps 5 to 7" in message
    assert "every 4 steps" in message and "--lr" in message
    kept = load(tmp_path / "run")  # epoch 1's checkpoint, untouched
    assert kept.metadata["metrics"]["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in kept.parameters())
    state = read_resume(tmp_path / "run")  # the end of epoch 1: the save after step 7 was refused
    assert (state.trainer["epoch"], state.trainer["step"]) == (2, 0)
    assert all(torch.isfinite(t).all() for t in state.model_state.values() if t.is_floating_point())


def test_a_deferred_check_closes_every_epoch(tiny_data, tmp_path, monkeypatch):
    """A NaN in an epoch's last steps is caught at the epoch's end, before its figures or files."""
    from aecore.training.default import TrainingDiverged

    _deferred(monkeypatch)
    with pytest.raises(TrainingDiverged, match=r"in epoch 1, steps 1 to 20 \(cpu checks it every 50"):
        _train_small(tiny_data, tmp_path / "run", every=50, hooks=[_PoisonAt(1, 17)])  # epochs: 20 steps
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_loss_check_every_must_be_a_positive_step_count(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="loss_check_every must be at least 1"):
        _train_small(tiny_data, tmp_path / "run", every=0)
    assert not (tmp_path / "run").exists()
