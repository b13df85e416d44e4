"""BatchTopK, JumpReLU and AuxK: conformance and the behaviour each paper specifies."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aecore.composition import compose
from aecore.config import config_from_dict
from aecore.errors import ConfigError
from aecore.testing import check_regularizer
from aecore_sae.codes import (
    AuxK,
    BatchTopK,
    BatchTopKConfig,
    JumpReLU,
    JumpReLUConfig,
    batch_topk,
)


def test_conformance():
    check_regularizer(BatchTopK, params={"k": 2})
    # JumpReLU's L0 penalty moves θ only through samples within ε/2 of it: a wide kernel makes
    # sure the kit's random codes fall inside, as trained codes do around their thresholds.
    check_regularizer(JumpReLU, params={"threshold": 0.5, "bandwidth": 2.0})
    # AuxK needs the sae decoder's dead-latent counts, which the kit's model lacks; its positive
    # penalty is tested below, in an SAE with dead latents.
    check_regularizer(AuxK, params={"weight": 0.0})


# -- BatchTopK --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,total", [((8, 50), 24), ((5, 7), 34), ((64, 512), 64 * 16), ((3, 4), 1)])
def test_batch_topk_finds_the_largest_entries_of_the_whole_batch(shape, total):
    g = torch.Generator().manual_seed(0)
    z = torch.rand(*shape, generator=g) ** 3  # uneven rows: some hold many of the batch's largest
    rows, cols = batch_topk(z, total)
    assert len(rows) == total
    got = torch.zeros_like(z, dtype=torch.bool)
    got[rows, cols] = True
    assert int(got.sum()) == total  # no entry twice
    expected = torch.zeros_like(got).flatten()
    expected[z.flatten().topk(total).indices] = True
    assert torch.equal(got, expected.view_as(got))


def test_batch_topk_keeps_exactly_k_times_b_activations_and_they_are_the_largest():
    reg = BatchTopK(BatchTopKConfig(k=3), latent_dim=40).train()
    g = torch.Generator().manual_seed(1)
    z = torch.rand(16, 40, generator=g) * torch.rand(16, 1, generator=g)  # rows of different scales
    code = reg.transform_code(z)
    assert int((code != 0).sum()) == 3 * 16
    per_row = (code != 0).sum(dim=1)
    assert len(set(per_row.tolist())) > 1  # the budget is shared: rows keep different numbers
    kept_min = code[code != 0].min()
    assert float(z[code == 0].max()) <= float(kept_min)
    assert torch.equal(code[code != 0], z[code != 0])


def test_batch_topk_estimates_a_threshold_in_training_and_uses_it_in_evaluation():
    reg = BatchTopK(BatchTopKConfig(k=2, threshold_beta=0.5), latent_dim=10)
    z = torch.rand(4, 10, generator=torch.Generator().manual_seed(0))
    reg.eval()
    before = reg.transform_code(z)  # never trained: each sample keeps its own k largest
    assert reg.threshold is None and ((before != 0).sum(dim=1) == 2).all()
    reg.train()
    average = 0.0
    for seed in range(3):
        batch = torch.rand(4, 10, generator=torch.Generator().manual_seed(seed))
        code = reg.transform_code(batch)
        average = 0.5 * average + 0.5 * float(code[code != 0].min())  # the smallest kept activation
    assert reg.threshold == pytest.approx(average / (1 - 0.5**3))  # bias-corrected average
    reg.eval()
    probe = torch.linspace(0, 1, 10).repeat(2, 1)
    code = reg.transform_code(probe)
    torch.testing.assert_close(code, torch.where(probe > reg.threshold, probe, torch.zeros_like(probe)))
    # a sample's code does not depend on the batch it came with
    torch.testing.assert_close(reg.transform_code(probe[:1]), code[:1])


def test_batch_topk_larger_than_the_code_is_refused():
    with pytest.raises(ConfigError, match="larger than the latent size 4"):
        BatchTopK(BatchTopKConfig(k=5), latent_dim=4)


# -- JumpReLU ---------------------------------------------------------------------------------------


def _jumprelu(threshold: float = 0.5, bandwidth: float = 0.2, weight: float = 1.0) -> JumpReLU:
    config = JumpReLUConfig(weight=weight, threshold=threshold, bandwidth=bandwidth)
    return JumpReLU(config, latent_dim=4).train()


def test_jumprelu_zeroes_activations_at_or_below_the_threshold():
    reg = _jumprelu()
    z = torch.tensor([[0.2, 0.5, 0.51, 2.0]])
    code, aux = reg.transform_code(z)
    torch.testing.assert_close(code, torch.tensor([[0.0, 0.0, 0.51, 2.0]]))
    assert aux is z
    reg.eval()
    torch.testing.assert_close(reg.transform_code(z)[0], code)


def test_jumprelu_threshold_gradient_comes_only_from_within_the_bandwidth():
    reg = _jumprelu(threshold=0.5, bandwidth=0.2)  # the kernel covers |z − 0.5| < 0.1
    # latent 0 just below θ (inside), 1 just above (inside), 2 and 3 far away (outside)
    z = torch.tensor([[0.45, 0.58, 0.1, 3.0]], requires_grad=True)
    code, _ = reg.transform_code(z)
    upstream = torch.tensor([[1.0, 2.0, 5.0, 7.0]])
    (code * upstream).sum().backward()
    theta = 0.5
    # ∂/∂t of θ = exp(t) is θ; ∂f/∂θ = −(θ/ε)·K: so ∂/∂t = −(θ/ε)·K·upstream·θ
    expected = torch.tensor([-(theta / 0.2) * 1.0 * theta, -(theta / 0.2) * 2.0 * theta, 0.0, 0.0])
    torch.testing.assert_close(reg.log_threshold.grad, expected)
    torch.testing.assert_close(z.grad, torch.tensor([[0.0, 2.0, 0.0, 7.0]]))  # H(z − θ)·upstream


def test_jumprelu_l0_penalty_counts_active_latents_and_moves_thresholds_through_the_estimator():
    reg = _jumprelu(threshold=0.5, bandwidth=0.2, weight=0.25)
    z = torch.tensor([[0.45, 0.58, 0.1, 3.0], [0.7, 0.55, 0.0, 0.0]], requires_grad=True)
    code, aux = reg.transform_code(z)
    penalty = reg.penalty(z, code, z, None, aux=aux)
    assert float(penalty.detach()) == pytest.approx(0.25 * (2 + 2) / 2)  # mean over samples of Σ H(z − θ)
    penalty.backward()
    # the L0 term gives z no gradient; each θ gets −(1/ε)·K per sample, averaged, times λ and θ
    assert torch.equal(z.grad, torch.zeros_like(z))
    inside = torch.tensor([1.0, 2.0, 0.0, 0.0])  # samples within the kernel, per latent
    torch.testing.assert_close(reg.log_threshold.grad, 0.25 * -(inside / 2) / 0.2 * 0.5)
    zero = _jumprelu(weight=0.0)
    assert float(zero.penalty(z, code, z, None, aux=aux)) == 0.0


@pytest.mark.parametrize(
    "values", [{"threshold": 0.0}, {"bandwidth": -1.0}, {"weight": -0.1}, {"threshold": "nan"}]
)
def test_jumprelu_refuses_bad_settings(values):
    with pytest.raises(ConfigError):
        config_from_dict(JumpReLUConfig, values, owner="jumprelu")


def test_jumprelu_learns_its_thresholds_in_a_model(features, tmp_path):
    import aecore

    result = aecore.train(
        encoder="sae",
        regularizers=["jumprelu"],
        latent_dim=48,
        data=features,
        params={
            "encoder": {"activation": "none"},
            "jumprelu": {"weight": 0.01, "threshold": 0.05, "bandwidth": 0.05},
            "trainer": {"epochs": 2, "batch_size": 100, "lr": 1e-2},
        },
        out=tmp_path / "r",
        progress=False,
    )
    moved = result.model.regularizers["jumprelu"].threshold.detach() - 0.05
    assert float(moved.abs().max()) > 1e-3
    assert math.isfinite(result.metrics["test_mse_per_pixel"])


# -- AuxK -------------------------------------------------------------------------------------------


def _model(dead_window: int = 10**9, order=("auxk", "topk")):
    torch.manual_seed(0)
    return compose(
        "sae",
        regularizers=list(order),
        input_shape=(16,),
        latent_dim=64,
        params={"topk": {"k": 4}, "auxk": {"k": 8, "dead_window": dead_window}},
    ).train()


def test_auxk_is_zero_while_no_latent_is_dead():
    model = _model()
    assert not bool(model.regularizers["auxk"].dead_mask().any())  # counting starts with training
    terms = model(torch.randn(32, 16), F.mse_loss)
    assert float(terms["auxk"].detach()) == 0.0


def test_auxk_counts_idle_samples_in_training_only():
    model = _model(dead_window=40)
    auxk = model.regularizers["auxk"]
    x = torch.randn(32, 16)
    model(x, F.mse_loss)
    with torch.no_grad():
        fired = (model.regularizers["topk"].transform_code(model.encoder(x)) != 0).any(dim=0)
    assert 0 < int(fired.sum()) < 64
    assert torch.equal(auxk.since_fired, torch.where(fired, 0, 32))
    assert not bool(auxk.dead_mask().any())  # 32 idle samples, window 40
    terms = model(x, F.mse_loss)
    assert torch.equal(auxk.dead_mask(), ~fired)  # 64 idle samples now, counted before the penalty
    assert float(terms["auxk"].detach()) > 0
    before = auxk.since_fired.clone()
    model.eval()
    model(x, F.mse_loss)
    assert torch.equal(auxk.since_fired, before)  # evaluation counts nothing


def test_auxk_window_zero_counts_every_latent_as_dead():
    model = _model(dead_window=0)
    assert bool(model.regularizers["auxk"].dead_mask().all())
    assert float(model(torch.randn(8, 16), F.mse_loss)["auxk"].detach()) > 0


def test_auxk_rebuilds_the_residual_from_dead_latents_and_trains_them():
    model = _model()
    auxk = model.regularizers["auxk"]
    auxk.since_fired[:40] = 10**9  # latents 0..39 have not fired in the window
    x = torch.randn(32, 16)
    with torch.no_grad():
        fired = (model.regularizers["topk"].transform_code(model.encoder(x)) != 0).any(dim=0)
    dead = auxk.dead_mask() & ~fired  # those that fire in this batch come alive first
    terms = model(x, F.mse_loss)
    penalty = terms["auxk"]
    assert float(penalty.detach()) > 0
    # by hand: the top 8 pre-activations among the dead latents, decoded without bias
    with torch.no_grad():
        pre = model.encoder(x)
        values, index = pre.masked_fill(~dead, -math.inf).topk(8, dim=1)
        code = torch.zeros_like(pre).scatter(1, index, values.clamp_min(0))
        residual = x - model(x)
        rebuilt = code @ model.decoder.weight
        expected = (1 / 32) * ((rebuilt - residual) ** 2).sum() / (residual**2).sum()
    assert float(penalty.detach()) == pytest.approx(float(expected), rel=1e-5)
    penalty.backward()
    grad = model.encoder.weight.grad
    assert float(grad[dead].abs().sum()) > 0  # the dead latents learn
    assert float(grad[~dead].abs().sum()) == 0  # the live ones get nothing from it


def test_auxk_must_come_first():
    model = _model(order=("topk", "auxk"))
    with pytest.raises(ConfigError, match="first regularizer"):
        model(torch.randn(4, 16), F.mse_loss)


def test_auxk_works_with_any_decoder():
    torch.manual_seed(0)
    mixed = compose(
        "sae",
        "mlp",
        ["auxk", "topk"],
        input_shape=(16,),
        latent_dim=32,
        params={"topk": {"k": 4}, "auxk": {"k": 8}, "decoder": {"hidden": [8], "output_activation": "none"}},
    ).train()
    x = torch.randn(4, 16)
    mixed.regularizers["auxk"].since_fired[:20] = 10**9
    with torch.no_grad():
        fired = (mixed.regularizers["topk"].transform_code(mixed.encoder(x)) != 0).any(dim=0)
    dead = mixed.regularizers["auxk"].dead_mask() & ~fired
    penalty = mixed(x, F.mse_loss)["auxk"]
    with torch.no_grad():
        pre = mixed.encoder(x)
        values, index = pre.masked_fill(~dead, -math.inf).topk(8, dim=1)
        code = torch.zeros_like(pre).scatter(1, index, values.clamp_min(0))
        mixed.eval()
        residual = x - mixed(x)
        rebuilt = mixed.decoder(code) - mixed.decoder(torch.zeros_like(code))
        expected = (1 / 32) * ((rebuilt - residual) ** 2).sum() / (residual**2).sum()
    assert float(penalty.detach()) == pytest.approx(float(expected), rel=1e-5)
    penalty.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in mixed.decoder.parameters())
