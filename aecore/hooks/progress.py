"""The Rich progress display, implemented as an ordinary ``aecore.hooks`` plugin.

Shows one bar per run with the current loss and images per second, and a
line per epoch with its metrics. ``ae train --quiet`` leaves it out.

It redraws from the training thread a few times a second and has no
refresh thread of its own: on a small CPU a background redraw competes with
the compute threads and costs more than the drawing itself.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from aecore.hooks import hookimpl

_REFRESH_SECONDS = 0.25


class RichProgress:
    """Progress bar with loss and throughput; epoch summaries on their own lines."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task: Any = None
        self._samples = 0
        self._pending = 0
        self._started = 0.0
        self._last_refresh = 0.0

    @hookimpl
    def ae_train_start(self, run: Any, total_epochs: int | None, steps_per_epoch: int | None) -> None:
        info = run.info
        regs = ", ".join(info.get("regularizers", [])) or "none"
        self.console.print(
            f"[bold]training[/] encoder={info.get('encoder')} decoder={info.get('decoder')} "
            f"reg={regs} on {info.get('data')} ({info.get('train_size')} train, "
            f"{info.get('val_size')} val) · {info.get('parameters', 0):,} parameters · "
            f"device={run.device} → {run.out_dir}",
            highlight=False,
        )
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} img/s"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
            auto_refresh=False,
        )
        self.task = self.progress.add_task(
            "epoch 1",
            total=total_epochs * steps_per_epoch if total_epochs and steps_per_epoch else None,
            loss="-",
            rate="-",
        )
        self.progress.start()
        self.progress.refresh()
        self._samples = self._pending = 0
        self._started = self._last_refresh = time.perf_counter()

    @hookimpl
    def ae_step_end(self, run: Any, epoch: int, step: int, batch_size: int, loss: Any) -> None:
        if self.progress is None:
            return
        self._samples += batch_size
        self._pending += 1
        now = time.perf_counter()
        if now - self._last_refresh < _REFRESH_SECONDS:
            return
        self._last_refresh = now
        self._flush(epoch, loss, now)

    def _flush(self, epoch: int, loss: Any, now: float) -> None:
        assert self.progress is not None
        rate = self._samples / max(now - self._started, 1e-9)
        self.progress.update(
            self.task,
            advance=self._pending,
            description=f"epoch {epoch}",
            loss=f"{float(loss):.4f}",
            rate=f"{rate:,.0f}",
        )
        self._pending = 0
        self.progress.refresh()

    @hookimpl
    def ae_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        shown = "  ".join(f"{k}={v:.5g}" for k, v in metrics.items() if k != "epoch")
        line = f"epoch {epoch}: {shown}"
        if self.progress is not None:
            self._flush(epoch, metrics.get("train_loss", float("nan")), time.perf_counter())
            self.progress.console.print(line, highlight=False)
        else:
            self.console.print(line, highlight=False)

    @hookimpl
    def ae_train_end(self, run: Any, metrics: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
