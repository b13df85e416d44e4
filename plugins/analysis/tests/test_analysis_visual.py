"""``ae reconstruct``, ``interpolate``, ``arithmetic``, ``sample``, ``plot`` and ``features``.

Each command runs through the CLI on small models trained once per session
(see conftest.py); the tests read back the PNG (size and, where the pixels
are decoder outputs, the pixel values), the CSV and the safetensors it
wrote, and compare them with the library functions and with the model itself.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from analysis_helpers import TILE, ok, one_line_error, png, read_csv
from PIL import Image
from safetensors.torch import load_file

from aecore import checkpoint
from aecore.cli import app
from aecore_analysis import latent
from aecore_analysis.activations import collect_activations, feature_map_grid
from aecore_analysis.history import loss_series


@pytest.fixture(scope="module")
def runs(trained):
    """The run directories of the shared models, by name (trained on first use)."""

    class Runs(dict):
        def __missing__(self, name):
            self[name] = trained(name)
            return self[name]

    return Runs()


def tile(image: np.ndarray, row: int, col: int, side: int = 28, pad: int = 2) -> np.ndarray:
    y, x = pad + row * (side + pad), pad + col * (side + pad)
    return image[y : y + side, x : x + side]


def as_pixels(x: torch.Tensor) -> np.ndarray:
    """What torchvision's save_image writes for an image in [0, 1]."""
    return x.reshape(28, 28).clamp(0, 1).mul(255).add(0.5).clamp(0, 255).to(torch.uint8).numpy()


def assert_tile(image: np.ndarray, row: int, col: int, expected: torch.Tensor) -> None:
    diff = np.abs(tile(image, row, col).astype(int) - as_pixels(expected).astype(int))
    assert diff.max() <= 1, diff.max()  # float rounding may move a pixel by one level


def load(run):
    return checkpoint.load(run / "model.safetensors")


# -- reconstruct ---------------------------------------------------------------------------------


def test_reconstruct_grid_originals_over_reconstructions(runner, runs, small, tmp_path):
    out = tmp_path / "rec.png"
    stdout = ok(runner.invoke(app, ["reconstruct", str(runs["mlp"]), "--n", "5", "--out", str(out)]))
    image = png(out)
    assert image.shape == (2 * TILE + 2, 5 * TILE + 2)  # width = n·(28+2)+2
    model = load(runs["mlp"])
    x = small.test.batch(slice(0, 5))
    with torch.no_grad():
        recon = model(x)
    for i in range(5):
        assert_tile(image, 0, i, x[i])
        assert_tile(image, 1, i, recon[i])
    mse = (recon.double() - x.double()).pow(2).mean().item()
    assert f"MSE/pixel {mse:.6g}" in stdout


def test_reconstruct_wraps_long_rows_in_pairs(runner, runs, small, tmp_path):
    out = tmp_path / "rec.png"
    ok(runner.invoke(app, ["reconstruct", str(runs["conv"]), "--n", "20", "--out", str(out)]))
    image = png(out)
    assert image.shape == (4 * TILE + 2, 16 * TILE + 2)  # 16 per row: originals, recon, originals, recon
    assert_tile(image, 2, 0, small.test.batch([16])[0])  # sample 16 opens the second pair of rows
    assert tile(image, 2, 4).max() == 0  # the short last row is padded with blank tiles


def test_reconstruct_refuses_tabular_models(runner, runs, tmp_path):
    result = runner.invoke(app, ["reconstruct", str(runs["rows"]), "--out", str(tmp_path / "r.png")])
    one_line_error(result, "ae reconstruct draws images", "(10,)", "not C×H×W")
    assert not (tmp_path / "r.png").exists()


def test_reconstruct_default_output_is_never_overwritten(runner, runs, tmp_path):
    run = tmp_path / "copy"
    run.mkdir()
    shutil.copy(runs["mlp"] / "model.safetensors", run / "model.safetensors")
    ok(runner.invoke(app, ["reconstruct", str(run), "--n", "3"]))
    target = run / "reconstruct.png"
    before = target.read_bytes()
    one_line_error(runner.invoke(app, ["reconstruct", str(run), "--n", "4"]), "already exists", "--overwrite")
    assert target.read_bytes() == before
    ok(runner.invoke(app, ["reconstruct", str(run), "--n", "4", "--overwrite"]))
    assert png(target).shape[1] == 4 * TILE + 2


