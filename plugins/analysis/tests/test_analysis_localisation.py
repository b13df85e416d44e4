"""``ae anomaly`` on MVTec-like data: pixel-level ROC-AUC from defect masks, per-defect AUC, heat maps.

The synthetic data of conftest.py has good training images and a test split
of good images and images with bright squares and stripes, their masks in
``extras["mask"]`` and a spec naming the labels. The exact AUC is checked
against a brute-force count of pairs, the binned one against its stated
error bound, the smoothing against SciPy, and the command's JSON against the
library.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from analysis_helpers import ok, one_line_error, read_csv
from PIL import Image

from aecore import checkpoint
from aecore.cli import app
from aecore.data import UINT8_IMAGES, TensorData
from aecore.errors import ConfigError, DataError
from aecore.sources import load_dataset
from aecore_analysis import anomaly
from aecore_analysis.localisation import AUCAccumulator, gaussian_blur, localise, pixel_errors, roc_auc
from aecore_analysis.maps import select_examples

SYNTHETIC = "synthetic"
NON_SQUARE = "synthetic?height=40&width=24"


def brute_force_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Every (positive, negative) pair: 1 when the positive scores higher, 1/2 when tied."""
    pos, neg = scores[positive].double(), scores[~positive].double()
    wins = (pos[:, None] > neg[None, :]).sum().item() + 0.5 * (pos[:, None] == neg[None, :]).sum().item()
    return wins / (len(pos) * len(neg))


@pytest.fixture(scope="module")
def runs(trained):
    return {"rgb": trained("rgb"), "rgb_conv": trained("rgb_conv"), "rows": trained("rows")}


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset(SYNTHETIC)


# -- the AUC itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_exact_auc_equals_brute_force_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 60, (1,), generator=g))
    scores = torch.randint(0, 5, (n,), generator=g).float()  # few values: many ties
    positive = torch.rand(n, generator=g) < 0.3
    positive[0], positive[1] = True, False  # both classes present
    assert roc_auc(scores, positive) == pytest.approx(brute_force_auc(scores, positive), abs=1e-12)
    from sklearn.metrics import roc_auc_score

    assert roc_auc(scores, positive) == pytest.approx(roc_auc_score(positive.numpy(), scores.numpy()))


def test_exact_auc_extremes_and_errors():
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert roc_auc(scores, torch.tensor([False, False, True, True])) == 1.0
    assert roc_auc(scores, torch.tensor([True, True, False, False])) == 0.0
    assert roc_auc(torch.ones(4), torch.tensor([True, False, True, False])) == 0.5
    with pytest.raises(ValueError):
        roc_auc(scores, torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError):
        roc_auc(scores, torch.ones(3, dtype=torch.bool))


@pytest.mark.parametrize("kind", ["continuous", "tied"])
def test_binned_auc_is_within_its_bound_of_the_exact_one(kind):
    g = torch.Generator().manual_seed(1)
    truth = torch.rand(20000, generator=g) < 0.1
    scores = torch.rand(20000, generator=g).pow(3) + truth * 0.2 * torch.rand(20000, generator=g)
    if kind == "tied":
        scores = (scores * 20).round() / 20
    exact = roc_auc(scores, truth)
    binned = AUCAccumulator(len(scores), exact_limit=0)
    kept = AUCAccumulator(len(scores))
    for part_s, part_t in zip(scores.split(3000), truth.split(3000), strict=True):  # batch by batch
        binned.update(part_s, part_t)
        kept.update(part_s, part_t)
    assert not binned.exact and kept.exact
    assert kept.compute() == (exact, 0.0)
    auc, bound = binned.compute()
    assert abs(auc - exact) <= bound + 1e-12
    if kind == "continuous":
        assert bound < 1e-3  # 2**-12-wide bins: pairs rarely share one
    else:
        assert auc == pytest.approx(exact, abs=1e-12)  # ties share a bin and count one half either way


def test_accumulator_refuses_what_it_cannot_score():
    acc = AUCAccumulator(4)
    with pytest.raises(DataError, match="not all finite"):
        acc.update(torch.tensor([0.1, float("nan")]), torch.tensor([True, False]))
    acc.update(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError):
        acc.compute()  # no anomalous value
    with pytest.raises(ValueError):
        acc.update(torch.tensor([0.5]), torch.tensor([True]))  # more than announced


