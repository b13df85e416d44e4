"""The MMD estimator against its definition, the penalty's scaling and gradient, the prior, training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import aecore
from aecore.checkpoint import load, save
from aecore.composition import compose
from aecore.config import config_from_dict
from aecore.errors import ConfigError
from aecore.evaluate import component_metrics
from aecore.testing import check_preset, check_regularizer
from aecore_wae import WAE, WAEConfig, imq_kernel, mmd_unbiased, squared_distances
from aecore_wae.presets import wae_mnist


def test_conforms_to_the_regularizer_protocol() -> None:
    check_regularizer(WAE)
    check_regularizer(WAE, params={"weight": 0.0})
    check_regularizer(WAE, params={"scales": (0.1, 1.0, 10.0), "prior_var": 2.0})


@pytest.mark.parametrize(
    ("params", "word"),
    [({"weight": "-1"}, "weight"), ({"prior_var": "0"}, "prior_var"), ({"scales": "1,-2"}, "scales")],
)
def test_bad_settings_are_one_line_errors(params: dict[str, str], word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        config_from_dict(WAEConfig, params)


def test_mmd_matches_the_u_statistic_written_out_pair_by_pair() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64) + 0.5
    c = 6.0

    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        return c / (c + float((a - b).pow(2).sum()))

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert mmd_unbiased(x, y, [c]).item() == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    torch.testing.assert_close(squared_distances(x, y), torch.cdist(x, y).pow(2))
    assert imq_kernel(torch.tensor(0.0), c).item() == 1.0


def test_mmd_of_identical_distributions_is_about_zero_and_may_be_negative() -> None:
    g = torch.Generator().manual_seed(1)
    values = torch.stack(
        [
            mmd_unbiased(torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g), [8.0])
            for _ in range(30)
        ]
    )
    assert abs(values.mean().item()) < 3 * values.std().item() / math.sqrt(30)  # unbiased: zero on average
    assert values.abs().max() < 0.01
    assert (values < 0).any()  # an unbiased estimate of 0 falls below it too


def test_mmd_of_shifted_distributions_is_positive_and_grows_with_the_shift() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 4, generator=g)
    values = [
        mmd_unbiased(x, torch.randn(300, 4, generator=g) + shift, [8.0]).item() for shift in (0.5, 1, 2, 4)
    ]
    assert values[0] > 0.01
    assert values == sorted(values)


def test_penalty_is_weight_times_mmd_per_pixel_against_the_prior() -> None:
    reg = WAE(WAEConfig(weight=10.0, prior_var=2.0), latent_dim=3)
    assert reg.kernel_constants() == [2 * 3 * 2.0]
    z = torch.randn(16, 3)
    x = torch.rand(16, 1, 4, 4)
    torch.manual_seed(5)
    got = reg.penalty(x, z, x, nn.Identity())
    torch.manual_seed(5)
    prior = math.sqrt(2.0) * torch.randn(16, 3)
    assert got.item() == pytest.approx(10.0 * mmd_unbiased(z, prior, [12.0]).item() / 16, rel=1e-6)
    assert reg.penalty(x[:1], z[:1], x[:1], nn.Identity()).item() == 0.0  # one code has no MMD


def test_gradient_flows_to_the_encoder() -> None:
    torch.manual_seed(3)
    model = compose(
        "mlp",
        regularizers=["wae"],
        input_shape=(1, 6, 6),
        latent_dim=4,
        params={"encoder": {"hidden": (12,)}},
    )
    terms = model.train().loss_terms(torch.rand(20, 1, 6, 6), nn.functional.mse_loss)
    terms["wae"].backward()
    grads = [p.grad for name, p in model.named_parameters() if name.startswith("encoder.")]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for name, p in model.named_parameters() if name.startswith("decoder."))


def test_sample_prior_has_the_prior_variance_and_names_it() -> None:
    reg = WAE(WAEConfig(prior_var=4.0), latent_dim=5)
    draws = reg.sample_prior(20000, torch.Generator().manual_seed(0))
    assert draws.shape == (20000, 5)
    torch.testing.assert_close(draws.var(0), torch.full((5,), 4.0), rtol=0.05, atol=0)
    assert reg.prior == "N(0, 4·I)"
    first = reg.sample_prior(3, torch.Generator().manual_seed(7))
    assert torch.equal(first, reg.sample_prior(3, torch.Generator().manual_seed(7)))


def test_ae_sample_draws_from_the_prior_of_a_wae() -> None:
    latent = pytest.importorskip("aecore_analysis.latent")
    model = compose(
        "mlp", regularizers=["wae"], input_shape=(1, 6, 6), latent_dim=4, params={"wae": {"prior_var": 0.25}}
    )
    z, source = latent.sample_codes(model, 6, seed=3)
    assert torch.equal(z, model.regularizers["wae"].sample_prior(6, torch.Generator().manual_seed(3)))
    assert "N(0, 0.25·I)" in source


def _train(data, out: Path, weight: float) -> aecore.TrainResult:
    torch.manual_seed(0)
    return aecore.train(
        encoder="mlp",
        regularizers=["wae"],
        data=data,
        latent_dim=2,
        out=str(out),
        params={
            "encoder": {"hidden": (16,)},
            "wae": {"weight": weight},
            "trainer": {"epochs": 8, "batch_size": 16, "lr": 3e-3},
        },
        progress=False,
    )


def test_a_short_training_moves_the_codes_towards_the_prior(ae_tiny_dataset, tmp_path: Path) -> None:
    pulled = [h["wae_mmd"] for h in _train(ae_tiny_dataset, tmp_path / "wae", 200.0).history]
    control = [h["wae_mmd"] for h in _train(ae_tiny_dataset, tmp_path / "plain", 0.0).history]
    assert pulled[-1] < 0.5 * pulled[0]
    assert pulled[-1] < 0.6 * control[-1]  # the penalty did it, not the reconstruction alone


def test_eval_reports_a_reproducible_test_mmd(ae_tiny_dataset) -> None:
    model = compose("mlp", regularizers=["wae"], input_shape=(1, 8, 8), latent_dim=2)
    first = component_metrics(model, ae_tiny_dataset)
    assert set(first) == {"wae_test_mmd"} and math.isfinite(first["wae_test_mmd"])
    assert component_metrics(model, ae_tiny_dataset) == first


def test_the_regularizer_survives_a_checkpoint(tmp_path: Path) -> None:
    model = compose(
        "mlp",
        regularizers=["wae"],
        input_shape=(1, 6, 6),
        latent_dim=4,
        params={"wae": {"scales": (0.5, 2.0), "weight": 3.0}},
    )
    loaded = load(save(model, tmp_path / "model.safetensors"))
    assert loaded.regularizers["wae"].config == WAEConfig(weight=3.0, scales=(0.5, 2.0))


def test_preset_conforms() -> None:
    model = check_preset(wae_mnist)
    assert model.latent_dim == 8 and model.regularizers["wae"].config.weight == 10.0