def test_reconstruct_bad_n(runner, runs, tmp_path):
    one_line_error(
        runner.invoke(app, ["reconstruct", str(runs["mlp"]), "--n", "0", "--out", str(tmp_path / "r.png")]),
        "--n must be between 1 and 200",
    )


# -- interpolate and arithmetic ------------------------------------------------------------------


def test_interpolate_strip_ends_are_the_two_reconstructions(runner, runs, small, tmp_path):
    out = tmp_path / "interp.png"
    args = ["interpolate", str(runs["mlp"]), "--a", "3", "--b", "7", "--steps", "6", "--out", str(out)]
    stdout = ok(runner.invoke(app, args))
    image = png(out)
    assert image.shape == (TILE + 2, 6 * TILE + 2)
    model = load(runs["mlp"])
    z = latent.encode(model, small.test.batch([3, 7]))
    with torch.no_grad():
        assert_tile(image, 0, 0, model.decode(z[:1])[0])  # t = 0: decode(z1)
        assert_tile(image, 0, 5, model.decode(z[1:])[0])  # t = 1: decode(z2)
        assert_tile(image, 0, 2, model.decode((0.6 * z[0] + 0.4 * z[1]).unsqueeze(0))[0])  # t = 0.4
    assert f"label {int(small.test.y[3])}" in stdout


def test_interpolate_library_path():
    z1, z2 = torch.randn(5), torch.randn(5)
    path = latent.interpolate(z1, z2, 11)
    assert path.shape == (11, 5)
    assert torch.equal(path[0], z1) and torch.equal(path[-1], z2)
    assert torch.allclose(path[5], (z1 + z2) / 2, atol=1e-6)
    assert torch.allclose(path[1:] - path[:-1], ((z2 - z1) / 10).expand(10, 5), atol=1e-6)  # even steps


def test_interpolate_index_out_of_range(runner, runs, tmp_path):
    out = tmp_path / "i.png"
    result = runner.invoke(app, ["interpolate", str(runs["mlp"]), "--b", "200", "--out", str(out)])
    one_line_error(result, "--b 200 is out of range", "200 samples")
    result = runner.invoke(app, ["interpolate", str(runs["mlp"]), "--steps", "1", "--out", str(out)])
    one_line_error(result, "--steps must be at least 2")
    assert not out.exists()


def test_arithmetic_decodes_za_plus_zb_minus_zc(runner, runs, small, tmp_path):
    out = tmp_path / "arith.png"
    args = ["arithmetic", str(runs["conv"]), "--a", "4", "--b", "9", "--c", "11", "--out", str(out)]
    ok(runner.invoke(app, args))
    image = png(out)
    assert image.shape == (TILE + 2, 4 * TILE + 2)
    model = load(runs["conv"])
    x = small.test.batch([4, 9, 11])
    for i in range(3):
        assert_tile(image, 0, i, x[i])  # the three inputs
    z = latent.encode(model, x)
    assert torch.equal(latent.arithmetic(z[0], z[1], z[2]), z[0] + z[1] - z[2])
    with torch.no_grad():
        assert_tile(image, 0, 3, model.decode((z[0] + z[1] - z[2]).unsqueeze(0))[0])
    args = ["arithmetic", str(runs["conv"]), "--c", "-1", "--out", str(tmp_path / "a.png")]
    result = runner.invoke(app, args)
    one_line_error(result, "--c -1 is out of range")


# -- sample --------------------------------------------------------------------------------------


def test_sample_deterministic_model_draws_from_fitted_gaussian(runner, runs, small, tmp_path):
    out = tmp_path / "sample.png"
    args = ["sample", str(runs["mlp"]), "--n", "12", "--nrow", "6", "--seed", "3", "--out", str(out)]
    stdout = ok(runner.invoke(app, args))
    assert "deterministic model" in stdout and "Gaussian fitted to 1000 training codes" in stdout
    image = png(out)
    assert image.shape == (2 * TILE + 2, 6 * TILE + 2)
    model = load(runs["mlp"])
    fit = latent.fit_gaussian(latent.encode(model, small.train))
    z, _ = latent.sample_codes(model, 12, seed=3, fit=fit)
    with torch.no_grad():
        images = model.decode(z)
    assert_tile(image, 0, 0, images[0])
    assert_tile(image, 1, 5, images[11])