# -- smoothing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.7, 1.5, 2.0])
def test_gaussian_blur_matches_scipy(sigma):
    from scipy.ndimage import gaussian_filter

    maps = torch.rand(2, 23, 17, generator=torch.Generator().manual_seed(0))
    expected = np.stack(
        [gaussian_filter(m, sigma, mode="nearest", truncate=4.0) for m in maps.double().numpy()]
    )
    assert np.allclose(gaussian_blur(maps, sigma).numpy(), expected, atol=1e-5)
    assert torch.equal(gaussian_blur(maps, 0.0), maps)
    tiny = torch.rand(1, 2, 3)
    assert gaussian_blur(tiny, 5.0).shape == tiny.shape  # a kernel wider than the image still works
    with pytest.raises(ConfigError, match="--smooth"):
        gaussian_blur(maps, -1.0)


def test_pixel_errors_average_the_channels():
    x, recon = torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    recon[0, 0, 0, 0], recon[0, 1, 0, 0], recon[0, 2, 1, 1] = 1.0, 2.0, 3.0
    assert torch.equal(pixel_errors(x, recon), torch.tensor([[[5 / 3, 0.0], [0.0, 3.0]]]))


# -- per-pixel scoring of a model ----------------------------------------------------------------


def test_pixel_auc_is_high_for_obvious_defects_and_equals_brute_force(runs, synthetic):
    model = checkpoint.load(runs["rgb"])
    test = synthetic.test
    located = localise(model, test)
    assert located.pixel is not None and located.pixel.exact
    with torch.no_grad():
        x = test.batch(slice(None))
        maps = pixel_errors(x, model(x))
    truth = test.extras["mask"][:, 0].bool()
    expected = brute_force_auc(maps.reshape(-1), truth.reshape(-1))
    assert located.pixel.roc_auc == pytest.approx(expected, abs=1e-9)
    assert located.pixel.roc_auc > 0.8
    assert located.pixel.pixels == len(test) * 32 * 32 and located.pixel.anomalous == int(truth.sum())
    # image scores are the per-sample errors reconstruction_scores gives
    assert torch.allclose(located.scores, anomaly.reconstruction_scores(model, test))
    # binned instead of exact: within the bound it reports
    binned = localise(model, test, exact_pixels=0).pixel
    assert not binned.exact and abs(binned.roc_auc - located.pixel.roc_auc) <= binned.error_bound + 1e-12
    # smoothing changes the maps it scores
    smoothed = localise(model, test, smooth=1.5).pixel
    blurred = gaussian_blur(maps, 1.5)
    assert smoothed.smooth == 1.5
    assert smoothed.roc_auc == pytest.approx(roc_auc(blurred, truth), abs=1e-12)


def test_localise_without_masks_reports_no_pixel_auc(runs):
    model = checkpoint.load(runs["rgb"])
    plain = load_dataset(f"{SYNTHETIC}?masks=false").test
    located = localise(model, plain)
    assert located.pixel is None and "no anomaly masks" in located.note
    blank = TensorData(plain.x, plain.y, UINT8_IMAGES, extras={"mask": torch.zeros(len(plain), 1, 32, 32)})
    assert "mark no pixel anomalous" in localise(model, blank).note


@pytest.mark.parametrize(
    ("mask", "fragment"),
    [
        (torch.zeros(24, 1, 16, 16, dtype=torch.uint8), "must be 1×32×32"),
        (torch.zeros(24, 3, 32, 32, dtype=torch.uint8), "must be 1×32×32"),
        (torch.full((24, 1, 32, 32), 255, dtype=torch.uint8), "values other than 0 and 1"),
    ],
)
def test_malformed_masks_are_one_line_data_errors(runs, synthetic, mask, fragment):
    data = TensorData(synthetic.test.x, synthetic.test.y, UINT8_IMAGES, extras={"mask": mask})
    with pytest.raises(DataError, match=fragment):
        localise(checkpoint.load(runs["rgb"]), data)


def test_spec_readers_and_per_label_auc():
    assert anomaly.normal_classes_of({"normal_classes": [2, 0, 2]}) == [0, 2]
    assert anomaly.normal_classes_of({}) is None and anomaly.label_names_of({}) is None
    for bad in ([], ["good"], [True], "0"):
        with pytest.raises(DataError, match="normal_classes"):
            anomaly.normal_classes_of({"normal_classes": bad})
    with pytest.raises(DataError, match="label_names"):
        anomaly.label_names_of({"label_names": ["good", 1]})
    scores = torch.tensor([0.1, 0.2, 0.3, 0.9, 0.15, 0.8, 0.05])
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    result = anomaly.per_label_auc(scores, labels, [0], ["good", "crack"])
    assert [(r.label, r.name, r.count) for r in result] == [(1, "crack", 2), (2, "2", 2)]
    normal = labels == 0
    for r in result:
        keep = normal | (labels == r.label)
        assert r.roc_auc == pytest.approx(brute_force_auc(scores[keep], labels[keep] == r.label))


