"""KL against closed forms, sampling statistics, eval determinism and the checkpoint round trip."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from aecore.checkpoint import load, save
from aecore.composition import compose
from aecore.config import config_from_dict
from aecore.errors import ConfigError
from aecore.testing import check_regularizer, check_roundtrip
from aecore_variational import LOGVAR_RANGE, Variational, VariationalConfig, gaussian_kl


def build(latent_dim: int = 3, **params: object) -> Variational:
    reg = Variational(config_from_dict(VariationalConfig, params), latent_dim=latent_dim)
    with torch.no_grad():  # away from the identity start, so mu and logvar are both non-trivial
        reg.head.weight.add_(0.3 * torch.randn_like(reg.head.weight))
        reg.head.bias.add_(0.2 * torch.randn_like(reg.head.bias))
    return reg


def composed(**params: object) -> nn.Module:
    return compose(
        "mlp",
        regularizers=["variational"],
        input_shape=(1, 6, 6),
        latent_dim=4,
        params={"encoder": {"hidden": (12,)}, "variational": params},
    )


OPTIONS = [
    {},
    {"weight": 0.0},
    {"objective": "betatc", "tc_weight": 6.0},
    {"decompose": True, "warmup_steps": 10},
    {"likelihood": "bernoulli"},
    {"likelihood": "bernoulli", "binarize": "dynamic", "warmup_steps": 3, "decompose": True},
    {"likelihood": "bernoulli", "binarize": "fixed", "objective": "betatc", "dataset_size": 1000},
    {"likelihood": "bernoulli", "iwae_samples": 5, "weight": 0.5},
    {"likelihood": "gaussian"},
    {"likelihood": "gaussian", "variance": "learned", "iwae_samples": 3},
    {"likelihood": "gaussian", "variance": "learned", "objective": "betatc", "weight": 0.25},
]
# With a Gaussian likelihood, weight 0 still leaves the likelihood's completion of --loss mse: the
# term is not zero, which the kit's weight-0 rule (a weight that scales the whole term) cannot know.


@pytest.mark.parametrize(
    "params", OPTIONS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "default"
)
def test_conforms_to_the_regularizer_protocol(params: dict[str, object]) -> None:
    reg = check_regularizer(Variational, params=params)
    assert reg.config == config_from_dict(VariationalConfig, params)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"weight": "-1"}, "weight"),
        ({"binarize": "dynamic"}, "likelihood=bernoulli"),
        ({"likelihood": "gaussian", "binarize": "fixed"}, "likelihood=bernoulli"),
        ({"variance": "learned", "likelihood": "bernoulli"}, "likelihood=gaussian"),
        ({"iwae_samples": "4"}, "needs a likelihood"),
        ({"likelihood": "bernoulli", "iwae_samples": "4", "objective": "betatc"}, "objective=elbo"),
        ({"likelihood": "gaussian", "sigma": "0"}, "sigma"),
        ({"likelihood": "bernoulli", "warmup_steps": "-1"}, "warmup_steps"),
        ({"objective": "betatc", "tc_weight": "-2"}, "tc_weight"),
        ({"likelihood": "poisson"}, "poisson"),
    ],
)
def test_bad_settings_are_one_line_errors(params: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        config_from_dict(VariationalConfig, params)


def test_the_vae_mnist_preset_conforms() -> None:
    from aecore.testing import check_preset
    from aecore_variational.presets import vae_mnist

    model = check_preset(vae_mnist)
    reg = model.regularizers["variational"]
    assert (reg.config.likelihood, reg.config.binarize, model.latent_dim) == ("bernoulli", "dynamic", 50)


def test_kl_matches_the_closed_form_by_hand() -> None:
    mu = torch.tensor([[1.0, 0.0], [0.0, -2.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [math.log(0.25), 0.0]])
    # KL(N(m, s²) ‖ N(0, 1)) = (s² + m² − 1 − log s²) / 2 per unit
    first = 0.5 * (1 + 1 - 1 - 0) + 0.5 * (4 + 0 - 1 - math.log(4.0))
    second = 0.5 * (0.25 + 0 - 1 - math.log(0.25)) + 0.5 * (1 + 4 - 1 - 0)
    assert gaussian_kl(mu, logvar).item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_kl_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    mu, logvar = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(dim=1).mean()
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)


def test_penalty_is_weight_times_kl_of_the_aux_transform_code_returns() -> None:
    torch.manual_seed(1)
    reg = build(weight=0.25).train()
    h = torch.randn(6, 3)
    z, aux = reg.transform_code(h)
    mu, logvar = reg.moments(h)
    assert torch.equal(aux[0], mu) and torch.equal(aux[1], logvar)
    penalty = reg.penalty(h, z, z, nn.Identity(), aux=aux)
    assert penalty.dim() == 0
    assert penalty.item() == pytest.approx(0.25 * gaussian_kl(mu, logvar).item(), rel=1e-6)
    assert gaussian_kl(mu, logvar).item() > 0.1  # a non-trivial distribution


def test_the_model_hands_each_batch_its_own_moments() -> None:
    """No state is kept on the regularizer between transform_code and penalty."""
    torch.manual_seed(4)
    model = compose("mlp", regularizers=["variational"], input_shape=(1, 4, 4), latent_dim=3)
    reg = model.regularizers["variational"]
    assert not [k for k, v in vars(reg).items() if isinstance(v, torch.Tensor)]
    x = torch.rand(5, 1, 4, 4)
    terms = model.train().loss_terms(x, lambda r, t: ((r - t) ** 2).mean())
    mu, logvar = reg.moments(model.encoder(x))
    assert terms["variational"].item() == pytest.approx(gaussian_kl(mu, logvar).item(), rel=1e-5)
    terms["variational"].backward()
    assert reg.head.weight.grad is not None and reg.head.weight.grad.abs().sum() > 0


def test_eval_returns_mu_deterministically() -> None:
    torch.manual_seed(2)
    reg = build().eval()
    h = torch.randn(5, 3)
    (first, _), (second, _) = reg.transform_code(h), reg.transform_code(h)
    assert torch.equal(first, second)
    assert torch.equal(first, reg.moments(h)[0])


def test_the_head_starts_as_the_identity_for_mu_and_unit_variance() -> None:
    reg = Variational(VariationalConfig(), latent_dim=3).eval()
    h = torch.randn(4, 3)
    mu, logvar = reg.moments(h)
    torch.testing.assert_close(mu, h)
    assert torch.equal(logvar, torch.zeros_like(logvar))


def test_training_samples_vary_with_mean_mu_and_variance_exp_logvar() -> None:
    torch.manual_seed(3)
    reg = build().train()
    h = torch.randn(1, 3).expand(40000, 3)
    (first, _), (second, _) = reg.transform_code(h), reg.transform_code(h)
    assert not torch.equal(first, second)
    mu, logvar = (t[0] for t in reg.moments(h[:1]))
    std = (0.5 * logvar).exp()
    assert (std - 1).abs().max() > 0.05  # the variance really is not the default
    n = first.shape[0]
    assert ((first.mean(0) - mu).abs() < 5 * std / math.sqrt(n)).all()
    torch.testing.assert_close(first.var(0), std.pow(2), rtol=0.04, atol=0)


def test_logvar_is_clamped_so_nothing_overflows() -> None:
    reg = Variational(VariationalConfig(), latent_dim=2).train()
    with torch.no_grad():
        reg.head.bias.copy_(torch.tensor([0.0, 0.0, 500.0, -500.0]))
    h = torch.zeros(3, 2)
    z, aux = reg.transform_code(h)
    _, logvar = reg.moments(h)
    assert logvar.min().item() == LOGVAR_RANGE[0] and logvar.max().item() == LOGVAR_RANGE[1]
    assert torch.isfinite(z).all()
    assert torch.isfinite(reg.penalty(h, z, z, nn.Identity(), aux=aux))


def test_gradients_reach_the_head_and_the_encoder_in_a_composed_model() -> None:
    torch.manual_seed(4)
    model = composed().train()
    terms = model.loss_terms(torch.rand(8, 1, 6, 6), nn.functional.mse_loss)
    assert terms["variational"].item() > 0
    sum(terms.values()).backward()
    for name, p in model.named_parameters():
        if name.startswith(("encoder.", "regularizers.variational.")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_head_is_in_the_state_dict_and_survives_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(5)
    model = composed(weight=0.5)
    keys = {k for k in model.state_dict() if k.startswith("regularizers.variational.")}
    assert keys == {"regularizers.variational.head.weight", "regularizers.variational.head.bias"}
    with torch.no_grad():
        model.regularizers["variational"].head.weight.add_(torch.randn(8, 4))
    model.eval()
    x = torch.rand(5, 1, 6, 6)
    with torch.no_grad():
        expected = model(x)
    loaded = load(save(model, tmp_path / "model.safetensors"))
    assert loaded.regularizers["variational"].config == VariationalConfig(weight=0.5)
    assert torch.equal(
        loaded.state_dict()["regularizers.variational.head.weight"],
        model.state_dict()["regularizers.variational.head.weight"],
    )
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    check_roundtrip(composed(), tmp_path)
