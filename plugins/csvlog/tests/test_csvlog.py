"""The csvlog hook plugin: a real training run, the hook calls, widening, resuming, failures."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from aecore import registry
from aecore.data import Dataset
from aecore.hooks import hookimpl
from aecore.protocols import RunContext
from aecore.sources import load_dataset
from aecore.training import train
from aecore_csvlog import CHECKPOINTS_FILE, METRICS_FILE, CsvLogger, CsvLogWarning, read_rows

SMALL = {"encoder": {"hidden": [32]}, "trainer": {"epochs": 2, "batch_size": 100}}


@pytest.fixture(scope="module")
def small_data() -> Dataset:
    """1,000 training and 200 test images from the embedded MNIST sample."""
    full = load_dataset("embedded")
    train_part = full.train.subset(torch.arange(1000))
    test_part = full.test.subset(torch.arange(200))
    return Dataset("small", train_part, test_part, {"name": "small"})


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_entry_point_is_installed():
    registry.refresh()
    hooks = registry.list_components("hook", "csvlog")
    assert [(e.dist, e.load()) for e in hooks] == [("aecore-csvlog", CsvLogger)]


@pytest.mark.slow
def test_training_run_writes_one_row_per_epoch(tmp_path, small_data):
    registry.refresh()
    result = train("mlp", params=SMALL, latent_dim=8, data=small_data, out=tmp_path / "run", progress=False)

    history = json.loads((result.run_dir / "metrics.json").read_text())["history"]
    rows = read_csv(result.run_dir / METRICS_FILE)
    assert len(rows) == len(history) == 2
    assert list(rows[0]) == list(history[0])  # the columns, in the trainer's order
    for row, epoch in zip(rows, history, strict=True):
        assert {k: float(v) for k, v in row.items()} == {k: float(v) for k, v in epoch.items()}
    assert [int(r["epoch"]) for r in rows] == [1, 2]

    saved = read_csv(result.run_dir / CHECKPOINTS_FILE)
    assert saved[-1]["file"] == "model.safetensors"
    assert Path(saved[-1]["path"]) == result.checkpoint
    assert {r["file"] for r in saved} <= {"model.safetensors", "best.safetensors"}
    assert all(Path(r["path"]).is_file() for r in saved)
    assert [p.name for p in result.run_dir.iterdir() if p.name.endswith(".tmp")] == []


class Counter:
    """A third-party hook implementation, registered through ``train(hooks=[...])``."""

    def __init__(self) -> None:
        self.calls: dict[str, list[dict]] = {}

    def _record(self, hook: str, **kwargs) -> None:
        self.calls.setdefault(hook, []).append(kwargs)

    @hookimpl
    def ae_train_start(self, run, total_epochs, steps_per_epoch):
        self._record("ae_train_start", run=run, total_epochs=total_epochs, steps_per_epoch=steps_per_epoch)

    @hookimpl
    def ae_step_end(self, run, epoch, step, batch_size, loss):
        self._record("ae_step_end", run=run, epoch=epoch, step=step, batch_size=batch_size, loss=loss)

    @hookimpl
    def ae_epoch_end(self, run, epoch, metrics):
        self._record("ae_epoch_end", run=run, epoch=epoch, metrics=metrics)

    @hookimpl
    def ae_checkpoint_saved(self, run, path, metrics):
        self._record("ae_checkpoint_saved", run=run, path=path, metrics=metrics)

    @hookimpl
    def ae_train_end(self, run, metrics):
        self._record("ae_train_end", run=run, metrics=metrics)


@pytest.mark.slow
def test_third_party_hooks_are_called_with_the_right_arguments(tmp_path, small_data):
    counter = Counter()
    result = train(
        "mlp",
        params=SMALL,
        latent_dim=8,
        data=small_data,
        out=tmp_path / "run",
        progress=False,
        hooks=[counter],
    )
    calls = counter.calls
    runs = {id(c["run"]) for hook in calls.values() for c in hook}
    assert len(runs) == 1  # one RunContext throughout
    run = calls["ae_train_start"][0]["run"]
    assert isinstance(run, RunContext) and run.out_dir == result.run_dir

    train_size = 1000 - 100  # val_fraction 0.1
    steps = math.ceil(train_size / 100)
    assert [(c["total_epochs"], c["steps_per_epoch"]) for c in calls["ae_train_start"]] == [(2, steps)]

    step_calls = calls["ae_step_end"]
    assert len(step_calls) == 2 * steps
    assert [(c["epoch"], c["step"]) for c in step_calls] == [(e, s) for e in (1, 2) for s in range(steps)]
    assert sum(c["batch_size"] for c in step_calls if c["epoch"] == 1) == train_size
    assert all(c["loss"].dim() == 0 and not c["loss"].requires_grad for c in step_calls)

    epochs = calls["ae_epoch_end"]
    assert [c["epoch"] for c in epochs] == [1, 2]
    assert [c["metrics"] for c in epochs] == result.history
    assert all({"train_loss", "train_recon", "val_recon"} <= c["metrics"].keys() for c in epochs)

    saved = calls["ae_checkpoint_saved"]
    assert saved[-1]["path"] == result.checkpoint
    assert saved[-1]["metrics"] == result.metrics
    assert all(c["path"].parent == result.run_dir and c["path"].is_file() for c in saved)

    assert [c["metrics"] for c in calls["ae_train_end"]] == [result.metrics]
    assert "test_mse_per_pixel" in result.metrics


# -- the logger on its own, with a stand-in run ------------------------------------------------


def fake_run(out_dir: Path, *, resumed: bool = False) -> SimpleNamespace:
    return SimpleNamespace(out_dir=out_dir, info={"resumed": resumed})


def test_new_metric_names_widen_the_header(tmp_path):
    logger, run = CsvLogger(), fake_run(tmp_path)
    logger.ae_train_start(run=run, total_epochs=3, steps_per_epoch=1)
    assert read_csv(tmp_path / METRICS_FILE) == []
    assert (tmp_path / METRICS_FILE).read_text() == "epoch\n"

    logger.ae_epoch_end(run=run, epoch=1, metrics={"epoch": 1, "train_loss": 0.5})
    logger.ae_epoch_end(run=run, epoch=2, metrics={"epoch": 2, "train_loss": 0.25, "val_recon": 0.1})
    logger.ae_epoch_end(run=run, epoch=3, metrics={"epoch": 3, "val_recon": 1 / 3})
    text = (tmp_path / METRICS_FILE).read_text()
    assert text.splitlines() == [
        "epoch,train_loss,val_recon",
        "1,0.5,",
        "2,0.25,0.1",
        f"3,,{1 / 3!r}",
    ]
    assert float(read_csv(tmp_path / METRICS_FILE)[2]["val_recon"]) == 1 / 3  # exact round trip
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINTS_FILE, METRICS_FILE]  # no temp files


def test_resume_keeps_rows_and_replaces_a_replayed_epoch(tmp_path):
    first, run = CsvLogger(), fake_run(tmp_path)
    first.ae_train_start(run=run, total_epochs=3, steps_per_epoch=1)
    for epoch in (1, 2):
        first.ae_epoch_end(run=run, epoch=epoch, metrics={"epoch": epoch, "train_loss": 1.0 / epoch})
    first.ae_checkpoint_saved(run=run, path=tmp_path / "model.safetensors", metrics={"epoch": 2})

    # interrupted after logging epoch 2 but before its resume state was saved: epoch 2 runs again
    second, resumed = CsvLogger(), fake_run(tmp_path, resumed=True)
    second.ae_train_start(run=resumed, total_epochs=3, steps_per_epoch=1)
    for epoch in (2, 3):
        second.ae_epoch_end(run=resumed, epoch=epoch, metrics={"epoch": epoch, "train_loss": 0.1 * epoch})
    rows = read_csv(tmp_path / METRICS_FILE)
    assert [(r["epoch"], r["train_loss"]) for r in rows] == [
        ("1", "1.0"),
        ("2", "0.2"),
        ("3", "0.30000000000000004"),
    ]
    assert [r["epoch"] for r in read_csv(tmp_path / CHECKPOINTS_FILE)] == ["2"]


def test_a_fresh_run_starts_new_files(tmp_path):
    (tmp_path / METRICS_FILE).write_text("epoch,old\n7,1\n")
    logger, run = CsvLogger(), fake_run(tmp_path)
    logger.ae_train_start(run=run, total_epochs=1, steps_per_epoch=1)
    assert read_rows(tmp_path / METRICS_FILE) == (["epoch"], [])


def test_a_run_that_fails_before_any_epoch_leaves_no_files(tmp_path):
    logger, run = CsvLogger(), fake_run(tmp_path)
    logger.ae_train_start(run=run, total_epochs=1, steps_per_epoch=1)
    logger.ae_train_end(run=run, metrics={})
    assert list(tmp_path.iterdir()) == []


def test_a_failed_run_keeps_the_epochs_it_logged(tmp_path):
    logger, run = CsvLogger(), fake_run(tmp_path)
    logger.ae_train_start(run=run, total_epochs=2, steps_per_epoch=1)
    logger.ae_epoch_end(run=run, epoch=1, metrics={"epoch": 1, "train_loss": 0.5})
    logger.ae_train_end(run=run, metrics={})
    assert len(read_csv(tmp_path / METRICS_FILE)) == 1


def test_a_write_failure_warns_once_and_training_goes_on(tmp_path):
    missing = tmp_path / "file-not-folder"
    missing.write_text("")
    logger, run = CsvLogger(), fake_run(missing)  # writing 'inside' a file fails
    with pytest.warns(CsvLogWarning, match="CSV logging stops") as caught:
        logger.ae_train_start(run=run, total_epochs=2, steps_per_epoch=1)
        logger.ae_epoch_end(run=run, epoch=1, metrics={"epoch": 1, "train_loss": 0.5})
    assert len(caught) == 1