def test_fitted_gaussian_matches_the_codes():
    g = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, -1.0, 0.3]])
    codes = torch.randn(5000, 3, generator=g) @ mixing.T + torch.tensor([1.0, -2.0, 0.5])
    fit = latent.fit_gaussian(codes)
    assert torch.allclose(fit.mean, codes.double().mean(0))
    assert torch.allclose(fit.cov, torch.from_numpy(np.cov(codes.double().numpy(), rowvar=False)))
    draws = fit.sample(40000, torch.Generator().manual_seed(1)).double()
    assert torch.allclose(draws.mean(0), fit.mean, atol=0.05)
    assert torch.allclose(torch.from_numpy(np.cov(draws.numpy(), rowvar=False)), fit.cov, atol=0.08)
    # a dead unit (zero variance) makes the covariance singular; sampling still works
    dead = torch.cat([codes[:, :2], torch.zeros(5000, 1)], dim=1)
    assert latent.fit_gaussian(dead).sample(10)[:, 2].abs().max() < 1e-6


def test_sample_variational_model_uses_the_prior(runner, runs, tmp_path):
    out = tmp_path / "sample.png"
    args = ["sample", str(runs["vae"]), "--n", "4", "--seed", "5", "--out", str(out)]
    stdout = ok(runner.invoke(app, args))
    assert "variational model: z ~ N(0, I) in 4 dimensions" in stdout
    assert "fitted" not in stdout
    image = png(out)
    assert image.shape == (TILE + 2, 4 * TILE + 2)
    model = load(runs["vae"])
    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        images = model.decode(z)  # the decoder takes z directly, not through the mu head
    for i in range(4):
        assert_tile(image, 0, i, images[i])


def test_sample_refuses_tabular(runner, runs, tmp_path):
    result = runner.invoke(app, ["sample", str(runs["rows"]), "--out", str(tmp_path / "s.png")])
    one_line_error(result, "ae sample draws images")


# -- plot ----------------------------------------------------------------------------------------


def test_plot_writes_loss_curve_and_pca_scatter(runner, runs, small, tmp_path):
    out_dir = tmp_path / "figs"
    stdout = ok(runner.invoke(app, ["plot", str(runs["mlp"]), "--out-dir", str(out_dir), "--n", "150"]))
    for name in ("loss.png", "latent.png"):
        with Image.open(out_dir / name) as img:
            assert img.width > 300 and img.height > 200
    rows = read_csv(out_dir / "latent.csv")
    assert len(rows) == 150 and list(rows[0]) == ["index", "label", "x", "y"]
    assert [int(r["label"]) for r in rows] == small.test.y[:150].tolist()
    # the scatter is the PCA of the codes (up to the sign of each component)
    from sklearn.decomposition import PCA

    codes = latent.encode(load(runs["mlp"]), small.test.batch(slice(0, 150))).double().numpy()
    expected = PCA(n_components=2).fit_transform(codes)
    got = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    for k in range(2):
        assert np.allclose(np.abs(got[:, k]), np.abs(expected[:, k]), atol=1e-4)
    assert "PCA: the two components explain" in stdout
    # the loss curve's series are the history in metrics.json
    history = json.loads((runs["mlp"] / "metrics.json").read_text())["history"]
    series = loss_series(history)
    assert {"train_loss", "train_recon", "val_recon"} <= set(series)
    assert series["val_recon"] == ([1.0, 2.0], [h["val_recon"] for h in history])
    assert "lr" not in series and "epoch" not in series


def test_plot_two_dimensional_code_is_shown_as_is(runner, runs, small, tmp_path):
    ok(runner.invoke(app, ["plot", str(runs["mlp2"]), "--out-dir", str(tmp_path), "--n", "50"]))
    rows = read_csv(tmp_path / "latent.csv")
    codes = latent.encode(load(runs["mlp2"]), small.test.batch(slice(0, 50)))
    got = torch.tensor([[float(r["x"]), float(r["y"])] for r in rows])
    assert torch.allclose(got, codes, atol=1e-6)
    projection = latent.project_2d(codes, "tsne")
    assert projection.method == "identity" and np.array_equal(projection.points, codes.double().numpy())


