"""The sae encoder and decoder: conformance, the sparse fast paths, and each training convention."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import aecore
from aecore import registry
from aecore.composition import compose
from aecore.errors import UnknownComponentError
from aecore.testing import check_checkpoint_roundtrip, check_decoder, check_encoder
from aecore_sae.components import (
    SAEDecoder,
    SAEDecoderConfig,
    SAEEncoder,
    SAEEncoderConfig,
    _zeros_take_no_gradient,
)
from aecore_sae.median import data_centre, geometric_median


def _sae(latents: int = 32, dim: int = 16, regularizers=("topk",), **params):
    params = {"topk": {"k": 4}, **params} if "topk" in regularizers else params
    return compose(
        "sae", regularizers=list(regularizers), input_shape=(dim,), latent_dim=latents, params=params
    )


def _sparse_code(rows: int, latents: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(rows, latents, generator=g)
    values, index = z.topk(k, dim=1)
    return torch.zeros_like(z).scatter(1, index, values)


@pytest.mark.parametrize(
    "params", [{}, {"activation": "none", "pre_bias": False}, {"tied_init": False, "bias_init": "zero"}]
)
def test_encoder_conforms(params):
    check_encoder(SAEEncoder, input_shape=(1, 4, 4), latent_dim=32, params=params)


@pytest.mark.parametrize("params", [{}, {"unit_norm": False, "sparse_decode": False}])
def test_decoder_conforms(params):
    check_decoder(SAEDecoder, input_shape=(1, 4, 4), latent_dim=32, params=params)


def test_a_model_with_each_code_round_trips_through_a_checkpoint(tmp_path):
    for regs, params in (
        (["topk"], {"topk": {"k": 4}}),
        (["auxk", "batchtopk"], {"batchtopk": {"k": 4}}),
        (["jumprelu"], {"encoder": {"activation": "none"}}),
    ):
        check_checkpoint_roundtrip(
            "sae", regularizers=regs, input_shape=(16,), latent_dim=32, params=params, tmp_path=tmp_path
        )


# -- the fast paths give the plain products' results --------------------------------------------------


def test_the_sparse_decode_matches_the_dense_product_and_its_gradients():
    torch.manual_seed(0)
    fast = SAEDecoder(SAEDecoderConfig(), input_shape=(16,), latent_dim=64).train()
    plain = copy.deepcopy(fast)
    plain.config = replace(plain.config, sparse_decode=False)
    code = _sparse_code(10, 64, 3)
    outputs, grads = [], []
    for decoder in (fast, plain):
        z = code.clone().requires_grad_()
        out = decoder(z)
        (out * torch.linspace(-1, 1, 16)).sum().backward()
        outputs.append(out)
        grads.append((z.grad, decoder.weight.grad, decoder.bias.grad))
    torch.testing.assert_close(outputs[0], outputs[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    # the code's gradient is dense: a code may need it where it is zero (JumpReLU's threshold)
    assert bool((grads[0][0][code == 0] != 0).any())


def _code(kind: str, pre: torch.Tensor) -> torch.Tensor:
    """A sparse code made from ``pre`` the way each code regularizer makes it."""
    from aecore_sae.codes import BatchTopK, BatchTopKConfig, JumpReLU, JumpReLUConfig

    if kind == "topk":
        values, index = pre.topk(3, dim=1)
        return torch.zeros_like(pre).scatter(1, index, values)
    if kind == "batchtopk":
        return BatchTopK(BatchTopKConfig(k=3), latent_dim=pre.shape[1]).train().transform_code(pre)
    if kind == "relu":
        return F.relu(pre - 0.9)
    jump = JumpReLU(JumpReLUConfig(threshold=0.9, bandwidth=0.1), latent_dim=pre.shape[1]).train()
    return jump.transform_code(pre)[0]


@pytest.mark.parametrize("kind", ["topk", "batchtopk", "relu", "jumprelu"])
def test_every_code_gets_the_same_gradients_through_the_sparse_decode(kind):
    torch.manual_seed(0)
    fast = SAEDecoder(SAEDecoderConfig(), input_shape=(16,), latent_dim=64).train()
    plain = copy.deepcopy(fast)
    plain.config = replace(plain.config, sparse_decode=False)
    start = torch.rand(10, 64)
    grads = []
    for decoder in (fast, plain):
        torch.manual_seed(1)
        pre = start.clone().requires_grad_()
        code = _code(kind, pre)
        assert float((code != 0).float().mean()) < 1 / 8  # sparse enough for the fast path
        # only JumpReLU needs the code's gradient where the code is zero (its threshold learns there)
        assert _zeros_take_no_gradient(code) is (kind != "jumprelu")
        (decoder(code) * torch.linspace(-1, 1, 16)).sum().backward()
        grads.append((pre.grad, decoder.weight.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("k", [3, 40])  # a sparse gradient (TopK behind it) and a dense one
def test_the_encoder_matches_a_plain_linear_layer_and_its_gradients(k):
    torch.manual_seed(0)
    encoder = SAEEncoder(SAEEncoderConfig(activation="none"), input_shape=(16,), latent_dim=64).train()
    with torch.no_grad():
        encoder.pre_bias.normal_()
    x = torch.randn(10, 16)
    z = encoder(x)
    values, index = z.topk(k, dim=1)
    (torch.zeros_like(z).scatter(1, index, values) ** 2).sum().backward()
    fast = [p.grad.clone() for p in (encoder.weight, encoder.bias, encoder.pre_bias)]
    weight, bias, pre = (
        p.detach().clone().requires_grad_() for p in (encoder.weight, encoder.bias, encoder.pre_bias)
    )
    z_plain = F.linear(x - pre, weight, bias)
    torch.testing.assert_close(z, z_plain)
    values, index = z_plain.topk(k, dim=1)
    (torch.zeros_like(z_plain).scatter(1, index, values) ** 2).sum().backward()
    for got, want in zip(fast, (weight.grad, bias.grad, pre.grad), strict=True):
        torch.testing.assert_close(got, want)


def test_evaluation_uses_plain_products():
    model = _sae().eval()
    with torch.no_grad():
        x = torch.randn(5, 16)
        expected = model.decoder.bias + model.encode(x) @ model.decoder.weight
        torch.testing.assert_close(model(x), expected)


# -- tied initialisation and the centre -----------------------------------------------------------------


def test_tied_initialisation_gives_the_decoder_the_encoders_transpose(features):
    torch.manual_seed(3)
    model = _sae(latents=48)
    assert not torch.equal(model.encoder.weight, model.decoder.weight)  # before initialise
    model.encoder.initialise(features.train)
    model.decoder.initialise(features.train)
    # encoder.weight is W_enc (latents × d); decoder.weight's rows are W_dec's columns: W_enc = W_decᵀ
    torch.testing.assert_close(model.encoder.weight, model.decoder.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.decoder.weight.norm(dim=1), torch.ones(48))
    centre = data_centre(features.train, "median", 8192)
    torch.testing.assert_close(model.encoder.pre_bias, centre)
    torch.testing.assert_close(model.decoder.bias, centre)


def test_a_fresh_run_starts_tied_and_centred_and_untied_when_asked(features, tmp_path):
    # With lr 1e-30, Adam's updates vanish: the trained weights are the initial ones (renormalised).
    for tied in (True, False):
        result = aecore.train(
            encoder="sae",
            regularizers=["topk"],
            latent_dim=48,
            data=features,
            params={
                "topk": {"k": 2},
                "encoder": {"tied_init": tied},
                "trainer": {"epochs": 1, "lr": 1e-30, "batch_size": 500},
            },
            out=tmp_path / f"tied-{tied}",
            progress=False,
            val_fraction=0.0,
        )
        encoder, decoder = result.model.encoder, result.model.decoder
        assert decoder.config.tied_init is tied  # the counterpart mirrors the encoder's setting
        same = torch.allclose(encoder.weight, decoder.weight, atol=1e-6)
        assert same is tied
        median = data_centre(features.train, "median", 8192)
        assert float(median.norm()) > 0  # a centre to tell apart from the zero start
        torch.testing.assert_close(encoder.pre_bias.detach(), median, atol=1e-6, rtol=0)
        torch.testing.assert_close(decoder.bias.detach(), median, atol=1e-6, rtol=0)


def test_geometric_median_minimises_the_sum_of_distances():
    from scipy.optimize import minimize

    g = torch.Generator().manual_seed(0)
    for points in (
        torch.randn(9, 2, generator=g, dtype=torch.float64),
        torch.randn(30, 3, generator=g, dtype=torch.float64) ** 3,  # heavy tails: far from the mean
    ):
        found = geometric_median(points)

        def cost(y, points=points) -> float:
            return float((points - torch.as_tensor(y)).norm(dim=1).sum())

        best = minimize(
            cost,
            points.mean(0).numpy(),
            method="Nelder-Mead",
            options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000},
        )
        assert cost(found) <= best.fun + 1e-9
        torch.testing.assert_close(found, torch.as_tensor(best.x), atol=1e-4, rtol=0)
        assert cost(found) < cost(points.mean(0)) - 1e-6


def test_geometric_median_at_a_data_point():
    # The four corners pull equally: the median is the centre point, which is itself a sample.
    square = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [1.0, 1.0]])
    torch.testing.assert_close(geometric_median(square), torch.tensor([1.0, 1.0]))
    # A point repeated by most of the sample is the median, however far the rest lie.
    crowd = torch.tensor([[5.0, 5.0]] * 4 + [[100.0, -40.0], [-60.0, 0.0]])
    torch.testing.assert_close(geometric_median(crowd), torch.tensor([5.0, 5.0]))


# -- unit-norm directions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [True, False])
def test_unit_norm_removes_the_parallel_gradient_and_renormalises_after_the_step(sparse):
    torch.manual_seed(0)
    model = _sae(latents=64, decoder={"sparse_decode": sparse}).train()
    x = torch.randn(32, 16) * 3
    sum(model(x, F.mse_loss).values()).backward()
    weight = model.decoder.weight
    grad = weight.grad
    along = (grad * weight.detach()).sum(dim=1).abs()
    assert float(grad.norm()) > 0 and float(along.max()) < 1e-6 * float(grad.norm(dim=1).max())
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    assert float((weight.norm(dim=1) - 1).abs().max()) > 1e-3  # the step itself moved off the sphere
    model.decoder.ae_after_step(run=None, model=model, epoch=1, step=0)
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(64))


def test_without_unit_norm_the_gradient_keeps_its_parallel_part():
    torch.manual_seed(0)
    model = _sae(latents=64, decoder={"unit_norm": False}).train()
    sum(model(torch.randn(32, 16) * 3, F.mse_loss).values()).backward()
    weight = model.decoder.weight
    assert float((weight.grad * weight).sum(dim=1).abs().max()) > 1e-4
    before = weight.detach().clone()
    model.decoder.ae_after_step(run=None, model=model, epoch=1, step=0)
    assert torch.equal(weight, before)


def test_training_keeps_every_direction_at_unit_norm(features, tmp_path):
    result = aecore.train(
        encoder="sae",
        regularizers=["auxk", "topk"],
        latent_dim=48,
        data=features,
        params={"topk": {"k": 2}, "trainer": {"epochs": 2, "batch_size": 100, "lr": 1e-2}},
        out=tmp_path / "r",
        progress=False,
    )
    torch.testing.assert_close(result.model.decoder.weight.norm(dim=1), torch.ones(48))
    history = json.loads((tmp_path / "r" / "metrics.json").read_text())["history"]
    assert all(1.0 <= h["sae_l0"] <= 2.0 for h in history)  # TopK keeps 2, fewer where the ReLU left fewer
    assert all(0 <= h["sae_dead_fraction"] <= 1 for h in history)


# -- the dead-latent window -----------------------------------------------------------------------------


def test_the_dead_latent_window_counts_training_samples():
    decoder = SAEDecoder(SAEDecoderConfig(dead_window=10), input_shape=(3,), latent_dim=4).train()

    def batch(rows: int, fire: int | None) -> torch.Tensor:
        z = torch.zeros(rows, 4)
        if fire is not None:
            z[0, fire] = 1.0
        return z

    decoder(batch(4, 0))
    assert decoder.since_fired.tolist() == [0, 4, 4, 4]
    decoder(batch(4, 1))
    assert decoder.since_fired.tolist() == [4, 0, 8, 8]
    decoder(batch(3, None))
    assert decoder.since_fired.tolist() == [7, 3, 11, 11]
    assert decoder.dead_mask().tolist() == [False, False, True, True]
    decoder.eval()(batch(50, None))  # evaluation counts nothing
    assert decoder.since_fired.tolist() == [7, 3, 11, 11]
    figures = decoder.epoch_metrics()
    assert figures == {"sae_dead_fraction": 0.5, "sae_l0": 2 / 11}
    assert decoder.epoch_metrics() == {"sae_dead_fraction": 0.5}  # reset: no samples since


def test_the_window_is_saved_with_the_model(tmp_path):
    from aecore.checkpoint import load, save

    model = _sae().train()
    model(torch.randn(8, 16))
    model.decoder.since_fired[:5] = 123
    loaded = load(save(model, tmp_path / "m.safetensors"))
    assert torch.equal(loaded.decoder.since_fired, model.decoder.since_fired)


# -- the fastcpu backend ----------------------------------------------------------------------------------


def test_the_fastcpu_backend_leaves_every_sae_to_autograd():
    try:
        backend_cls = registry.get("backend", "fastcpu")
    except UnknownComponentError:
        pytest.skip("aecore-fastcpu is not installed")
    backend = backend_cls(backend_cls.Config())
    if backend.probe(torch.device("cpu")) is not None:
        pytest.skip("fastcpu's probe fails on this torch")
    # No regularizer, ReLU code, no pre-encoder bias: the closest an SAE comes to a Linear chain.
    for encoder in ({}, {"pre_bias": False}):
        model = _sae(regularizers=(), encoder=encoder)
        prepared = backend.prepare(model, torch.device("cpu"))
        assert backend.step(prepared, F.mse_loss) is None


def test_trains_with_the_default_backend_and_keeps_its_conventions(features, tmp_path):
    result = aecore.train(
        encoder="sae",
        latent_dim=48,
        data=features,
        params={"encoder": {"pre_bias": False}, "trainer": {"epochs": 1, "batch_size": 200, "lr": 1e-2}},
        out=tmp_path / "r",
        progress=False,
    )
    assert math.isfinite(result.metrics["test_mse_per_pixel"])
    torch.testing.assert_close(result.model.decoder.weight.norm(dim=1), torch.ones(48))
