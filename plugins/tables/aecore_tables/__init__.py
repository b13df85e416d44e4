"""Numeric tables as datasets: ``--data csv:PATH`` and ``--data npy:PATH``.

Options travel inside the source string, as a query, so that they reach every
command through the one ``--data`` option and are recorded, with the absolute
path, in the checkpoint's ``data.name`` (reloading the name reloads the same
table the same way)::

    csv:table.csv?label=species&test_fraction=0.25&seed=3
    npy:features.npy?label=-1
    csv:train.csv?test=test.csv&header=no

The test split is a seeded random share of the rows (sorted, so row order is
kept) unless ``test=PATH`` gives a separate file. Columns are standardised
with the mean and standard deviation of the TRAINING split only; a
zero-variance column gets std 1 (it becomes all zeros, never NaN). A reload
for a trained model passes the checkpoint's normalisation back in, so the
stored statistics are reused, never recomputed.

Every cell must be a finite number that float32 can hold (the data is stored
as float32): an empty, non-numeric, NaN, infinite or too large cell is an
error naming its file, row and column; no row is ever dropped. A numeric
label column (npy) must hold finite numbers too. A ``.npy`` file's header is
checked against its size before its data is read, and nothing is unpickled.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from aecore.config import param
from aecore.data import Dataset, TensorData
from aecore.data.tensors import check_normalisation
from aecore.errors import DataError, suggest

__all__ = ["CsvTable", "NpyTable", "TableConfig", "standardise_stats"]


@dataclass(frozen=True)
class TableConfig:
    label: str | None = param(None, "Column holding the labels, by name or index (the rest are features).")
    test: str | None = param(
        None, "A separate test file with the same columns (else a seeded share of rows)."
    )
    test_fraction: float = param(0.2, "Share of the rows held out for testing when there is no test file.")
    seed: int = param(0, "Seed of the train/test split of the rows.")
    norm: Literal["standardise", "none"] = param(
        "standardise", "standardise: zero mean and unit variance from the training rows; none: as stored."
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be between 0 and 1, got {self.test_fraction:g}")
        if not 0 <= self.seed < 2**63:  # what the core's seeds take too
            raise ValueError(f"seed must be between 0 and 2**63-1, got {self.seed}; choose a smaller one")


@dataclass(frozen=True)
class CsvConfig(TableConfig):
    header: Literal["auto", "yes", "no"] = param(
        "auto", "Whether row 1 names the columns; auto: when any of its cells is not a number."
    )


@dataclass(frozen=True)
class TableSource:
    """A table file and how to read it (the source's location and options together)."""

    kind: str
    path: Path
    label: str | None = None
    test: Path | None = None
    test_fraction: float = 0.2
    seed: int = 0
    header: str = "auto"
    norm: str = "standardise"


class _TableSource:
    """A numeric table: rows are samples, columns features (and maybe a label column)."""

    kind = ""
    takes_location = True

    def __init__(self, config: TableConfig) -> None:
        self.config = config

    def locate(self, location: str, data_dir: Path | None) -> str:
        """The file as an absolute path (relative paths start at --data-dir, else the working directory)."""
        if self.config.test:
            self.config = replace(self.config, test=str(_resolve(self.config.test, data_dir)))
        return str(_resolve(location, data_dir))

    def files(self, location: str, *, data_dir: Path | None) -> list[Path]:
        return [Path(location), *([Path(self.config.test)] if self.config.test else [])]

    def load(self, location: str, *, data_dir: Path | None, normalisation: dict[str, Any] | None) -> Dataset:
        cfg = self.config
        source = TableSource(
            self.kind,
            Path(location),
            cfg.label or None,
            Path(cfg.test) if cfg.test else None,
            cfg.test_fraction,
            cfg.seed,
            getattr(cfg, "header", "auto"),
            cfg.norm,
        )
        return load_table(source, normalisation)


class CsvTable(_TableSource):
    """A CSV table (``--data csv:PATH``): numbers only, an optional header row and label column."""

    Config = CsvConfig
    kind = "csv"


class NpyTable(_TableSource):
    """A NumPy ``.npy`` array (``--data npy:PATH``), rows as samples; never unpickled."""

    Config = TableConfig
    kind = "npy"


def _resolve(text: str, data_dir: Path | None) -> Path:
    path = Path(text).expanduser()
    base = data_dir if data_dir is not None else Path.cwd()
    return (path if path.is_absolute() else base / path).resolve()


@dataclass
class _Table:
    x: np.ndarray  # float64, (N, *shape)
    y: list[str] | np.ndarray | None
    columns: list[str]
    label: str | None


def _read(source: TableSource, path: Path) -> _Table:
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise DataError(f"{source.kind} file {path} {what}.")
    return _read_csv(path, source) if source.kind == "csv" else _read_npy(path, source)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_csv(path: Path, source: TableSource) -> _Table:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [(i, row) for i, row in enumerate(csv.reader(f), start=1) if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} as CSV ({exc}).") from None
    if not rows:
        raise DataError(f"{path} is empty; a table needs at least one row of numbers.")
    first = [c.strip() for c in rows[0][1]]
    has_header = source.header == "yes" or (source.header == "auto" and not any(_is_number(c) for c in first))
    if has_header:
        columns = first
        rows = rows[1:]
        if not rows:
            raise DataError(f"{path} has a header but no rows of data.")
        if len(set(columns)) != len(columns):
            dup = next(c for c in columns if columns.count(c) > 1)
            raise DataError(f"{path} has the column '{dup}' twice in its header.")
    else:
        columns = [str(i) for i in range(len(first))]
    width = len(columns)
    for line, row in rows:
        if len(row) != width:
            raise DataError(f"{path} row {line} has {len(row)} cells, but the table has {width} columns.")
    label_index = _label_index(source.label, columns, path)
    cells = np.array([row for _, row in rows], dtype=str)
    lines = [line for line, _ in rows]
    y = None
    if label_index is not None:
        y = [c.strip() for c in cells[:, label_index]]
        for r, value in enumerate(y):
            if not value:
                raise DataError(f"{path} row {lines[r]}, label column '{columns[label_index]}' is empty.")
    features = [j for j in range(width) if j != label_index]
    if not features:
        raise DataError(f"{path} has no feature columns besides the label.")
    x = np.empty((len(rows), len(features)), dtype=np.float64)
    for k, j in enumerate(features):
        column = np.char.strip(cells[:, j])
        try:
            x[:, k] = column.astype(np.float64)
        except ValueError:
            r = next(r for r, c in enumerate(column) if not _is_number(c))
            problem = "is empty" if not column[r] else f"'{column[r]}' is not a number"
            hint = "" if has_header or lines[r] != 1 else " (if row 1 is a header, add ?header=yes)"
            raise DataError(f"{path} row {lines[r]}, column '{columns[j]}': {problem}{hint}.") from None
        bad = ~np.isfinite(x[:, k])
        if bad.any():
            r = int(np.argmax(bad))
            kind = "NaN" if math.isnan(x[r, k]) else "infinite"
            raise DataError(
                f"{path} row {lines[r]}, column '{columns[j]}': '{column[r]}' is {kind}; "
                "fill or remove the row (aecore never drops rows silently)."
            )
        big = np.abs(x[:, k]) > _FLOAT32_MAX
        if big.any():
            r = int(np.argmax(big))
            raise DataError(
                f"{path} row {lines[r]}, column '{columns[j]}': '{column[r]}' is beyond what float32 holds "
                f"(±{_FLOAT32_MAX:.4g}); rescale the column (aecore stores tables as float32)."
            )
    label = None if label_index is None else columns[label_index]
    return _Table(x, y, [columns[j] for j in features], label)


def _label_index(label: str | None, columns: list[str], path: Path) -> int | None:
    if label is None:
        return None
    if label in columns:
        return columns.index(label)
    try:
        index = int(label)
    except ValueError:
        names = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
        raise DataError(
            f"{path} has no column '{label}'.{suggest(label, columns)} Columns: {names}."
        ) from None
    if not -len(columns) <= index < len(columns):
        raise DataError(f"label column {index} is out of range: {path} has {len(columns)} columns.")
    return index % len(columns)


def _read_npy(path: Path, source: TableSource) -> _Table:
    arr = _load_npy(path)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{path} holds {arr.dtype} values; a table needs numbers.")
    if arr.ndim < 2 or arr.shape[0] == 0 or 0 in arr.shape:
        raise DataError(f"{path} has shape {arr.shape}; a table needs rows, shape (rows, columns).")
    y = None
    label = None
    x = arr.astype(np.float64)
    if source.label is not None:
        if arr.ndim != 2:
            raise DataError(f"label= needs a 2-D array, but {path} has shape {arr.shape}.")
        columns = [str(i) for i in range(arr.shape[1])]
        j = _label_index(source.label, columns, path)
        assert j is not None
        y = x[:, j]
        x = np.delete(x, j, axis=1)
        label = columns[j]
        if x.shape[1] == 0:
            raise DataError(f"{path} has no feature columns besides the label.")
        bad_label = ~np.isfinite(y)
        if bad_label.any():
            r = int(np.argmax(bad_label))
            kind = "NaN" if math.isnan(y[r]) else "infinite"
            raise DataError(
                f"{path} row {r}, label column {j}: the label is {kind} (rows count from 0); "
                "fill or remove the row (aecore never drops rows silently)."
            )
    bad = ~np.isfinite(x)
    if bad.any():
        where = np.argwhere(bad)[0]
        kind = "NaN" if math.isnan(x[tuple(where)]) else "infinite"
        col = ", ".join(str(int(i)) for i in where[1:])
        raise DataError(f"{path} row {int(where[0])}, column {col}: the value is {kind} (rows count from 0).")
    big = np.abs(x) > _FLOAT32_MAX
    if big.any():
        where = np.argwhere(big)[0]
        col = ", ".join(str(int(i)) for i in where[1:])
        raise DataError(
            f"{path} row {int(where[0])}, column {col}: {x[tuple(where)]:.4g} is beyond what float32 holds "
            f"(±{_FLOAT32_MAX:.4g}; rows count from 0); rescale the column (aecore stores tables as float32)."
        )
    columns = [str(i) for i in range(x.shape[1])] if x.ndim == 2 else []
    return _Table(x, y, columns, label)


#: The largest magnitude float32 holds: a table is stored as float32, so a larger cell would become inf.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _load_npy(path: Path) -> np.ndarray:
    """One ``.npy`` array, never unpickled; its header is checked against the file size before any copy."""
    try:
        # Memory-mapping checks the declared shape against the file's size without allocating it.
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(mapped, np.ndarray):
            mapped.close()
            raise DataError(f"{path} holds several arrays (.npz); save one array with numpy.save.")
        return np.array(mapped)
    except DataError:
        raise
    except Exception as exc:  # numpy's header parser can raise almost anything on a hostile file
        raise DataError(f"cannot read {path} as a .npy array ({' '.join(str(exc).split())}).") from None


def _labels(values: list[str] | np.ndarray) -> tuple[torch.Tensor, list[str] | None]:
    """Integer labels as they are; anything else becomes class indices of its sorted distinct values."""
    text = [str(v) for v in values] if isinstance(values, list) else None
    try:
        if text is not None:
            as_int = [int(v) for v in text]
        else:
            assert isinstance(values, np.ndarray)
            if not np.all(values == np.round(values)):
                raise ValueError
            as_int = [int(v) for v in values]
        return torch.tensor(as_int, dtype=torch.long), None
    except ValueError:
        names = sorted(set(text if text is not None else [f"{v:g}" for v in values]))
        index = {n: i for i, n in enumerate(names)}
        keys = text if text is not None else [f"{v:g}" for v in values]
        return torch.tensor([index[k] for k in keys], dtype=torch.long), names


def standardise_stats(x: torch.Tensor) -> dict[str, Any]:
    """Per-column mean and population std of the training rows; std 0 becomes 1 (column -> zeros)."""
    x64 = x.double()
    mean = x64.mean(0)
    std = x64.std(0, correction=0)
    std = torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))
    return {"kind": "standardise", "mean": mean.tolist(), "std": std.tolist()}


