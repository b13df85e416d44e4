"""The table data sources: --data csv:PATH and --data npy:PATH."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aecore.cli.app import app
from aecore.errors import DataError
from aecore.sources import load_dataset


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setenv("AECORE_NO_DATA_CACHE", "1")  # every load reads the file, as these tests mean


@pytest.fixture
def runner(monkeypatch, tmp_path) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def write_csv(path: Path, rows: list[list[object]], header: list[str] | None = None) -> Path:
    lines = ([",".join(header)] if header else []) + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def table(n: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) * [1.0, 2.0, 0.5, 0.0] + [0.0, 5.0, -1.0, 3.0]  # last column constant
    return x, rng.integers(0, 3, n)


def test_csv_split_standardisation_and_labels(tmp_path):
    x, y = table()
    write_csv(
        tmp_path / "t.csv", [[*r, int(c)] for r, c in zip(x, y, strict=True)], ["a", "b", "c", "d", "y"]
    )
    data = load_dataset("csv:t.csv?label=y", tmp_path)
    assert data.name == f"csv:{tmp_path / 't.csv'}?label=y"
    assert (len(data.train), len(data.test)) == (80, 20) and data.train.shape == (4,)
    assert data.spec["columns"] == ["a", "b", "c", "d"] and data.spec["label"] == "y"
    # deterministic split; row order kept
    again = load_dataset(data.name)
    assert torch.equal(again.test.x, data.test.x) and torch.equal(again.test.y, data.test.y)
    norm = data.train.normalisation
    assert norm["kind"] == "standardise"
    raw = data.train.x.double()
    assert np.allclose(norm["mean"], raw.mean(0).numpy())
    assert np.allclose(norm["std"][:3], raw.std(0, correction=0)[:3].numpy())
    assert norm["std"][3] == 1.0  # zero variance: std 1, the column becomes zeros
    assert torch.allclose(data.train.batch(slice(None))[:, 3], torch.zeros(80))
    assert data.test.normalisation == norm  # test rows use the training statistics
    # a trained model's record is reused as is, not recomputed
    stored = {"kind": "standardise", "mean": [1.0, 2.0, 3.0, 4.0], "std": [2.0, 2.0, 2.0, 2.0]}
    reloaded = load_dataset(data.name, normalisation=stored)
    assert reloaded.train.normalisation == stored
    with pytest.raises(DataError, match="shape"):
        load_dataset(data.name, normalisation={"kind": "standardise", "mean": [0.0], "std": [1.0]})
    # other splits and string labels
    other = load_dataset("csv:t.csv?label=4&test_fraction=0.5&seed=3", tmp_path)
    assert len(other.test) == 50 and other.name.endswith("?label=4&test_fraction=0.5&seed=3")
    write_csv(tmp_path / "s.csv", [[1, "cat"], [2, "dog"], [3, "cat"]], ["v", "kind"])
    strings = load_dataset(f"csv:{tmp_path / 's.csv'}?label=kind")
    assert strings.spec["label_names"] == ["cat", "dog"]


def test_csv_header_detection_and_test_file(tmp_path):
    write_csv(tmp_path / "n.csv", [[1, 2], [3, 4], [5, 7], [0, 1], [2, 2]])
    data = load_dataset("csv:n.csv", tmp_path)
    assert len(data.train) + len(data.test) == 5  # no header: the first row is data
    assert data.spec["columns"] == ["0", "1"]
    forced = load_dataset("csv:n.csv?header=yes", tmp_path)
    assert len(forced.train) + len(forced.test) == 4
    write_csv(tmp_path / "tr.csv", [[1, 2], [3, 4], [5, 6]], ["p", "q"])
    write_csv(tmp_path / "te.csv", [[7, 8]], ["p", "q"])
    split = load_dataset("csv:tr.csv?test=te.csv", tmp_path)
    assert (len(split.train), len(split.test)) == (3, 1)
    assert split.train.normalisation["mean"] == [3.0, 4.0]  # from the training file only
    write_csv(tmp_path / "te2.csv", [[7, 8]], ["p", "z"])
    with pytest.raises(DataError, match="columns"):
        load_dataset("csv:tr.csv?test=te2.csv", tmp_path)


@pytest.mark.parametrize(
    ("rows", "fragments"),
    [
        ([[1, 2], [3, "abc"], [5, 6]], ["t.csv row 3, column 'x2': 'abc' is not a number"]),
        ([[1, 2], [3, "nan"], [5, 6]], ["row 3, column 'x2'", "NaN", "never drops"]),
        ([[1, 2], ["", 4], [5, 6]], ["row 3, column 'x1': is empty"]),
        ([[1, 2], [3, "inf"], [5, 6]], ["row 3, column 'x2'", "infinite"]),
        ([[1, 2], [3], [5, 6]], ["row 3 has 1 cells, but the table has 2 columns"]),
    ],
)
def test_bad_cells_name_row_and_column(tmp_path, rows, fragments):
    write_csv(tmp_path / "t.csv", rows, ["x1", "x2"])
    with pytest.raises(DataError) as info:
        load_dataset(f"csv:{tmp_path / 't.csv'}")
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_table_source_errors(tmp_path, runner):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("a,b\n")
    write_csv(tmp_path / "t.csv", [[1, 2], [3, 4]], ["a", "b"])
    cases = {
        "csv:empty.csv": "is empty",
        "csv:header.csv": "has a header but no rows",
        "csv:missing.csv": "does not exist",
        "csv:t.csv?label=c": "has no column 'c'",
        "csv:t.csv?lable=a": "unknown parameter 'csv.lable'. Did you mean: label?",
        "csv:t.csv?test_fraction=2": "test_fraction must be between 0 and 1",
        "csv:": "needs a location: --data csv:PATH",
    }
    for source, fragment in cases.items():
        with pytest.raises(DataError, match=re.escape(fragment)):
            load_dataset(source, tmp_path)
    one_line_error(runner.invoke(app, ["train", "-e", "mlp", "--data", "csv:missing.csv"]), "does not exist")


def test_npy_tables(tmp_path):
    x, y = table(50)
    np.save(tmp_path / "t.npy", np.c_[x, y])
    data = load_dataset(f"npy:{tmp_path / 't.npy'}?label=-1")
    assert data.train.shape == (4,) and (len(data.train), len(data.test)) == (40, 10)
    assert data.train.y.dtype == torch.long and set(data.train.y.tolist()) <= {0, 1, 2}
    bad = np.c_[x, y]
    bad[7, 2] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(DataError, match=r"row 7, column 2: the value is NaN"):
        load_dataset(f"npy:{tmp_path / 'bad.npy'}")
    np.save(tmp_path / "flat.npy", np.arange(5.0))
    with pytest.raises(DataError, match=r"shape \(rows, columns\)"):
        load_dataset(f"npy:{tmp_path / 'flat.npy'}")


# -- numbers float32 cannot hold, labels that are not numbers, headers that lie (issue 15) -------


@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        ([[1, 2], [3, "1e39"], [5, 6]], "row 3, column 'x2': '1e39' is beyond what float32 holds"),
        ([["1e308", 2], ["-1e308", 4], ["1e308", 6]], "row 2, column 'x1': '1e308' is beyond what float32"),
    ],
)
def test_csv_cells_float32_cannot_hold_are_refused_at_load(tmp_path, runner, rows, fragment):
    path = write_csv(tmp_path / "t.csv", rows, ["x1", "x2"])
    with pytest.raises(DataError, match=re.escape(fragment)) as info:
        load_dataset(f"csv:{path}")
    assert str(path) in str(info.value)
    one_line_error(runner.invoke(app, ["train", "-e", "mlp", "--data", "csv:t.csv", "-q"]), "float32")


def test_the_largest_float32_values_still_load_and_standardise(tmp_path):
    path = write_csv(tmp_path / "t.csv", [[3e38, 1], [-3e38, 2], [1e38, 3]], ["a", "b"])
    data = load_dataset(f"csv:{path}?test_fraction=0.4")
    assert torch.isfinite(data.train.batch(slice(None))).all()


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e39])
def test_npy_values_and_labels_that_cannot_train_are_refused(tmp_path, value):
    x, y = table(20)
    labelled = np.c_[x, y].astype(np.float64)
    labelled[5, -1] = value
    np.save(tmp_path / "labels.npy", labelled)
    refused = pytest.raises(DataError, match=r"row 5, label column 4: the label is")
    with refused if value != 1e39 else contextlib.nullcontext():  # a huge whole label is a class name
        load_dataset(f"npy:{tmp_path / 'labels.npy'}?label=-1")
    features = x.copy()
    features[3, 1] = value
    np.save(tmp_path / "values.npy", features)
    with pytest.raises(DataError, match=r"row 3, column 1"):
        load_dataset(f"npy:{tmp_path / 'values.npy'}")


def test_an_npy_header_declaring_more_than_the_file_holds_is_refused_before_reading(tmp_path):
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (100000000000, 10), }".ljust(117) + b"\n"
    path = tmp_path / "huge.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(800))
    with pytest.raises(DataError, match=r"cannot read .* as a \.npy array"):
        load_dataset(f"npy:{path}")


def test_an_empty_npy_table_is_refused(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((10, 0)))
    with pytest.raises(DataError, match=r"shape \(10, 0\)"):
        load_dataset(f"npy:{tmp_path / 'empty.npy'}")


@pytest.mark.parametrize("seed", [str(2**70), str(2**64), "-1"])
def test_a_seed_torch_cannot_take_is_one_line(tmp_path, runner, seed):
    write_csv(tmp_path / "t.csv", [[1, 2], [3, 4], [5, 6]], ["a", "b"])
    with pytest.raises(DataError, match="seed"):
        load_dataset(f"csv:{tmp_path / 't.csv'}?seed={seed}")
    one_line_error(runner.invoke(app, ["train", "-e", "mlp", "--data", f"csv:t.csv?seed={seed}"]), "seed")
