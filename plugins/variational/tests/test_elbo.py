"""The ELBO in nats: likelihoods and KL by hand, the scaling to aecore's per-pixel losses, binarisation,
IWAE, the importance-sampled NLL, the β warm-up across a resume and the β-TC decomposition."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aecore
from aecore.checkpoint import load, save
from aecore.composition import compose
from aecore.errors import ConfigError, DataError
from aecore.evaluate import component_metrics
from aecore.losses import bce
from aecore.testing import InterruptAt
from aecore.training.default import TrainingInterrupted
from aecore_variational import (
    NLL_IMAGES_ENV,
    NLL_SAMPLES_ENV,
    bernoulli_log_prob,
    binarize,
    estimate_images,
    gaussian_kl_per_image,
    gaussian_log_prob,
    log_mean_exp,
    log_normal,
    log_standard_normal,
    tc_decomposition,
)

SHAPE = (1, 4, 4)
PIXELS = 16


def model_with(latent_dim: int = 3, seed: int = 0, **params: object) -> nn.Module:
    torch.manual_seed(seed)
    model = compose(
        "mlp",
        regularizers=["variational"],
        input_shape=SHAPE,
        latent_dim=latent_dim,
        params={"encoder": {"hidden": (8,)}, "variational": params},
    )
    with torch.no_grad():  # a posterior that is neither the prior nor a point
        model.regularizers["variational"].head.bias[latent_dim:].fill_(-1.0)
    return model


def by_hand_terms(model: nn.Module, x_in: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(mu, logvar, the decoder's output) recomputed from the encoder input and the noise."""
    reg = model.regularizers["variational"]
    mu, logvar = reg.moments(model.encoder(x_in))
    recon = model.decoder(mu + (0.5 * logvar).exp() * eps)
    return mu, logvar, recon


# -- the pieces, against hand computations -----------------------------------------------------


