"""One autograd node for a run of Linear layers, each with its activation: the kernel of aecore.layers.

A run of one is :func:`aecore.layers.linear`; longer runs come from
:class:`aecore.layers.Sequential`. Each layer's products go through oneDNN
or torch as its ``plan`` entry says; the arithmetic is the same op for op
either way the layers are grouped.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from aecore.layers import backend
from aecore.layers.backend import ACTIVATIONS

__all__ = ["Plan", "apply_run", "forward_keeping", "gradients_by_hand"]

#: Per layer: (activation or None, has a bias, its forward and input-gradient products through
#: oneDNN, its weight-gradient product through oneDNN).
Plan = tuple[tuple[str | None, bool, bool, bool], ...]

#: Per layer, as the kernel reads it: (weight position, bias position or None in the flat tensor
#: list, activation, oneDNN for the forward and input gradient, oneDNN for the weight gradient).
_Program = tuple[tuple[int, int | None, str | None, bool, bool], ...]


@functools.lru_cache(maxsize=256)
def _program(plan: Plan) -> _Program:
    steps, k = [], 0
    for act, has_bias, onednn, onednn_weight_grad in plan:
        steps.append((k, k + 1 if has_bias else None, act, onednn, onednn_weight_grad))
        k += 2 if has_bias else 1
    return tuple(steps)


@functools.lru_cache(maxsize=256)
def _wanted_upstream(plan: Plan, needs: tuple[bool, ...]) -> tuple[bool, ...]:
    """Per layer: whether anything before it (the input, earlier weights) needs a gradient.

    Where nothing does, the backward pass stops after that layer's own weight gradient.
    ``needs`` is ``ctx.needs_input_grad``: the input, the plan, then the flat tensor list.
    """
    upstream, wanted = [], needs[0]
    for w_at, b_at, *_ in _program(plan):
        upstream.append(wanted)
        wanted = wanted or needs[2 + w_at] or (b_at is not None and needs[2 + b_at])
    return tuple(upstream)


def _forward_layer(h: Tensor, weight: Tensor, bias: Tensor | None, act: str | None, onednn: bool) -> Tensor:
    if onednn:
        return backend.onednn_op()(h, weight, bias, act or "none", [], "")
    out = torch.addmm(bias, h, weight.t()) if bias is not None else h.mm(weight.t())
    if act == "relu":
        return out.relu_()
    if act is not None:
        return out.sigmoid_() if act == "sigmoid" else out.tanh_()
    return out


def _forward(x: Tensor, program: _Program, tensors: Sequence[Tensor], outputs: list[Tensor] | None) -> Tensor:
    """The layers on ``x`` (any leading shape), keeping each layer's 2-D output in ``outputs`` if given."""
    h = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    for w_at, b_at, act, onednn, _ in program:
        h = _forward_layer(h, tensors[w_at], None if b_at is None else tensors[b_at], act, onednn)
        if outputs is not None:
            outputs.append(h)
    return h if x.dim() == 2 else h.view(*x.shape[:-1], h.shape[-1])


