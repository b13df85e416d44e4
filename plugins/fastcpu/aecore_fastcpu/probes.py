"""Checks, once per process, that each private torch API this backend uses exists and still behaves.

Every accessor in :mod:`aecore_fastcpu.private` has a probe here that
calls it on a tiny case and compares with what public torch gives (to the
bit where the backend promises bit-identical results). :func:`failure`
returns the first problem as a short reason naming the API, which the
backend hands to the core as its reason to step aside. Results are cached
per process; :func:`clear` forgets them (for tests that change torch).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aecore_fastcpu import private

__all__ = ["ADAM", "NORM", "ONEDNN", "STEP", "clear", "failure"]


class _Missing(Exception):
    """A private name this torch does not have."""


def _torch() -> str:
    return "torch " + ".".join(torch.__version__.split("+")[0].split(".")[:2])


def _get(owner: object, dotted: str, label: str) -> object:
    """``owner.a.b``, raising :class:`_Missing` naming ``label`` if a part is absent."""
    obj = owner
    for part in dotted.split("."):
        try:
            obj = getattr(obj, part)
        except (AttributeError, RuntimeError):  # torch.ops namespaces raise either
            raise _Missing(label) from None
    return obj


def _onednn_linear() -> str | None:
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (torch.backends.mkldnn)"
    _get(torch, "ops.mkldnn._linear_pointwise", "torch.ops.mkldnn._linear_pointwise")
    op = private.linear_pointwise()
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=gen) for s in ((16, 40), (36, 40), (36,)))
    expected = F.linear(x, w, b)
    functions: dict[str, Callable[[Tensor], Tensor]] = {
        "none": lambda t: t,
        "relu": torch.relu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
    }
    for name, act in functions.items():
        if not torch.allclose(op(x, w, b, name, [], ""), act(expected), rtol=1e-5, atol=1e-5):
            return f"torch.ops.mkldnn._linear_pointwise disagrees with F.linear and {name} in {_torch()}"
    g = torch.randn(36, 16, generator=gen).t()  # transposed operands, as the backward pass passes them
    if not torch.allclose(op(g, w.t(), None, "none", [], ""), g.mm(w), rtol=1e-5, atol=1e-5):
        return f"torch.ops.mkldnn._linear_pointwise disagrees with mm on transposed operands in {_torch()}"
    return None


def _activation_backward() -> str | None:
    for name, act in (("relu", torch.relu), ("sigmoid", torch.sigmoid), ("tanh", torch.tanh)):
        label = f"torch.ops.aten.{'threshold' if name == 'relu' else name}_backward"
        _get(torch, label.removeprefix("torch."), label)
        z = torch.linspace(-3, 3, 13, requires_grad=True)
        y = act(z)
        g = torch.linspace(0.5, 2, 13)
        (expected,) = torch.autograd.grad(y, z, g)
        if not torch.equal(private.activation_backward(name)(g, y.detach()), expected):
            return f"{label} disagrees with autograd's {name} backward in {_torch()}"
    return None


def _functorch() -> str | None:
    for dotted in ("_C._are_functorch_transforms_active", "_C._functorch.is_functorch_wrapped_tensor"):
        _get(torch, dotted, f"torch.{dotted}")
    seen: list[tuple[bool, bool]] = []

    def inside(t: Tensor) -> Tensor:
        seen.append((private.functorch_active(), private.functorch_wrapped(t)))
        return t

    torch.func.vmap(inside)(torch.zeros(2, 3))
    outside = (private.functorch_active(), private.functorch_wrapped(torch.zeros(2)))
    if seen != [(True, True)] or outside != (False, False):
        return f"torch._C._functorch no longer tells a torch.func transform apart in {_torch()}"
    return None


def _seen_and_removed(check: Callable[[], bool], registrations: Iterable[Callable[[], object]]) -> bool:
    """Whether ``check`` turns true for each registered hook and back once it is removed."""
    before = check()
    for register in registrations:
        handle = register()
        seen = check()
        handle.remove()  # type: ignore[attr-defined]
        if not seen or check() != before:
            return False
    return True


def _tensor_hooks() -> str | None:
    p = nn.Parameter(torch.zeros(2))
    for name in ("_backward_hooks", "_post_accumulate_grad_hooks"):
        _get(p, name, f"Tensor.{name}")
    registrations = (
        lambda: p.register_hook(lambda g: g),
        lambda: p.register_post_accumulate_grad_hook(lambda t: None),
    )
    if not _seen_and_removed(lambda: private.grad_hooks(p), registrations):
        return f"Tensor._backward_hooks or _post_accumulate_grad_hooks no longer show hooks in {_torch()}"
    return None


def _module_hooks() -> str | None:
    m = nn.Linear(2, 2)
    for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
        _get(m, name, f"nn.Module.{name}")
    dicts = private.hook_dicts(m)  # taken before any hook exists, as the step takes them
    registrations = (
        lambda: m.register_forward_hook(lambda *a: None),
        lambda: m.register_forward_pre_hook(lambda *a: None),
        lambda: m.register_full_backward_hook(lambda *a: None),
        lambda: m.register_full_backward_pre_hook(lambda *a: None),
    )
    if not _seen_and_removed(lambda: any(dicts), registrations):
        return f"nn.Module's hook dicts no longer show its hooks in {_torch()}"
    return None


def _parameter_dict() -> str | None:
    m = nn.Linear(2, 2)
    _get(m, "_parameters", "nn.Module._parameters")
    params = private.parameter_dict(m)
    same = params.get("weight") is m.weight and params.get("bias") is m.bias
    m.weight, m.bias = nn.Parameter(torch.zeros(2, 2)), None
    if not (same and params.get("weight") is m.weight and "bias" in params and params["bias"] is None):
        return f"nn.Module._parameters no longer holds what module.weight reads in {_torch()}"
    return None


def _global_module_hooks() -> str | None:
    module = nn.modules.module
    for kind in ("forward", "forward_pre", "backward", "backward_pre"):
        _get(module, f"_global_{kind}_hooks", f"torch.nn.modules.module._global_{kind}_hooks")
    registrations = (
        lambda: module.register_module_forward_hook(lambda *a: None),
        lambda: module.register_module_forward_pre_hook(lambda *a: None),
        lambda: module.register_module_full_backward_hook(lambda *a: None),
        lambda: module.register_module_full_backward_pre_hook(lambda *a: None),
    )
    if not _seen_and_removed(private.global_module_hooks, registrations):
        return f"torch.nn.modules.module's global hook dicts no longer show hooks in {_torch()}"
    return None


def _optimizer_hooks() -> str | None:
    from torch.optim import optimizer

    for kind in ("pre", "post"):
        _get(
            optimizer,
            f"_global_optimizer_{kind}_hooks",
            f"torch.optim.optimizer._global_optimizer_{kind}_hooks",
        )
    registrations = (
        lambda: optimizer.register_optimizer_step_pre_hook(lambda *a: None),
        lambda: optimizer.register_optimizer_step_post_hook(lambda *a: None),
    )
    if not _seen_and_removed(private.global_optimizer_hooks, registrations):
        return f"torch.optim.optimizer's global hook dicts no longer show hooks in {_torch()}"
    return None


def _profiler_flag() -> str | None:
    # Starting a profiler to see the flag turn on prints to stderr, so only its type is checked.
    flag = _get(
        torch, "autograd.profiler._is_profiler_enabled", "torch.autograd.profiler._is_profiler_enabled"
    )
    if not isinstance(flag, bool):
        return f"torch.autograd.profiler._is_profiler_enabled is no longer a bool in {_torch()}"
    return None


def _fused_adam() -> str | None:
    from aecore_fastcpu.optim import FusedAdam

    _get(torch, "_fused_adam_", "torch._fused_adam_")
    _get(torch, "_foreach_add_", "torch._foreach_add_")
    _get(torch, "optim.Optimizer.profile_hook_step", "torch.optim.Optimizer.profile_hook_step")
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(3, 2, generator=gen), torch.randn(2, generator=gen)]
    grads = [[torch.randn(t.shape, generator=gen) for t in start] for _ in range(3)]
    ours = [nn.Parameter(t.clone()) for t in start]
    theirs = [nn.Parameter(t.clone()) for t in start]
    fused = FusedAdam(ours, lr=0.1, weight_decay=0.01)
    reference = torch.optim.Adam(theirs, lr=0.1, weight_decay=0.01, fused=True)
    for step in grads:  # the first step goes through torch's own, the next ones through the kernel
        for params, optimizer in ((ours, fused), (theirs, reference)):
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            optimizer.step()
    states = [(fused.state[p], reference.state[q]) for p, q in zip(ours, theirs, strict=True)]
    same = all(torch.equal(p, q) for p, q in zip(ours, theirs, strict=True)) and all(
        torch.equal(a[k], b[k]) for a, b in states for k in ("exp_avg", "exp_avg_sq", "step")
    )
    if not same:
        return f"torch._fused_adam_ no longer gives Adam(fused=True)'s results in {_torch()}"
    calls: list[int] = []
    fused.register_step_pre_hook(lambda *a: calls.append(1))
    fused.step()
    if len(calls) != 1:  # torch's hook wrapper ran twice, or not at all
        return f"torch.optim.Optimizer.profile_hook_step no longer runs step hooks once in {_torch()}"
    return None


def _batch_norm_kernels() -> str | None:
    from aecore_fastcpu.norm import precise_batch_norm

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(x.shape, generator=gen)
    ours, theirs = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
    results = []
    cases = ((ours, lambda t: precise_batch_norm(ours, t), x), (theirs, theirs, x.contiguous()))
    for layer, forward, batch in cases:
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(0.5, 1.5, 3))
            layer.bias.copy_(torch.linspace(-1.0, 1.0, 3))
        t = batch.clone().requires_grad_()
        y = forward(t)
        y.backward(grad)
        assert t.grad is not None and layer.weight.grad is not None and layer.bias.grad is not None
        results.append([y, t.grad, layer.weight.grad, layer.bias.grad, layer.running_mean, layer.running_var])
    if not all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(*results, strict=True)):
        return f"torch.ops.aten.native_batch_norm(_backward) no longer match BatchNorm2d in {_torch()}"
    return None


#: What each part of the backend needs, in the order the probes run.
STEP: tuple[Callable[[], str | None], ...] = (
    _activation_backward,
    _functorch,
    _tensor_hooks,
    _module_hooks,
    _parameter_dict,
    _global_module_hooks,
)
ONEDNN: tuple[Callable[[], str | None], ...] = (_onednn_linear,)
NORM: tuple[Callable[[], str | None], ...] = (_batch_norm_kernels,)
ADAM: tuple[Callable[[], str | None], ...] = (_optimizer_hooks, _profiler_flag, _fused_adam)


@functools.cache
def _result(probe: Callable[[], str | None]) -> str | None:
    try:
        return probe()
    except _Missing as exc:
        return f"{exc} is missing in {_torch()}"
    except Exception as exc:  # a probe never fails: a surprise is a reason to step aside
        return f"a check of torch's private APIs ({probe.__name__.strip('_')}) failed in {_torch()}: {exc}"


def failure(probes: Iterable[Callable[[], str | None]]) -> str | None:
    """The first reason one of ``probes`` gives (each runs once per process), or None if all pass."""
    for probe in probes:
        reason = _result(probe)
        if reason is not None:
            return reason
    return None


def clear() -> None:
    """Forget every result, so the next :func:`failure` probes again."""
    _result.cache_clear()