def test_bernoulli_log_prob_by_hand() -> None:
    probs = torch.tensor([[0.9, 0.2], [0.5, 0.75]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = [math.log(0.9) + math.log(0.8), math.log(0.5) + math.log(0.75)]
    torch.testing.assert_close(bernoulli_log_prob(probs, target), torch.tensor(expected))
    # grey targets give minus a cross-entropy: 0.3·log 0.9 + 0.7·log 0.1 for one pixel
    grey = bernoulli_log_prob(torch.tensor([[0.9]]), torch.tensor([[0.3]]))
    assert grey.item() == pytest.approx(0.3 * math.log(0.9) + 0.7 * math.log(0.1), rel=1e-6)


def test_gaussian_log_prob_by_hand() -> None:
    mean = torch.tensor([[0.0, 1.0, 0.5]])
    target = torch.tensor([[0.1, 0.7, 0.5]])
    log_var = torch.tensor(math.log(0.04))
    sq = 0.01 + 0.09 + 0.0
    expected = -0.5 * (3 * math.log(2 * math.pi * 0.04) + sq / 0.04)
    assert gaussian_log_prob(mean, target, log_var).item() == pytest.approx(expected, rel=1e-6)


def test_log_densities_match_torch_distributions() -> None:
    torch.manual_seed(0)
    z, mu, logvar = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    normal = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    torch.testing.assert_close(log_normal(z, mu, logvar), normal.log_prob(z).sum(-1))
    torch.testing.assert_close(
        log_standard_normal(z), torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    )


def test_the_penalty_completes_bce_to_the_negative_elbo_per_pixel() -> None:
    """recon + penalty = (−log p(x|z) + KL) / pixels: β = 1 is the true ELBO, from the closed forms."""
    model = model_with(likelihood="bernoulli").train()
    x = torch.rand(6, *SHAPE)
    torch.manual_seed(11)
    terms = model.loss_terms(x, bce)
    torch.manual_seed(11)
    mu, logvar, recon = by_hand_terms(model, x, torch.randn(6, 3))
    nll = -(x * recon.log() + (1 - x) * (1 - recon).log()).flatten(1).sum(1)
    kl = 0.5 * (logvar.exp() + mu.pow(2) - 1 - logvar).sum(1)
    assert kl.min() > 0.05  # not the trivial posterior
    total = terms["recon"] + terms["variational"]
    assert total.item() == pytest.approx(((nll + kl).mean() / PIXELS).item(), rel=1e-5)
    assert terms["variational"].item() == pytest.approx((kl.mean() / PIXELS).item(), rel=1e-5)


@pytest.mark.parametrize("variance", ["fixed", "learned"])
def test_the_penalty_completes_mse_to_the_gaussian_negative_elbo_per_pixel(variance: str) -> None:
    model = model_with(likelihood="gaussian", variance=variance, sigma=0.2).train()
    reg = model.regularizers["variational"]
    if variance == "learned":
        with torch.no_grad():
            reg.log_variance.fill_(math.log(0.09))  # σ = 0.3, away from the start
    sigma2 = 0.04 if variance == "fixed" else 0.09
    x = torch.rand(5, *SHAPE)
    torch.manual_seed(3)
    terms = model.loss_terms(x, F.mse_loss)
    torch.manual_seed(3)
    mu, logvar, recon = by_hand_terms(model, x, torch.randn(5, 3))
    nll = (0.5 * math.log(2 * math.pi * sigma2) + (x - recon).pow(2) / (2 * sigma2)).flatten(1).sum(1)
    kl = gaussian_kl_per_image(mu, logvar)
    total = terms["recon"] + terms["variational"]
    assert total.item() == pytest.approx(((nll + kl).mean() / PIXELS).item(), rel=1e-5)
    if variance == "learned":
        total.backward()
        assert reg.log_variance.grad is not None and reg.log_variance.grad.abs().item() > 0


@pytest.mark.parametrize("mode", ["dynamic", "fixed"])
def test_binarised_training_scores_the_binary_image_the_encoder_saw(mode: str) -> None:
    model = model_with(likelihood="bernoulli", binarize=mode).train()
    x = torch.rand(6, *SHAPE)
    torch.manual_seed(5)
    terms = model.loss_terms(x, bce)
    torch.manual_seed(5)
    b = torch.bernoulli(x) if mode == "dynamic" else (x > 0.5).float()
    mu, logvar, recon = by_hand_terms(model, b, torch.randn(6, 3))
    nll = F.binary_cross_entropy(recon, b, reduction="none").flatten(1).sum(1)
    kl = gaussian_kl_per_image(mu, logvar)
    assert terms["recon"].item() == pytest.approx(F.binary_cross_entropy(recon, x).item(), rel=1e-5)
    total = terms["recon"] + terms["variational"]
    assert total.item() == pytest.approx(((nll + kl).mean() / PIXELS).item(), rel=1e-5)


def test_binarize_refuses_data_outside_the_unit_interval() -> None:
    assert torch.equal(binarize(torch.tensor([0.2, 0.7]), "fixed"), torch.tensor([0.0, 1.0]))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        binarize(torch.tensor([0.5, 1.5]), "dynamic")
    model = model_with(likelihood="bernoulli", binarize="dynamic").train()
    with pytest.raises(DataError, match="binarize"):
        model.loss_terms(torch.randn(3, *SHAPE), bce)


# -- IWAE and the test log-likelihood --------------------------------------------------------------


def test_log_mean_exp_is_the_k_sample_bound_and_never_below_the_mean() -> None:
    log_w = torch.tensor([[0.0, math.log(3.0)], [-1.0, -1.0]])
    torch.testing.assert_close(log_mean_exp(log_w, dim=1), torch.tensor([math.log(2.0), -1.0]))
    torch.manual_seed(0)
    many = torch.randn(100, 50) * 3
    assert (log_mean_exp(many, dim=1) >= many.mean(dim=1)).all()


def test_iwae_k50_bound_is_above_the_elbo_in_expectation() -> None:
    model = model_with(likelihood="bernoulli", seed=2).eval()
    reg = model.regularizers["variational"]
    x = (torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    with torch.no_grad():
        single = estimate_images(model, reg, x, samples=200, generator=torch.Generator().manual_seed(1))
        iwae = estimate_images(model, reg, x, samples=50, generator=torch.Generator().manual_seed(2))
    elbo, bound = single.elbo.mean().item(), iwae.log_likelihood.mean().item()
    assert bound > elbo + 0.05  # independent draws: a gap well beyond their noise
    assert (iwae.log_likelihood >= iwae.elbo).all()  # the same draws: Jensen, image by image


def test_iwae_training_loss_is_minus_the_k_sample_bound_per_pixel() -> None:
    """Its first sample is the code the decoder received; k − 1 more are drawn beside it."""
    k = 50
    model = model_with(likelihood="bernoulli", iwae_samples=k, seed=4).train()
    x = (torch.rand(16, *SHAPE, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    torch.manual_seed(9)
    terms = model.loss_terms(x, bce)
    torch.manual_seed(9)
    first, rest = torch.randn(16, 3), torch.randn(16, k - 1, 3)
    reg = model.regularizers["variational"]
    with torch.no_grad():
        mu, logvar = reg.moments(model.encoder(x))
        z = mu[:, None] + (0.5 * logvar).exp()[:, None] * torch.cat([first[:, None], rest], dim=1)
        probs = model.decoder(z.reshape(16 * k, 3)).reshape(16, k, -1)
        log_lik = (x.flatten(1)[:, None] * probs.log() + (1 - x.flatten(1)[:, None]) * (1 - probs).log()).sum(
            -1
        )
        log_w = log_lik + log_standard_normal(z) - log_normal(z, mu[:, None], logvar[:, None])
    bound = torch.logsumexp(log_w, dim=1) - math.log(k)
    total = (terms["recon"] + terms["variational"]).item()
    assert -total * PIXELS == pytest.approx(bound.mean().item(), rel=1e-5)
    assert bound.mean() > log_w.mean() + 0.05  # the bound is tighter than the same draws' ELBO


def test_nll_estimate_tightens_with_k_and_is_finite() -> None:
    model = model_with(likelihood="bernoulli", seed=6).eval()
    reg = model.regularizers["variational"]
    with torch.no_grad():  # a narrow posterior away from the prior: a loose ELBO that sampling tightens
        reg.head.bias[:3].fill_(1.5)
        reg.head.bias[3:].fill_(-2.0)
    x = (torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    nll = {}
    with torch.no_grad():
        for k in (1, 10, 100, 1000):
            found = estimate_images(model, reg, x, samples=k, generator=torch.Generator().manual_seed(k))
            assert torch.isfinite(found.log_likelihood).all()
            nll[k] = -found.log_likelihood.mean().item()
    assert nll[1] > nll[10] > nll[100] > nll[1000]
    assert nll[100] - nll[1000] < nll[1] - nll[10]  # and converges


def test_chunked_estimate_equals_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    import aecore_variational.evaluation as evaluation

    model = model_with(likelihood="bernoulli", seed=1).eval()
    reg = model.regularizers["variational"]
    x = (torch.rand(4, *SHAPE) > 0.5).float()
    with torch.no_grad():
        whole = estimate_images(model, reg, x, samples=60, generator=torch.Generator().manual_seed(0))
        monkeypatch.setattr(evaluation, "EVAL_BLOCK", 4 * PIXELS * 7)  # chunks of 7 samples
        chunked = estimate_images(model, reg, x, samples=60, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(whole.log_likelihood, chunked.log_likelihood)
    torch.testing.assert_close(whole.elbo, chunked.elbo)


def test_eval_metrics_report_the_test_nll_with_k_from_the_environment(
    ae_tiny_dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = compose(
        "mlp",
        regularizers=["variational"],
        input_shape=(1, 8, 8),
        latent_dim=3,
        params={
            "encoder": {"hidden": (8,)},
            "variational": {"likelihood": "bernoulli", "binarize": "dynamic"},
        },
    )
    monkeypatch.setenv(NLL_SAMPLES_ENV, "20")
    monkeypatch.setenv(NLL_IMAGES_ENV, "10")
    figures = component_metrics(model, ae_tiny_dataset)
    assert figures["vae_nll_samples"] == 20 and figures["vae_nll_images"] == 10
    assert math.isfinite(figures["vae_test_nll"]) and figures["vae_test_nll"] > 0
    assert figures["vae_test_nll"] <= -figures["vae_test_elbo"] + 1e-9
    assert component_metrics(model, ae_tiny_dataset) == figures  # seeded: reproducible
    monkeypatch.setenv(NLL_SAMPLES_ENV, "3")
    fewer = component_metrics(model, ae_tiny_dataset)
    assert fewer["vae_test_kl"] == figures["vae_test_kl"]  # every k scores the same binarised images
    assert fewer["vae_test_nll"] != figures["vae_test_nll"]
    monkeypatch.setenv(NLL_SAMPLES_ENV, "many")
    with pytest.raises(ConfigError, match=NLL_SAMPLES_ENV):
        component_metrics(model, ae_tiny_dataset)


# -- the warm-up ------------------------------------------------------------------------------------


def test_warmup_raises_beta_linearly_per_optimizer_step() -> None:
    model = model_with(likelihood="bernoulli", weight=2.0, warmup_steps=4)
    reg = model.regularizers["variational"]
    seen = []
    for _ in range(6):
        seen.append(reg.beta())
        reg.ae_after_step()
    assert seen == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert "regularizers.variational.steps" in model.state_dict()
    assert "regularizers.variational.steps" not in model_with(likelihood="bernoulli").state_dict()


def _train(data, out: Path, **kwargs):
    return aecore.train(
        encoder="mlp",
        regularizers=["variational"],
        data=data,
        latent_dim=3,
        loss="bce",
        params={
            "encoder": {"hidden": (8,)},
            "variational": {"likelihood": "bernoulli", "binarize": "dynamic", "warmup_steps": 7},
            "trainer": {"epochs": 3, "batch_size": 16, "save_every_steps": 1},
        },
        out=str(out),
        progress=False,
        **kwargs,
    )


def test_warmup_continues_exactly_across_a_resume(ae_tiny_dataset, tmp_path: Path) -> None:
    reference = _train(ae_tiny_dataset, tmp_path / "reference")
    assert int(reference.model.regularizers["variational"].steps) == 12  # 3 epochs × 4 steps
    assert [h["vae_beta"] for h in reference.history] == pytest.approx([4 / 7, 1.0, 1.0])  # the last step's
    with pytest.raises(TrainingInterrupted):
        _train(ae_tiny_dataset, tmp_path / "stopped", hooks=[InterruptAt(1, 2)])
    resumed = aecore.resume(tmp_path / "stopped", data=ae_tiny_dataset, progress=False)
    a, b = reference.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history[-1] == reference.history[-1]


# -- figures and the loss check ---------------------------------------------------------------------


def test_epoch_figures_are_the_elbo_in_nats_and_train_loss_is_it_per_pixel(ae_tiny_dataset, tmp_path) -> None:
    result = aecore.train(
        encoder="mlp",
        regularizers=["variational"],
        data=ae_tiny_dataset,
        latent_dim=3,
        loss="bce",
        params={
            "encoder": {"hidden": (8,)},
            "variational": {"likelihood": "bernoulli", "decompose": True},
            "trainer": {"epochs": 2, "batch_size": 16},
        },
        out=str(tmp_path / "run"),
        progress=False,
    )
    for epoch in result.history:
        assert epoch["vae_elbo"] == pytest.approx(-(epoch["vae_recon_nll"] + epoch["vae_kl"]))
        assert -epoch["vae_elbo"] / 64 == pytest.approx(epoch["train_loss"], rel=1e-5)
        parts = epoch["vae_mi"] + epoch["vae_tc"] + epoch["vae_dim_kl"]
        assert parts == pytest.approx(epoch["vae_kl"], abs=0.5)  # a one-sample Monte Carlo KL
        assert epoch["vae_beta"] == 1.0


def test_a_likelihood_refuses_the_wrong_run_loss(ae_tiny_dataset, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--loss bce"):
        aecore.train(
            encoder="mlp",
            regularizers=["variational"],
            data=ae_tiny_dataset,
            latent_dim=3,
            loss="mse",
            params={"variational": {"likelihood": "bernoulli"}, "trainer": {"epochs": 1}},
            out=str(tmp_path / "run"),
            progress=False,
        )


# -- the β-TC decomposition -------------------------------------------------------------------------


def test_tc_parts_are_zero_when_every_posterior_is_the_prior() -> None:
    torch.manual_seed(0)
    z = torch.randn(50, 4)
    parts = tc_decomposition(z, torch.zeros(50, 4), torch.zeros(50, 4), dataset_size=1000)
    for value in parts:
        assert abs(value.item()) < 1e-5


def test_tc_parts_add_up_to_the_kl_on_a_large_batch() -> None:
    """Exactly to the one-sample KL; to the closed form within 4 standard errors (here about 0.05 nats)."""
    torch.manual_seed(1)
    m, d = 2000, 3
    mu = 2 * torch.randn(m, d, dtype=torch.float64)  # marginals wider than the prior: a dimension-wise KL
    mu[:, 1] = mu[:, 0] + 0.1 * mu[:, 1]  # correlated units: a real total correlation
    logvar = torch.full((m, d), math.log(0.1), dtype=torch.float64)
    z = mu + (0.5 * logvar).exp() * torch.randn(m, d, dtype=torch.float64)
    parts = tc_decomposition(z, mu, logvar, dataset_size=60_000)
    per_image = log_normal(z, mu, logvar) - log_standard_normal(z)
    assert sum(parts).item() == pytest.approx(per_image.mean().item(), rel=1e-9)
    closed = gaussian_kl_per_image(mu, logvar).mean().item()
    tolerance = 4 * per_image.std().item() / math.sqrt(m)
    assert abs(sum(parts).item() - closed) < tolerance
    mi, tc, dim_kl = (p.item() for p in parts)
    assert tc > 0.5 and mi > 0.5 and dim_kl > 0.5  # correlated, informative, wide codes


# -- checkpoints --------------------------------------------------------------------------------


def test_learned_variance_and_warmup_steps_survive_a_checkpoint(tmp_path: Path) -> None:
    model = model_with(likelihood="gaussian", variance="learned", warmup_steps=10)
    reg = model.regularizers["variational"]
    with torch.no_grad():
        reg.log_variance.fill_(-3.25)
    for _ in range(3):
        reg.ae_after_step()
    loaded = load(save(model, tmp_path / "model.safetensors"))
    back = loaded.regularizers["variational"]
    assert back.log_variance.item() == -3.25 and int(back.steps) == 3
    assert back.beta() == pytest.approx(0.4)
    x = torch.rand(4, *SHAPE)
    torch.manual_seed(0)
    expected = model.train().loss_terms(x, F.mse_loss)
    torch.manual_seed(0)
    got = loaded.train().loss_terms(x, F.mse_loss)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
