"""Batch norm on channels-last batches: torch's layer's results and buffers, with exact statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from aecore_fastcpu import probes
from aecore_fastcpu.norm import precise_batch_norm, routes_batch_norm, use_precise_batch_norm

CL = torch.channels_last


def _batch(shape=(8, 4, 6, 5), shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * 2 + shift).contiguous(memory_format=CL)


def _layer(**kwargs) -> nn.BatchNorm2d:
    layer = nn.BatchNorm2d(4, **kwargs)
    if layer.affine:
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0]))
            layer.bias.copy_(torch.tensor([-1.0, 0.0, 0.5, 1.0]))
    return layer


def _run(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, forward=None):
    t = x.detach().clone().requires_grad_()
    y = (forward or layer)(t)
    y.backward(grad)
    params = {n: p.grad.clone() for n, p in layer.named_parameters()}
    return y.detach(), t.grad, params, {n: b.clone() for n, b in layer.named_buffers()}


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"momentum": None},
        {"affine": False},
        {"track_running_stats": False},
        {"momentum": 0.3, "eps": 1e-3},
    ],
)
def test_it_gives_the_layers_outputs_gradients_and_buffers(kwargs):
    x, grad = _batch(), _batch(seed=1)
    ours, theirs = _layer(**kwargs), _layer(**kwargs)
    for _ in range(3):  # running averages over several batches (the cumulative one for momentum=None)
        a = _run(ours, x, grad, forward=lambda t: precise_batch_norm(ours, t))
        b = _run(theirs, x.contiguous(), grad.contiguous())
        x, grad = x * 1.1 + 0.2, grad.flip(0)
    for got, expected in zip(a[:2], b[:2], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert a[2].keys() == b[2].keys() and a[3].keys() == b[3].keys()
    for name in b[2]:
        torch.testing.assert_close(a[2][name], b[2][name], rtol=1e-5, atol=1e-5, msg=name)
    for name in b[3]:
        torch.testing.assert_close(a[3][name], b[3][name], rtol=1e-5, atol=1e-6, msg=name)
    assert a[0].is_contiguous(memory_format=CL)  # the output keeps the layout the convolutions want


def test_its_statistics_are_as_exact_as_the_nchw_kernels():
    """A large batch far from zero: sums in one long float32 run drift; cascaded ones do not."""
    x = torch.relu(_batch((256, 4, 16, 16), shift=3.0))
    exact = x.double().var((0, 2, 3), unbiased=False)
    layer = _layer(momentum=1.0)  # the running variance is then this batch's (unbiased) one
    precise_batch_norm(layer, x)
    count = x.numel() // 4
    ours = layer.running_var.double() * (count - 1) / count
    reference = _layer(momentum=1.0)
    reference(x.contiguous())
    nchw = reference.running_var.double() * (count - 1) / count
    error = ((ours - exact).abs() / exact).max().item()
    assert error <= max(4 * ((nchw - exact).abs() / exact).max().item(), 1e-6)


def test_the_routed_layer_runs_its_own_forward_outside_channels_last_training():
    layer = _layer()
    assert use_precise_batch_norm(nn.Sequential(layer)) == 1
    assert "forward" in vars(layer)
    reference = copy.deepcopy(layer)
    x = _batch()
    for mode in ("eval", "nchw", "double"):
        layer.train(mode != "eval")
        reference.train(mode != "eval")
        batch = {"eval": x, "nchw": x.contiguous(), "double": x.double()}[mode]
        if mode == "double":
            layer.double()
            reference.double()
        assert torch.equal(layer(batch), reference(batch)), mode
        assert torch.equal(layer.running_var, reference.running_var), mode


def test_routing_is_idempotent_and_survives_a_deep_copy():
    layer = _layer()
    model = nn.Sequential(nn.Conv2d(4, 4, 1), layer)
    use_precise_batch_norm(model)
    bound = vars(layer)["forward"]
    assert use_precise_batch_norm(model) == 1
    assert vars(layer)["forward"] is bound
    copied = copy.deepcopy(model)
    assert vars(copied[1])["forward"].__self__ is copied[1]  # bound to the copy, not the original
    x = _batch()
    copied(x)
    assert int(copied[1].num_batches_tracked) == 1 and int(layer.num_batches_tracked) == 0


class _OwnForward(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def test_only_plain_batch_norm_layers_are_routed():
    assert routes_batch_norm(nn.BatchNorm2d(3))
    lazy = nn.LazyBatchNorm2d()
    assert not routes_batch_norm(lazy)  # its parameters do not exist yet
    lazy(torch.rand(2, 3, 4, 4))
    assert routes_batch_norm(lazy)  # it has become a BatchNorm2d
    assert not routes_batch_norm(_OwnForward(3))  # a subclass's own forward is its business
    assert not routes_batch_norm(nn.SyncBatchNorm(3))
    assert not routes_batch_norm(nn.GroupNorm(1, 3))
    model = nn.Sequential(_OwnForward(3), nn.GroupNorm(1, 3))
    assert use_precise_batch_norm(model) == 0
    assert all("forward" not in vars(m) for m in model)


def test_the_probe_passes_on_this_torch():
    assert probes.failure(probes.NORM) is None


@pytest.mark.parametrize("batched", [False, True], ids=["one-direction", "is_grads_batched"])
def test_second_order_gradients_are_as_exact_as_the_layers(batched):
    """A penalty on input gradients taken in training mode differentiates them again, through the norm.

    Each float32 result is compared with the float64 layer's (the conv bias's true gradient is zero,
    the batch norm cancels it, so only errors are compared, never values)."""
    torch.manual_seed(0)
    nchw = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _layer(), nn.Tanh(), nn.Flatten(), nn.Linear(64, 5))
    exact = copy.deepcopy(nchw).double()
    routed = copy.deepcopy(nchw).to(memory_format=CL)
    use_precise_batch_norm(routed)
    x = torch.rand(6, 3, 4, 4)
    directions = torch.randn(3, 6, 5) if batched else torch.randn(6, 5)
    grads = []
    for model, batch in ((exact, x.double()), (nchw, x), (routed, x.contiguous(memory_format=CL))):
        xi = batch.clone().requires_grad_()
        z = model(xi)
        v = directions.to(batch.dtype)
        (jv,) = torch.autograd.grad(z, xi, v, create_graph=True, is_grads_batched=batched)
        (jv.square().sum() + z.square().mean()).backward()
        grads.append({n: p.grad.double() for n, p in model.named_parameters()})
    reference, theirs, ours = grads
    assert reference.keys() == theirs.keys() == ours.keys()
    for name, expected in reference.items():
        scale = max(expected.norm().item(), 1.0)
        their_error = (theirs[name] - expected).norm().item()
        assert (ours[name] - expected).norm().item() <= 3 * their_error + 1e-6 * scale, name
