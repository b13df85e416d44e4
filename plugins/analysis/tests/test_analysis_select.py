"""``ae cv`` and ``ae sweep``: run options generated from the run request, grids over any setting.

The runs are tiny (an MLP with one narrow hidden layer, one to five epochs
on at most 2,000 images of the embedded sample), so every grid trains in
seconds; the figures are checked against the library and against runs
trained alone.
"""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from analysis_helpers import APPLY_DATA, ok, one_line_error, png_size, read_csv, table_rows

from aecore import checkpoint, registry
from aecore.cli import app
from aecore.config import params_of
from aecore.evaluate import psnr
from aecore.request import RunRequest
from aecore_analysis import cli_apply, selection

# -- cv ----------------------------------------------------------------------------------------

CV = ["cv", "-e", "mlp", "--latent-dim", "8", "--set", "encoder.hidden=32", "--epochs", "1"]
CV += ["--data", "small", "--train-size", "900", "--device", "cpu", "-q"]


def test_cv_reports_k_folds_with_mean_and_std(runner, tmp_path):
    out = ok(runner.invoke(app, [*CV, "--folds", "3", "--out-dir", str(tmp_path / "cv")]))
    rows = read_csv(tmp_path / "cv" / "cv.csv")
    assert list(rows[0]) == [
        "fold",
        "n_train",
        "n_val",
        "val_loss",
        "val_mse_per_pixel",
        "val_sse_per_image",
        "train_loss",
    ]
    folds, mean, std = rows[:3], rows[3], rows[4]
    assert [r["fold"] for r in folds] == ["1", "2", "3"] and mean["fold"] == "mean" and std["fold"] == "std"
    assert [int(r["n_val"]) for r in folds] == [300, 300, 300]
    assert all(int(r["n_train"]) == 600 for r in folds)
    losses = [float(r["val_loss"]) for r in folds]
    assert float(mean["val_loss"]) == pytest.approx(statistics.fmean(losses))
    assert float(std["val_loss"]) == pytest.approx(statistics.stdev(losses))
    for r in folds:  # with the MSE loss, the held-out loss is the MSE per pixel
        assert float(r["val_loss"]) == pytest.approx(float(r["val_mse_per_pixel"]), rel=1e-5)
        assert float(r["val_sse_per_image"]) == pytest.approx(784 * float(r["val_mse_per_pixel"]))
    assert "3-fold cross-validation" in out and "mean" in out
    assert sorted(p.name for p in (tmp_path / "cv").iterdir()) == ["cv.csv"]  # models were temporary


def test_cv_is_deterministic_and_keeps_models_when_asked(runner, tmp_path):
    ok(runner.invoke(app, [*CV, "--folds", "2", "--out-dir", str(tmp_path / "a")]))
    ok(runner.invoke(app, [*CV, "--folds", "2", "--out-dir", str(tmp_path / "b"), "--keep-models"]))
    assert (tmp_path / "a" / "cv.csv").read_text() == (tmp_path / "b" / "cv.csv").read_text()
    for i in (1, 2):
        meta = checkpoint.read_metadata(tmp_path / "b" / f"fold-{i}" / "model.safetensors")
        assert meta["training"]["request"]["val_fraction"] == 0.0  # the held-out fold is the validation
        assert meta["training"]["request"]["latent_dim"] == 8
    # and the folds themselves: disjoint, covering, seeded
    splits = selection.fold_indices(10, 3, seed=0)
    assert sorted(torch.cat([v for _, v in splits]).tolist()) == list(range(10))
    assert [len(v) for _, v in splits] == [4, 3, 3]
    assert all(set(t.tolist()).isdisjoint(v.tolist()) for t, v in splits)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(splits, selection.fold_indices(10, 3, 0), strict=True))


def test_cv_errors(runner, tmp_path):
    one_line_error(runner.invoke(app, [*CV, "--folds", "1"]), "--folds must be at least 2")
    one_line_error(runner.invoke(app, [*CV, "--encoder", "nope"]), "unknown encoder 'nope'")
    one_line_error(
        runner.invoke(app, [*CV, "--set", "encoder.hiden=3"]), "'encoder.hiden'", "Did you mean: hidden"
    )
    one_line_error(runner.invoke(app, [*CV, "--train-size", "1"]), "--train-size must be at least 2")
    assert not (tmp_path / "runs").exists()  # a failed run leaves no output folder
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "cv.csv").write_text("x")
    one_line_error(runner.invoke(app, [*CV, "--out-dir", str(tmp_path / "taken")]), "already exists")
    assert (tmp_path / "taken" / "cv.csv").read_text() == "x"


