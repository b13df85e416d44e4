"""``ae anomaly``, ``denoise``, ``probe``, ``cv`` and ``sweep``.

Each command runs through the CLI on small models trained once per session
(on a 4,000/500-image cut of the embedded MNIST sample, registered as the
dataset ``apply-small``); the tests read back the CSV, JSON and PNG files the
commands write and check the numbers in them against the library and against
what the method should achieve.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics

import pytest
import torch
from helpers import ok, one_line_error
from PIL import Image
from typer.testing import CliRunner

from aecore import checkpoint
from aecore.analysis import anomaly, denoise, selection
from aecore.cli import app
from aecore.cli import output as cli_output
from aecore.data import DATASETS, Dataset, TensorData
from aecore.evaluate import reconstruction_metrics
from aecore.training import train

SMALL, NOLABELS = "apply-small", "apply-nolabels"


@pytest.fixture(scope="session")
def small(embedded) -> Dataset:
    """4,000 training and 500 test images of the embedded sample."""
    return Dataset(
        SMALL,
        embedded.train.subset(torch.arange(4000)),
        embedded.test.subset(torch.arange(500)),
        {"name": SMALL},
    )


@pytest.fixture(scope="session")
def nolabels(small) -> Dataset:
    """The same images without labels."""
    return Dataset(
        NOLABELS,
        TensorData(small.train.x, None, small.train.normalisation),
        TensorData(small.test.x, None, small.test.normalisation),
        {"name": NOLABELS},
    )


@pytest.fixture(autouse=True)
def _datasets(monkeypatch, small, nolabels):
    """Make the small datasets loadable by name, as the commands reload data by name."""
    monkeypatch.setitem(DATASETS, SMALL, lambda data_dir: small)
    monkeypatch.setitem(DATASETS, NOLABELS, lambda data_dir: nolabels)


@pytest.fixture(scope="session")
def models(tmp_path_factory, small):
    """A general model (all digits) and a one-class model (digit 0 only); a few seconds in all."""
    root = tmp_path_factory.mktemp("apply-runs")

    def run(name, epochs, classes=None):
        return train(
            "mlp",
            latent_dim=16,
            params={"encoder": {"hidden": "64"}, "trainer": {"epochs": epochs, "lr": 3e-3}},
            data=small,
            classes=classes,
            device="cpu",
            progress=False,
            out=root / name,
        ).run_dir

    return {"general": run("general", 4), "zero": run("zero", 15, classes=[0])}


@pytest.fixture
def runner(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # default output folders (runs/cv, runs/sweep) land here
    monkeypatch.setattr(cli_output.rich_console(), "_width", 200)
    return CliRunner()


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()
        return image.size


# -- anomaly -----------------------------------------------------------------------------------


def test_anomaly_one_class_recipe_separates_the_other_digits(runner, models, small):
    run_dir = models["zero"]
    assert checkpoint.read_metadata(run_dir / "model.safetensors")["data"]["classes"] == [0]
    out = ok(runner.invoke(app, ["anomaly", str(run_dir)]))
    rows = read_csv(run_dir / "anomaly.csv")
    assert list(rows[0]) == ["index", "score", "label", "anomaly", "flagged"]
    assert len(rows) == len(small.test)
    labels = small.test.y.tolist()
    assert [int(r["label"]) for r in rows] == labels
    assert [int(r["anomaly"]) for r in rows] == [int(v != 0) for v in labels]
    auc = float(re.search(r"ROC-AUC (\d\.\d+)", out).group(1))
    assert auc > 0.8, out
    # the figure in the summary is sklearn's AUC of the CSV's scores
    from sklearn.metrics import roc_auc_score

    scores = [float(r["score"]) for r in rows]
    assert roc_auc_score([int(r["anomaly"]) for r in rows], scores) == pytest.approx(auc, abs=1e-4)
    # flags follow the threshold: the 95th percentile of the training scores of the normal class
    model = checkpoint.load(run_dir)
    zeros = small.train.subset((small.train.y == 0).nonzero().flatten())
    expected = anomaly.threshold_from_percentile(anomaly.reconstruction_scores(model, zeros), 95)
    assert float(re.search(r"threshold ([\d.e-]+)", out).group(1)) == pytest.approx(expected, rel=1e-5)
    assert [int(r["flagged"]) for r in rows] == [int(s > expected) for s in scores]
    assert png_size(run_dir / "anomaly.png") == (720, 432)


def test_anomaly_contamination_flags_that_share(runner, models, tmp_path):
    out_csv, out_png = tmp_path / "a.csv", tmp_path / "a.png"
    args = [
        "anomaly",
        str(models["zero"]),
        "--contamination",
        "0.1",
        "--out",
        str(out_csv),
        "--plot",
        str(out_png),
    ]
    ok(runner.invoke(app, args))
    flagged = sum(int(r["flagged"]) for r in read_csv(out_csv))
    assert flagged == 50  # 10% of 500
    png_size(out_png)


def anomaly_to(runner, run_dir, tmp_path, name, *args):
    """Run ``ae anomaly`` writing NAME.csv and NAME.png under tmp_path."""
    files = ["--out", str(tmp_path / f"{name}.csv"), "--plot", str(tmp_path / f"{name}.png")]
    return runner.invoke(app, ["anomaly", str(run_dir), *files, *args])


def test_anomaly_without_anomalies_or_labels_reports_scores_only(runner, models, tmp_path):
    # trained on every digit: no label counts as anomalous, so no AUC
    out = ok(anomaly_to(runner, models["general"], tmp_path, "g"))
    assert "ROC-AUC" not in out and "no AUC" in out
    assert list(read_csv(tmp_path / "g.csv")[0]) == ["index", "score", "label", "flagged"]
    # --normal-class overrides: digit 1 normal for the general model
    out = ok(anomaly_to(runner, models["general"], tmp_path, "g1", "--normal-class", "1"))
    assert "ROC-AUC" in out and "normal classes: 1" in out
    # data without labels
    out = ok(anomaly_to(runner, models["zero"], tmp_path, "n", "--data", NOLABELS))
    assert "ROC-AUC" not in out and "no labels" in out
    rows = read_csv(tmp_path / "n.csv")
    assert list(rows[0]) == ["index", "score", "flagged"] and len(rows) == 500
    png_size(tmp_path / "n.png")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--percentile", "150"], "--percentile must be between 0 and 100"),
        (["--percentile", "-1"], "--percentile must be between 0 and 100"),
        (["--contamination", "1.5"], "--contamination must be a fraction"),
        (["--percentile", "90", "--contamination", "0.1"], "not both"),
        (["--normal-class", "zero"], "--classes expects comma-separated integer labels"),
    ],
)
def test_anomaly_bad_options(runner, models, args, fragment):
    one_line_error(runner.invoke(app, ["anomaly", str(models["zero"]), *args]), fragment)


def test_anomaly_does_not_overwrite(runner, models, tmp_path):
    args = [
        "anomaly",
        str(models["zero"]),
        "--out",
        str(tmp_path / "x.csv"),
        "--plot",
        str(tmp_path / "x.png"),
    ]
    ok(runner.invoke(app, args))
    one_line_error(runner.invoke(app, args), "already exists", "--overwrite")
    ok(runner.invoke(app, [*args, "--overwrite"]))


# -- denoise -----------------------------------------------------------------------------------


def test_denoise_grid_and_psnr(runner, models, small, tmp_path):
    png = tmp_path / "d.png"
    out = ok(runner.invoke(app, ["denoise", str(models["general"]), "--count", "6", "--out", str(png)]))
    assert png_size(png) == (6 * 30 + 2, 3 * 30 + 2)  # rows noisy / denoised / clean, 28 px + padding
    noisy, denoised, gain = (
        float(v)
        for v in re.search(
            r"PSNR noisy ([\d.]+) dB → denoised ([\d.]+) dB: gain ([+-][\d.]+) dB", out
        ).groups()
    )
    assert gain == pytest.approx(denoised - noisy, abs=0.011)
    # gaussian 0.3 noise, clamped, on MNIST: about 13 dB
    assert 12 < noisy < 15
    # the clean reconstruction figure is the test PSNR that 'ae eval' reports
    clean = float(re.search(r"clean input reconstructs\s+at ([\d.]+) dB", out).group(1))
    model = checkpoint.load(models["general"])
    assert clean == pytest.approx(reconstruction_metrics(model, small.test)["psnr"], abs=0.006)
    report = denoise.denoise_report(checkpoint.load(models["general"]), small.test, seed=0)
    assert report.noisy_psnr == pytest.approx(noisy, abs=0.006)
    # seeded: the same corruption twice, a different one with another seed
    again = denoise.denoise_report(checkpoint.load(models["general"]), small.test, seed=0)
    assert again.noisy_psnr == report.noisy_psnr
    assert torch.equal(again.noisy, report.noisy)
    x = small.test.batch(slice(0, 4))
    g = torch.Generator().manual_seed(1)
    assert not torch.equal(denoise.corrupt(x, "gaussian", generator=g), report.noisy[:4])
    masked = denoise.corrupt(x, "mask", prob=1.0)
    assert masked.abs().sum() == 0
    sp = denoise.corrupt(x, "salt_pepper", prob=1.0)
    assert set(sp.unique().tolist()) <= {0.0, 1.0}


def test_denoise_bad_options(runner, models):
    one_line_error(
        runner.invoke(app, ["denoise", str(models["general"]), "--noise", "pink"]), "unknown --noise"
    )
    one_line_error(
        runner.invoke(app, ["denoise", str(models["general"]), "--noise", "mask", "--prob", "2"]),
        "--prob must be in [0, 1]",
    )


# -- probe -------------------------------------------------------------------------------------


def test_probe_accuracy_well_above_chance(runner, models):
    run_dir = models["general"]
    out = ok(runner.invoke(app, ["probe", str(run_dir)]))
    result = json.loads((run_dir / "probe.json").read_text())
    assert result["chance"] == pytest.approx(0.1)
    assert result["accuracy"] > 0.6, result
    assert result["n_train"] == 4000 and result["n_test"] == 500
    confusion = result["confusion"]
    assert len(confusion) == 10 and sum(map(sum, confusion)) == 500
    assert sum(confusion[i][i] for i in range(10)) / 500 == pytest.approx(result["accuracy"])
    assert f"{result['accuracy']:.2%}" in out and "chance 10.00%" in out
    assert png_size(run_dir / "probe.png") == (600, 528)


def test_probe_needs_labels(runner, models, tmp_path):
    args = ["probe", str(models["general"]), "--data", NOLABELS, "--out", str(tmp_path / "p.json")]
    one_line_error(runner.invoke(app, args), "needs class labels")
    assert not (tmp_path / "p.json").exists()


# -- cv ----------------------------------------------------------------------------------------

CV = [
    "cv",
    "-e",
    "mlp",
    "--latent-dim",
    "8",
    "--set",
    "encoder.hidden=32",
    "--epochs",
    "1",
    "--data",
    SMALL,
    "--train-size",
    "900",
    "--device",
    "cpu",
    "-q",
]


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
        assert (tmp_path / "b" / f"fold-{i}" / "model.safetensors").is_file()
    # and the folds themselves: disjoint, covering, seeded
    splits = selection.fold_indices(10, 3, seed=0)
    assert sorted(torch.cat([v for _, v in splits]).tolist()) == list(range(10))
    assert [len(v) for _, v in splits] == [4, 3, 3]
    assert all(set(t.tolist()).isdisjoint(v.tolist()) for t, v in splits)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(splits, selection.fold_indices(10, 3, 0), strict=True))


def test_cv_errors(runner, tmp_path):
    one_line_error(runner.invoke(app, [*CV, "--folds", "1"]), "--folds must be at least 2")
    one_line_error(runner.invoke(app, [*CV, "--encoder", "nope"]), "unknown encoder 'nope'")
    assert not (tmp_path / "runs").exists()  # a failed run leaves no empty output folder
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "cv.csv").write_text("x")
    one_line_error(runner.invoke(app, [*CV, "--out-dir", str(tmp_path / "taken")]), "already exists")
    assert (tmp_path / "taken" / "cv.csv").read_text() == "x"


def test_cv_shares_the_train_options(runner):
    helped = ok(runner.invoke(app, ["cv", "--help"]))
    for option in ("--encoder", "--reg", "--preset", "--set", "--classes", "--folds", "--keep-models"):
        assert option in helped


# -- sweep -------------------------------------------------------------------------------------

SWEEP = ["sweep", "-e", "mlp", "--data", SMALL, "--train-size", "2000", "--device", "cpu", "-q"]


def test_sweep_latent_size(runner, tmp_path):
    budget = ["--epochs", "5", "--batch-size", "64", "--lr", "1e-2"]  # about 150 steps: seconds
    out = ok(runner.invoke(app, [*SWEEP, *budget, "--latent-dim", "2,32", "--set", "encoder.hidden=64"]))
    target = tmp_path / "runs" / "sweep"
    rows = read_csv(target / "sweep.csv")
    assert [int(r["latent_dim"]) for r in rows] == [2, 32]
    assert [r["hidden"] for r in rows] == ["64", "64"]
    assert [float(r["compression_ratio"]) for r in rows] == [392.0, 24.5]
    params = [int(r["parameters"]) for r in rows]
    assert params == [(784 * 64 + 64) + (64 * k + k) + (k * 64 + 64) + (64 * 784 + 784) for k in (2, 32)]
    sse = [float(r["test_sse_per_image"]) for r in rows]
    assert sse[1] < sse[0]  # a 32-d code reconstructs better than a 2-d one on the same budget
    for r in rows:
        assert float(r["test_psnr"]) == pytest.approx(10 * math.log10(1 / float(r["test_mse_per_pixel"])))
    assert png_size(target / "sweep.png") == (720, 456)
    assert "Sweep over latent_dim" in out
    assert sorted(p.name for p in target.iterdir()) == ["sweep.csv", "sweep.png"]


def test_sweep_depth_and_width_grid(runner, tmp_path):
    args = [
        *SWEEP,
        "--epochs",
        "1",
        "--latent-dim",
        "8",
        "--hidden",
        "32|64,32",
        "--out-dir",
        str(tmp_path / "s"),
    ]
    ok(runner.invoke(app, args))
    rows = read_csv(tmp_path / "s" / "sweep.csv")
    assert [(r["latent_dim"], r["hidden"], r["depth"]) for r in rows] == [
        ("8", "32", "1"),
        ("8", "64-32", "2"),
    ]
    assert int(rows[1]["parameters"]) > int(rows[0]["parameters"])
    png_size(tmp_path / "s" / "sweep.png")
    # the same point trained alone gives the same figure (same seed, same budget, same data)
    again = ok(
        runner.invoke(
            app,
            [
                *SWEEP,
                "--epochs",
                "1",
                "--latent-dim",
                "8",
                "--hidden",
                "64,32",
                "--out-dir",
                str(tmp_path / "t"),
            ],
        )
    )
    assert again
    alone = read_csv(tmp_path / "t" / "sweep.csv")[0]
    assert alone["test_sse_per_image"] == rows[1]["test_sse_per_image"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--latent-dim", ""], "empty grid"),
        (["--latent-dim", ","], "empty grid"),
        (["--hidden", "|"], "empty grid"),
        (["--latent-dim", "2,x"], "comma-separated integers"),
        (["--latent-dim", "0,8"], "must be positive"),
        (["--hidden", "32|a"], "--hidden expects"),
        ([], "nothing to sweep"),
    ],
)
def test_sweep_bad_grids(runner, args, fragment):
    one_line_error(runner.invoke(app, [*SWEEP, *args]), fragment)


def test_parse_grids():
    assert selection.parse_int_grid("2, 8,8,16") == [2, 8, 16]
    assert selection.parse_hidden_grid("256|512,256|512,256,128") == [(256,), (512, 256), (512, 256, 128)]
    assert selection.hidden_label((512, 256)) == "512-256"


# -- start-up cost -----------------------------------------------------------------------------

HELP = """
import sys
from aecore.cli import app
for command in ("anomaly", "denoise", "probe", "cv", "sweep"):
    try:
        app([command, "--help"])
    except SystemExit as exc:
        assert exc.code in (0, None), (command, exc.code)
heavy = [m for m in ("torch", "numpy", "sklearn", "matplotlib") if m in sys.modules]
print("HEAVY", heavy)
"""


def test_help_does_not_import_torch():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", HELP], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout[-300:]
