"""Every private torch API this backend uses, each behind one accessor.

Private names can vanish or change meaning in any torch release, so they
are kept in this one module and read only when called, never at import:
on a torch without one of them the package still imports, the probe
(:mod:`aecore_fastcpu.probes`) names what is missing, and the backend
steps aside. Outside the probes, call these only once the probe passed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "activation_backward",
    "foreach_add_",
    "functorch_active",
    "functorch_wrapped",
    "fused_adam_",
    "global_module_hooks",
    "global_optimizer_hooks",
    "grad_hooks",
    "hook_dicts",
    "hooked_adam_step",
    "linear_pointwise",
    "mark_hooked",
    "parameter_dict",
    "profiler_enabled",
]


def linear_pointwise() -> Callable[..., Tensor]:
    """oneDNN's dense linear kernel: ``op(x, weight, bias, activation, [], "")``."""
    return torch.ops.mkldnn._linear_pointwise


def activation_backward(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The derivative of ``relu``, ``sigmoid`` or ``tanh`` from its output ``y``: ``f(grad, y)``.

    These are the ops autograd's own backward nodes call, so gradients match theirs to the bit.
    """
    aten = torch.ops.aten
    if name == "relu":
        threshold_backward = aten.threshold_backward
        return lambda grad, y: threshold_backward(grad, y, 0)
    return {"sigmoid": aten.sigmoid_backward, "tanh": aten.tanh_backward}[name]


def functorch_active() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jacrev...) is running."""
    return torch._C._are_functorch_transforms_active()


def functorch_wrapped(t: Tensor) -> bool:
    """Whether ``t`` is a ``torch.func`` wrapper rather than a plain tensor."""
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


def grad_hooks(t: Tensor) -> bool:
    """Whether a tensor has gradient hooks (``register_hook``, ``register_post_accumulate_grad_hook``)."""
    return bool(t._backward_hooks or t._post_accumulate_grad_hooks)


def hook_dicts(module: nn.Module) -> tuple[dict[Any, Any], ...]:
    """The module's forward, forward-pre, backward and backward-pre hook dicts.

    torch adds and removes a module's hooks in these very dicts, so holding them is enough to see,
    at a glance, whether hooks were registered since.
    """
    return (
        module._forward_hooks,
        module._forward_pre_hooks,
        module._backward_hooks,
        module._backward_pre_hooks,
    )


def parameter_dict(module: nn.Module) -> dict[str, nn.Parameter | None]:
    """The module's own parameters by name: the dict ``module.weight`` reads, and assignments update."""
    return module._parameters


def global_module_hooks() -> bool:
    """Whether hooks are registered for every module (``register_module_forward_hook`` and kin)."""
    hooks = nn.modules.module
    return bool(
        hooks._global_forward_hooks
        or hooks._global_forward_pre_hooks
        or hooks._global_backward_hooks
        or hooks._global_backward_pre_hooks
    )


def global_optimizer_hooks() -> bool:
    """Whether step hooks are registered for every optimizer (``register_optimizer_step_pre_hook``)."""
    from torch.optim import optimizer

    return bool(optimizer._global_optimizer_pre_hooks or optimizer._global_optimizer_post_hooks)


def profiler_enabled() -> bool:
    """Whether the autograd profiler is recording (torch then wants ``Optimizer.step`` in its trace)."""
    return bool(torch.autograd.profiler._is_profiler_enabled)


def mark_hooked(step: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an optimizer's ``step`` as wrapping itself, so torch does not wrap it in hook code again.

    Only sets an attribute (torch's ``hooked`` protocol); the probe checks that hooks still run once.
    """
    step.hooked = True  # type: ignore[attr-defined]
    return step


@functools.cache
def hooked_adam_step() -> Callable[..., Any]:
    """``torch.optim.Adam.step`` as torch runs it: inside its hook-and-profiler wrapper."""
    step = torch.optim.Adam.step
    return step if getattr(step, "hooked", False) else torch.optim.Optimizer.profile_hook_step(step)


def fused_adam_(*args: Any, **kwargs: Any) -> None:
    """torch's fused Adam kernel, in place on lists of params, grads and state."""
    torch._fused_adam_(*args, **kwargs)


def foreach_add_(tensors: list[Tensor], value: float) -> None:
    """Add ``value`` to every tensor in one kernel (Adam's step counters)."""
    torch._foreach_add_(tensors, value)
