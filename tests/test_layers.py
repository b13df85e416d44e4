"""aecore.layers: the oneDNN Linear path computes what torch computes, and steps aside where it must."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aecore.layers.backend as backend
from aecore.layers import Linear, Sequential, linear, set_linear_backend

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

    monkeypatch.setattr(backend, "onednn_op", lambda: counting)
    monkeypatch.setattr(backend, "MIN_MULTIPLY_ADDS", 0)
    monkeypatch.setattr(backend, "MIN_MULTIPLY_ADDS_IN_RUN", 0)
    monkeypatch.setattr(backend, "MIN_SIDE", 0)
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    set_linear_backend("auto")
    assert backend.linear_backend() == "onednn"  # runs the self-check now, before counting starts
    count["n"] = 0
    yield count
    set_linear_backend("auto")


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
        set_linear_backend("torch")
    elif case == "small product":
        monkeypatch.setattr(backend, "MIN_MULTIPLY_ADDS", 10**9)
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
        set_linear_backend("mkl")


def test_environment_variable_picks_the_backend(calls, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "torch")
    backend._requested = None  # as in a fresh process
    backend._use_onednn = None
    assert backend.linear_backend() == "torch"
    monkeypatch.setenv(backend.ENV_VAR, "fastest")
    backend._use_onednn = None
    with pytest.warns(UserWarning, match="not one of auto, torch, onednn; using auto"):
        assert backend.linear_backend() == "onednn"


def test_a_failing_self_check_falls_back_with_a_warning(calls, monkeypatch):
    def broken(*args):
        raise RuntimeError("no kernel for this CPU")

    monkeypatch.setattr(backend, "onednn_op", lambda: broken)
    set_linear_backend("onednn")
    with pytest.warns(UserWarning, match="no kernel for this CPU; using torch's linear"):
        assert backend.linear_backend() == "torch"
    set_linear_backend("auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto falls back quietly
        x, w, b = _inputs((3, 7))
        torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b))


def test_the_size_rule_keeps_small_products_on_torch(monkeypatch):
    weight = torch.empty(256, 784)
    assert backend.worth_it(128, weight) and not backend.worth_it(4, weight)
    assert not backend.worth_it(128, torch.empty(8, 784))  # a side under MIN_SIDE
    assert not backend.worth_it(0, weight)
    assert backend.worth_it(16, weight, in_run=True) and not backend.worth_it(16, weight)  # 3.2M


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


class Block(nn.Module):
    """A block in the style of aecore-mlp's HiddenBlock: joins its parent's run when it is only layers."""

    def __init__(self, n_in: int, n_out: int, act: nn.Module) -> None:
        super().__init__()
        self.body = Sequential(Linear(n_in, n_out), act)

    def forward(self, h):
        return self.body(h)

    def fusable_layers(self):
        return self.body.fusable_layers()


def _stack() -> Sequential:
    torch.manual_seed(0)
    return Sequential(
        nn.Flatten(), Block(12, 10, nn.ReLU()), Block(10, 8, nn.Tanh()), Linear(8, 6), nn.Sigmoid()
    )


def _by_hand(model: Sequential, x):
    """The same network written out with F.linear: the reference for every run test."""
    h = x.flatten(1)
    for block, act in ((model[1], torch.relu), (model[2], torch.tanh)):
        h = act(F.linear(h, block.body[0].weight, block.body[0].bias))
    return torch.sigmoid(F.linear(h, model[3].weight, model[3].bias))


def test_a_run_spans_nested_blocks_as_one_autograd_node(calls):
    model = _stack()
    x = torch.randn(5, 3, 4, requires_grad=True)
    y = model(x)
    assert type(y.grad_fn).__name__ == "_RunBackward"  # three layers, one node
    assert calls["n"] == 3
    expected = _by_hand(model, x)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    params = [x, *model.parameters()]
    grad = torch.randn_like(y)
    for a, e in zip(
        torch.autograd.grad(y, params, grad), torch.autograd.grad(expected, params, grad), strict=True
    ):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    assert calls["n"] == 3 * 3  # per layer: forward, ∂W and ∂h (x asked for its gradient)


def test_a_run_computes_only_the_gradients_asked_for(calls):
    model = _stack()
    first = model[1].body[0]
    first.weight.requires_grad_(False)
    first.bias.requires_grad_(False)
    x = torch.randn(5, 12)
    model(x).sum().backward()
    assert calls["n"] == 3 + 2 + 1  # forwards; ∂W of the two trainable layers; one ∂h between them
    assert first.weight.grad is None and first.bias.grad is None
    (expected,) = torch.autograd.grad(_by_hand(model, x).sum(), [model[3].weight])
    torch.testing.assert_close(model[3].weight.grad, expected, rtol=1e-5, atol=1e-6)


def test_second_derivatives_through_a_run_match_torch(calls):
    model = _stack()
    x = torch.randn(5, 12, requires_grad=True)
    weight = model[1].body[0].weight
    result = []
    for fn in (model, lambda v: _by_hand(model, v)):
        (gx,) = torch.autograd.grad(fn(x).pow(2).sum(), [x], create_graph=True)
        result.append(torch.autograd.grad(gx.pow(2).sum(), [weight])[0])
    torch.testing.assert_close(result[0], result[1], rtol=1e-4, atol=1e-6)


def test_contractive_style_batched_jacobian_through_a_run(calls):
    model = _stack()
    x = torch.randn(4, 12, requires_grad=True)
    eye = torch.eye(6).unsqueeze(1).expand(6, 4, 6)
    result = []
    for fn in (model, lambda v: _by_hand(model, v)):
        (jac,) = torch.autograd.grad(fn(x), x, eye, is_grads_batched=True, create_graph=True)
        result.append((jac, torch.autograd.grad(jac.pow(2).sum(), model[3].weight)[0]))
    for a, e in zip(*result, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)


def test_a_run_without_grad_records_nothing(calls):
    model = _stack()
    x = torch.randn(5, 12)
    with torch.inference_mode():
        y = model(x)
    assert y.grad_fn is None and calls["n"] == 3
    torch.testing.assert_close(y, _by_hand(model, x))


def test_a_hooked_block_runs_as_itself(calls):
    model = _stack()
    seen = []
    model[2].register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(5, 12, requires_grad=True)
    y = model(x)
    assert len(seen) == 1
    torch.testing.assert_close(y, _by_hand(model, x), rtol=1e-5, atol=1e-5)


def test_a_hook_inside_a_block_keeps_that_block_out_of_the_run(calls):
    """A block that hands over its inner Sequential's layers does not hand over a hooked Sequential."""
    model = _stack()
    seen = []
    model[2].body.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(5, 12, requires_grad=True)
    y = model(x)
    assert len(seen) == 1
    torch.testing.assert_close(y, _by_hand(model, x), rtol=1e-5, atol=1e-5)


