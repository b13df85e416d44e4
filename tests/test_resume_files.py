"""Hostile resume files: every field is checked before training continues, on finished runs too.

Each case edits a real ``resume.safetensors`` (its tensors or its JSON
record) and resumes it: the answer is one CheckpointError line, never a
KeyError, a TypeError from torch, NaN weights or a crash in the fused Adam
kernel. The files are written in the real on-disk format.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from aecore.cli import app
from aecore.errors import CheckpointError, RunDirectoryError
from aecore.state import RESUME_FILE, read_resume
from aecore.training import resume, train

PARAMS = {"encoder": {"hidden": (16,)}, "trainer": {"epochs": 1, "batch_size": 128, "plateau_patience": 0}}


@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    train("mlp", params=PARAMS, latent_dim=4, data=tiny_data, out=out, progress=False)
    return out


def _edited(finished, tmp_path, *, meta=None, tensors=None, done=True):
    """A copy of the run whose resume file has the given edits (``done=False``: as if interrupted)."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    path = run / RESUME_FILE
    saved = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        record = json.loads(f.metadata()["aecore.resume"])
    if not done:
        record["trainer"].update(done=False, epoch=1, step=2)
    if meta is not None:
        meta(record)
    if tensors is not None:
        tensors(saved)
    save_file(saved, str(path), metadata={"aecore.resume": json.dumps(record)})
    return run


def _set(key, value):
    return lambda t: t.update({key: value})


def _drop(key):
    return lambda t: t.pop(key)


def _weights(change):
    return lambda t: t.update({k: change(v) for k, v in t.items() if k.startswith("model.")})


def _trainer(**fields):
    return lambda m: m["trainer"].update(fields)


def _scheduler(**fields):
    return lambda m: m["trainer"]["scheduler"].update(fields)


def _group(**fields):
    return lambda m: m["trainer"]["optimizer"]["param_groups"][0].update(fields)


MOMENT = "trainer.optim.0.exp_avg"

TENSOR_CASES = {
    "a moment reshaped to [1]": (_set(MOMENT, torch.zeros(1)), "has shape (1,)"),
    "a 0-d moment": (_set(MOMENT, torch.zeros(())), "has shape ()"),
    "a float64 moment": (lambda t: t.update({MOMENT: t[MOMENT].double()}), "is float64"),
    "an int32 moment": (lambda t: t.update({MOMENT: t[MOMENT].int()}), "is int32"),
    "a NaN moment": (lambda t: t.update({MOMENT: t[MOMENT] * float("nan")}), "NaN or infinite"),
    "a negative mean of squares": (
        lambda t: t.update({"trainer.optim.0.exp_avg_sq": -torch.ones_like(t["trainer.optim.0.exp_avg_sq"])}),
        "negative",
    ),
    "a moment missing": (_drop(MOMENT), "Adam keeps"),
    "a negative step": (_set("trainer.optim.0.step", torch.tensor(-1.0)), "not a step count"),
    "a fractional step": (_set("trainer.optim.0.step", torch.tensor(1.5)), "not a step count"),
    "a step vector": (_set("trainer.optim.0.step", torch.zeros(2)), "not a step count"),
    "a bool step": (_set("trainer.optim.0.step", torch.tensor(True)), "not a step count"),
    "a moment for no parameter": (_set("trainer.optim.99.exp_avg", torch.zeros(3)), "for no parameter"),
    "the random state missing": (_drop("rng.torch"), "lacks the random state"),
    "a short random state": (_set("rng.torch", torch.zeros(10, dtype=torch.uint8)), "state 'rng.torch'"),
    "a float random state": (_set("rng.torch", torch.zeros(5056)), "random state 'rng.torch'"),
    "random bytes as random state": (
        _set("rng.torch", torch.randint(0, 255, (5056,), dtype=torch.uint8, generator=torch.Generator())),
        "torch rejects",
    ),
    "the shuffle state missing": (_drop("trainer.shuffle_rng"), "shuffle_rng"),
    "a stray tensor": (_set("junk", torch.zeros(2)), "no part of a run"),
    "NaN weights": (_weights(lambda v: v * float("nan")), "NaN"),
    "int64 weights": (_weights(lambda v: v.long()), "int64"),
    "a weight missing": (_drop("model.encoder.net.2.bias"), "encoder.net.2.bias"),
}  # fmt: skip

