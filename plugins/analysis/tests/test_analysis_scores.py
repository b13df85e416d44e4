"""Anomaly scores beside the plain error: SSIM, the code density, their sums, ``ae anomaly --score``."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from analysis_helpers import APPLY_DATA, ok, one_line_error, read_csv

from aecore import checkpoint
from aecore.cli import app
from aecore.data import TensorData
from aecore.errors import ConfigError, DataError
from aecore.sources import load_dataset
from aecore_analysis import anomaly, scores

C1, C2 = 0.01**2, 0.03**2


# -- SSIM ---------------------------------------------------------------------------------------


def test_ssim_of_an_image_with_itself_is_one_and_it_is_symmetric():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 20, 17, generator=g), torch.rand(4, 3, 20, 17, generator=g)
    assert torch.allclose(scores.ssim(x, x), torch.ones(4, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(scores.ssim(x, y), scores.ssim(y, x), atol=1e-6)
    assert bool((scores.ssim(x, y) < 0.5).all())  # independent noise shares no structure


def test_ssim_of_flat_images_is_the_luminance_term():
    # no variance anywhere: contrast and structure terms are C2 / C2, so only the means count
    a, b = 0.2, 0.6
    x, y = (torch.full((1, 1, 12, 12), v, dtype=torch.float64) for v in (a, b))
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    assert float(scores.ssim(x, y)) == pytest.approx(expected, rel=1e-9)


def test_ssim_ranks_a_structural_change_above_a_brightness_shift_of_equal_error():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 28, 28, generator=g) * 0.5 + 0.25
    shifted = x + 0.1  # squared error 0.01 per pixel, the structure kept
    noise = torch.randn(1, 1, 28, 28, generator=g)
    scrambled = x + 0.1 * noise / noise.pow(2).mean().sqrt()  # the same squared error, structure broken
    assert float((shifted - x).pow(2).mean()) == pytest.approx(float((scrambled - x).pow(2).mean()), rel=1e-4)
    assert float(scores.ssim(x, shifted)) > float(scores.ssim(x, scrambled)) + 0.1


def test_ssim_on_small_images_narrows_its_window_and_refuses_below_three_pixels():
    x = torch.rand(2, 1, 3, 5)
    assert torch.allclose(scores.ssim(x, x), torch.ones(2, dtype=torch.float64), atol=1e-9)
    with pytest.raises(DataError, match="at least 3×3"):
        scores.ssim(torch.rand(1, 1, 2, 9), torch.rand(1, 1, 2, 9))
    with pytest.raises(ValueError, match="one shape"):
        scores.ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))


# -- the code Gaussian --------------------------------------------------------------------------


def test_code_gaussian_distance_is_mahalanobis_of_the_fitted_mean_and_covariance():
    g = torch.Generator().manual_seed(2)
    mix = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, -1.0, 3.0]])
    codes = torch.randn(5000, 3, generator=g, dtype=torch.float64) @ mix.double() + 4.0
    fitted = scores.CodeGaussian.fit(codes)
    mean, cov = codes.mean(0), torch.cov(codes.T)
    cov = cov + 1e-3 * cov.diagonal().mean() * torch.eye(3, dtype=torch.float64)
    probe = torch.randn(7, 3, generator=g, dtype=torch.float64) * 3 + 4.0
    d = probe - mean
    expected = ((d @ torch.linalg.inv(cov)) * d).sum(1)
    assert torch.allclose(fitted.distance(probe), expected, rtol=1e-8)
    assert float(fitted.distance(mean[None])) == pytest.approx(0.0, abs=1e-12)


def test_code_gaussian_survives_codes_that_never_vary():
    codes = torch.zeros(50, 4, dtype=torch.float64)
    codes[:, 0] = torch.arange(50.0)  # one live value, three dead ones
    fitted = scores.CodeGaussian.fit(codes)
    probe = codes.mean(0).repeat(3, 1)
    probe[1, 0] += 1.0  # one step along the live value: a small fraction of its spread
    probe[2, 3] += 1.0  # the same step along a dead one: far from every normal code
    d = fitted.distance(probe)
    assert torch.isfinite(d).all() and float(d[0]) == pytest.approx(0.0, abs=1e-12)
    assert float(d[2]) > 1000 * float(d[1])
    with pytest.raises(DataError, match="2 or more"):
        scores.CodeGaussian.fit(codes[:1])


def test_code_neighbours_is_the_kth_nearest_distance_and_skips_a_reference_samples_own_code():
    g = torch.Generator().manual_seed(3)
    ref, probe = torch.randn(300, 6, generator=g), torch.randn(40, 6, generator=g)
    near = scores.CodeNeighbours(ref, k=5)
    expected = torch.cdist(probe.double(), ref.double()).sort(dim=1).values[:, 4]
    assert torch.allclose(near.distance(probe), expected, rtol=1e-5)
    # a reference code's nearest code is itself, at distance 0: excluded, the 5th other one counts
    own = torch.cdist(ref.double(), ref.double()).sort(dim=1).values[:, 5]
    assert torch.allclose(near.distance(ref, exclude_self=True), own, rtol=1e-5)
    # blocks of at most 2**24 pairs give the same figures as one block
    big = scores.CodeNeighbours(torch.randn(2**15, 2, generator=g), k=1)
    many = torch.randn(1200, 2, generator=g)
    assert torch.allclose(big.distance(many), torch.cdist(many, big.codes).min(dim=1).values.double())


def test_knn_needs_more_reference_samples_than_neighbours(zero_model, apply_split):
    few = apply_split.train.subset(torch.arange(scores.NEIGHBOURS))
    with pytest.raises(DataError, match="more than 5 normal training samples"):
        scores.fit_score(zero_model, few, ("knn",))


# -- names and sums -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("psnr", "unknown --score 'psnr'"),
        ("ssim+", "empty part"),
        ("", "empty"),
        ("mse+mse", "names a part twice"),
    ],
)
def test_parse_score_refuses_bad_names(text, fragment):
    with pytest.raises(ConfigError, match=fragment) as caught:
        scores.parse_score(text)
    assert "\n" not in str(caught.value) and "mse, ssim, code" in str(caught.value)


def test_parse_score_reads_sums_in_order():
    assert scores.parse_score("ssim") == ("ssim",)
    assert scores.parse_score(" code + ssim ") == ("code", "ssim")


@pytest.fixture(scope="module")
def zero_model(trained):
    return checkpoint.load(trained("zero"))


@pytest.fixture(scope="module")
def apply_split(apply_data):
    return apply_data


def test_a_sum_puts_each_part_on_the_references_scale(zero_model, apply_split):
    zeros = apply_split.train.subset((apply_split.train.y == 0).nonzero().flatten())
    fitted = scores.fit_score(zero_model, zeros, ("ssim", "code", "knn"))
    ref = fitted.reference
    assert set(ref) == {"mse", "ssim", "code", "knn", "ssim+code+knn"}
    for part in ("ssim", "code", "knn"):
        mean, std = fitted.log_stats[part]
        z = (ref[part].log() - mean) / std
        assert float(z.mean()) == pytest.approx(0.0, abs=1e-9) and float(z.std()) == pytest.approx(1.0)
    assert torch.allclose(
        ref["ssim+code+knn"],
        sum((ref[p].log() - fitted.log_stats[p][0]) / fitted.log_stats[p][1] for p in fitted.parts),
    )
    # the parts are the functions above, applied to the model's own reconstructions and codes
    x = zeros.batch(slice(0, len(zeros)))
    with torch.no_grad():
        z = zero_model.encode(x)
        recon = zero_model.decode(z)
    assert torch.allclose(ref["ssim"], 1 - scores.ssim(x, recon), atol=1e-6)
    assert torch.allclose(ref["code"], fitted.gaussian.distance(z.flatten(1)), rtol=1e-9)
    assert torch.allclose(ref["knn"], fitted.neighbours.distance(z.flatten(1), exclude_self=True), rtol=1e-6)
    assert torch.allclose(ref["mse"], anomaly.reconstruction_scores(zero_model, zeros), rtol=1e-9)


def test_a_part_that_never_varies_cannot_be_summed(zero_model):
    flat = TensorData(torch.full((20, 1, 28, 28), 0.5), None)  # one image, twenty times
    with pytest.raises(DataError, match="one value on every normal training sample"):
        scores.fit_score(zero_model, flat, ("mse", "code"))


def test_ssim_refuses_samples_that_are_not_images(trained):
    model = checkpoint.load(trained("rows"))
    rows = load_dataset("rows")
    with pytest.raises(ConfigError, match="not \\(C, H, W\\)"):
        scores.fit_score(model, rows.train, ("ssim",))
    fitted = scores.fit_score(model, rows.train, ("mse", "code"))  # a table has codes all the same
    assert set(fitted.score(model, rows.test)) == {"mse", "code", "mse+code"}


def test_code_refuses_codes_too_long_to_invert(zero_model, apply_split, monkeypatch):
    monkeypatch.setattr(scores, "MAX_CODE_SIZE", 8)
    with pytest.raises(ConfigError, match="code's 16 values, more than the 8"):
        scores.fit_score(zero_model, apply_split.train, ("code",))


# -- ae anomaly --score -------------------------------------------------------------------------


def test_anomaly_score_option_reports_the_chosen_score_beside_the_plain_one(runner, trained, tmp_path):
    run_dir = trained("zero")
    csv_path, png = tmp_path / "s.csv", tmp_path / "s.png"
    args = ["anomaly", str(run_dir), "--score", "ssim+code", "--out", str(csv_path), "--plot", str(png)]
    out = ok(runner.invoke(app, args))
    assert "score: ssim+code" in out and "ssim+code *" in out
    rows = read_csv(csv_path)
    assert list(rows[0]) == [
        "index",
        "score",
        "score_mse",
        "score_ssim",
        "score_code",
        "label",
        "anomaly",
        "flagged",
    ]
    payload = json.loads(csv_path.with_suffix(".json").read_text())
    assert payload["score"] == "ssim+code" and set(payload["by_score"]) == {
        "mse",
        "ssim",
        "code",
        "ssim+code",
    }
    from sklearn.metrics import roc_auc_score

    truth = [int(r["anomaly"]) for r in rows]
    for name, column in (
        ("ssim+code", "score"),
        ("mse", "score_mse"),
        ("ssim", "score_ssim"),
        ("code", "score_code"),
    ):
        auc = roc_auc_score(truth, [float(r[column]) for r in rows])
        assert payload["by_score"][name]["roc_auc"] == pytest.approx(auc, abs=1e-9), name
    assert payload["image"]["roc_auc"] == payload["by_score"]["ssim+code"]["roc_auc"]
    # the plain column is the plain command's score, and the flags follow the chosen score's threshold
    plain = ok(
        runner.invoke(
            app,
            ["anomaly", str(run_dir), "--out", str(tmp_path / "p.csv"), "--plot", str(tmp_path / "p.png")],
        )
    )
    assert "score:" not in plain
    assert [float(r["score"]) for r in read_csv(tmp_path / "p.csv")] == pytest.approx(
        [float(r["score_mse"]) for r in rows], rel=1e-9
    )
    model, data = checkpoint.load(run_dir), load_dataset(APPLY_DATA)
    zeros = data.train.subset((data.train.y == 0).nonzero().flatten())
    threshold = anomaly.threshold_from_percentile(
        scores.fit_score(model, zeros, ("ssim", "code")).reference["ssim+code"], 95
    )
    assert payload["threshold"] == pytest.approx(threshold, rel=1e-9)
    assert [int(r["flagged"]) for r in rows] == [int(float(r["score"]) > threshold) for r in rows]


def test_anomaly_score_one_part_and_on_a_table(runner, trained, tmp_path):
    out = ok(
        runner.invoke(
            app,
            [
                "anomaly",
                str(trained("zero")),
                "--score",
                "ssim",
                "--out",
                str(tmp_path / "a.csv"),
                "--plot",
                str(tmp_path / "a.png"),
            ],
        )
    )
    assert "ssim *" in out and re.search(r"mse\s+│\s+\d\.\d{4}", out)
    assert list(read_csv(tmp_path / "a.csv")[0])[:3] == ["index", "score", "score_mse"]
    result = runner.invoke(
        app,
        [
            "anomaly",
            str(trained("rows")),
            "--score",
            "ssim",
            "--out",
            str(tmp_path / "r.csv"),
            "--plot",
            str(tmp_path / "r.png"),
        ],
    )
    one_line_error(result, "--score ssim compares images")
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize(("value", "fragment"), [("psnr", "unknown --score 'psnr'"), ("mse+mse", "twice")])
def test_anomaly_bad_score_is_one_line_before_any_work(runner, trained, tmp_path, value, fragment):
    out = tmp_path / "x.csv"
    one_line_error(
        runner.invoke(app, ["anomaly", str(trained("zero")), "--score", value, "--out", str(out)]), fragment
    )
    assert not out.exists()


def test_detect_library_takes_the_score_too(zero_model, apply_split):
    report = anomaly.detect(zero_model, apply_split.train, apply_split.test, normal_classes=[0], score="code")
    assert report.score == "code" and set(report.by_score) == {"mse", "code"}
    assert torch.equal(report.scores, report.by_score["code"])
    assert math.isclose(report.metrics["roc_auc"], report.metrics_by_score["code"]["roc_auc"])
    plain = anomaly.detect(zero_model, apply_split.train, apply_split.test, normal_classes=[0])
    assert plain.score == "mse" and plain.by_score == {} and plain.metrics_by_score == {}
    assert torch.allclose(plain.scores, report.by_score["mse"], rtol=1e-9)
