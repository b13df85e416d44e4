"""aecore.training.by_hand: gradients without the autograd engine are autograd's to the bit, or not taken."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aecore.layers.backend as backend
from aecore.losses import LOSSES
from aecore.compose import compose
from aecore.training import by_hand
from aecore.training import train as run_training
from aecore.training.by_hand import ByHandGradients

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN"
)


@pytest.fixture(params=["onednn", "torch-kernels"])
def kernels(request, monkeypatch):
    """Every product through oneDNN, or every product on torch's kernels (the size rule's two sides)."""
    least = 0 if request.param == "onednn" else 10**12
    monkeypatch.setattr(backend, "MIN_MULTIPLY_ADDS", least)
    monkeypatch.setattr(backend, "MIN_MULTIPLY_ADDS_IN_RUN", least)
    monkeypatch.setattr(backend, "MIN_SIDE", 0)
    return request.param


def _model(*regularizers: str, encoder=None, decoder=None):
    torch.manual_seed(0)
    params = {
        "encoder": {"hidden": (16, 8), "code_activation": "relu", **(encoder or {})},
        "decoder": decoder or {},
    }
    return compose("mlp", "mlp", regularizers, input_shape=(1, 6, 6), latent_dim=4, params=params)


def _batch(n=10):
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(1))


def _autograd(model, x, loss_fn):
    loss = model(x, loss_fn=loss_fn)["recon"]
    loss.backward()
    return loss.detach()


def _grads(model):
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def _same(a, b):
    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("loss", list(LOSSES))
def test_loss_and_gradients_are_autograds_to_the_bit(kernels, loss):
    model = _model()
    twin = copy.deepcopy(model)
    x = _batch()
    terms = ByHandGradients(model, LOSSES[loss])(x)
    assert terms is not None and list(terms) == ["recon"]
    expected = _autograd(twin, x, LOSSES[loss])
    assert torch.equal(terms["recon"], expected)
    assert terms["recon"].grad_fn is None
    assert _same(_grads(model), _grads(twin))


def test_existing_gradients_are_added_to_as_backward_does(kernels):
    model = _model()
    twin = copy.deepcopy(model)
    x = _batch()
    for m in (model, twin):
        for p in m.parameters():
            p.grad = torch.full_like(p, 0.5)
    ByHandGradients(model, F.mse_loss)(x)
    _autograd(twin, x, F.mse_loss)
    assert _same(_grads(model), _grads(twin))


def test_a_frozen_encoder_gets_no_gradient_and_the_decoder_the_same_one(kernels):
    model = _model()
    twin = copy.deepcopy(model)
    for m in (model, twin):
        m.encoder.requires_grad_(False)
    x = _batch()
    assert ByHandGradients(model, F.mse_loss)(x) is not None
    _autograd(twin, x, F.mse_loss)
    assert all(p.grad is None for p in model.encoder.parameters())
    assert _same(_grads(model), _grads(twin))


def test_a_training_run_is_the_same_with_and_without_it(tmp_path, tiny_data, monkeypatch):
    """The trainer takes the by-hand path for an MLP and ends with the very weights autograd gives."""
    taken = []
    real = ByHandGradients.__call__

    def counting(self, x):
        terms = real(self, x)
        taken.append(terms is not None)
        return terms

    def run(name):
        params = {"trainer": {"epochs": 2, "batch_size": 50}, "encoder": {"hidden": (32,)}}
        return run_training(
            encoder="mlp", latent_dim=8, params=params, data=tiny_data, out=tmp_path / name, progress=False
        )

    monkeypatch.setattr(ByHandGradients, "__call__", counting)
    fast = run("by-hand")
    assert taken and all(taken)
    monkeypatch.setattr(ByHandGradients, "__call__", lambda self, x: None)
    slow = run("autograd")
    assert fast.metrics == slow.metrics
    for a, b in zip(fast.model.state_dict().values(), slow.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _hook_on_a_layer(model):
    model.encoder.net[1].register_forward_hook(lambda *args: None)


def _hook_on_a_parameter(model):
    next(model.parameters()).register_hook(lambda g: g)


def _accumulate_hook(model):
    next(model.parameters()).register_post_accumulate_grad_hook(lambda p: None)


def _freeze_everything(model):
    model.requires_grad_(False)


def _float64(model):
    model.double()


@pytest.mark.parametrize(
    "change",
    [_hook_on_a_layer, _hook_on_a_parameter, _accumulate_hook, _freeze_everything, _float64],
)
def test_what_autograd_must_see_makes_it_step_aside(kernels, change):
    model = _model()
    change(model)
    for p in model.parameters():
        p.grad = None
    assert ByHandGradients(model, F.mse_loss)(_batch().to(next(model.parameters()).dtype)) is None
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("encoder", [{"dropout": 0.1}, {"batch_norm": True}, {"residual": True}])
def test_layers_other_than_linear_and_activations_keep_autograd(kernels, encoder):
    assert ByHandGradients(_model(encoder=encoder), F.mse_loss)(_batch()) is None


def test_regularizers_and_other_architectures_keep_autograd(kernels):
    assert ByHandGradients(_model("sparse"), F.mse_loss)(_batch()) is None
    torch.manual_seed(0)
    conv = compose("conv", input_shape=(1, 8, 8), latent_dim=4)
    assert ByHandGradients(conv, F.mse_loss)(torch.rand(3, 1, 8, 8)) is None


def test_contexts_autograd_owns_make_it_step_aside(kernels):
    model = _model()
    step = ByHandGradients(model, F.mse_loss)
    x = _batch()
    with torch.no_grad():
        assert step(x) is None
    with pytest.warns(UserWarning, match="Anomaly"), torch.autograd.detect_anomaly():
        assert step(x) is None
    assert step(x.clone().requires_grad_()) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert step(x) is None
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert step(x) is None
    finally:
        handle.remove()
    assert all(p.grad is None for p in model.parameters())
    assert step(x) is not None  # and back once they are gone


def test_the_torch_backend_switch_turns_it_off(monkeypatch):
    monkeypatch.setattr(backend, "_use_onednn", False)
    assert ByHandGradients(_model(), F.mse_loss)(_batch()) is None


def test_an_error_in_the_loss_surfaces_as_autograd_would_raise_it():
    model = _model(decoder={"output_activation": "none"})
    with torch.no_grad():
        model.decoder.net[-3].bias.fill_(5.0)  # outputs far outside [0, 1]
    with pytest.raises(Exception, match="--loss bce"):
        ByHandGradients(model, LOSSES["bce"])(_batch())


@pytest.mark.parametrize("shape", [(4, 3), (7, 1, 13, 11)])
def test_the_three_pass_mse_is_mse_loss_and_its_backward_to_the_bit(shape):
    gen = torch.Generator().manual_seed(2)
    out, target = torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)
    leaf = out.clone().requires_grad_()
    expected = F.mse_loss(leaf, target)
    (expected_grad,) = torch.autograd.grad(expected, leaf)
    value, grad = by_hand._mse_and_grad(out, target, out.shape)
    assert torch.equal(value, expected.detach())
    assert torch.equal(grad, expected_grad)