def generated_flags(exclude=()) -> list[str]:
    """The first flag of every run-request option that a command generates."""
    return [
        (s.flags or (f"--{s.name.replace('_', '-')}",))[0]
        for s in params_of(RunRequest)
        if s.name not in exclude
    ]


@pytest.mark.parametrize(
    ("command", "excluded", "own"),
    [
        ("cv", ("out", "runs_root", "overwrite", "val_fraction"), ["--folds", "--train-size", "--out-dir"]),
        ("sweep", ("out", "runs_root", "overwrite"), ["--grid", "--train-size", "--out-dir"]),
    ],
)
def test_cv_and_sweep_take_the_run_options_of_train(runner, command, excluded, own):
    helped = ok(runner.invoke(app, [command, "--help"]))
    for flag in [*generated_flags(excluded), *own, "--keep-models", "--overwrite", "--quiet"]:
        assert flag in helped, flag
    for flag in ("--out ", "--runs-root", "--hidden"):
        assert flag not in helped, flag
    assert ("--val-fraction" in helped) == (command == "sweep")


# -- sweep -------------------------------------------------------------------------------------

SWEEP = ["sweep", "-e", "mlp", "--data", APPLY_DATA, "--train-size", "2000", "--device", "cpu", "-q"]


def test_sweep_grid_over_latent_dim(runner, tmp_path):
    budget = ["--epochs", "5", "--batch-size", "64", "--lr", "1e-2"]  # about 150 steps: seconds
    out = ok(runner.invoke(app, [*SWEEP, *budget, "--grid", "latent_dim=2,32", "--set", "encoder.hidden=64"]))
    target = tmp_path / "runs" / "sweep"
    rows = read_csv(target / "sweep.csv")
    assert list(rows[0])[:3] == ["latent_dim", "parameters", "compression_ratio"]
    assert [int(r["latent_dim"]) for r in rows] == [2, 32]
    assert [float(r["compression_ratio"]) for r in rows] == [392.0, 24.5]
    params = [int(r["parameters"]) for r in rows]
    assert params == [(784 * 64 + 64) + (64 * k + k) + (k * 64 + 64) + (64 * 784 + 784) for k in (2, 32)]
    sse = [float(r["test_sse_per_image"]) for r in rows]
    assert sse[1] < sse[0]  # a 32-d code reconstructs better than a 2-d one on the same budget
    for r in rows:  # PSNR from the one definition, in aecore.evaluate
        assert float(r["test_psnr"]) == pytest.approx(psnr(float(r["test_mse_per_pixel"])))
    assert png_size(target / "sweep.png") == (720, 456)
    assert "Sweep over latent_dim on small" in out
    assert sorted(p.name for p in target.iterdir()) == ["sweep.csv", "sweep.png"]


def test_sweep_product_of_latent_dim_and_encoder_hidden(runner, tmp_path):
    grid = ["--grid", "latent_dim=4,8", "--grid", "encoder.hidden=32,64:32"]
    base = ["sweep", "-e", "mlp", "--data", "small", "--epochs", "1", "--device", "cpu", "-q"]
    out = ok(runner.invoke(app, [*base, *grid, "--out-dir", "s", "--keep-models"]))
    rows = read_csv(tmp_path / "s" / "sweep.csv")
    assert list(rows[0])[:2] == ["latent_dim", "encoder.hidden"]
    assert [(r["latent_dim"], r["encoder.hidden"]) for r in rows] == [
        ("4", "32"),
        ("4", "64:32"),
        ("8", "32"),
        ("8", "64:32"),
    ]
    assert int(rows[1]["parameters"]) > int(rows[0]["parameters"])
    assert [r[:2] for r in table_rows(out) if r and r[0] in ("4", "8")] == [
        ["4", "32"],
        ["4", "64:32"],
        ["8", "32"],
        ["8", "64:32"],
    ]
    assert "Sweep over latent_dim × encoder.hidden" in out
    # each point is a run of its own, with the swept values parsed by the owning configs
    kept = tmp_path / "s" / "latent_dim=8_encoder.hidden=64-32"
    spec = checkpoint.read_metadata(kept / "model.safetensors")["model"]
    assert spec["latent_dim"] == 8 and spec["encoder"]["params"]["hidden"] == [64, 32]
    assert spec["decoder"]["params"]["hidden"] == [64, 32]  # the mirroring decoder follows
    # the same point trained alone gives the same figure (same seed, same budget, same data)
    alone = ["train", "-e", "mlp", "--data", "small", "--epochs", "1", "--device", "cpu", "-q"]
    ok(runner.invoke(app, [*alone, "--latent-dim", "8", "--set", "encoder.hidden=64,32", "--out", "alone"]))
    final = json.loads((tmp_path / "alone" / "metrics.json").read_text())["final"]
    assert float(rows[3]["test_sse_per_image"]) == pytest.approx(final["test_sse_per_image"], rel=1e-12)


