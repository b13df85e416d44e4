"""The TensorBoard hook plugin: real training runs read back with TensorBoard's own event reader."""

from __future__ import annotations

import io
import json
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import metadata as hparams_metadata

import aecore
from aecore import registry
from aecore.errors import ConfigError, HookWarning
from aecore.training.run import split_validation
from aecore_tensorboard import (
    ENABLE_ENV,
    IMAGE_TAG,
    IMAGES_ENV,
    LOG_DIR,
    TensorBoardLogger,
    flat_config,
    images_every,
    reconstruct,
    reconstruction_grid,
)

TINY = {"encoder": {"hidden": [16, 8]}, "trainer": {"batch_size": 16}}


@pytest.fixture(autouse=True)
def _default_settings(monkeypatch):
    """Each test starts from the plugin's defaults, whatever the shell running pytest has set."""
    for name in (ENABLE_ENV, IMAGES_ENV, "AECORE_STRICT_HOOKS"):
        monkeypatch.delenv(name, raising=False)


def _train(data, out, epochs=3, **fields):
    return aecore.train(
        "mlp", data=data, out=out, epochs=epochs, latent_dim=4, params=TINY, progress=False, **fields
    )


def _events(run_dir: Path) -> ea.EventAccumulator:
    acc = ea.EventAccumulator(
        str(run_dir / LOG_DIR), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0}
    )
    return acc.Reload()


def _hparams(acc: ea.EventAccumulator) -> dict:
    content = acc.PluginTagToContent("hparams")[hparams_metadata.SESSION_START_INFO_TAG]
    info = hparams_metadata.parse_session_start_info_plugin_data(content)
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


