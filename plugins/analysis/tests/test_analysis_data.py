"""``ae pca``, ``ae encode`` and ``ae decode``, on images and on a table.

The codes and outputs the commands write are compared with the model's own
``encode`` and forward pass; the PCA figures with the core's
:mod:`aecore.pca`, which ``ae eval`` uses too.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from analysis_helpers import one_line_error
from PIL import Image

from aecore import checkpoint
from aecore.cli import app
from aecore.pca import components_for_variance, fit_pca
from aecore.sources import load_dataset


@pytest.fixture(scope="module")
def run_dir(trained):
    """The small mlp (latent 8) trained on the 'small' data (1,000 / 200 images)."""
    return trained("mlp")


@pytest.fixture(scope="module")
def model(run_dir):
    return checkpoint.load(run_dir)


@pytest.fixture(scope="module")
def embedded():
    return load_dataset("embedded")


# -- ae pca --------------------------------------------------------------------------------------


def test_pca_writes_plot_and_curve(runner, embedded, tmp_path):
    result = runner.invoke(app, ["pca", "--variance", "0.9", "--out", "out/curve.png"])
    assert result.exit_code == 0, result.stderr
    k = components_for_variance(fit_pca(embedded.train), 0.9)
    assert 50 < k < 150
    assert f"{k} components explain 90% of the variance" in result.stdout
    with Image.open(tmp_path / "out" / "curve.png") as img:
        assert img.size == (660, 432)
    with (tmp_path / "out" / "curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["components", "explained_variance_ratio", "cumulative_variance"]
    assert len(rows) == 784
    cumulative = [float(r["cumulative_variance"]) for r in rows]
    assert cumulative[k - 1] >= 0.9 > cumulative[k - 2]
    assert cumulative[-1] == pytest.approx(1.0)
    one_line_error(
        runner.invoke(app, ["pca", "--variance", "0.9", "--out", "out/curve.png"]), "already exists"
    )
    one_line_error(runner.invoke(app, ["pca", "--variance", "1.5"]), "--variance must be in (0, 1]")
    one_line_error(runner.invoke(app, ["pca", "--data", "nope"]), "unknown dataset 'nope'")


def test_pca_on_a_missing_table_is_one_line(runner):
    one_line_error(runner.invoke(app, ["pca", "--data", "csv:missing.csv"]), "does not exist")


# -- ae encode / ae decode -----------------------------------------------------------------------


def test_encode_writes_codes_and_labels_in_three_formats(runner, run_dir, model, small, tmp_path):
    from safetensors.torch import load_file

    expected = model.encode(small.test.batch(slice(None))).detach()
    result = runner.invoke(app, ["encode", str(run_dir), "--out", "codes.safetensors"])
    assert result.exit_code == 0, result.stderr
    tensors = load_file(str(tmp_path / "codes.safetensors"))
    assert set(tensors) == {"codes", "labels"}
    assert tensors["codes"].shape == (200, 8)
    assert torch.allclose(tensors["codes"], expected, atol=1e-5)
    assert torch.equal(tensors["labels"], small.test.y)

    assert runner.invoke(app, ["encode", str(run_dir), "--out", "c.npy"]).exit_code == 0
    assert np.allclose(np.load(tmp_path / "c.npy"), expected.numpy(), atol=1e-5)
    assert np.array_equal(np.load(tmp_path / "c.labels.npy"), small.test.y.numpy())

    result = runner.invoke(app, ["encode", str(run_dir), "--split", "train", "--out", "c.csv"])
    assert result.exit_code == 0, result.stderr
    with (tmp_path / "c.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [f"z{i}" for i in range(8)] + ["label"]
    assert len(rows) == 1000 and int(rows[0]["label"]) == int(small.train.y[0])

    run = str(run_dir)
    one_line_error(runner.invoke(app, ["encode", run, "--out", "c.csv"]), "already exists")
    one_line_error(runner.invoke(app, ["encode", run, "--split", "val"]), "--split must be test or train")
    one_line_error(
        runner.invoke(app, ["encode", run, "--out", "x.txt"]), "name it .safetensors, .npy or .csv"
    )
    one_line_error(runner.invoke(app, ["encode", run, "--out", "x.csv", "--format", "npy"]), "disagrees")
    one_line_error(runner.invoke(app, ["encode", run, "--bogus"]), "No such option")


def test_decode_round_trip_and_grid(runner, run_dir, model, small, tmp_path):
    from safetensors.torch import load_file

    assert runner.invoke(app, ["encode", str(run_dir), "--out", "codes.csv"]).exit_code == 0
    result = runner.invoke(app, ["decode", str(run_dir), "codes.csv", "--out", "dec.safetensors"])
    assert result.exit_code == 0, result.stderr
    out = load_file(str(tmp_path / "dec.safetensors"))
    assert out["outputs"].shape == (200, 1, 28, 28) and out["labels"].shape == (200,)
    expected = model(small.test.batch(slice(None))).detach()
    assert torch.allclose(out["outputs"], expected, atol=1e-4)
    with Image.open(tmp_path / "dec.png") as img:  # 64 images, 8 per row, 28 px + 2 px padding
        assert img.size == (8 * 30 + 2, 8 * 30 + 2)

    np.save(tmp_path / "few.npy", np.zeros((3, 8), dtype=np.float32))
    result = runner.invoke(app, ["decode", str(run_dir), "few.npy", "--out", "few.png"])
    assert result.exit_code == 0, result.stderr
    with Image.open(tmp_path / "few.png") as img:
        assert img.size == (3 * 30 + 2, 30 + 2)
    assert not (tmp_path / "few.safetensors").exists()

    np.save(tmp_path / "wide.npy", np.zeros((3, 5), dtype=np.float32))
    one_line_error(
        runner.invoke(app, ["decode", str(run_dir), "wide.npy", "--out", "w.npy"]),
        "codes of size 8",
        "width 5",
    )
    one_line_error(runner.invoke(app, ["decode", str(run_dir), "missing.npy"]), "no codes file")
    (tmp_path / "plain.csv").write_text("a,b\n1,2\n")
    one_line_error(runner.invoke(app, ["decode", str(run_dir), "plain.csv"]), "z0, z1")


# -- tabular data --------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[list[object]], header: list[str] | None = None) -> Path:
    lines = ([",".join(header)] if header else []) + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def table(n: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) * [1.0, 2.0, 0.5, 0.0] + [0.0, 5.0, -1.0, 3.0]  # last column constant
    return x, rng.integers(0, 3, n)


def test_train_on_csv_then_eval_reuses_the_stored_statistics(runner, tmp_path, monkeypatch):
    """A table from training to codes and back, in the table's own units (aecore-tables' csv source)."""
    x, y = table(300, seed=1)
    write_csv(
        tmp_path / "t.csv", [[*r, int(c)] for r, c in zip(x, y, strict=True)], ["a", "b", "c", "d", "y"]
    )
    common = ["--data", "csv:t.csv?label=y", "--latent-dim", "2", "--epochs", "2", "-q", "--device", "cpu"]
    base = ["train", "-e", "mlp", *common, "--set", "encoder.hidden=8"]
    # mlp's default sigmoid output cannot fit standardised data: a one-line hint, nothing written
    one_line_error(runner.invoke(app, [*base, "--out", "r0"]), "--set decoder.output_activation=none")
    assert not (tmp_path / "r0").exists()
    one_line_error(
        runner.invoke(app, ["train", "-e", "conv", *common, "--out", "r0"]), "conv encoder", "(4,)"
    )

    trained = runner.invoke(app, [*base, "--set", "decoder.output_activation=none", "--out", "run"])
    assert trained.exit_code == 0, trained.stderr
    line = [s for s in trained.stdout.splitlines() if s.startswith("test: ")]
    assert len(line) == 1 and "PSNR" not in line[0]

    import aecore

    tables = pytest.importorskip("aecore_tables")

    meta = aecore.read_metadata(tmp_path / "run")
    norm = meta["data"]["normalisation"]
    assert norm["kind"] == "standardise" and norm["std"][3] == 1.0
    assert meta["data"]["name"] == f"csv:{tmp_path / 't.csv'}?label=y" and meta["data"]["label"] == "y"

    def no_recompute(*args, **kwargs):
        raise AssertionError("statistics recomputed on reload")

    monkeypatch.setattr(tables, "standardise_stats", no_recompute)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the absolute path in the metadata finds the table
    evaluated = runner.invoke(app, ["eval", "../run"])
    assert evaluated.exit_code == 0, evaluated.stderr
    assert [s for s in evaluated.stdout.splitlines() if s.startswith("test: ")] == line
    assert "(60 rows)" in evaluated.stdout and "PCA (2 components)" in evaluated.stdout
    assert "BCE" not in evaluated.stdout
    encoded = runner.invoke(app, ["encode", "../run", "--out", "codes.csv"])
    assert encoded.exit_code == 0, encoded.stderr
    decoded = runner.invoke(app, ["decode", "../run", "codes.csv", "--out", "rows.csv", "--data-units"])
    assert decoded.exit_code == 0, decoded.stderr
    with open("rows.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["x0", "x1", "x2", "x3", "label"] and len(rows) == 60
    assert not Path("rows.png").exists()  # tables get no image grid
    assert float(rows[0]["x3"]) == pytest.approx(3.0, abs=0.5)  # back in the table's units


# -- full MNIST reference figures ------------------------------------------------------------------


@pytest.mark.slow
def test_pca_reference_figures_on_full_mnist(runner, real_mnist_dir):
    """The command's report; the figures themselves are checked in the core suite (aecore.pca)."""
    result = runner.invoke(app, ["pca", "--data", "mnist", "--data-dir", str(real_mnist_dir)])
    assert result.exit_code == 0, result.stderr
    assert "154 components explain 95% of the variance" in result.stdout