def test_sweep_grid_over_a_trainer_parameter_and_a_regularizer_weight(runner, tmp_path):
    if "sparse" not in registry.names("regularizer"):
        pytest.skip("the aecore-sparse plugin is not installed")
    args = ["sweep", "-e", "mlp", "-r", "sparse", "--latent-dim", "8", "--set", "encoder.hidden=16"]
    args += [
        "--data",
        "small",
        "--train-size",
        "300",
        "--device",
        "cpu",
        "-q",
        "--keep-models",
        "--out-dir",
        "w",
    ]
    args += ["--grid", "trainer.epochs=1,2", "--grid", "reg.weight=0,1e-2"]
    ok(runner.invoke(app, args))
    rows = read_csv(tmp_path / "w" / "sweep.csv")
    assert [(r["trainer.epochs"], r["reg.weight"]) for r in rows] == [
        ("1", "0"),
        ("1", "1e-2"),
        ("2", "0"),
        ("2", "1e-2"),
    ]
    meta = checkpoint.read_metadata(tmp_path / "w" / "trainer.epochs=2_reg.weight=1e-2" / "model.safetensors")
    assert meta["training"]["trainer"]["params"]["epochs"] == 2
    assert meta["model"]["regularizers"][0]["params"]["weight"] == pytest.approx(1e-2)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["--grid", "latent_dims=2,8"],
            ["--grid latent_dims: not a run setting", "Did you mean: latent_dim"],
        ),
        (["--grid", "hidden=32,64"], ["--grid hidden: not a run setting", "TARGET.PARAM"]),
        (["--grid", "out=a,b"], ["--grid out:", "--out-dir"]),
        (["--grid", "latent_dim"], ["--grid expects KEY=V1,V2"]),
        (["--grid", "latent_dim="], ["--grid latent_dim= gives no values"]),
        (["--grid", ".hidden=1"], ["'.hidden' is not TARGET.PARAM"]),
        (["--grid", "latent_dim=2", "--grid", "latent-dim=8"], ["--grid latent_dim is given twice"]),
        (["--grid", "latent_dim=2,x"], ["--grid latent_dim=x:", "bad value 'x' for 'latent_dim'"]),
        (["--grid", "latent_dim=0,8"], ["--grid latent_dim=0:", "must be at least 1, got 0"]),
        (["--grid", "lr=fast"], ["bad value 'fast' for 'lr'"]),
        (["--grid", "encoder.hiden=32"], ["unknown parameter 'encoder.hiden'", "Did you mean: hidden"]),
        (["--grid", "encoder.hidden=32:a"], ["for 'encoder.hidden'"]),
        (["--grid", "sparse.weight=1"], ["'sparse' is not part of this run"]),
        (["--grid", "encoder=mlp,nope"], ["encoder is given by --encoder and swept by --grid"]),
        (["--latent-dim", "8", "--grid", "latent_dim=2,8"], ["given by --latent-dim and swept by --grid"]),
        (["--set", "encoder.hidden=8", "--grid", "encoder.hidden=4,8"], ["set by --set and swept by --grid"]),
        ([], ["nothing to sweep", "--grid KEY=V1,V2"]),
        (["--latent-dim", "2,8"], ["'--latent-dim'", "valid integer"]),  # one value: --grid sweeps
        (["--hidden", "32|64"], ["No such option: --hidden"]),
    ],
)
def test_sweep_bad_grids_are_one_line_errors_before_any_training(runner, tmp_path, args, fragments):
    one_line_error(runner.invoke(app, [*SWEEP, *args]), *fragments)
    assert not (tmp_path / "runs").exists()


