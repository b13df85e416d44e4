"""The by-hand step: loss and gradients are autograd's through the same ops, to the bit, or it steps aside."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from fastcpu_helpers import Flattening, Reshaping, wrap
from torch import Tensor, nn

from aecore.errors import ConfigError
from aecore.losses import bce
from aecore.training.backends import BackendNotice
from aecore_fastcpu import FastCPU, FastCPUConfig, kernels
from aecore_fastcpu import step as step_module
from aecore_fastcpu.chain import find_chain

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")

CPU = torch.device("cpu")
LOSSES = {"mse": F.mse_loss, "bce": bce, "l1": F.l1_loss}
_ACT = {None: lambda t: t, "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}


class _OneDNNLayer(torch.autograd.Function):
    """One Linear layer and its activation on the kernels a plan names, differentiated by the engine.

    The test's oracle: written out here, apart from the package, from the ops autograd itself uses.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, act, onednn, onednn_weight_grad):  # type: ignore[override]
        if onednn:
            y = torch.ops.mkldnn._linear_pointwise(h, weight, bias, act or "none", [], "")
        else:
            y = _ACT[act](torch.addmm(bias, h, weight.t()) if bias is not None else h.mm(weight.t()))
        ctx.save_for_backward(h, weight, y)
        ctx.act, ctx.onednn, ctx.onednn_weight_grad = act, onednn, onednn_weight_grad
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        h, weight, y = ctx.saved_tensors
        if ctx.act == "relu":
            g = torch.ops.aten.threshold_backward(g, y, 0)
        elif ctx.act is not None:
            g = getattr(torch.ops.aten, f"{ctx.act}_backward")(g, y)
        op = torch.ops.mkldnn._linear_pointwise
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        gh = (op(g, weight.t(), None, "none", [], "") if ctx.onednn else g.mm(weight)) if need_h else None
        gw = (
            (op(g.t(), h.t(), None, "none", [], "") if ctx.onednn_weight_grad else g.t().mm(h))
            if need_w
            else None
        )
        return gh, gw, g.sum(0) if need_b else None, None, None, None


def _reference(model: nn.Module, x: Tensor, loss_fn, onednn: str = "always") -> Tensor:
    """The loss, with ``.grad`` filled by ``backward()`` through the same ops the step's plan picks."""
    chain = find_chain(model)
    h = x
    for f in chain.before:
        h = f(h)
    layers = [(m.weight, m.bias, act) for m, act in chain.layers]
    plan = kernels.plan(h.shape[0], layers, onednn=onednn == "always")
    for (m, act), (*_, onednn, onednn_weight_grad) in zip(chain.layers, plan, strict=True):
        if onednn or onednn_weight_grad:
            h = _OneDNNLayer.apply(h, m.weight, m.bias, act, onednn, onednn_weight_grad)
        else:
            h = _ACT[act](F.linear(h, m.weight, m.bias))
    for f in chain.after:
        h = f(h)
    loss = loss_fn(h, x)
    loss.backward()
    return loss.detach()


def _batch(n=10, shape=(1, 6, 6)) -> Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(1))


def _grads(model: nn.Module) -> list[Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def _same(a: list[Tensor | None], b: list[Tensor | None]) -> bool:
    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in zip(a, b, strict=True)
    )


def _step(model: nn.Module, loss_fn=F.mse_loss, **config):
    backend = FastCPU(FastCPUConfig(**config))
    step = backend.step(backend.prepare(model, CPU), loss_fn)
    assert step is not None
    return step