def test_a_float64_model_takes_the_torch_path(calls):
    model = _stack().double()
    x = torch.randn(5, 12, dtype=torch.float64)
    torch.testing.assert_close(model(x), _by_hand(model, x))
    assert calls["n"] == 0


def test_a_block_with_more_than_layers_is_not_fusable():
    torch.manual_seed(0)
    assert Sequential(Linear(4, 3), nn.ReLU()).fusable_layers() is not None
    assert Sequential(Linear(4, 3), nn.ReLU(), nn.Dropout(0.1)).fusable_layers() is None
    assert Sequential(Linear(4, 3), nn.LeakyReLU()).fusable_layers() is None


def _run_nodes(t: torch.Tensor) -> int:
    """How many fused-run autograd nodes the graph behind ``t`` holds."""
    seen, stack, runs = set(), [t.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        runs += type(node).__name__ == "_RunBackward"
        stack.extend(next_node for next_node, _ in node.next_functions)
    return runs


def _mlp_model(*regularizers: str):
    from aecore.compose import compose

    torch.manual_seed(0)
    params = {"encoder": {"hidden": (8, 6), "code_activation": "relu"}}
    return compose("mlp", "mlp", regularizers, input_shape=(1, 4, 4), latent_dim=3, params=params)


def test_a_model_runs_encoder_and_decoder_as_one_chain(calls):
    """Their Linear layers share one node across the code, with the same numbers to the bit."""
    model = _mlp_model()
    x = torch.rand(6, 1, 4, 4)
    fused = model(x)
    assert _run_nodes(fused) == 1
    separate = model.decode(model.encode(x))
    assert _run_nodes(separate) == 2
    assert torch.equal(fused, separate)
    params = list(model.parameters())
    for a, b in zip(
        torch.autograd.grad(fused.square().sum(), params),
        torch.autograd.grad(separate.square().sum(), params),
        strict=True,
    ):
        assert torch.equal(a, b)
    assert _run_nodes(model.loss_terms(x, F.mse_loss)["recon"]) == 1  # training takes the same path


def test_a_hook_or_a_regularizer_keeps_encoder_and_decoder_apart(calls):
    model = _mlp_model()
    x = torch.rand(6, 1, 4, 4)
    codes = []
    handle = model.encoder.register_forward_hook(lambda module, args, out: codes.append(out))
    assert _run_nodes(model(x)) == 2
    assert len(codes) == 1 and codes[0].shape == (6, 3)  # the hook saw the code
    handle.remove()
    assert _run_nodes(model(x)) == 1
    regularized = _mlp_model("sparse")
    terms = regularized.loss_terms(x, F.mse_loss)
    assert set(terms) == {"recon", "sparse"} and _run_nodes(terms["recon"]) == 2


def test_a_subclass_that_overrides_forward_is_not_described_by_its_parents_layers(calls):
    """fusable_layers/chain_modules speak for the forward beside them, not for an override."""

    class Doubled(Block):
        def forward(self, h):
            return 2 * super().forward(h)

    torch.manual_seed(0)
    model = Sequential(Doubled(4, 3, nn.ReLU()), Linear(3, 2))
    x = torch.randn(5, 4)
    inner = model[0].body[0]
    expected = F.linear(2 * torch.relu(F.linear(x, inner.weight, inner.bias)), model[1].weight, model[1].bias)
    torch.testing.assert_close(model(x), expected)

    shifted = _mlp_model()
    encoder = shifted.encoder

    class Shifted(type(encoder)):
        def forward(self, x):
            return super().forward(x) + 1.0

    encoder.__class__ = Shifted
    x = torch.rand(6, 1, 4, 4)
    assert _run_nodes(shifted(x)) == 2
    assert torch.equal(shifted(x), shifted.decoder(shifted.encoder.net(x) + 1.0))


def test_a_run_frees_what_it_saved_once_its_backward_has_run(calls):
    """Hidden layers' outputs go through save_for_backward, so they do not outlive the backward pass."""
    torch.manual_seed(0)
    model = Sequential(Linear(12, 10), nn.ReLU(), Linear(10, 8), nn.Tanh(), Linear(8, 4))
    y = model(torch.randn(5, 12))
    assert type(y.grad_fn).__name__ == "_RunBackward"
    assert len(y.grad_fn.saved_tensors) == 1 + 1 + 3 + 2  # input, output, weights, hidden outputs
    y.sum().backward()
    with pytest.raises(RuntimeError, match="freed"):
        y.grad_fn.saved_tensors  # noqa: B018 - the access itself is the check
