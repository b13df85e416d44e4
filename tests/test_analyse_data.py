"""ae eval with the PCA baseline, ae pca, ae inspect, ae encode and ae decode, and tabular data."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_line_error, table_rows
from PIL import Image
from typer.testing import CliRunner

from aecore.analysis.pca import components_for_variance, fit_pca, pca_metrics
from aecore.cli.app import app
from aecore.data import Dataset, load_dataset
from aecore.errors import DataError
from aecore.evaluate import bce_per_pixel, reconstruction_metrics


@pytest.fixture
def runner(monkeypatch, tmp_path) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    return CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, embedded):
    """A small mlp (latent 8) trained on 1,000 embedded images; its checkpoint names 'embedded'."""
    from aecore.training import train

    data = Dataset(
        "embedded",
        embedded.train.subset(torch.arange(1000)),
        embedded.test.subset(torch.arange(200)),
        {"name": "embedded"},
    )
    out = tmp_path_factory.mktemp("run") / "mlp"
    result = train(
        "mlp",
        data=data,
        latent_dim=8,
        params={"encoder": {"hidden": "32"}, "trainer": {"epochs": 1}},
        device="cpu",
        out=out,
        progress=False,
    )
    return result


# -- ae eval -------------------------------------------------------------------------------------


def test_eval_reports_metrics_bce_and_the_pca_baseline(runner, trained, embedded, tmp_path):
    result = runner.invoke(app, ["eval", str(trained.run_dir), "--out", "eval.csv"])
    assert result.exit_code == 0, result.stderr
    metrics = reconstruction_metrics(trained.model, embedded.test)
    from aecore.cli.evaluate import format_test_error

    assert f"test: {format_test_error(metrics)}" in result.stdout.splitlines()
    pca = pca_metrics(fit_pca(embedded.train, 8), embedded.test, 8)
    rows = {r[0]: r[1:] for r in table_rows(result.stdout) if len(r) == 4}
    assert "PCA (8 components)" in result.stdout
    model_sse, pca_sse, ratio = rows["SSE per image"]
    assert float(model_sse) == pytest.approx(metrics["sse_per_image"], rel=1e-5)
    assert float(pca_sse) == pytest.approx(pca["sse_per_image"], rel=1e-5)
    assert float(ratio) == pytest.approx(metrics["sse_per_image"] / pca["sse_per_image"], abs=1e-3)
    bce = bce_per_pixel(trained.model, embedded.test)
    assert bce is not None and 0 < bce < 1
    assert float(rows["BCE per pixel"][0]) == pytest.approx(bce, rel=1e-5)
    assert re.search(r"SSE ratio model/PCA: [0-9.]+ \(the model is", result.stdout)

    with (tmp_path / "eval.csv").open() as f:
        table = {r["metric"]: r for r in csv.DictReader(f)}
    assert set(table) == {"mse_per_pixel", "sse_per_image", "psnr", "bce_per_pixel"}
    assert float(table["sse_per_image"]["pca"]) == pytest.approx(pca["sse_per_image"], rel=1e-8)
    assert float(table["sse_per_image"]["ratio"]) == pytest.approx(
        metrics["sse_per_image"] / pca["sse_per_image"], rel=1e-8
    )
    assert table["bce_per_pixel"]["pca"] == ""
    # an existing --out is never replaced silently
    one_line_error(runner.invoke(app, ["eval", str(trained.run_dir), "--out", "eval.csv"]), "--overwrite")


def test_eval_without_pca(runner, trained):
    result = runner.invoke(app, ["eval", str(trained.checkpoint), "--no-pca"])
    assert result.exit_code == 0, result.stderr
    assert "PCA" not in result.stdout and "SSE per image" in result.stdout


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


def test_pca_library_matches_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g) @ torch.randn(5, 5, generator=g)
    from aecore.data import TensorData

    pca = fit_pca(TensorData(x))
    reference = np.linalg.eigvalsh(np.cov(x.double().numpy(), rowvar=False))[::-1]
    assert np.allclose(pca.explained_variance.numpy(), reference)
    z = pca.transform(x, 5)
    assert torch.allclose(pca.inverse_transform(z), x.double(), atol=1e-9)  # all components: exact


# -- ae inspect ----------------------------------------------------------------------------------


def test_inspect_shows_metadata_tree_and_sizes(runner, trained, tmp_path):
    result = runner.invoke(app, ["inspect", str(trained.run_dir), "--out", "inspect.json"])
    assert result.exit_code == 0, result.stderr
    model = trained.model
    enc = sum(p.numel() for p in model.encoder.parameters())
    assert f"{model.num_parameters():,}" in result.stdout
    assert "98.0× (784 → 8)" in result.stdout
    assert "encoder: MLPEncoder" in result.stdout and "decoder: MLPDecoder" in result.stdout
    rows = [r for r in table_rows(result.stdout) if r and r[0] == "encoder"]
    assert rows and rows[0][1:4] == ["mlp", "aecore-mlp", rows[0][3]] and rows[0][4] == f"{enc:,}"
    report = json.loads((tmp_path / "inspect.json").read_text())
    assert report["total_parameters"] == model.num_parameters()
    assert report["compression_ratio"] == 98.0
    assert report["metadata"]["data"]["name"] == "embedded"
    assert report["tree"]["children"][0]["name"] == "encoder"
    assert report["tree"]["parameters"] == model.num_parameters()


def test_inspect_works_from_metadata_when_a_plugin_is_missing(runner, trained, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(trained.checkpoint), "pt") as f:
        meta = json.loads(f.metadata()["aecore"])
    meta["model"]["encoder"]["dist"] = "aecore-gone"
    save_file(
        load_file(str(trained.checkpoint)), str(tmp_path / "m.safetensors"), {"aecore": json.dumps(meta)}
    )
    result = runner.invoke(app, ["inspect", "m.safetensors"])
    assert result.exit_code == 0, result.stderr
    assert "aecore-gone" in result.stdout
    assert "module tree unavailable" in result.stdout and "pip install aecore-gone" in result.stdout
    assert f"{trained.model.num_parameters():,}" in result.stdout  # counted from the header


# -- ae encode / ae decode -----------------------------------------------------------------------


def test_encode_writes_codes_and_labels_in_three_formats(runner, trained, embedded, tmp_path):
    from safetensors.torch import load_file

    expected = trained.model.encode(embedded.test.batch(slice(None))).detach()
    result = runner.invoke(app, ["encode", str(trained.run_dir), "--out", "codes.safetensors"])
    assert result.exit_code == 0, result.stderr
    tensors = load_file(str(tmp_path / "codes.safetensors"))
    assert set(tensors) == {"codes", "labels"}
    assert tensors["codes"].shape == (2000, 8)
    assert torch.allclose(tensors["codes"], expected, atol=1e-5)
    assert torch.equal(tensors["labels"], embedded.test.y)

    assert runner.invoke(app, ["encode", str(trained.run_dir), "--out", "c.npy"]).exit_code == 0
    assert np.allclose(np.load(tmp_path / "c.npy"), expected.numpy(), atol=1e-5)
    assert np.array_equal(np.load(tmp_path / "c.labels.npy"), embedded.test.y.numpy())

    result = runner.invoke(app, ["encode", str(trained.run_dir), "--split", "train", "--out", "c.csv"])
    assert result.exit_code == 0, result.stderr
    with (tmp_path / "c.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [f"z{i}" for i in range(8)] + ["label"]
    assert len(rows) == 10_000 and int(rows[0]["label"]) == int(embedded.train.y[0])

    run = str(trained.run_dir)
    one_line_error(runner.invoke(app, ["encode", run, "--out", "c.csv"]), "already exists")
    one_line_error(runner.invoke(app, ["encode", run, "--split", "val"]), "--split must be test or train")
    one_line_error(
        runner.invoke(app, ["encode", run, "--out", "x.txt"]), "name it .safetensors, .npy or .csv"
    )
    one_line_error(runner.invoke(app, ["encode", run, "--out", "x.csv", "--format", "npy"]), "disagrees")
    one_line_error(runner.invoke(app, ["encode", run, "--bogus"]), "No such option")


def test_decode_round_trip_and_grid(runner, trained, embedded, tmp_path):
    from safetensors.torch import load_file

    assert runner.invoke(app, ["encode", str(trained.run_dir), "--out", "codes.csv"]).exit_code == 0
    result = runner.invoke(app, ["decode", str(trained.run_dir), "codes.csv", "--out", "dec.safetensors"])
    assert result.exit_code == 0, result.stderr
    out = load_file(str(tmp_path / "dec.safetensors"))
    assert out["outputs"].shape == (2000, 1, 28, 28) and out["labels"].shape == (2000,)
    expected = trained.model(embedded.test.batch(slice(None))).detach()
    assert torch.allclose(out["outputs"], expected, atol=1e-4)
    with Image.open(tmp_path / "dec.png") as img:  # 64 images, 8 per row, 28 px + 2 px padding
        assert img.size == (8 * 30 + 2, 8 * 30 + 2)

    np.save(tmp_path / "few.npy", np.zeros((3, 8), dtype=np.float32))
    result = runner.invoke(app, ["decode", str(trained.run_dir), "few.npy", "--out", "few.png"])
    assert result.exit_code == 0, result.stderr
    with Image.open(tmp_path / "few.png") as img:
        assert img.size == (3 * 30 + 2, 30 + 2)
    assert not (tmp_path / "few.safetensors").exists()

    np.save(tmp_path / "wide.npy", np.zeros((3, 5), dtype=np.float32))
    one_line_error(
        runner.invoke(app, ["decode", str(trained.run_dir), "wide.npy", "--out", "w.npy"]),
        "codes of size 8",
        "width 5",
    )
    one_line_error(runner.invoke(app, ["decode", str(trained.run_dir), "missing.npy"]), "no codes file")
    (tmp_path / "plain.csv").write_text("a,b\n1,2\n")
    one_line_error(runner.invoke(app, ["decode", str(trained.run_dir), "plain.csv"]), "z0, z1")


# -- tabular data --------------------------------------------------------------------------------


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
        "csv:t.csv?lable=a": "unknown table option 'lable'",
        "csv:t.csv?test_fraction=2": "test_fraction must be between 0 and 1",
        "csv:": "needs a file path",
    }
    for source, fragment in cases.items():
        with pytest.raises(DataError, match=re.escape(fragment)):
            load_dataset(source, tmp_path)
    one_line_error(runner.invoke(app, ["pca", "--data", "csv:missing.csv"]), "does not exist")


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


def test_train_on_csv_then_eval_reuses_the_stored_statistics(runner, tmp_path, monkeypatch):
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
    import aecore.data.tabular as tabular

    meta = aecore.read_metadata(tmp_path / "run")
    norm = meta["data"]["normalisation"]
    assert norm["kind"] == "standardise" and norm["std"][3] == 1.0
    assert meta["data"]["name"] == f"csv:{tmp_path / 't.csv'}?label=y" and meta["data"]["label"] == "y"

    def no_recompute(*args, **kwargs):
        raise AssertionError("statistics recomputed on reload")

    monkeypatch.setattr(tabular, "standardise_stats", no_recompute)
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
    data = load_dataset("mnist", real_mnist_dir)
    pca = fit_pca(data.train)
    assert pca_metrics(pca, data.test, 30)["sse_per_image"] == pytest.approx(13.866, abs=5e-4)
    assert pca_metrics(pca, data.test, 154)["sse_per_image"] == pytest.approx(2.59, abs=5e-3)
    assert components_for_variance(pca, 0.95) == 154
    result = runner.invoke(app, ["pca", "--data", "mnist", "--data-dir", str(real_mnist_dir)])
    assert result.exit_code == 0, result.stderr
    assert "154 components explain 95% of the variance" in result.stdout
    assert math.isclose(float(pca.explained_variance_ratio[:154].sum()), 0.95, abs_tol=1e-3)


def test_eval_fits_pca_on_the_classes_a_one_class_model_saw(runner, embedded, tmp_path):
    from aecore.training import train

    data = Dataset("embedded", embedded.train.subset(torch.arange(1000)), embedded.test, {"name": "embedded"})
    params = {"encoder": {"hidden": "16"}, "trainer": {"epochs": 1}}
    run = train("mlp", data=data, latent_dim=4, params=params, classes=[1], out="one", progress=False)
    result = runner.invoke(app, ["eval", str(run.run_dir), "--out", "e.csv"])
    assert result.exit_code == 0, result.stderr
    ones = embedded.train.subset((embedded.train.y == 1).nonzero().flatten())
    expected = pca_metrics(fit_pca(ones, 4), embedded.test, 4)["sse_per_image"]
    with (tmp_path / "e.csv").open() as f:
        sse = next(r for r in csv.DictReader(f) if r["metric"] == "sse_per_image")
    assert float(sse["pca"]) == pytest.approx(expected, rel=1e-8)
