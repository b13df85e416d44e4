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

__all__ = ["Plan", "apply_run"]

#: Per layer: (activation or None, has a bias, products through oneDNN).
Plan = tuple[tuple[str | None, bool, bool], ...]


def _forward_layer(h: Tensor, weight: Tensor, bias: Tensor | None, act: str | None, onednn: bool) -> Tensor:
    if onednn:
        return backend.onednn_op()(h, weight, bias, act or "none", [], "")
    out = torch.addmm(bias, h, weight.t()) if bias is not None else h.mm(weight.t())
    if act == "relu":
        return out.relu_()
    if act is not None:
        return out.sigmoid_() if act == "sigmoid" else out.tanh_()
    return out


def _unpack(plan: Plan, tensors: Sequence[Tensor]):
    """(weight, bias or None, activation, use oneDNN) per layer from the flat tensor list."""
    layers, k = [], 0
    for act, has_bias, onednn in plan:
        weight, bias = tensors[k], tensors[k + 1] if has_bias else None
        k += 2 if has_bias else 1
        layers.append((weight, bias, act, onednn))
    return layers


@functools.lru_cache(maxsize=256)
def _positions(plan: Plan) -> tuple[tuple[int, int | None], ...]:
    """Where each layer's weight and bias sit in the flat tensor list."""
    positions, k = [], 0
    for _, has_bias, _ in plan:
        positions.append((k, k + 1 if has_bias else None))
        k += 2 if has_bias else 1
    return tuple(positions)


class _Run(torch.autograd.Function):
    """act_n(…act_1(x·W₁ᵀ + b₁)…·W_nᵀ + b_n), keeping each layer's output for the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor, plan: tuple, *tensors: Tensor) -> Tensor:  # type: ignore[override]
        h = x.reshape(-1, x.shape[-1])
        outputs = []
        for weight, bias, act, onednn in _unpack(plan, tensors):
            h = _forward_layer(h, weight, bias, act, onednn)
            outputs.append(h)
        ctx.plan, ctx.n_tensors = plan, len(tensors)
        ctx.save_for_backward(x, *tensors, *outputs)
        return h.view(*x.shape[:-1], h.shape[-1])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, *rest = ctx.saved_tensors
        tensors, outputs = rest[: ctx.n_tensors], rest[ctx.n_tensors :]
        needs = ctx.needs_input_grad
        layers = _unpack(ctx.plan, tensors)
        if torch.is_grad_enabled() or not backend.is_plain_float32(grad):
            # create_graph=True or batched gradients: recompute the outputs from the inputs with
            # torch ops so that every quantity below is connected to the graph and differentiable.
            h, outputs = x.reshape(-1, x.shape[-1]), []
            for weight, bias, act, _ in layers:
                h = F.linear(h, weight, bias)
                h = h if act is None else ACTIVATIONS[act][0](h)
                outputs.append(h)
            fast = False
        else:
            fast = True
        # Which tensor-list positions each layer's weight and bias hold, and whether anything
        # before a layer needs a gradient (else its input gradient is not computed).
        positions = _positions(ctx.plan)
        tensor_needs = needs[2:]
        upstream = [needs[0]]
        for w_at, b_at in positions:
            upstream.append(upstream[-1] or tensor_needs[w_at] or (b_at is not None and tensor_needs[b_at]))
        grads: list[Tensor | None] = [None] * len(tensors)
        g = grad.reshape(-1, grad.shape[-1])
        op = backend.onednn_op()
        for i in reversed(range(len(layers))):
            weight, bias, act, onednn = layers[i]
            inp = outputs[i - 1] if i else x.reshape(-1, x.shape[-1])
            if act is not None:
                g = ACTIVATIONS[act][1](g, outputs[i])
            w_at, b_at = positions[i]
            if tensor_needs[w_at]:
                grads[w_at] = op(g.t(), inp.t(), None, "none", [], "") if fast and onednn else g.t().mm(inp)
            if b_at is not None and tensor_needs[b_at]:
                grads[b_at] = g.sum(0)
            if not upstream[i]:
                break
            g = op(g, weight.t(), None, "none", [], "") if fast and onednn else g.mm(weight)
        grad_x = g.reshape(x.shape) if needs[0] else None
        return (grad_x, None, *grads)


def apply_run(x: Tensor, plan: Plan, tensors: Sequence[Tensor]) -> Tensor:
    """``x`` through the planned layers: one autograd node when a gradient is wanted, else plain calls.

    ``tensors`` holds each layer's weight, then its bias if it has one.
    """
    if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in tensors)):
        return _Run.apply(x, plan, *tensors)
    h = x.reshape(-1, x.shape[-1])
    for weight, bias, act, onednn in _unpack(plan, tensors):
        h = _forward_layer(h, weight, bias, act, onednn)
    return h.view(*x.shape[:-1], h.shape[-1])