def test_plot_tsne(runner, runs, tmp_path):
    args = ["plot", str(runs["conv"]), "--out-dir", str(tmp_path), "--n", "60", "--method", "tsne"]
    stdout = ok(runner.invoke(app, args))
    assert "t-SNE: KL divergence" in stdout
    rows = read_csv(tmp_path / "latent.csv")
    assert len(rows) == 60 and all(math.isfinite(float(r["x"])) for r in rows)


def test_plot_regularizer_terms_become_series():
    history = [
        {"pretrain_pair": 0, "pretrain_epoch": 1, "pretrain_loss": 0.3},
        {"epoch": 1, "train_loss": 0.5, "train_recon": 0.4, "train_sparse": 0.1, "lr": 1e-3},
        {"epoch": 2, "train_loss": 0.3, "train_recon": 0.25, "train_sparse": 0.05, "lr": 1e-3},
    ]
    series = loss_series(history)
    assert series["train_sparse"] == ([1.0, 2.0], [0.1, 0.05])
    assert series["pretrain_pair0"] == ([1.0], [0.3])
    assert set(series) == {"train_loss", "train_recon", "train_sparse", "pretrain_pair0"}


def test_plot_errors(runner, runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(runner.invoke(app, ["plot", str(empty)]), "no metrics.json in", "ae train")
    one_line_error(runner.invoke(app, ["plot", str(runs["mlp"]), "--method", "umap"]), "choose pca or tsne")
    (tmp_path / "loss.png").write_bytes(b"keep")
    result = runner.invoke(app, ["plot", str(runs["mlp"]), "--out-dir", str(tmp_path)])
    one_line_error(result, "loss.png already exists")
    assert (tmp_path / "loss.png").read_bytes() == b"keep"


# -- features ------------------------------------------------------------------------------------


def test_features_mlp_activation_rows(runner, runs, small, tmp_path):
    out = tmp_path / "feat.png"
    stdout = ok(runner.invoke(app, ["features", str(runs["mlp"]), "--index", "5", "--out", str(out)]))
    with Image.open(out) as img:
        assert img.width == 800 and img.height > 200
    assert not (tmp_path / "feat-maps.png").exists()  # no conv layers
    tensors = load_file(tmp_path / "feat.safetensors")
    model = load(runs["mlp"])
    x = small.test.batch([5])
    assert torch.equal(tensors["input"], x)
    layers = [k for k in tensors if k != "input"]
    kinds = [type(model.encoder.get_submodule(k)).__name__ for k in layers]
    assert kinds == ["Linear", "ReLU", "Linear"]  # Flatten and Identity pass values on: left out
    assert tensors[layers[0]].shape == (1, 32)
    with torch.no_grad():
        assert torch.allclose(tensors[layers[-1]], model.encoder(x), atol=1e-6)
    assert "Linear" in stdout and "ReLU" in stdout


def test_features_conv_feature_maps(runner, runs, small, tmp_path):
    out = tmp_path / "feat.png"
    ok(runner.invoke(app, ["features", str(runs["conv"]), "--out", str(out)]))
    with Image.open(tmp_path / "feat-maps.png") as img:
        assert img.width == 700 and img.height > 100
    tensors = load_file(tmp_path / "feat.safetensors")
    maps = {k: v.shape for k, v in tensors.items() if v.dim() == 4 and k != "input"}
    # two stride-2 conv stages of 4 and 8 channels, each followed by its activation
    assert sorted(maps.values()) == [(1, 4, 14, 14), (1, 4, 14, 14), (1, 8, 7, 7), (1, 8, 7, 7)]
    grid = feature_map_grid(tensors[next(iter(maps))][0])
    assert grid.shape == (3, 14 + 2, 4 * (14 + 1) + 1)  # four maps in one row, padding 1
    args = ["features", str(runs["conv"]), "--index", "200", "--out", str(out), "--overwrite"]
    one_line_error(runner.invoke(app, args), "--index 200 is out of range")


def test_collect_activations_keeps_changing_leaf_layers_only():
    net = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
        torch.nn.ReLU(inplace=True),  # in place: still a layer of its own
        torch.nn.Dropout(0.5),  # eval mode: passes values on
        torch.nn.Identity(),
    )
    layers = collect_activations(net, torch.randn(2, 1, 2, 2))
    assert [(la.name, la.kind) for la in layers] == [("1", "Linear"), ("2", "ReLU")]
    assert torch.equal(layers[1].output, layers[0].output.clamp(min=0))
    assert net.training  # restored