def _picture(event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


def test_entry_point_is_installed():
    registry.refresh()
    hooks = registry.list_components("hook", "tensorboard")
    assert [(e.dist, e.load()) for e in hooks] == [("aecore-tensorboard", TensorBoardLogger)]


def test_a_run_logs_every_metric_every_epoch_images_and_hparams(ae_tiny_dataset, ae_run_dir):
    result = _train(ae_tiny_dataset, ae_run_dir)
    acc = _events(result.run_dir)
    record = json.loads((result.run_dir / "metrics.json").read_text())
    history, final = record["history"], record["final"]

    names = {k for epoch in history for k in epoch} - {"epoch"}
    assert names <= set(acc.Tags()["scalars"])
    for name in names:
        logged = [(e.step, e.value) for e in acc.Scalars(name)]
        expected = [(h["epoch"], pytest.approx(h[name], rel=1e-6)) for h in history if name in h]
        assert logged == expected, name
    for name in ("test_mse_per_pixel", "test_sse_per_image"):  # the final figures, at the last epoch
        assert [(e.step, e.value) for e in acc.Scalars(name)] == [(3, pytest.approx(final[name], rel=1e-6))]

    # a grid every epoch (3 <= 10): the validation samples on top, their reconstructions below
    images = acc.Images(IMAGE_TAG)
    val = split_validation(ae_tiny_dataset.train, 0.1, 0)[1]
    k = min(8, len(val))
    assert [(e.step, e.width, e.height) for e in images] == [(s, 8 * k, 2 * 8) for s in (1, 2, 3)]
    samples = val.batch(slice(0, k))
    grid = reconstruction_grid(samples, reconstruct(result.model, samples))  # the final model's
    expected = (grid * 255).round().to(torch.uint8).expand(3, -1, -1).permute(1, 2, 0).numpy()
    last = _picture(images[-1]).astype(int)
    assert np.abs(last - expected).max() <= 1
    assert not np.array_equal(_picture(images[0]), _picture(images[-1]))  # the model learnt between

    hparams = _hparams(acc)
    assert hparams["encoder"] == "mlp" and hparams["encoder.hidden"] == "16,8"
    assert hparams["trainer.epochs"] == 3 and hparams["latent_dim"] == 4
    assert hparams["trainer.keep_best"] is True and hparams["loss"] == "mse"
    assert "trainer.grad_clip" not in hparams  # None: left out


def test_logging_leaves_training_exactly_as_it_was(ae_tiny_dataset, tmp_path, monkeypatch):
    logged = _train(ae_tiny_dataset, tmp_path / "on", epochs=2)
    monkeypatch.setenv(ENABLE_ENV, "0")
    plain = _train(ae_tiny_dataset, tmp_path / "off", epochs=2)
    assert (logged.run_dir / LOG_DIR).is_dir() and not (plain.run_dir / LOG_DIR).exists()
    assert logged.history == plain.history
    a, b = logged.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_image_schedule_follows_the_setting(ae_tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv(IMAGES_ENV, "2")
    result = _train(ae_tiny_dataset, tmp_path / "two", epochs=5)
    steps = [e.step for e in _events(result.run_dir).Images(IMAGE_TAG)]
    assert steps == [1, 2, 4, 5]  # the first, every second, the last

    monkeypatch.setenv(IMAGES_ENV, "0")
    result = _train(ae_tiny_dataset, tmp_path / "none", epochs=2)
    acc = _events(result.run_dir)
    assert acc.Tags()["images"] == [] and len(acc.Scalars("train_loss")) == 2


def test_default_image_schedule():
    assert images_every(10) == 1
    assert images_every(11) == 5
    assert images_every(None) == 5


def test_without_a_validation_split_the_grid_shows_training_samples(ae_tiny_dataset, ae_run_dir):
    result = _train(ae_tiny_dataset, ae_run_dir, epochs=2, val_fraction=0.0)
    images = _events(result.run_dir).Images(IMAGE_TAG)
    assert [(e.step, e.width, e.height) for e in images] == [(1, 64, 16), (2, 64, 16)]


def test_tables_get_scalars_and_hparams_but_no_images(ae_run_dir):
    table = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32)
    result = aecore.train(
        "mlp",
        data=table,
        out=ae_run_dir,
        epochs=2,
        latent_dim=2,
        params={"encoder": {"hidden": [8]}, "decoder": {"output_activation": "none"}},
        progress=False,
    )
    acc = _events(result.run_dir)
    assert acc.Tags()["images"] == []
    assert [e.step for e in acc.Scalars("train_loss")] == [1, 2]
    assert _hparams(acc)["input_shape"] == "5"


def test_turned_off_it_writes_nothing(ae_tiny_dataset, ae_run_dir, monkeypatch):
    monkeypatch.setenv(ENABLE_ENV, "off")
    result = _train(ae_tiny_dataset, ae_run_dir, epochs=1)
    assert not (result.run_dir / LOG_DIR).exists() and result.hook_failures == []


@pytest.mark.parametrize(
    ("name", "value"), [(ENABLE_ENV, "maybe"), (IMAGES_ENV, "-1"), (IMAGES_ENV, "often")]
)
def test_a_bad_setting_is_one_warning_and_the_run_goes_on(
    ae_tiny_dataset, ae_run_dir, monkeypatch, name, value
):
    monkeypatch.setenv(name, value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _train(ae_tiny_dataset, ae_run_dir, epochs=1)
    said = [str(w.message) for w in caught if issubclass(w.category, HookWarning)]
    assert len(said) == 1 and "'tensorboard'" in said[0] and name in said[0]
    assert result.checkpoint.is_file() and not (result.run_dir / LOG_DIR).exists()


def test_a_setting_error_names_the_variable(monkeypatch):
    monkeypatch.setenv(IMAGES_ENV, "often")
    with pytest.raises(ConfigError, match=IMAGES_ENV):
        images_every(3)


def test_an_unwritable_log_dir_is_one_warning_and_the_checkpoint_is_kept(ae_tiny_dataset, ae_run_dir):
    (ae_run_dir / LOG_DIR).write_text("a file where the folder should be")
    threads = threading.active_count()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _train(ae_tiny_dataset, ae_run_dir, epochs=2, overwrite=True)
    said = [str(w.message) for w in caught if issubclass(w.category, HookWarning)]
    assert len(said) == 1 and "'tensorboard'" in said[0]
    assert result.checkpoint.is_file() and len(result.history) == 2
    assert [f["plugin"] for f in result.hook_failures] == ["'tensorboard' from aecore-tensorboard 0.1.0"]
    recorded = json.loads((result.run_dir / "metrics.json").read_text())["hook_failures"]
    assert recorded == result.hook_failures
    assert (ae_run_dir / LOG_DIR).read_text() == "a file where the folder should be"
    assert threading.active_count() == threads  # no writer thread left behind


# -- the logger on its own, with a stand-in run ------------------------------------------------


def _fake_run(out_dir: Path, history=None):
    resume = None if history is None else SimpleNamespace(history=history)
    return SimpleNamespace(out_dir=out_dir, info={"val_size": 0}, resume=resume)


def test_a_run_that_fails_before_any_epoch_leaves_no_folder(tmp_path):
    logger, run = TensorBoardLogger(), _fake_run(tmp_path)
    logger.ae_train_start(run=run, total_epochs=3)
    logger.ae_train_end(run=run, metrics={})
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_run_replaces_the_epochs_it_replays(tmp_path):
    first, run = TensorBoardLogger(), _fake_run(tmp_path)
    first.ae_train_start(run=run, total_epochs=4)
    for epoch in (1, 2, 3):  # epoch 3 was logged, but the run died before saving its state
        first.ae_epoch_end(metrics={"epoch": epoch, "train_loss": 1.0 / epoch})
    first._close()

    second, resumed = TensorBoardLogger(), _fake_run(tmp_path, history=[{"epoch": 1}, {"epoch": 2}])
    second.ae_train_start(run=resumed, total_epochs=4)
    for epoch in (3, 4):
        second.ae_epoch_end(metrics={"epoch": epoch, "train_loss": 0.01 * epoch})
    second.ae_train_end(run=resumed, metrics={})
    logged = [(e.step, e.value) for e in _events(tmp_path).Scalars("train_loss")]
    assert logged == [(1, 1.0), (2, 0.5), (3, pytest.approx(0.03)), (4, pytest.approx(0.04))]


def test_reconstruct_restores_the_mode_and_the_random_state():
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(4, 4))
    x = torch.ones(2, 4)
    before = torch.get_rng_state()
    out = reconstruct(model, x)
    assert model.training and torch.equal(torch.get_rng_state(), before)
    assert torch.equal(out, model.eval()(x))  # evaluated without dropout


def test_reconstruction_grid_layout_and_range():
    inputs = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2) / 24
    recons = torch.full((2, 12), 7.0)  # flat, out of range: reshaped and clamped
    grid = reconstruction_grid(inputs, recons)
    assert grid.shape == (3, 4, 4)
    assert torch.equal(grid[:, :2, :2], inputs[0]) and torch.equal(grid[:, :2, 2:], inputs[1])
    assert torch.equal(grid[:, 2:], torch.ones(3, 2, 4))
    shifted = reconstruction_grid(inputs * 10 - 5, recons, display=(-5.0, 5.0))
    assert torch.allclose(shifted[:, :2, :2], inputs[0])


def test_flat_config_flattens_parameters():
    meta = {
        "model": {
            "encoder": {"name": "conv", "params": {"channels": [8, 16], "norm": {"kind": "batch"}}},
            "decoder": {"name": "conv", "params": {}},
            "regularizers": [{"name": "sparse", "params": {"weight": 0.1}}],
            "latent_dim": 8,
            "input_shape": [1, 28, 28],
        },
        "training": {
            "trainer": {"name": "default", "params": {"epochs": 2, "grad_clip": None}},
            "request": {"data": "mnist"},
            "seed": 3,
        },
        "data": {"train_size": 100},
    }
    flat = flat_config(meta)
    assert flat["encoder.channels"] == "8,16" and flat["encoder.norm.kind"] == "batch"
    assert flat["regularizers"] == "sparse" and flat["sparse.weight"] == 0.1
    assert flat["input_shape"] == "1,28,28" and flat["data"] == "mnist" and flat["data.train_size"] == 100
    assert flat["trainer.grad_clip"] is None and flat["seed"] == 3
    assert all(v is None or isinstance(v, bool | int | float | str) for v in flat.values())
