"""`ae train` under torchrun: two CPU processes with gloo match one process, and only rank 0 writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from aecore.cli.train import _without_nproc
from aecore.distributed import Distributed, from_environment
from aecore.state import RESUME_FILE, read_resume
from aecore.training.lock import RunLock

ARGS = [
    "train", "-e", "mlp", "--classes", "1", "--set", "encoder.hidden=32", "--latent-dim", "8",
    "--epochs", "2", "--batch-size", "64", "-q",
]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def _ae(args: list[str], cwd, *, code: int = 0, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "aecore", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == code, result.stderr[-3000:]
    return result


def _one_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The job's failure is one line: no second copy from another rank, no launcher traceback."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_two_gloo_processes_match_single_process_training_and_write_once(tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    _ae(ARGS, single)
    double = tmp_path / "double"
    double.mkdir()
    result = _ae([*ARGS, "--nproc", "2"], double)

    # Only rank 0 wrote: one run directory (no runs/mlp-2 from rank 1), one of each file.
    assert [p.name for p in (double / "runs").iterdir()] == ["mlp"]
    assert sorted(p.name for p in (double / "runs" / "mlp").iterdir()) == sorted(
        p.name for p in (single / "runs" / "mlp").iterdir()
    )
    assert result.stdout.count("test: MSE/pixel") == 1  # rank 0 speaks for the job

    a = load_file(single / "runs" / "mlp" / "model.safetensors")
    b = load_file(double / "runs" / "mlp" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:  # same steps, same global batch: equal up to summation order
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


def test_environment_detection_and_sharing(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert from_environment() == Distributed(0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    job = from_environment()
    assert (job.rank, job.world_size, job.active, job.is_main) == (2, 3, True, False)
    parts = [Distributed(r, 3).share(10) for r in range(3)]
    assert [list(range(10))[p] for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_batches_split_each_global_batch_across_ranks(tiny_data):
    generator_state = torch.Generator().manual_seed(3).get_state()

    def batches(part):
        g = torch.Generator()
        g.set_state(generator_state)
        return list(tiny_data.train.batches(100, generator=g, shuffle=True, part=part))

    whole = batches(None)
    halves = zip(batches((0, 2)), batches((1, 2)), strict=True)
    for full, (first, second) in zip(whole, halves, strict=True):
        assert torch.equal(torch.cat([first, second]), full)


# -- what --nproc reports ---------------------------------------------------------------------------

#: Makes one rank fail on its own, in the middle of training (the others wait for it in a collective).
BREAK_ONE_RANK = """
import os

if os.environ.get("RANK") == os.environ.get("AE_TEST_BREAK_RANK"):
    import aecore.training.default as default
    from aecore.errors import DataError

    def validate(*args, **kwargs):
        raise DataError(f"rank {os.environ['RANK']} lost its data")

    default.DefaultTrainer._validate = validate
"""


def test_nproc_is_taken_out_of_the_command_each_process_runs():
    assert _without_nproc(["train", "--nproc", "2", "-e", "mlp", "--nproc=3", "-q"]) == [
        "train",
        "-e",
        "mlp",
        "-q",
    ]


@pytest.mark.slow
def test_a_failure_under_nproc_is_one_line_with_the_exit_code_of_the_process(tmp_path):
    # Every rank fails alike (a bad trainer parameter): said once.
    bad = _ae(
        [*ARGS, "--set", "trainer.batch_size=0", "--out", str(tmp_path / "bad"), "--nproc", "2"],
        tmp_path,
        code=2,
    )
    _one_line(bad, "batch_size")
    assert not (tmp_path / "bad").exists()

    # Only rank 0 fails (the run directory is another run's): its line, its code.
    held = tmp_path / "held"
    held.mkdir()
    with RunLock.acquire(held, busy="wait", unwritable="elsewhere"):
        busy = _ae([*ARGS, "--out", str(held), "--overwrite", "--nproc", "2"], tmp_path, code=2)
    _one_line(busy, f"pid {os.getpid()}", "in use by another run")

    # Only rank 1 fails, mid-training, while rank 0 waits for it: rank 1's line, not rank 0's fallout.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BREAK_ONE_RANK)
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    broken = _ae([*ARGS, "--out", str(tmp_path / "broken"), "--nproc", "2"], tmp_path, code=2,
                 PYTHONPATH=path, AE_TEST_BREAK_RANK="1")  # fmt: skip
    _one_line(broken, "rank 1 lost its data")


@pytest.mark.slow
def test_ctrl_c_under_nproc_stops_every_process_and_saves_once(tmp_path):
    out = tmp_path / "run"
    args = [
        *ARGS,
        "--epochs",
        "500",
        "--set",
        "trainer.save_every_steps=1",
        "--out",
        str(out),
        "--nproc",
        "2",
    ]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "aecore", *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / RESUME_FILE).exists():
            assert launcher.poll() is None, launcher.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        launcher.send_signal(signal.SIGINT)  # as Ctrl-C in a terminal: the launcher alone receives it
        _, err = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 130, err
    assert err.splitlines() == [err.strip()] and "training stopped by SIGINT" in err, err
    assert f"Resume with: ae train --resume {out}" in err
    state = read_resume(out)
    assert state.trainer["step"] >= 1 or state.trainer["epoch"] > 1