def test_select_examples_spreads_each_group():
    is_anomaly = torch.tensor([False] * 10 + [True] * 6)
    chosen = select_examples(is_anomaly, 3, 16)
    assert chosen == [0, 4, 9, 10, 12, 15]  # first, middle and last of each group
    assert select_examples(is_anomaly, 20, 16) == list(range(16))
    assert select_examples(None, 2, 5) == [0, 4]
    assert select_examples(is_anomaly, 0, 16) == []


# -- the command ---------------------------------------------------------------------------------


def pixels_rgb(path) -> np.ndarray:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        img.load()
        return np.asarray(img.convert("RGB"))


def test_anomaly_command_reports_pixel_auc_per_defect_auc_and_draws_maps(runner, runs, synthetic, tmp_path):
    csv_path, png_path = tmp_path / "a.csv", tmp_path / "a.png"
    args = ["anomaly", str(runs["rgb"]), "--out", str(csv_path), "--plot", str(png_path), "--maps", "3"]
    out = ok(runner.invoke(app, args))
    assert "normal classes: 0 (the data's normal_classes)" in out
    image_auc = float(re.search(r"ROC-AUC (\d\.\d+) · average precision", out).group(1))
    pixel_auc = float(re.search(r"pixel ROC-AUC (\d\.\d+) over 24,576 pixels", out).group(1))
    assert image_auc > 0.8 and pixel_auc > 0.8, out
    assert "square" in out and "stripe" in out  # the per-defect table

    metrics = json.loads((tmp_path / "a.json").read_text())
    model = checkpoint.load(runs["rgb"])
    located = localise(model, synthetic.test)
    assert metrics["pixel"]["roc_auc"] == pytest.approx(located.pixel.roc_auc, abs=1e-12)
    assert metrics["pixel"]["exact"] is True and metrics["pixel"]["error_bound"] == 0.0
    assert metrics["pixel"]["anomalous_pixels"] == int(synthetic.test.extras["mask"].sum())
    assert metrics["image"]["roc_auc"] == pytest.approx(image_auc, abs=1e-4)
    assert metrics["normal_classes"] == [0] and metrics["notes"] == []
    by_name = {entry["name"]: entry for entry in metrics["per_label"]}
    assert set(by_name) == {"square", "stripe"} and by_name["square"]["samples"] == 6
    scores = located.scores
    labels = synthetic.test.y
    keep = (labels == 0) | (labels == 1)
    assert by_name["square"]["roc_auc"] == pytest.approx(brute_force_auc(scores[keep], labels[keep] == 1))

    rows = read_csv(csv_path)
    assert list(rows[0]) == ["index", "score", "label", "label_name", "anomaly", "flagged"]
    assert [r["label_name"] for r in rows[11:13]] == ["good", "square"]
    maps_png = tmp_path / "a-maps.png"
    image = pixels_rgb(maps_png)
    assert image.shape[0] > image.shape[1]  # 6 rows (3 good, 3 defective) of 4 columns
    assert image.shape[0] > 4 * 100
    assert not np.array_equal(image[..., 0], image[..., 1])
    assert str(maps_png) in out.replace("\n", "")


def test_anomaly_command_smooths_on_request(runner, runs, synthetic, tmp_path):
    args = ["anomaly", str(runs["rgb"]), "--out", str(tmp_path / "s.csv"), "--plot", str(tmp_path / "s.png")]
    out = ok(runner.invoke(app, [*args, "--smooth", "1.5", "--maps", "1"]))
    assert "smoothed with σ = 1.5 px" in out
    pixel = json.loads((tmp_path / "s.json").read_text())["pixel"]
    expected = localise(checkpoint.load(runs["rgb"]), synthetic.test, smooth=1.5).pixel
    assert pixel["smooth"] == 1.5 and pixel["roc_auc"] == pytest.approx(expected.roc_auc, abs=1e-12)
    pixels_rgb(tmp_path / "s-maps.png")


def test_anomaly_on_non_square_images(runner, runs, tmp_path):
    args = [
        "anomaly",
        str(runs["rgb_conv"]),
        "--out",
        str(tmp_path / "n.csv"),
        "--plot",
        str(tmp_path / "n.png"),
    ]
    out = ok(runner.invoke(app, args))
    assert re.search(r"pixel ROC-AUC \d\.\d+ over 23,040 pixels", out), out  # 24 images of 40×24
    pixels_rgb(tmp_path / "n-maps.png")


def test_anomaly_without_masks_says_so_in_one_line(runner, runs, tmp_path):
    args = ["anomaly", str(runs["rgb"]), "--out", str(tmp_path / "m.csv"), "--plot", str(tmp_path / "m.png")]
    out = ok(runner.invoke(app, [*args, "--data", f"{SYNTHETIC}?masks=false", "--maps", "0"]))
    assert not re.search(r"pixel ROC-AUC \d", out) and re.search(r"^ROC-AUC \d", out, re.M)
    assert out.count("no anomaly masks") == 1
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["pixel"] is None and any("no anomaly masks" in n for n in metrics["notes"])
    assert not (tmp_path / "m-maps.png").exists()  # --maps 0: no figure


