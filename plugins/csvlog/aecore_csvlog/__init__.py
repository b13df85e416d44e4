"""Training metrics as CSV files in the run directory: an aecore hook plugin.

``RUN/metrics.csv`` gets one row per epoch with every figure the trainer
reports (``epoch``, ``train_loss``, ``train_<term>``, ``lr``, ``val_recon``,
...). The columns are the union of the metric names in the order they first
appear; when a later epoch brings a new name, the file is rewritten with the
wider header and earlier rows leave that column empty. ``RUN/checkpoints.csv``
gets one row per checkpoint written (``ae_checkpoint_saved``).

Crash safety: every update rewrites the whole file through a temporary file
in the same folder, flushed to disk and renamed over the old one
(:func:`aecore.checkpoint.atomic_write_bytes`). A crash or a kill at any
moment leaves either the previous complete file or the new complete file,
never a half-written row. Rewriting costs O(epochs) per epoch, which is
nothing next to an epoch of training.

A resumed run (``ae train --resume``) keeps the rows already written; a
replayed epoch replaces its earlier row instead of adding a second one. A
failure to write (a full disk, a read-only folder) is warned about once and
logging stops: a logger must not stop training.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aecore.checkpoint import atomic_write_bytes
from aecore.hooks import hookimpl

__all__ = ["CHECKPOINTS_FILE", "METRICS_FILE", "CsvLogWarning", "CsvLogger", "read_rows", "to_csv"]

METRICS_FILE = "metrics.csv"
CHECKPOINTS_FILE = "checkpoints.csv"
CHECKPOINT_COLUMNS = ("epoch", "file", "path", "saved_at")


class CsvLogWarning(UserWarning):
    """A CSV file could not be written; logging stopped, training goes on."""


class CsvLogger:
    """Writes RUN/metrics.csv (one row per epoch) and RUN/checkpoints.csv (one row per checkpoint)."""

    def __init__(self) -> None:
        self.out_dir: Path | None = None
        self.columns: list[str] = []
        self.rows: list[dict[str, Any]] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.failed = False

    # -- hooks ---------------------------------------------------------------

    @hookimpl
    def ae_train_start(self, run: Any, total_epochs: int, steps_per_epoch: int) -> None:
        self.out_dir = Path(run.out_dir)
        self.failed = False
        self.columns, self.rows, self.checkpoints = ["epoch"], [], []
        if run.info.get("resumed"):  # keep what the interrupted run logged
            columns, self.rows = read_rows(self.out_dir / METRICS_FILE)
            self.columns = _union(self.columns, columns)
            _, self.checkpoints = read_rows(self.out_dir / CHECKPOINTS_FILE)
        self._write_metrics()
        self._write_checkpoints()

    @hookimpl
    def ae_epoch_end(self, run: Any, epoch: int, metrics: Mapping[str, float]) -> None:
        if self.out_dir is None:
            return
        row = {"epoch": epoch, **metrics}
        # A resumed run may replay an epoch that was logged before the interruption.
        self.rows = [r for r in self.rows if _as_int(r.get("epoch")) < epoch]
        self.rows.append(row)
        self.columns = _union(self.columns, row)
        self._write_metrics()

    @hookimpl
    def ae_checkpoint_saved(self, run: Any, path: Path, metrics: Mapping[str, float]) -> None:
        if self.out_dir is None:
            return
        epoch = metrics.get("epoch")
        self.checkpoints.append(
            {
                "epoch": "" if epoch is None else int(epoch),
                "file": Path(path).name,
                "path": str(path),
                "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )
        self._write_checkpoints()

    @hookimpl
    def ae_train_end(self, run: Any, metrics: Mapping[str, float]) -> None:
        # A run that failed before its first epoch leaves no files of ours, so aecore
        # can remove the run directory it created, as it does without this plugin.
        if self.out_dir is not None and not metrics and not self.rows and not self.checkpoints:
            for name in (METRICS_FILE, CHECKPOINTS_FILE):
                (self.out_dir / name).unlink(missing_ok=True)
        self.out_dir = None

    # -- files ---------------------------------------------------------------

    def _write_metrics(self) -> None:
        self._write(METRICS_FILE, self.columns, self.rows)

    def _write_checkpoints(self) -> None:
        self._write(CHECKPOINTS_FILE, CHECKPOINT_COLUMNS, self.checkpoints)

    def _write(self, name: str, columns: Iterable[str], rows: Iterable[Mapping[str, Any]]) -> None:
        if self.failed or self.out_dir is None:
            return
        try:
            atomic_write_bytes(self.out_dir / name, to_csv(columns, rows).encode("utf-8"))
        except OSError as exc:
            self.failed = True
            warnings.warn(
                f"csvlog: could not write {self.out_dir / name} ({exc}); CSV logging stops for this run.",
                CsvLogWarning,
                stacklevel=2,
            )


def to_csv(columns: Iterable[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV text with a header; absent values are empty, floats are written exactly (``repr``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def read_rows(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The header and rows of a CSV file this plugin wrote (numbers parsed), or empty if it is absent."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], []
    reader = csv.DictReader(io.StringIO(text))
    rows = [{k: _parse(v) for k, v in row.items() if v != ""} for row in reader]
    return list(reader.fieldnames or []), rows


def _union(columns: list[str], new: Iterable[str]) -> list[str]:
    return columns + [c for c in new if c not in columns]


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float
    return value


def _parse(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _as_int(value: Any) -> float:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -math.inf
