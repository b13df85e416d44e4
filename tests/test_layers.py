"""aecore.layers: the oneDNN Linear path computes what torch computes, and steps aside where it must."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aecore.layers as layers
from aecore.layers import Linear, Sequential, linear

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN"
)

ACTIVATIONS = {None: lambda t: t, "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}


@pytest.fixture
def calls(monkeypatch):
    """Counts oneDNN kernel calls; the backend is reset to auto and the size rule to every size."""
    count = {"n": 0}
    real = torch.ops.mkldnn._linear_pointwise

    def counting(*args):
        count["n"] += 1
        return real(*args)

    monkeypatch.setattr(layers, "_onednn_op", lambda: counting)
    monkeypatch.setattr(layers, "MIN_MULTIPLY_ADDS", 0)
    monkeypatch.setattr(layers, "MIN_SIDE", 0)
    monkeypatch.delenv(layers.ENV_VAR, raising=False)
    layers.set_linear_backend("auto")
    assert layers.linear_backend() == "onednn"  # runs the self-check now, before counting starts
    count["n"] = 0
    yield count
    layers.set_linear_backend("auto")


def _inputs(shape, n_out=5, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, requires_grad=True)
    w = (torch.randn(n_out, shape[-1], generator=gen) / shape[-1] ** 0.5).requires_grad_(True)
    b = torch.randn(n_out, generator=gen, requires_grad=True) if bias else None
    return x, w, b


def _reference(x, w, b, activation):
    return ACTIVATIONS[activation](F.linear(x, w, b))


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("shape", [(6, 7), (2, 3, 7), (7,)])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_match_torch(calls, activation, shape, bias):
    x, w, b = _inputs(shape, bias=bias)
    y = linear(x, w, b, activation)
    expected = _reference(x, w, b, activation)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    assert calls["n"] == 1, "the oneDNN path was not taken"

    grad = torch.randn_like(y)
    params = [t for t in (x, w, b) if t is not None]
    ours = torch.autograd.grad(y, params, grad)
    theirs = torch.autograd.grad(expected, params, grad)
    for a, e in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    assert calls["n"] == 3, "the backward products did not go through oneDNN"


def test_input_without_grad_skips_its_product(calls):
    x, w, b = _inputs((8, 7))
    y = linear(x.detach(), w, b, "relu")
    (grad_w,) = torch.autograd.grad(y.sum(), [w])
    (expected,) = torch.autograd.grad(_reference(x.detach(), w, b, "relu").sum(), [w])
    torch.testing.assert_close(grad_w, expected)
    assert calls["n"] == 2  # forward and ∂W only: nothing asked for ∂x


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh"])
def test_second_derivatives_match_torch(calls, activation):
    x, w, b = _inputs((6, 7))
    grads = {}
    for name, fn in {"ours": linear, "torch": _reference}.items():
        y = fn(x, w, b, activation)
        gx, gw = torch.autograd.grad(y.pow(2).sum(), [x, w], create_graph=True)
        grads[name] = torch.autograd.grad(gx.pow(2).sum() + gw.pow(2).sum(), [x, w])
    for a, e in zip(grads["ours"], grads["torch"], strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_batched_jacobian_as_the_contractive_penalty_takes_it(calls):
    x, w, b = _inputs((6, 7), n_out=4)
    eye = torch.eye(4).unsqueeze(1).expand(4, 6, 4)
    result = {}
    for name, fn in {"ours": linear, "torch": _reference}.items():
        z = fn(x, w, b, "sigmoid")
        (jac,) = torch.autograd.grad(z, x, eye, is_grads_batched=True, create_graph=True)
        result[name] = (jac, torch.autograd.grad(jac.pow(2).sum(), w)[0])
    for a, e in zip(result["ours"], result["torch"], strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_torch_func_transforms_fall_back_to_torch(calls):
    from torch.func import jacrev, vmap

    x, w, b = _inputs((5, 7))
    ours = vmap(jacrev(lambda v: linear(v, w, b, "tanh")))(x.detach())
    theirs = vmap(jacrev(lambda v: _reference(v, w, b, "tanh")))(x.detach())
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(
    "case",
    ["float64", "autocast", "empty", "backend torch", "small product"],
)
def test_cases_outside_the_fast_path_use_torch(calls, monkeypatch, case):
    x, w, b = _inputs((6, 7))
    context = torch.autocast("cpu", dtype=torch.bfloat16) if case == "autocast" else torch.no_grad()
    if case == "float64":
        x, w, b = (t.detach().double() for t in (x, w, b))
    elif case == "empty":
        x = x[:0]
    elif case == "backend torch":
        layers.set_linear_backend("torch")
    elif case == "small product":
        monkeypatch.setattr(layers, "MIN_MULTIPLY_ADDS", 10**9)
    with context:
        y = linear(x, w, b, "relu")
        expected = _reference(x, w, b, "relu")
    assert calls["n"] == 0
    assert y.dtype == expected.dtype and y.shape == expected.shape
    torch.testing.assert_close(y, expected)


def test_no_grad_calls_the_kernel_without_recording_a_graph(calls):
    x, w, b = _inputs((6, 7))
    with torch.inference_mode():
        y = linear(x, w, b)
    assert calls["n"] == 1 and y.grad_fn is None


def test_unknown_activation_and_backend_are_refused():
    x, w, b = _inputs((2, 7))
    with pytest.raises(ValueError, match="gelu"):
        linear(x, w, b, "gelu")
    with pytest.raises(ValueError, match="choose one of auto, torch, onednn"):
        layers.set_linear_backend("mkl")


def test_environment_variable_picks_the_backend(calls, monkeypatch):
    monkeypatch.setenv(layers.ENV_VAR, "torch")
    layers._requested = None  # as in a fresh process
    layers._use_onednn = None
    assert layers.linear_backend() == "torch"
    monkeypatch.setenv(layers.ENV_VAR, "fastest")
    layers._use_onednn = None
    with pytest.warns(UserWarning, match="not one of auto, torch, onednn; using auto"):
        assert layers.linear_backend() == "onednn"


def test_a_failing_self_check_falls_back_with_a_warning(calls, monkeypatch):
    def broken(*args):
        raise RuntimeError("no kernel for this CPU")

    monkeypatch.setattr(layers, "_onednn_op", lambda: broken)
    layers.set_linear_backend("onednn")
    with pytest.warns(UserWarning, match="no kernel for this CPU; using torch's linear"):
        assert layers.linear_backend() == "torch"
    layers.set_linear_backend("auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto falls back quietly
        x, w, b = _inputs((3, 7))
        torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b))


def test_the_size_rule_keeps_small_products_on_torch(monkeypatch):
    big, small = torch.empty(128, 784), torch.empty(4, 784)
    weight = torch.empty(256, 784)
    assert layers._worth_it(big, weight) and not layers._worth_it(small, weight)
    assert not layers._worth_it(big, torch.empty(8, 784))  # a side under MIN_SIDE


def test_linear_is_an_nn_linear_with_the_same_state_dict(calls):
    torch.manual_seed(0)
    ours = Linear(7, 5)
    torch.manual_seed(0)
    theirs = nn.Linear(7, 5)
    assert isinstance(ours, nn.Linear)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs.state_dict()[key])  # same initialisation
    x = torch.randn(4, 7)
    torch.testing.assert_close(ours(x), theirs(x))


def _pairs(linear_cls: type[nn.Linear] = Linear) -> list[nn.Module]:
    torch.manual_seed(0)
    return [
        *(linear_cls(7, 6), nn.ReLU()),
        *(linear_cls(6, 5), nn.Sigmoid()),
        nn.Flatten(),
        *(linear_cls(5, 3), nn.Tanh()),
    ]


def test_sequential_fuses_pairs_and_matches_nn_sequential(calls):
    ours, theirs = Sequential(*_pairs()), nn.Sequential(*_pairs(nn.Linear))
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(4, 7)
    out = ours(x)
    assert calls["n"] == 3  # three Linear layers, each one oneDNN call with its activation inside
    torch.testing.assert_close(out, theirs(x))


def test_sequential_leaves_hooked_modules_unfused(calls):
    model = Sequential(*_pairs())
    seen = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    x = torch.randn(4, 7)
    out = model(x)
    assert calls["n"] == 3  # the first Linear alone, then two fused pairs
    assert len(seen) == 1, "the hooked ReLU did not run as a module"
    torch.testing.assert_close(seen[0], torch.relu(F.linear(x, model[0].weight, model[0].bias)))
    torch.testing.assert_close(out, nn.Sequential(*_pairs(nn.Linear))(x))


def test_sequential_does_not_fuse_a_linear_subclass(calls):
    class Doubled(Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    torch.manual_seed(0)
    model = Sequential(Doubled(7, 5), nn.ReLU())
    x = torch.randn(4, 7)
    torch.testing.assert_close(model(x), torch.relu(2 * F.linear(x, model[0].weight, model[0].bias)))