@pytest.fixture(params=["always", "never"], ids=["onednn", "torch-kernels"])
def onednn(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every product through oneDNN, or every product on torch's kernels: the ``onednn`` option's value."""
    monkeypatch.setattr(kernels, "MIN_MULTIPLY_ADDS", 0)
    monkeypatch.setattr(kernels, "MIN_MULTIPLY_ADDS_IN_RUN", 0)
    monkeypatch.setattr(kernels, "MIN_SIDE", 0)
    return request.param


@pytest.mark.parametrize("loss", list(LOSSES))
def test_loss_and_gradients_are_autograds_through_the_same_ops_to_the_bit(onednn, make_mlp, loss):
    model = make_mlp()
    twin = copy.deepcopy(model)
    x = _batch()
    terms = _step(model, LOSSES[loss], onednn=onednn)(x)
    assert terms is not None and list(terms) == ["recon"] and terms["recon"].grad_fn is None
    expected = _reference(twin, x, LOSSES[loss], onednn)
    assert torch.equal(terms["recon"], expected)
    assert _same(_grads(model), _grads(twin))


@pytest.mark.parametrize("loss", list(LOSSES))
def test_on_torchs_kernels_the_gradients_are_plain_autograds_to_the_bit(make_mlp, loss):
    """With oneDNN off, the step is exactly what ``model(x, loss_fn)`` and ``backward()`` give."""
    model = make_mlp()
    twin = copy.deepcopy(model)
    x = _batch()
    terms = _step(model, LOSSES[loss], onednn="never")(x)
    expected = twin(x, loss_fn=LOSSES[loss])["recon"]
    expected.backward()
    assert torch.equal(terms["recon"], expected.detach())
    assert _same(_grads(model), _grads(twin))


def test_the_simple_model_under_the_shipped_size_rule(simple):
    """At batch 128 the rule mixes oneDNN and torch's kernels; the gradients are still the oracle's."""
    twin = copy.deepcopy(simple)
    x = torch.rand(128, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    layers = [(m.weight, m.bias, act) for m, act in find_chain(simple).layers]
    plan = kernels.plan(128, layers, onednn=True)
    flags = [flag for *_, forward, weight_grad in plan for flag in (forward, weight_grad)]
    assert any(flags) and not all(flags)
    terms = _step(simple, onednn="always")(x)
    assert torch.equal(terms["recon"], _reference(twin, x, F.mse_loss))
    assert _same(_grads(simple), _grads(twin))


def test_existing_gradients_are_added_to_as_backward_does(onednn, make_mlp):
    model = make_mlp()
    twin = copy.deepcopy(model)
    for m in (model, twin):
        for p in m.parameters():
            p.grad = torch.full_like(p, 0.5)
    x = _batch()
    _step(model, onednn=onednn)(x)
    _reference(twin, x, F.mse_loss, onednn)
    assert _same(_grads(model), _grads(twin))


def test_frozen_layers_get_no_gradient_and_the_others_the_same_one(onednn, make_mlp):
    model = make_mlp()
    twin = copy.deepcopy(model)
    for m in (model, twin):
        m.encoder.requires_grad_(False)
        m.decoder.net[1].body[0].weight.requires_grad_(False)  # and one weight in the middle
    x = _batch()
    assert _step(model, onednn=onednn)(x) is not None
    _reference(twin, x, F.mse_loss, onednn)
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.decoder.net[1].body[0].weight.grad is None
    assert _same(_grads(model), _grads(twin))


def test_handwritten_components_with_reshapes_and_a_layer_without_bias(onednn):
    torch.manual_seed(0)
    model = wrap(Flattening(), Reshaping())
    twin = copy.deepcopy(model)
    x = _batch(7, (1, 4, 4))
    terms = _step(model, onednn=onednn)(x)
    assert torch.equal(terms["recon"], _reference(twin, x, F.mse_loss, onednn))
    assert _same(_grads(model), _grads(twin))


def _hook_on_a_layer(model):
    model.encoder.net[1].body[0].register_forward_hook(lambda *args: None)


def _hook_on_every_layer(model):  # as ``ae features`` does
    for m in model.modules():
        m.register_forward_hook(lambda *args: None)


def _hook_on_the_encoder(model):
    model.encoder.register_forward_pre_hook(lambda *args: None)


def _backward_hook_on_a_block(model):
    model.decoder.net[0].register_full_backward_hook(lambda *args: None)


def _hook_on_a_parameter(model):
    next(model.parameters()).register_hook(lambda g: g)


def _accumulate_hook(model):
    next(model.parameters()).register_post_accumulate_grad_hook(lambda p: None)


def _freeze_everything(model):
    model.requires_grad_(False)


def _float64(model):
    model.double()


def _one_module_in_eval_mode(model):
    model.decoder.net[0].eval()


def _a_replaced_weight_that_is_a_view(model):
    layer = model.decoder.net[0].body[0]
    layer.weight = nn.Parameter(layer.weight.detach().t().contiguous().t())  # same values, transposed strides


@pytest.mark.parametrize(
    "change",
    [
        _hook_on_a_layer,
        _hook_on_every_layer,
        _hook_on_the_encoder,
        _backward_hook_on_a_block,
        _hook_on_a_parameter,
        _accumulate_hook,
        _freeze_everything,
        _float64,
        _one_module_in_eval_mode,
        _a_replaced_weight_that_is_a_view,
    ],
)
def test_what_autograd_must_see_after_prepare_makes_the_step_stand_aside(make_mlp, change):
    model = make_mlp()
    step = _step(model)
    change(model)
    dtype = next(model.parameters()).dtype
    assert step(_batch().to(dtype)) is None
    assert all(p.grad is None for p in model.parameters())


def test_a_hook_removed_again_gives_the_step_back(make_mlp):
    model = make_mlp()
    step = _step(model)
    handle = model.decoder.net[-2].register_forward_hook(lambda *args: None)
    assert step(_batch()) is None
    handle.remove()
    assert step(_batch()) is not None


def test_contexts_autograd_owns_make_it_stand_aside(make_mlp):
    model = make_mlp()
    step = _step(model)
    x = _batch()
    with torch.no_grad():
        assert step(x) is None
    with pytest.warns(UserWarning, match="Anomaly"), torch.autograd.detect_anomaly():
        assert step(x) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert step(x) is None
    for batch in (x.clone().requires_grad_(), x.double(), x[:0]):
        assert step(batch) is None
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert step(x) is None
    finally:
        handle.remove()
    seen = []
    torch.func.vmap(lambda row: seen.append(step(row.unsqueeze(0))) or row)(x)
    assert seen == [None]
    assert all(p.grad is None for p in model.parameters())
    assert step(x) is not None  # and back once they are gone


def test_an_error_in_the_loss_surfaces_as_autograd_would_raise_it(make_mlp):
    model = make_mlp(decoder={"output_activation": "none"})
    with torch.no_grad():
        model.decoder.net[-3].bias.fill_(5.0)  # outputs far outside [0, 1]
    with pytest.raises(ConfigError, match="--loss bce"):
        _step(model, bce)(_batch())
    assert all(p.grad is None for p in model.parameters())


def test_a_failing_kernel_hands_the_run_to_autograd_with_one_notice(make_mlp, monkeypatch):
    model = make_mlp()
    step = _step(model)

    def broken(*args):
        raise RuntimeError("no kernel for this CPU")

    monkeypatch.setattr(kernels, "forward_keeping", broken)
    with pytest.warns(BackendNotice, match="no kernel for this CPU"):
        assert step(_batch()) is None
    monkeypatch.undo()
    assert step(_batch()) is None  # for the rest of the run, without another notice
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("shape", [(4, 3), (7, 1, 13, 11)])
def test_the_three_pass_mse_is_mse_loss_and_its_backward_to_the_bit(shape):
    gen = torch.Generator().manual_seed(2)
    out, target = torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)
    leaf = out.clone().requires_grad_()
    expected = F.mse_loss(leaf, target)
    (expected_grad,) = torch.autograd.grad(expected, leaf)
    value, grad = step_module._mse_and_grad(out, target, out.shape)
    assert torch.equal(value, expected.detach())
    assert torch.equal(grad, expected_grad)
