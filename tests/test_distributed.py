"""`ae train` under torchrun: two CPU processes with gloo match one process, and only rank 0 writes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from aecore.distributed import Distributed, from_environment

ARGS = [
    "train", "-e", "mlp", "--classes", "1", "--set", "encoder.hidden=32", "--latent-dim", "8",
    "--epochs", "2", "--batch-size", "64", "-q",
]  # fmt: skip


def _ae(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    result = subprocess.run(
        [sys.executable, "-m", "aecore", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


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