class _Run(torch.autograd.Function):
    """act_n(…act_1(x·W₁ᵀ + b₁)…·W_nᵀ + b_n), keeping each layer's output for the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor, plan: Plan, *tensors: Tensor) -> Tensor:  # type: ignore[override]
        program = _program(plan)
        outputs: list[Tensor] = []
        out = _forward(x, program, tensors, outputs)
        ctx.plan, ctx.n_tensors = plan, len(tensors)
        # save_for_backward checks that nothing changed these in place before the backward pass,
        # and frees them once it has run. Biases are not needed there, so they are not saved
        # (each saved tensor costs its own bookkeeping); only the slow path below reads them.
        ctx.save_for_backward(x, out, *(tensors[w_at] for w_at, *_ in program), *outputs[:-1])
        ctx.n_layers, ctx.tensors = len(program), tensors
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, out, *rest = ctx.saved_tensors
        n_layers = ctx.n_layers
        weights = rest[:n_layers]
        outputs = [*rest[n_layers:], out.reshape(-1, out.shape[-1])]
        program = _program(ctx.plan)
        fast = not torch.is_grad_enabled() and backend.is_plain_float32(grad)
        if not fast:
            # create_graph=True or batched gradients: recompute the outputs from the inputs with
            # torch ops so that every quantity below is connected to the graph and differentiable.
            biases = ctx.tensors
            h, outputs = x.reshape(-1, x.shape[-1]), []
            for (_, b_at, act, _, _), weight in zip(program, weights, strict=True):
                h = F.linear(h, weight, None if b_at is None else biases[b_at])
                h = h if act is None else ACTIVATIONS[act][0](h)
                outputs.append(h)
        grad_x, grads = _backward(
            grad, x, ctx.plan, weights, outputs, ctx.needs_input_grad, ctx.n_tensors, fast
        )
        return (grad_x, None, *grads)


def _backward(
    grad: Tensor,
    x: Tensor,
    plan: Plan,
    weights: Sequence[Tensor],
    outputs: Sequence[Tensor],
    needs: tuple[bool, ...],
    n_tensors: int,
    onednn_allowed: bool,
) -> tuple[Tensor | None, list[Tensor | None]]:
    """The gradients of the input and of the flat tensor list, given the output's gradient.

    ``outputs`` are each layer's 2-D output; ``needs`` is laid out as
    ``ctx.needs_input_grad`` (the input, the plan, then the tensors).
    """
    program = _program(plan)
    upstream = _wanted_upstream(plan, needs)
    grads: list[Tensor | None] = [None] * n_tensors
    g = grad.reshape(-1, grad.shape[-1])
    op = backend.onednn_op()
    for i in range(len(program) - 1, -1, -1):
        w_at, b_at, act, onednn, onednn_weight_grad = program[i]
        weight = weights[i]
        inp = outputs[i - 1] if i else x.reshape(-1, x.shape[-1])
        if act is not None:
            g = ACTIVATIONS[act][1](g, outputs[i])
        if needs[2 + w_at]:
            grads[w_at] = (
                op(g.t(), inp.t(), None, "none", [], "")
                if onednn_allowed and onednn_weight_grad
                else g.t().mm(inp)
            )
        if b_at is not None and needs[2 + b_at]:
            grads[b_at] = g.sum(0)
        if not upstream[i]:
            break
        g = op(g, weight.t(), None, "none", [], "") if onednn_allowed and onednn else g.mm(weight)
    grad_x = g.reshape(x.shape) if needs[0] else None
    return grad_x, grads


def forward_keeping(x: Tensor, plan: Plan, tensors: Sequence[Tensor]) -> list[Tensor]:
    """Each layer's 2-D output on ``x``, the last one the run's: what :func:`gradients_by_hand` needs."""
    outputs: list[Tensor] = []
    _forward(x, _program(plan), tensors, outputs)
    return outputs


def gradients_by_hand(
    grad: Tensor, x: Tensor, plan: Plan, tensors: Sequence[Tensor], outputs: Sequence[Tensor]
) -> list[Tensor | None]:
    """Each tensor's gradient, given the gradient of the run's output, without the autograd engine.

    ``outputs`` come from :func:`forward_keeping` on the same ``x``. The kernels and
    their order are those of a backward pass through :func:`apply_run`, so the
    gradients are the same to the bit; the saving is the engine's bookkeeping.
    ``x`` needs no gradient here; a tensor that does not require one gets None.
    Call it under ``torch.no_grad()``.
    """
    needs = (False, False, *(t.requires_grad for t in tensors))
    weights = [tensors[w_at] for w_at, *_ in _program(plan)]
    return _backward(grad, x, plan, weights, outputs, needs, len(tensors), True)[1]


def apply_run(x: Tensor, plan: Plan, tensors: Sequence[Tensor]) -> Tensor:
    """``x`` through the planned layers: one autograd node when a gradient is wanted, else plain calls.

    ``tensors`` holds each layer's weight, then its bias if it has one.
    """
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in tensors)):
        return _Run.apply(x, plan, *tensors)
    return _forward(x, _program(plan), tensors, None)
