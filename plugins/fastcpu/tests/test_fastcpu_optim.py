"""FusedAdam: bit-identical to torch's Adam(fused=True) through state dicts, schedulers, hooks, odd steps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.optimizer import register_optimizer_step_pre_hook

from aecore_fastcpu import FastCPU, FastCPUConfig
from aecore_fastcpu.optim import FusedAdam, fused_adam

pytestmark = pytest.mark.skipif(not hasattr(torch, "_fused_adam_"), reason="no fused Adam kernel")


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, i: int, skip_last: bool = False) -> None:
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(i))
    optimizer.zero_grad(set_to_none=True)
    model(x).pow(2).mean().backward()
    if skip_last:  # a parameter without a gradient this step
        model[2].bias.grad = None
    optimizer.step()


def _assert_same(a: nn.Module, b: nn.Module, opt_a: Optimizer, opt_b: Optimizer) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_a.state[p][key], opt_b.state[q][key]), key


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_matches_torch_fused_adam_bit_for_bit(weight_decay):
    ours_model, ref_model = _model(), _model()
    ours = FusedAdam(ours_model.parameters(), lr=1e-2, weight_decay=weight_decay)
    ref = torch.optim.Adam(ref_model.parameters(), lr=1e-2, weight_decay=weight_decay, fused=True)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5) for o in (ours, ref)]
    for i in range(10):
        _step(ours_model, ours, i, skip_last=i == 5)
        _step(ref_model, ref, i, skip_last=i == 5)
        for s in schedulers:
            s.step()
    _assert_same(ours_model, ref_model, ours, ref)
    assert ours.param_groups[0]["lr"] == ref.param_groups[0]["lr"] < 1e-2


def test_a_loaded_state_dict_replaces_the_cached_state():
    model, ref_model = _model(), _model()
    optimizer = FusedAdam(model.parameters(), lr=1e-2)
    ref = torch.optim.Adam(ref_model.parameters(), lr=1e-2, fused=True)
    for i in range(3):
        _step(model, optimizer, i)
        _step(ref_model, ref, i)
    saved = copy.deepcopy(ref.state_dict())  # a snapshot, as a resume file holds
    resumed_model = _model()
    resumed_model.load_state_dict(ref_model.state_dict())
    resumed = FusedAdam(resumed_model.parameters(), lr=1e-2)
    _step(resumed_model, resumed, 99)  # builds its own state and cache first
    resumed_model.load_state_dict(ref_model.state_dict())
    resumed.load_state_dict(saved)
    for i in range(3, 6):
        _step(resumed_model, resumed, i)
        _step(ref_model, ref, i)
    _assert_same(resumed_model, ref_model, resumed, ref)


def test_its_state_dict_continues_in_torchs_adam_as_if_nothing_changed():
    model, ref_model = _model(), _model()
    optimizer = FusedAdam(model.parameters(), lr=1e-2)
    ref = torch.optim.Adam(ref_model.parameters(), lr=1e-2, fused=True)
    for i in range(4):
        _step(model, optimizer, i)
        _step(ref_model, ref, i)
    handed_over = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    handed_over.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for i in range(4, 7):
        _step(model, handed_over, i)
        _step(ref_model, ref, i)
    _assert_same(model, ref_model, handed_over, ref)


def test_a_new_param_group_is_stepped():
    model = _model()
    extra = nn.Parameter(torch.ones(3))
    optimizer = FusedAdam(model.parameters(), lr=1e-2)
    _step(model, optimizer, 0)
    _step(model, optimizer, 1)
    optimizer.add_param_group({"params": [extra]})
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        (model(torch.randn(2, 6)).sum() + extra.sum()).backward()
        optimizer.step()
    assert not torch.equal(extra, torch.ones(3))
    assert optimizer.state[extra]["step"].item() == 2


def test_a_closure_goes_through_torch():
    model = _model()
    optimizer = FusedAdam(model.parameters(), lr=1e-2)
    x = torch.randn(4, 6)

    def closure():
        optimizer.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    first = optimizer.step(closure)
    assert torch.is_tensor(first) and optimizer.step(closure) < first


def test_the_factory_gives_fused_adam_for_dense_cpu_float32_only():
    optimizer = fused_adam(list(_model().parameters()), lr=1e-3, weight_decay=0.1)
    assert type(optimizer) is FusedAdam and optimizer.defaults["fused"]
    assert optimizer.param_groups[0]["weight_decay"] == 0.1
    assert fused_adam(list(_model().double().parameters()), lr=1e-3, weight_decay=0.0) is None
    assert fused_adam([], lr=1e-3, weight_decay=0.0) is None


def test_the_backend_hands_out_fused_adam_unless_told_not_to():
    params = list(_model().parameters())
    assert type(FastCPU().optimizer(params, lr=1e-3, weight_decay=0.0)) is FusedAdam
    assert FastCPU(FastCPUConfig(fused_adam=False)).optimizer(params, lr=1e-3, weight_decay=0.0) is None


def test_zero_grad_drops_or_zeroes_like_torch():
    model = _model()
    optimizer = FusedAdam(model.parameters(), lr=1e-2)
    _step(model, optimizer, 0)
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_step_hooks_run_as_they_do_around_torchs_step():
    """FusedAdam skips torch's step wrapper only while it has nothing to do."""
    model = _model()
    optimizer = FusedAdam(model.parameters(), lr=1e-2)
    _step(model, optimizer, 0)  # the first step builds the state, through torch
    _step(model, optimizer, 1)  # the fast path is now cached
    calls: list[str] = []
    handles = [
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre")),
        optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post")),
        register_optimizer_step_pre_hook(lambda opt, args, kwargs: calls.append("global")),
    ]
    before = [p.detach().clone() for p in model.parameters()]
    _step(model, optimizer, 2)
    assert calls == ["global", "pre", "post"]
    assert not any(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    for handle in handles:
        handle.remove()
    _step(model, optimizer, 3)
    assert calls == ["global", "pre", "post"]


def test_step_shows_in_the_profiler_and_satisfies_schedulers(recwarn):
    model = _model()
    optimizer = FusedAdam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    for i in range(2):
        _step(model, optimizer, i)
        scheduler.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _step(model, optimizer, 2)
    assert "Optimizer.step#FusedAdam.step" in {event.key for event in prof.key_averages()}
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