RECORD_CASES = {
    "no optimizer": (lambda m: m["trainer"].pop("optimizer"), "optimizer"),
    "no epoch": (lambda m: m["trainer"].pop("epoch"), "epoch"),
    "no done flag": (lambda m: m["trainer"].pop("done"), "done"),
    "an epoch as text": (_trainer(epoch="1"), "epoch"),
    "epoch 0": (_trainer(epoch=0), "epoch"),
    "a fractional position": (_trainer(step=1.5), "step"),
    "done as text": (_trainer(done="yes"), "done"),
    "metrics as a list": (_trainer(metrics=[1]), "metrics"),
    "metrics of text": (_trainer(metrics={"loss": "low"}), "metrics"),
    "a best loss as text": (_trainer(best="x"), "best"),
    "a learning rate as text": (_group(lr="x"), "'lr'"),
    "a negative learning rate": (_group(lr=-1.0), "'lr'"),
    "betas out of range": (_group(betas=[2.0, 0.9]), "'betas'"),
    "another model's parameters": (_group(params=[0, 1]), "do not hold this model's parameters"),
    "no parameter groups": (lambda m: m["trainer"]["optimizer"].pop("param_groups"), "parameter groups"),
    "scalars as text": (lambda m: m["trainer"]["optimizer"].update(scalars={"0.step": "x"}), "'0.step'"),
    "a scheduler as a list": (_trainer(scheduler=[1]), "scheduler"),
    "a scheduler of something else": (_trainer(scheduler={"optimizer": 5}), "scheduler"),
    "a scheduler's counter as text": (_scheduler(num_bad_epochs="x"), "scheduler"),
    "a trainer record as a list": (lambda m: m.update(trainer=[1]), "'trainer' table"),
    "no request": (lambda m: m.pop("request"), "'request' table"),
    "a history of text": (lambda m: m.update(history="x"), "history"),
    "a history of odd values": (lambda m: m.update(history=[{"epoch": "x"}]), "history"),
}  # fmt: skip


@pytest.mark.parametrize("done", [True, False], ids=["finished", "interrupted"])
@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
def test_a_damaged_resume_tensor_is_one_checkpoint_error(finished, tiny_data, tmp_path, case, done):
    change, fragment = TENSOR_CASES[case]
    run = _edited(finished, tmp_path, tensors=change, done=done)
    with pytest.raises((CheckpointError, RunDirectoryError)) as excinfo:
        resume(run, data=tiny_data, progress=False)
    assert fragment in str(excinfo.value) and "\n" not in str(excinfo.value)


@pytest.mark.parametrize("done", [True, False], ids=["finished", "interrupted"])
@pytest.mark.parametrize("case", sorted(RECORD_CASES))
def test_a_damaged_resume_record_is_one_checkpoint_error(finished, tiny_data, tmp_path, case, done):
    change, fragment = RECORD_CASES[case]
    run = _edited(finished, tmp_path, meta=change, done=done)
    with pytest.raises((CheckpointError, RunDirectoryError)) as excinfo:
        resume(run, data=tiny_data, progress=False)
    assert fragment in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_the_switches_of_this_run_win_over_the_files(finished, tiny_data, tmp_path):
    """fused/foreach/amsgrad in the file do not reach this run's optimizer: its own settings do."""
    run = _edited(finished, tmp_path, meta=_group(fused=False, foreach=True, amsgrad=True), done=False)
    result = resume(run, data=tiny_data, progress=False)
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_the_cli_prints_a_damaged_resume_file_in_one_line(finished, tmp_path):
    run = _edited(finished, tmp_path, tensors=_set("rng.torch", torch.zeros(10, dtype=torch.uint8)))
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "-q"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert len(result.stderr.splitlines()) == 1 and "random state 'rng.torch'" in result.stderr


def test_read_resume_still_reads_an_intact_file(finished):
    state = read_resume(finished)
    assert state.trainer["done"] is True and "torch" in state.rng


def test_restored_moments_take_their_parameters_memory_layout():
    """A fused Adam kernel pairs moments with parameters element by element in memory, so a
    channels-last parameter must get channels-last moments back from the (contiguous) file."""
    from aecore.state import load_optimizer_state, optimizer_state

    def adam_after_one_step(channels_last: bool) -> tuple[torch.nn.Conv2d, torch.optim.Adam]:
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(3, 4, 3)
        if channels_last:
            conv.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(conv.parameters(), lr=1e-2, fused=True)
        conv(torch.rand(2, 3, 5, 5)).square().mean().backward()
        optimizer.step()
        return conv, optimizer

    conv, optimizer = adam_after_one_step(channels_last=True)
    meta, tensors = optimizer_state(optimizer)
    tensors = {key: t.contiguous() for key, t in tensors.items()}  # as the resume file holds them
    assert any(t.stride() != conv.weight.stride() for t in tensors.values() if t.dim() == 4)
    fresh = torch.optim.Adam(conv.parameters(), lr=1e-2, fused=True)
    load_optimizer_state(fresh, meta, tensors)
    for p, held in fresh.state.items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert held[name].stride() == p.stride()
            torch.testing.assert_close(held[name], optimizer.state[p][name], rtol=0, atol=0)
