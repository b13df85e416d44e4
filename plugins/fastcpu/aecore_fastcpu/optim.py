"""Adam with the fused kernel, minus the per-step Python bookkeeping around it.

``torch.optim.Adam(fused=True)`` already updates every tensor in one kernel,
but each ``step()`` first rebuilds its parameter, gradient and state lists
and regroups them by device and dtype. For a small model on CPU that
bookkeeping costs about as much as the update itself. :class:`FusedAdam`
builds those lists once and then makes the same two kernel calls torch
makes (increment the step counters, run ``_fused_adam_``), so its results
are bit-identical to ``Adam(fused=True)``. It also runs the step hooks and
profiler scope that torch wraps around every ``step()`` itself, only when
some are registered or a profiler is on (the wrapper alone cost about
30 µs a step). Anything outside the plain case
(a closure, AMSGrad, maximize, a tensor learning rate, a parameter without
a gradient this step, mixed devices or dtypes) goes through torch's own
``step()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from aecore_fastcpu import private

__all__ = ["FusedAdam", "fused_adam"]

#: One param group as the fused kernel takes it: (group, params, exp_avgs, exp_avg_sqs, steps).
_GroupLists = tuple[dict[str, Any], list[Tensor], list[Tensor], list[Tensor], list[Tensor]]
_PLAIN = {"amsgrad": False, "maximize": False, "capturable": False, "differentiable": False}


class FusedAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` whose steady-state ``step()`` is two kernel calls.

    It is an ``Adam``: state dicts, schedulers and checkpoints treat it as one.
    """

    def __init__(self, params: Iterable[Any], **kwargs: Any) -> None:
        kwargs["fused"] = True
        super().__init__(params, **kwargs)
        self._lists: list[_GroupLists] | None = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's, without its profiler scope and grouping when gradients are simply dropped."""
        if not set_to_none:
            return super().zero_grad(set_to_none=False)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None
        return None

    # The cached lists hold the state tensors themselves, so anything that replaces them resets the cache.
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._lists = None
        super().load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._lists = None
        super().add_param_group(param_group)

    def _build_lists(self) -> bool:
        """Cache each group's params and state; False if some group is outside the plain case."""
        lists: list[_GroupLists] = []
        for group in self.param_groups:
            params = group["params"]
            if any(group.get(k, v) != v for k, v in _PLAIN.items()) or group.get("decoupled_weight_decay"):
                return False
            if isinstance(group["lr"], Tensor) or any(isinstance(b, Tensor) for b in group["betas"]):
                return False
            if len({(p.device, p.dtype) for p in params}) > 1 or any(p.is_complex() for p in params):
                return False
            if any(p not in self.state for p in params):
                return False
            states = [self.state[p] for p in params]
            if any("step" not in s for s in states):
                return False
            lists.append(
                (
                    group,
                    params,
                    [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states],
                    [s["step"] for s in states],
                )
            )
        self._lists = lists
        return True

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        if (
            closure is not None
            or self._step_hooks_or_profiler()
            or (self._lists is None and not self._build_lists())
        ):
            return self._torch_step(closure)  # also the first step, which creates the state
        with torch.no_grad():
            if self._fused_step():
                return None
        return self._torch_step(None)

    # torch wraps ``step`` of every Optimizer subclass in hook-and-profiler code unless it is marked
    # as already hooked; this one is, and calls that wrapper itself whenever it has anything to do.
    step = private.mark_hooked(step)

    def _step_hooks_or_profiler(self) -> bool:
        return bool(
            self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or private.global_optimizer_hooks()
            or private.profiler_enabled()
        )

    def _torch_step(self, closure: Callable[[], float] | None) -> float | None:
        """torch's own step, inside torch's own hook and profiler wrapper."""
        return private.hooked_adam_step()(self, closure)

    def _fused_step(self) -> bool:
        """The two kernel calls; False (nothing done) when a parameter has no gradient this step."""
        assert self._lists is not None
        batches = []
        for group, params, exp_avgs, exp_avg_sqs, steps in self._lists:
            grads = [p.grad for p in params]
            if any(g is None for g in grads):
                return False
            batches.append((group, params, grads, exp_avgs, exp_avg_sqs, steps))
        for group, params, grads, exp_avgs, exp_avg_sqs, steps in batches:
            if not params:
                continue
            beta1, beta2 = group["betas"]
            private.foreach_add_(steps, 1)
            private.fused_adam_(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                [],
                steps,
                amsgrad=False,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=False,
            )
        return True


def fused_adam(params: Sequence[Tensor], *, lr: float, weight_decay: float) -> FusedAdam | None:
    """:class:`FusedAdam` for dense CPU float32 parameters; None for anything else (torch's Adam serves)."""
    if not params or not all(_plain(p) for p in params):
        return None
    try:
        return FusedAdam(params, lr=lr, weight_decay=weight_decay)
    except (RuntimeError, ValueError, TypeError):  # a torch whose fused Adam refuses them after all
        return None


def _plain(p: Tensor) -> bool:
    return (
        type(p) in (Tensor, nn.Parameter)
        and p.dtype == torch.float32
        and p.is_cpu
        and p.layout == torch.strided
        and p.requires_grad
    )