def test_sweep_refuses_to_replace_its_outputs(runner, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "sweep.png").write_bytes(b"keep")
    one_line_error(
        runner.invoke(app, [*SWEEP, "--grid", "latent_dim=2", "--out-dir", "taken"]), "already exists"
    )
    assert (tmp_path / "taken" / "sweep.png").read_bytes() == b"keep"


def test_grid_parsing_and_point_requests():
    axes = selection.parse_grid(["latent_dim=8, 32,8", "encoder.hidden=256:128,512", "batch-size=64"])
    assert axes == [
        selection.GridAxis("latent_dim", ("8", "32")),
        selection.GridAxis("encoder.hidden", ("256:128", "512")),
        selection.GridAxis("batch_size", ("64",)),
    ]
    points = selection.grid_points(axes)
    assert len(points) == 4 and points[1] == {"latent_dim": "8", "encoder.hidden": "512", "batch_size": "64"}
    request = selection.point_request({"encoder": "mlp", "epochs": 2}, points[0])
    assert (request.latent_dim, request.batch_size, request.epochs) == (8, 64, 2)
    assert request.params == {"encoder": {"hidden": "256,128"}}  # ':' separates a list's items
    # only list values are split: a qualified name or a data source keeps its ':'
    request = selection.point_request({}, {"encoder": "aecore-mlp:mlp", "classes": "1:2"})
    assert request.encoder == "aecore-mlp:mlp" and request.classes == (1, 2)
    request = selection.point_request({"encoder": "mlp"}, {"data": "csv:t.csv?label=y"})
    assert request.data == "csv:t.csv?label=y"


class _Result:
    def __init__(self, values):
        self.keys = list(values[0])
        self.points = [
            selection.SweepPoint(v, "d", 8, 100, 98.0, float(i + 1), 0.1, 10.0, 0.1, 0.1, 1.0)
            for i, v in enumerate(values)
        ]


@pytest.mark.parametrize(
    ("values", "scale", "labels"),
    [
        ([{"latent_dim": "2"}, {"latent_dim": "32"}, {"latent_dim": "8"}], "log", ["2", "8", "32"]),
        ([{"lr": "0.001"}, {"lr": "0.004"}], "linear", ["0.001", "0.004"]),
        ([{"loss": "mse"}, {"loss": "l1"}], "linear", ["mse", "l1"]),
        ([{"latent_dim": "2", "seed": "0"}, {"latent_dim": "2", "seed": "1"}], "linear", None),
    ],
)
def test_sweep_plot_draws_a_line_over_one_numeric_key_else_labels(
    monkeypatch, tmp_path, values, scale, labels
):
    from aecore_analysis import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi=120: figures.append(fig))
    cli_apply._sweep_plot(_Result(values), tmp_path / "s.png", "d")
    ax = figures[0].axes[0]
    assert ax.get_xscale() == scale
    shown = [t.get_text() for t in ax.get_xticklabels()]
    if labels is not None:
        assert shown == labels
    else:  # several keys: each point by its settings
        assert shown == ["latent_dim=2\nseed=0", "latent_dim=2\nseed=1"]
    assert ax.get_xlabel() == " × ".join(values[0])


def test_library_sweep_and_cross_validation(small, tmp_path):
    base = {"encoder": "mlp", "latent_dim": 4, "epochs": 1, "device": "cpu", "val_fraction": 0.0}
    seen = []
    result = selection.sweep(
        base, {"encoder.hidden": ["8", "16:8"], "seed": ["0"]}, data=small, on_point=seen.append
    )
    assert result.keys == ["encoder.hidden", "seed"] and seen == result.points
    assert [p.values for p in result.points] == [
        {"encoder.hidden": "8", "seed": "0"},
        {"encoder.hidden": "16:8", "seed": "0"},
    ]
    assert all(p.data == "small" and p.latent_dim == 4 for p in result.points)
    with pytest.raises(selection.ConfigError, match="latent_dim is given by --latent-dim"):
        selection.sweep(base, {"latent-dim": ["2"]}, data=small)
    with pytest.raises(selection.ConfigError, match="not a run setting"):
        selection.sweep(base, {"hidden": ["2"]}, data=small)
    cv = selection.cross_validate(
        small, RunRequest.from_values({**base, "params": {"encoder": {"hidden": "8"}}}), folds=2
    )
    assert [f.n_val for f in cv.folds] == [500, 500] and cv.loss == "mse"
    assert cv.mean == pytest.approx(statistics.fmean(f.val_loss for f in cv.folds))
