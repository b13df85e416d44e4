"""Interrupted runs: Ctrl-C, SIGKILL at random moments, and resuming bit for bit."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from aecore.cli import app
from aecore.errors import CheckpointError, ConfigError
from aecore.state import RESUME_FILE, read_resume
from aecore.testing import InterruptAt
from aecore.training import resume, train
from aecore.training.default import TrainingInterrupted

PARAMS = {
    "encoder": {"hidden": (32,), "dropout": 0.1},
    "trainer": {"epochs": 3, "batch_size": 64, "save_every_steps": 2, "plateau_patience": 0},
}


def _train(tiny_data, out, **kwargs):
    return train(
        "mlp",
        regularizers=["denoising"],  # consumes the global RNG every step
        params=PARAMS,
        latent_dim=8,
        data=tiny_data,
        out=out,
        progress=False,
        **kwargs,
    )


def _equal_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("at", [(1, 0), (2, 5), (3, 13)])
def test_ctrl_c_saves_state_and_resume_is_bit_identical(tiny_data, tmp_path, at):
    reference = _train(tiny_data, tmp_path / "reference")
    with pytest.raises(TrainingInterrupted, match=r"ae train --resume .*interrupted") as info:
        _train(tiny_data, tmp_path / "interrupted", hooks=[InterruptAt(*at)])
    assert info.value.exit_code == 130
    assert f"epoch {at[0]}, step {at[1] + 1}" in str(info.value)
    state = read_resume(tmp_path / "interrupted")
    assert (state.trainer["epoch"], state.trainer["step"]) == (at[0], at[1] + 1)

    resumed = resume(tmp_path / "interrupted", data=tiny_data, progress=False)
    assert _equal_weights(reference.model, resumed.model)
    assert resumed.history == reference.history  # per-epoch figures continue seamlessly
    assert resumed.metrics["test_sse_per_image"] == reference.metrics["test_sse_per_image"]


def test_resuming_a_finished_run_changes_nothing(tiny_data, tmp_path):
    done = _train(tiny_data, tmp_path / "run")
    again = resume(tmp_path / "run", data=tiny_data, progress=False)
    assert _equal_weights(done.model, again.model)
    assert again.metrics["test_sse_per_image"] == done.metrics["test_sse_per_image"]


def test_resume_errors_are_clear(tiny_data, tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        resume(tmp_path, data=tiny_data)
    _train(tiny_data, tmp_path / "run")
    with pytest.raises(ConfigError, match="in-memory dataset"):
        resume(tmp_path / "run")  # started from a Dataset object, not a name
    (tmp_path / "run" / RESUME_FILE).write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(CheckpointError, match="not an aecore resume file"):
        resume(tmp_path / "run", data=tiny_data)
    (tmp_path / "run" / RESUME_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        resume(tmp_path / "run", data=tiny_data)


def test_cli_interrupt_prints_how_to_resume_and_resume_refuses_new_options(tmp_path, monkeypatch):
    from aecore.training import run as run_module

    real = run_module.plugin_manager
    monkeypatch.setattr(
        run_module, "plugin_manager", lambda hooks, **kw: real([*hooks, InterruptAt(1, 2)], **kw)
    )
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", "-e", "mlp", "--set", "encoder.hidden=16", "--classes", "1", "-q", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 130
    assert result.stderr.strip().endswith(f"Resume with: ae train --resume {out}")
    assert result.stderr.count("\n") == 1
    refused = runner.invoke(app, ["train", "--resume", str(out), "--epochs", "3"])
    assert refused.exit_code == 2 and "drop --epochs" in refused.stderr
    monkeypatch.setattr(run_module, "plugin_manager", real)
    finished = runner.invoke(app, ["train", "--resume", str(out), "-q"])
    assert finished.exit_code == 0, finished.stderr
    assert (out / "model.safetensors").exists()


# -- SIGKILL at random moments ------------------------------------------------------------------

CLI = [
    "train", "-e", "mlp", "--reg", "denoising", "--classes", "1", "--latent-dim", "8",
    "--set", "encoder.hidden=32", "--set", "encoder.dropout=0.1", "--epochs", "3", "--batch-size", "64",
    "--set", "trainer.save_every_steps=1", "-q",
]  # fmt: skip


def _ae(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # same arithmetic in every run
    code = "import sys; from aecore.cli import main; sys.argv = ['ae', *sys.argv[1:]]; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_weights(tmp_path):
    reference = _ae(*CLI, "--out", str(tmp_path / "reference"))
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()

    run = tmp_path / "killed"
    rng = random.Random(1234)
    process = _ae(*CLI, "--out", str(run))
    kills = 0
    while kills < 3:
        state_file = run / RESUME_FILE
        deadline = time.monotonic() + 120
        while not state_file.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if process.poll() is not None:
            break  # finished before we could kill it: still a valid outcome
        time.sleep(rng.uniform(0.0, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        state = read_resume(run)  # whatever moment the kill hit, the state file loads
        assert state.trainer["epoch"] >= 1
        process = _ae("train", "--resume", str(run), "-q")
    assert process.wait(timeout=300) == 0, process.stderr.read().decode()
    assert kills >= 1

    expected = load_file(tmp_path / "reference" / "model.safetensors")
    got = load_file(run / "model.safetensors")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_resume_restores_the_cosine_schedule(tiny_data, tmp_path):
    params = {"encoder": {"hidden": (16,)}, "trainer": {"epochs": 2, "batch_size": 64, "cosine": True}}

    def run(out, **kw):
        return train("mlp", params=params, latent_dim=4, data=tiny_data, out=out, progress=False, **kw)

    reference = run(tmp_path / "reference")
    with pytest.raises(TrainingInterrupted):
        run(tmp_path / "interrupted", hooks=[InterruptAt(1, 6)])
    resumed = resume(tmp_path / "interrupted", data=tiny_data, progress=False)
    assert _equal_weights(reference.model, resumed.model)
    assert [m["lr"] for m in resumed.history] == [m["lr"] for m in reference.history]
