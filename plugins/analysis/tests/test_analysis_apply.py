"""``ae anomaly``, ``denoise`` and ``probe``.

Each command runs through the CLI on small models trained once per session
on 4,000 training and 500 test images of the embedded sample (see
conftest.py); the tests read back the CSV, JSON and PNG files the commands
write and check the numbers in them against the library and against what
the method should achieve.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from analysis_helpers import APPLY_DATA, TILE, ok, one_line_error, png_size, read_csv

from aecore import checkpoint, registry
from aecore.cli import app
from aecore.evaluate import EVAL_BATCH, psnr, reconstruction_metrics
from aecore_analysis import anomaly, denoise

NOLABELS = f"{APPLY_DATA}&labels=false"


@pytest.fixture(scope="module")
def models(trained):
    """A general model (all digits), a one-class model (digit 0 only) and a denoising one."""
    return {name: trained(name) for name in ("general", "zero", "denoising")}


# -- anomaly -----------------------------------------------------------------------------------


def test_anomaly_one_class_recipe_separates_the_other_digits(runner, models, apply_data):
    run_dir = models["zero"]
    assert checkpoint.read_metadata(run_dir / "model.safetensors")["data"]["classes"] == [0]
    out = ok(runner.invoke(app, ["anomaly", str(run_dir)]))
    rows = read_csv(run_dir / "anomaly.csv")
    assert list(rows[0]) == ["index", "score", "label", "anomaly", "flagged"]
    assert len(rows) == len(apply_data.test)
    labels = apply_data.test.y.tolist()
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
    zeros = apply_data.train.subset((apply_data.train.y == 0).nonzero().flatten())
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
    assert not re.search(r"ROC-AUC \d", out) and "no AUC" in out
    assert list(read_csv(tmp_path / "g.csv")[0]) == ["index", "score", "label", "flagged"]
    # --normal-class overrides: digit 1 normal for the general model
    out = ok(anomaly_to(runner, models["general"], tmp_path, "g1", "--normal-class", "1"))
    assert re.search(r"ROC-AUC \d", out) and "normal classes: 1 (--normal-class)" in out
    # data without labels
    out = ok(anomaly_to(runner, models["zero"], tmp_path, "n", "--data", NOLABELS))
    assert not re.search(r"ROC-AUC \d", out) and "no labels" in out
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
        (["--normal-class", "zero"], "--normal-class expects comma-separated integer labels"),
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

PSNR_LINE = r"PSNR noisy ([\d.]+) dB → denoised ([\d.]+) dB: gain ([+-][\d.]+) dB"


def figures(out: str) -> tuple[float, float, float, float]:
    """noisy, denoised, gain and clean-reconstruction PSNRs from the summary."""
    noisy, denoised, gain = (float(v) for v in re.search(PSNR_LINE, out).groups())
    clean = float(re.search(r"clean input reconstructs\s+at ([\d.]+) dB", out).group(1))
    return noisy, denoised, gain, clean


def expected_noisy_psnr(corruption, test, seed=0) -> float:
    """What the command should measure: the regularizer's transform_input in training mode, seeded."""
    assert len(test) <= EVAL_BATCH  # one batch: one draw from the seeded stream
    x = test.batch(slice(None))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        corruption.train()
        noisy = corruption.transform_input(x)
    return psnr((noisy.double() - x.double()).pow(2).mean().item())


def test_denoise_uses_the_models_own_denoising_regularizer(runner, models, apply_data, tmp_path):
    png = tmp_path / "d.png"
    out = ok(runner.invoke(app, ["denoise", str(models["denoising"]), "--count", "6", "--out", str(png)]))
    assert png_size(png) == (6 * TILE + 2, 3 * TILE + 2)  # rows noisy / denoised / clean
    assert "corruption (the model's own): denoising (kind=gaussian, factor=0.3" in out
    noisy, denoised, gain, clean = figures(out)
    assert gain == pytest.approx(denoised - noisy, abs=0.011)
    assert 12 < noisy < 15  # gaussian 0.3 noise, clamped, on MNIST: about 13 dB
    model = checkpoint.load(models["denoising"])
    assert noisy == pytest.approx(
        expected_noisy_psnr(model.regularizers["denoising"], apply_data.test), abs=0.006
    )
    # the clean reconstruction figure is the test PSNR that 'ae eval' reports
    assert clean == pytest.approx(reconstruction_metrics(model, apply_data.test)["psnr"], abs=0.006)
    # reproducible: the same seed gives the same report, another seed other noisy images
    again = ok(runner.invoke(app, ["denoise", str(models["denoising"]), "--out", str(tmp_path / "e.png")]))
    assert figures(again) == figures(out)
    other = ok(runner.invoke(app, ["denoise", str(models["denoising"]), "--seed", "1", "--out", "f.png"]))
    assert figures(other)[0] != noisy or figures(other)[1] != denoised
    # another model measured on the same corruption sees the very same noisy images
    plain = ok(
        runner.invoke(app, ["denoise", str(models["general"]), "--corruption", "denoising", "--out", "p.png"])
    )
    assert figures(plain)[0] == noisy


