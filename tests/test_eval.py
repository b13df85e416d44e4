"""ae eval with the PCA baseline, ae inspect, and the PCA baseline itself (aecore.pca)."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import torch
from helpers import one_line_error, table_rows
from typer.testing import CliRunner

from aecore.cli.app import app
from aecore.data import Dataset
from aecore.evaluate import bce_per_pixel, reconstruction_metrics
from aecore.pca import components_for_variance, fit_pca, pca_metrics
from aecore.sources import load_dataset


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


# -- the PCA baseline ---------------------------------------------------------------------------


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


# -- full MNIST reference figures ------------------------------------------------------------------


@pytest.mark.slow
def test_pca_reference_figures_on_full_mnist(runner, real_mnist_dir):
    data = load_dataset("mnist", real_mnist_dir)
    pca = fit_pca(data.train)
    assert pca_metrics(pca, data.test, 30)["sse_per_image"] == pytest.approx(13.866, abs=5e-4)
    assert pca_metrics(pca, data.test, 154)["sse_per_image"] == pytest.approx(2.59, abs=5e-3)
    assert components_for_variance(pca, 0.95) == 154
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
