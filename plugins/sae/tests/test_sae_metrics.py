"""The SAE's figures in ``ae eval``, against hand computations, and the preset."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from aecore import registry
from aecore.cli import app
from aecore.composition import compose
from aecore.evaluate import component_metrics
from aecore.testing import check_preset
from aecore_sae.metrics import HISTOGRAM_FILE, feature_recovery, fraction_of_variance_unexplained
from aecore_sae.presets import SYNTHETIC_PARAMS


def test_fvu_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 4.0]])
    recon = torch.tensor([[1.0, 3.0], [2.0, 6.0], [5.0, 4.0]])
    # mean (3, 4); spread Σ‖x − x̄‖² = (4+4) + (0+4) + (4+0) = 16; error 1 + 1 = 2
    assert fraction_of_variance_unexplained(x, recon) == pytest.approx(2 / 16)
    assert fraction_of_variance_unexplained(x, x) == 0.0
    mean = x.mean(dim=0).expand_as(x)
    assert fraction_of_variance_unexplained(x, mean) == pytest.approx(1.0)


def test_a_perfect_dictionary_in_any_order_and_scale_recovers_every_feature():
    g = torch.Generator().manual_seed(0)
    true = torch.randn(20, 8, generator=g)
    learned = true[torch.randperm(20, generator=g)] * torch.rand(20, 1, generator=g) * 5
    learned = torch.cat([learned, torch.randn(7, 8, generator=g)])  # spare latents do not matter
    figures = feature_recovery(true, learned)
    assert figures["sae_mean_max_cosine"] == pytest.approx(1.0)
    assert figures["sae_matched_cosine"] == pytest.approx(1.0)


def test_matched_cosine_assigns_one_to_one_where_max_cosine_may_share():
    true = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # one learned direction between both features, one orthogonal to the first only
    learned = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    c = 1 / math.sqrt(2)
    figures = feature_recovery(true, learned)
    # max: feature 0 → direction 0 (c), feature 1 → direction 1 (1)
    assert figures["sae_mean_max_cosine"] == pytest.approx((c + 1) / 2)
    # one-to-one: the same assignment is the best here
    assert figures["sae_matched_cosine"] == pytest.approx((c + 1) / 2)
    # a single direction serving both: max counts it twice, the matching once
    shared = feature_recovery(true, torch.tensor([[1.0, 1.0]]))
    assert shared["sae_mean_max_cosine"] == pytest.approx(c)
    assert shared["sae_matched_cosine"] == pytest.approx(c / 2)
    # greedy matching would take the best pair first (0.99) and leave 0.0; the optimum is 0.9 + 0.9
    true3 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    a = torch.tensor([0.99, math.sqrt(1 - 0.99**2), 0.0])
    b = torch.tensor([0.9, 0.0, math.sqrt(1 - 0.81)])
    d = torch.tensor([0.0, 0.9, math.sqrt(1 - 0.81)])
    greedy_trap = torch.stack([a, b, d])[[0, 1]]  # directions a (near both) and b
    got = feature_recovery(true3, greedy_trap)["sae_matched_cosine"]
    best = max(a[0] + b[1], b[0] + a[1]) / 2  # feature 0 ↔ a, feature 1 ↔ b, or the swap
    assert got == pytest.approx(float(best))
    assert got == pytest.approx(float(b[0] + a[1]) / 2)  # the swap wins: 0.9 + 0.141 > 0.99 + 0


def test_component_metrics_on_a_model_by_hand(features, tmp_path):
    torch.manual_seed(0)
    model = compose("sae", regularizers=["topk"], input_shape=(16,), latent_dim=64, params={"topk": {"k": 2}})
    model.decoder.since_fired[:16] = 10**9  # a quarter dead under the training window
    figures = component_metrics(model, features, out_dir=tmp_path)
    x = features.test.x
    with torch.no_grad():
        z = model.eval().encode(x)
        recon = model(x)
    assert figures["sae_l0"] == pytest.approx(float((z != 0).sum(dim=1).float().mean()))
    assert figures["sae_fvu"] == pytest.approx(fraction_of_variance_unexplained(x, recon), rel=1e-6)
    assert figures["sae_dead_fraction"] == 0.25
    assert figures["sae_dead_fraction_test"] == pytest.approx(
        float(((z != 0).sum(dim=0) == 0).float().mean())
    )
    expected = feature_recovery(features.tensors["true_dictionary"], model.decoder.weight.detach())
    assert figures["sae_matched_cosine"] == pytest.approx(expected["sae_matched_cosine"])
    assert (tmp_path / HISTOGRAM_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ae_eval_reports_the_figures_and_training_logs_them_per_epoch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    data = "sparse-features?features=48&dim=16&l0=2&rows=1500&test_rows=300"
    trained = runner.invoke(
        app,
        [
            "train", "--encoder", "sae", "--reg", "auxk", "--reg", "topk", "--latent-dim", "48",
            "--data", data, "--epochs", "2", "--set", "topk.k=2", "--set", "trainer.batch_size=100",
            "-q", "--out", "run",
        ],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [sorted(k for k in h if k.startswith("sae_")) for h in history] == [
        ["sae_dead_fraction", "sae_l0"]
    ] * 2
    evaluated = runner.invoke(app, ["eval", "run", "--no-pca", "--out", "eval.csv"])
    assert evaluated.exit_code == 0, evaluated.output
    for key in ("sae_l0", "sae_fvu", "sae_dead_fraction_test", "sae_matched_cosine", "sae_mean_max_cosine"):
        assert key in evaluated.output
    rows = (tmp_path / "eval.csv").read_text().splitlines()[1:]
    figures = {row.split(",")[0]: float(row.split(",")[1]) for row in rows}
    assert 0 < figures["sae_fvu"] < 1 and 0 < figures["sae_matched_cosine"] <= 1
    assert figures["sae_l0"] == pytest.approx(2.0)
    assert (tmp_path / "run" / HISTOGRAM_FILE).is_file()


def test_the_preset_composes_with_its_parameter_count():
    preset = registry.get("preset", "sae-synthetic")
    model = check_preset(preset)
    assert model.num_parameters() == SYNTHETIC_PARAMS
    assert [r.name for r in model.spec.regularizers] == ["auxk", "topk"]