def test_denoise_with_a_named_corruption_and_its_parameters(runner, models, apply_data, tmp_path):
    png = tmp_path / "m.png"
    args = ["denoise", str(models["general"]), "--corruption", "denoising", "--set", "denoising.kind=mask"]
    out = ok(runner.invoke(app, [*args, "--set", "denoising.prob=0.5", "--out", str(png)]))
    assert "corruption (--corruption): denoising (kind=mask, factor=0.3, prob=0.5" in out
    mask = registry.build("regularizer", "denoising", {"kind": "mask", "prob": "0.5"}, latent_dim=16)
    noisy = figures(out)[0]
    assert noisy == pytest.approx(expected_noisy_psnr(mask, apply_data.test), abs=0.006)
    # the noisy row shows masked images: never brighter than the clean ones, half of the ink gone
    from analysis_helpers import png as read_png

    image = read_png(png).astype(int)
    noisy_row, clean_row = image[2 : 2 + 28, 2 : 2 + 28], image[2 + 2 * TILE : 2 + 2 * TILE + 28, 2 : 2 + 28]
    assert (noisy_row <= clean_row + 1).all()
    assert 0.3 < (noisy_row > 0).sum() / (clean_row > 0).sum() < 0.7


def test_denoise_refuses_a_model_that_does_not_corrupt_its_input(runner, models, tmp_path):
    png = tmp_path / "r.png"
    one_line_error(
        runner.invoke(app, ["denoise", str(models["general"]), "--out", str(png)]),
        "no regularizer that changes its input",
        "--corruption NAME",
    )
    assert not png.exists()


DENOISING = ["--corruption", "denoising", "--set"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--corruption", "nope"], ["unknown regularizer 'nope'"]),
        (["--corruption", "sparse"], ["'sparse' does not change the input"]),
        (
            ["--corruption", "denoising", "--set", "denoising.kind=blur"],
            ["bad value 'blur' for 'denoising.kind'"],
        ),
        (
            ["--corruption", "denoising", "--set", "denoising.knid=mask"],
            ["'denoising.knid'", "Did you mean: kind"],
        ),
        (["--corruption", "denoising", "--set", "sparse.weight=1"], ["'sparse' is not the --corruption"]),
        (["--corruption", "denoising", "--set", "prob=1"], ["--set expects TARGET.PARAM=VALUE"]),
        (["--set", "denoising.kind=mask"], ["give --corruption NAME too"]),
        (["--count", "0"], ["--count must be at least 1"]),
        (["--noise", "gaussian"], ["No such option: --noise"]),
    ],
)
def test_denoise_bad_options(runner, models, tmp_path, args, fragments):
    if "sparse" in args and "sparse" not in registry.names("regularizer"):
        pytest.skip("the aecore-sparse plugin is not installed")
    one_line_error(
        runner.invoke(app, ["denoise", str(models["general"]), *args, "--out", str(tmp_path / "x.png")]),
        *fragments,
    )


def test_denoise_library_leaves_modes_and_random_state_as_they_were(models, apply_data):
    model = checkpoint.load(models["denoising"]).train()
    reg = model.regularizers["denoising"]
    state = torch.random.get_rng_state()
    report = denoise.denoise_report(model, apply_data.test, [reg], seed=3, limit=50, examples=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model.training and reg.training  # modes restored
    assert report.n == 50 and report.noisy.shape == (4, 1, 28, 28)
    again = denoise.denoise_report(model, apply_data.test, [reg], seed=3, limit=50, examples=4)
    assert torch.equal(again.noisy, report.noisy) and again.noisy_psnr == report.noisy_psnr
    x = apply_data.test.batch(slice(0, 8))
    assert denoise.changes_input([reg], x) and not denoise.changes_input([], x)
    assert torch.equal(torch.random.get_rng_state(), state)


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
