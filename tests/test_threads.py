"""Thread count as a choice: ``--threads`` / ``RunRequest.threads`` and ``ae bench``, which measures it."""

from __future__ import annotations

import pytest
import torch
from helpers import ok, one_line_error, table_rows
from typer.testing import CliRunner

import aecore
from aecore.cli import app
from aecore.cli import output as cli_output
from aecore.cli.bench import measure_threads
from aecore.errors import ConfigError
from aecore.hooks import hookimpl
from aecore.request import RunRequest

FAST = {"encoder": {"hidden": [16]}, "decoder": {"hidden": [16]}}


class _SeenThreads:
    def __init__(self) -> None:
        self.seen: set[int] = set()

    @hookimpl
    def ae_step_end(self, run, epoch, step, batch_size, loss) -> None:
        self.seen.add(torch.get_num_threads())


@pytest.fixture
def runner(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_output.rich_console(), "_width", 200)
    return CliRunner()


def _tiny(n: int = 256) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_run_trains_at_the_threads_asked_for_and_gives_the_callers_setting_back(threads, tmp_path):
    before = torch.get_num_threads()
    other = 3 if before != 3 else 4
    torch.set_num_threads(other)
    try:
        seen = _SeenThreads()
        aecore.train(
            encoder="mlp", data=_tiny(), threads=threads, epochs=1, params=FAST, out=tmp_path / "r",
            progress=False, hooks=[seen],
        )  # fmt: skip
        assert seen.seen == {threads}
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)


def test_without_threads_the_run_keeps_torchs_setting(tmp_path):
    seen = _SeenThreads()
    aecore.train(
        encoder="mlp", data=_tiny(), epochs=1, params=FAST, out=tmp_path / "r", progress=False, hooks=[seen]
    )
    assert seen.seen == {torch.get_num_threads()}


def test_threads_below_one_is_a_config_error(runner):
    with pytest.raises(ConfigError, match="threads"):
        RunRequest.from_values({"encoder": "mlp", "threads": 0})
    one_line_error(runner.invoke(app, ["train", "-e", "mlp", "--threads", "0"]), "threads")


def test_measure_threads_times_every_count_alternating_in_real_runs():
    request = RunRequest(encoder="mlp", params=FAST, batch_size=32)
    times = measure_threads(request, steps=3, repeats=2, counts=(1, 2))
    assert set(times) == {1, 2}
    assert all(len(t) == 2 and all(0 < s < 60 for s in t) for t in times.values())


def test_ae_bench_prints_both_counts_and_the_faster_one(runner, tmp_path):
    args = ["bench", "-e", "mlp", "--set", "encoder.hidden=16", "--set", "decoder.hidden=16"]
    out = ok(runner.invoke(app, [*args, "--batch-size", "32", "--steps", "3", "--repeats", "1"]))
    rows = {r[0]: r for r in table_rows(out) if r and r[0].isdigit()}
    assert "1" in rows and str(torch.get_num_threads()) in rows
    assert "faster here: --threads" in out or "nothing to choose" in out
    assert list(tmp_path.iterdir()) == []  # it writes nothing where it runs


def test_ae_bench_errors_are_one_line(runner):
    one_line_error(runner.invoke(app, ["bench"]), "--encoder")
    one_line_error(runner.invoke(app, ["bench", "-e", "nosuchencoder"]), "nosuchencoder")
    one_line_error(runner.invoke(app, ["bench", "-e", "mlp", "--threads", "2"]), "--threads")
