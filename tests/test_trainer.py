"""The default trainer's options: best checkpoint, early stopping, LR plateau, clipping, AMP, losses."""

from __future__ import annotations

import json

import pytest
import torch

from aecore.checkpoint import load, read_metadata
from aecore.errors import ConfigError, UnknownComponentError
from aecore.training import train


def _train(tmp_path, data, name="run", **kwargs):
    trainer = kwargs.pop("trainer_params", {})
    params = kwargs.pop("params", {})
    params = {**params, "trainer": {"epochs": 3, "batch_size": 100, **trainer}}
    kwargs.setdefault("encoder", "mlp")
    return train(
        params=params,
        data=data,
        out=tmp_path / name,
        progress=False,
        latent_dim=kwargs.pop("latent_dim", 8),
        **kwargs,
    )


def _history(result):
    return json.loads((result.run_dir / "metrics.json").read_text())["history"]


def test_best_checkpoint_holds_the_epoch_with_the_lowest_validation_loss(tmp_path, tiny_data):
    result = _train(tmp_path, tiny_data, params={"encoder": {"hidden": (32,)}})
    history = _history(result)
    best_epoch = min(history, key=lambda m: m["val_recon"])
    best = read_metadata(result.run_dir / "best.safetensors")
    assert best["metrics"]["epoch"] == best_epoch["epoch"]
    assert best["metrics"]["val_recon"] == best_epoch["val_recon"]
    assert result.metrics["best_val_recon"] == best_epoch["val_recon"]
    load(result.run_dir / "best.safetensors")  # a complete, loadable checkpoint


def test_keep_best_false_writes_no_best_file(tmp_path, tiny_data):
    result = _train(tmp_path, tiny_data, trainer_params={"keep_best": False, "epochs": 1})
    assert not (result.run_dir / "best.safetensors").exists()


def test_early_stopping_ends_training_after_patience_epochs_without_improvement(tmp_path, tiny_data):
    # With min_delta=1 no epoch after the first counts as an improvement.
    result = _train(tmp_path, tiny_data, trainer_params={"epochs": 10, "min_delta": 1.0, "early_stopping": 1})
    history = _history(result)
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert result.metrics["stopped_early"] == 1.0


def test_plateau_cuts_the_learning_rate(tmp_path, tiny_data, monkeypatch):
    from aecore.training.default import DefaultTrainer

    monkeypatch.setattr(DefaultTrainer, "_validate", lambda self, *args: 0.5)  # a flat plateau
    result = _train(
        tmp_path,
        tiny_data,
        trainer_params={"epochs": 4, "lr": 1e-3, "plateau_patience": 1, "plateau_factor": 0.5},
    )
    lrs = [m["lr"] for m in _history(result)]
    # Each entry is the LR used during that epoch. Epoch 1 sets the best; epochs 2 and 3 are bad;
    # the second bad epoch exceeds patience 1, so epoch 4 runs at half the rate.
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4])


def test_gradient_clipping_is_applied(tmp_path, tiny_data, monkeypatch):
    seen = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        seen.append(max_norm)
        return real(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    _train(tmp_path, tiny_data, trainer_params={"epochs": 1, "grad_clip": 0.5})
    assert seen and set(seen) == {0.5}


def test_amp_on_cpu_trains_in_bfloat16_autocast_and_keeps_float32_weights(tmp_path, tiny_data, monkeypatch):
    seen = []
    real = torch.autocast

    def spy(device_type, *args, **kwargs):
        seen.append((device_type, kwargs.get("dtype")))
        return real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    amp = _train(tmp_path, tiny_data, name="amp", trainer_params={"epochs": 1, "amp": True}, device="cpu")
    full = _train(tmp_path, tiny_data, name="fp32", trainer_params={"epochs": 1}, device="cpu")
    assert seen == [("cpu", torch.bfloat16)]
    assert all(p.dtype == torch.float32 for p in amp.model.parameters())
    assert amp.metrics["test_mse_per_pixel"] == pytest.approx(full.metrics["test_mse_per_pixel"], rel=0.1)


@pytest.mark.parametrize(
    "trainer_params, fragment",
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"grad_clip": -1.0}, "grad_clip must be positive"),
        ({"plateau_factor": 1.5}, "plateau_factor"),
        ({"early_stopping": -2}, "early_stopping cannot be negative"),
    ],
)
def test_bad_trainer_values_are_config_errors(tmp_path, tiny_data, trainer_params, fragment):
    with pytest.raises(ConfigError, match=fragment):
        _train(tmp_path, tiny_data, trainer_params=trainer_params)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("loss", ["mse", "bce", "l1"])
def test_each_loss_trains(tmp_path, tiny_data, loss):
    result = _train(tmp_path, tiny_data, trainer_params={"epochs": 1}, loss=loss)
    assert read_metadata(result.checkpoint)["training"]["loss"] == loss
    assert result.metrics["train_recon"] > 0


def test_bce_refuses_outputs_outside_0_1(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match=r"needs decoder outputs in \[0, 1\]"):
        _train(
            tmp_path,
            tiny_data,
            loss="bce",
            params={"decoder": {"output_activation": "none"}},
            trainer_params={"epochs": 1, "lr": 1.0},
        )


def test_unknown_loss_suggests(tmp_path, tiny_data):
    with pytest.raises(UnknownComponentError, match=r"unknown loss 'mes'\. Did you mean: mse\?"):
        _train(tmp_path, tiny_data, loss="mes")


def test_regularizer_terms_are_logged_separately(tmp_path, tiny_data):
    result = _train(tmp_path, tiny_data, regularizers=["sparse", "l2"], trainer_params={"epochs": 1})
    m = result.metrics
    assert {"train_recon", "train_sparse", "train_l2"} <= set(m)
    assert m["train_loss"] == pytest.approx(m["train_recon"] + m["train_sparse"] + m["train_l2"])


def test_val_fraction_bounds(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match="val-fraction"):
        _train(tmp_path, tiny_data, val_fraction=1.0)
    result = _train(tmp_path, tiny_data, name="noval", val_fraction=0.0, trainer_params={"epochs": 1})
    assert "val_recon" not in result.metrics
    assert not (result.run_dir / "best.safetensors").exists()


def test_unavailable_device_is_refused(tmp_path, tiny_data):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="no CUDA device"):
        _train(tmp_path, tiny_data, device="cuda")


def test_cosine_decay_brings_the_learning_rate_to_zero(tmp_path, tiny_data):
    result = _train(tmp_path, tiny_data, trainer_params={"epochs": 3, "cosine": True, "lr": 1e-3})
    lrs = [m["lr"] for m in _history(result)]  # the LR at the end of each epoch
    assert lrs[0] < 1e-3 and lrs[0] > lrs[1] > lrs[2]
    assert lrs[2] == pytest.approx(0.0, abs=1e-12)


def test_cosine_and_plateau_together_are_refused(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match="either cosine or plateau_patience"):
        _train(tmp_path, tiny_data, trainer_params={"cosine": True, "plateau_patience": 2})


def test_time_limit_stops_before_an_epoch_that_would_overrun(tmp_path, tiny_data):
    result = _train(tmp_path, tiny_data, trainer_params={"epochs": 50, "time_limit": 1e-6})
    assert len(_history(result)) == 1
    assert result.metrics["stopped_by_time_limit"] == 1.0