def test_anomaly_on_a_table_has_no_maps_and_refuses_smoothing(runner, runs, tmp_path):
    files = ["--out", str(tmp_path / "t.csv"), "--plot", str(tmp_path / "t.png")]
    out = ok(runner.invoke(app, ["anomaly", str(runs["rows"]), *files]))
    assert "pixel" not in out
    assert not (tmp_path / "t-maps.png").exists()
    assert json.loads((tmp_path / "t.json").read_text())["pixel"] is None
    result = runner.invoke(app, ["anomaly", str(runs["rows"]), *files, "--overwrite", "--smooth", "1"])
    one_line_error(result, "--smooth", "shape (10,)", "not images")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--smooth", "-1"], "--smooth must be a finite number of pixels"),
        (["--smooth", "nan"], "--smooth must be a finite number of pixels"),
        (["--maps", "-2"], "--maps must be 0"),
    ],
)
def test_anomaly_bad_map_options(runner, runs, tmp_path, args, fragment):
    files = ["--out", str(tmp_path / "b.csv"), "--plot", str(tmp_path / "b.png")]
    one_line_error(runner.invoke(app, ["anomaly", str(runs["rgb"]), *files, *args]), fragment)
    assert not (tmp_path / "b.csv").exists()


def test_anomaly_refuses_to_overwrite_the_metrics_or_maps(runner, runs, tmp_path):
    (tmp_path / "k-maps.png").write_bytes(b"keep")
    args = ["anomaly", str(runs["rgb"]), "--out", str(tmp_path / "k.csv"), "--plot", str(tmp_path / "k.png")]
    one_line_error(runner.invoke(app, args), "k-maps.png already exists", "--overwrite")
    assert (tmp_path / "k-maps.png").read_bytes() == b"keep" and not (tmp_path / "k.csv").exists()
    ok(runner.invoke(app, [*args, "--overwrite"]))
    assert math.isfinite(json.loads((tmp_path / "k.json").read_text())["threshold"])


# -- end to end on the real MVTec-AD file layout -------------------------------------------------


def write_mvtec(root, size: int = 36) -> None:
    """A tiny MVTec-AD category on disk: colour PNGs, white-square 'crack' defects and their mask PNGs."""
    g = torch.Generator().manual_seed(0)

    def field() -> np.ndarray:
        colour = 0.2 + 0.3 * torch.rand(3, generator=g)
        image = colour.reshape(1, 1, 3) + 0.02 * torch.rand(size, size, 3, generator=g)
        return image.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()

    for folder, count in (("train/good", 24), ("test/good", 6), ("test/crack", 6)):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            image = field()
            if folder == "test/crack":
                mask = np.zeros((size, size), dtype=np.uint8)
                top, left = 4 + 3 * i, 20 - 2 * i
                mask[top : top + 9, left : left + 9] = 255
                image[mask > 0] = 255
                (root / "ground_truth/crack").mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(root / "ground_truth/crack" / f"{i:03d}_mask.png")
            Image.fromarray(image).save(root / folder / f"{i:03d}.png")


def test_anomaly_on_an_mvtec_category_read_by_the_images_plugin(runner, tmp_path):
    from aecore import registry

    if "mvtec" not in registry.names("dataset"):
        pytest.skip("the aecore-images plugin (--data mvtec:PATH) is not installed")
    from aecore.training import train

    write_mvtec(tmp_path / "tiles")
    data = f"mvtec:{tmp_path / 'tiles'}?size=32"
    run = train(
        encoder="mlp",
        latent_dim=8,
        params={"encoder": {"hidden": "32"}},
        epochs=3,
        lr=3e-3,
        batch_size=8,
        data=data,
        device="cpu",
        progress=False,
        out=str(tmp_path / "run"),
    ).run_dir
    out = ok(runner.invoke(app, ["anomaly", str(run), "--maps", "2"]))
    assert "normal classes: 0 (the data's normal_classes)" in out
    metrics = json.loads((run / "anomaly.json").read_text())
    assert [entry["name"] for entry in metrics["per_label"]] == ["crack"]
    pixel = metrics["pixel"]
    assert pixel["pixels"] == 12 * 32 * 32 and pixel["anomalous_pixels"] > 0
    assert pixel["roc_auc"] > 0.8, out
    assert not np.array_equal(*pixels_rgb(run / "anomaly-maps.png")[..., :2].transpose(2, 0, 1))
