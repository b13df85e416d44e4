"""``ae bench``: is this run faster on one thread or on every core of this machine?

On a dedicated machine more intra-op threads are faster. On a shared or
virtualised one they often are not: the virtual CPUs may be hyperthreads of
one physical core, or be descheduled by the host, and then threads spend
their time waiting for each other at every operator. The answer depends on
the machine and the model, so it is measured, not guessed: this command
trains the given run (the same options as ``ae train``) on a slice of its
data at each thread count, alternating, and prints the medians and the
faster choice, to pass as ``ae train --threads N``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from aecore.cli.completion import RUN_REQUEST
from aecore.cli.options import options_from
from aecore.cli.output import console
from aecore.errors import ConfigError
from aecore.hooks import hookimpl
from aecore.request import RunRequest

__all__ = ["bench_command", "measure_threads"]

#: RunRequest fields that make no sense for a timing run (it writes to a temporary folder).
EXCLUDED = ("threads", "epochs", "val_fraction", "out", "runs_root", "overwrite", "strict_hooks")


class _StepTimer:
    """Seconds of the second epoch (the first warms caches and allocators up), and its steps."""

    def __init__(self) -> None:
        self.marks: list[float] = []
        self.steps = 0

    @hookimpl
    def ae_train_start(self, run: Any, total_epochs: int | None, steps_per_epoch: int | None) -> None:
        self.marks.append(time.perf_counter())

    @hookimpl
    def ae_step_end(self, run: Any, epoch: int, step: int, batch_size: int, loss: Any) -> None:
        self.steps += 1

    @hookimpl
    def ae_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        import torch

        if torch.device(run.device).type == "cuda":
            torch.cuda.synchronize(run.device)
        self.marks.append(time.perf_counter())
        self.steps = 0 if epoch < 2 else self.steps

    def seconds_per_step(self) -> float:
        if len(self.marks) < 3:
            raise RuntimeError("the timed run ended before its second epoch")
        return (self.marks[-1] - self.marks[-2]) / max(1, self.steps)


def measure_threads(
    request: RunRequest, *, steps: int = 30, repeats: int = 3, counts: tuple[int, ...] | None = None
) -> dict[int, list[float]]:
    """Seconds per training step of ``request`` at each thread count, ``repeats`` times, alternating.

    Each measurement is a real run (``aecore.train``, the backend and hooks
    the request chooses) of two epochs of ``steps`` steps on the first rows
    of the request's training data, timed over the second epoch.
    """
    import torch

    from aecore import registry
    from aecore.config import config_from_dict
    from aecore.sources import load_dataset
    from aecore.training import check_request, train

    counts = counts or tuple(sorted({1, torch.get_num_threads()}))
    plan = check_request(request)
    trainer = registry.get("trainer", request.trainer)
    settings = config_from_dict(trainer.Config, plan.trainer_params, owner="trainer")
    batch = int(getattr(settings, "batch_size", 128))  # a trainer without batches: slices of 128
    dataset = load_dataset(request.data, request.data_dir)
    rows = min(len(dataset.train), steps * batch)
    if rows < batch:
        raise ConfigError(
            f"the training data has {rows} rows, fewer than one batch of {batch}; lower --batch-size."
        )
    sliced = replace(
        dataset,
        train=dataset.train.subset(torch.arange(rows)),
        test=dataset.test.subset(torch.arange(min(len(dataset.test), batch))),
    )
    times: dict[int, list[float]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="ae-bench-") as tmp:
        for rep in range(repeats):
            for n in counts:
                timer = _StepTimer()
                run = replace(request, data=None, threads=n, epochs=2, val_fraction=0.0)
                run = replace(run, out=str(Path(tmp) / f"{n}-{rep}"))
                train(run, data=sliced, progress=False, hooks=[timer])
                times[n].append(timer.seconds_per_step())
    return times


@options_from(RunRequest, exclude=EXCLUDED, complete=RUN_REQUEST)
def bench_command(
    ctx: typer.Context,
    values: dict[str, Any],
    steps: Annotated[int, typer.Option(min=1, help="Training steps per timed epoch.")] = 30,
    repeats: Annotated[int, typer.Option(min=1, help="Alternating measurements per thread count.")] = 3,
) -> None:
    """Time a run's training step at 1 thread and at every core, alternating; print the faster.

    Takes the options of 'ae train' (the same run is timed) and writes nothing.
    """
    import torch
    from rich.table import Table

    request = RunRequest.from_values(values)
    if request.encoder is None and request.preset is None:
        raise ConfigError("name the run to time: --encoder NAME or --preset NAME, as for 'ae train'.")
    cores = torch.get_num_threads()
    console.print(f"timing {steps} steps per run at 1 and {cores} thread(s), {repeats} times each ...")
    times = measure_threads(request, steps=steps, repeats=repeats)
    medians = {n: statistics.median(t) for n, t in times.items()}
    table = Table(title="Training step, median", title_justify="left")
    for column in ("threads", "ms/step", "spread", "÷ 1 thread"):
        table.add_column(column, justify="right")
    for n, median in medians.items():
        spread = f"{min(times[n]) * 1e3:.1f}–{max(times[n]) * 1e3:.1f}"
        table.add_row(str(n), f"{median * 1e3:.1f}", spread, f"{median / medians[1]:.2f}")
    console.print(table)
    best = min(medians, key=lambda n: medians[n])
    if len(medians) == 1:
        console.print("this machine offers torch one thread: nothing to choose.")
    else:
        console.print(f"faster here: --threads {best} ({medians[best] * 1e3:.1f} ms/step)")