def _check_normalisation(norm: dict[str, Any], shape: tuple[int, ...], path: Path) -> dict[str, Any]:
    try:
        check_normalisation(norm)  # numbers, positive std, a table at all: before torch sees any of it
    except DataError as exc:
        raise DataError(f"the model's normalisation cannot be used for {path}: {exc}") from None
    for key in ("mean", "std"):
        if norm.get(key) is not None:
            got = tuple(torch.tensor(norm[key]).shape)
            if got != shape:
                raise DataError(
                    f"the model's normalisation has {key} of shape {got}, but {path} rows have shape "
                    f"{shape}; use the table it was trained on."
                )
    return dict(norm)


def load_table(source: TableSource, normalisation: dict[str, Any] | None = None) -> Dataset:
    """Load a table into a :class:`~aecore.data.Dataset` (train/test, standardised).

    ``normalisation``, when given (a trained model's record), is used as is
    instead of statistics computed from this table's training rows.
    """
    table = _read(source, source.path)
    if source.test is not None:
        test_table = _read(source, source.test)
        if test_table.x.shape[1:] != table.x.shape[1:] or test_table.columns != table.columns:
            raise DataError(
                f"{source.test} has columns {test_table.columns or test_table.x.shape[1:]}, "
                f"but {source.path} has {table.columns or table.x.shape[1:]}."
            )
        x_all = np.concatenate([table.x, test_table.x])
        n_train = len(table.x)
        train_idx = torch.arange(n_train)
        test_idx = torch.arange(n_train, len(x_all))
        y_values: Any = None
        if table.y is not None and test_table.y is not None:
            y_values = (
                [*table.y, *test_table.y]
                if isinstance(table.y, list)
                else np.concatenate([table.y, test_table.y])  # type: ignore[list-item]
            )
    else:
        x_all = table.x
        n = len(x_all)
        if n < 2:
            raise DataError(f"{source.path} has {n} row; a train/test split needs at least 2.")
        n_test = min(max(round(n * source.test_fraction), 1), n - 1)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(source.seed))
        test_idx = order[:n_test].sort().values
        train_idx = order[n_test:].sort().values
        y_values = table.y
    x = torch.from_numpy(x_all).float()
    y, label_names = (None, None) if y_values is None else _labels(y_values)
    shape = tuple(x.shape[1:])
    if normalisation is not None:
        norm = _check_normalisation(normalisation, shape, source.path)
    elif source.norm == "standardise":
        norm = standardise_stats(torch.from_numpy(x_all[train_idx.numpy()]))
    else:
        norm = {"kind": "identity"}
    full = TensorData(x, y, norm)
    train, test = full.subset(train_idx), full.subset(test_idx)
    spec: dict[str, Any] = {"format": source.kind, "path": str(source.path)}
    if table.columns:
        spec["columns"] = table.columns
    if table.label is not None:
        spec["label"] = table.label
    if label_names is not None:
        spec["label_names"] = label_names
    return Dataset(f"{source.kind}:{source.path}", train, test, spec)
