"""One Linear layer, optionally with its activation, through oneDNN where that is faster."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aecore.layers import backend
from aecore.layers.backend import ACTIVATIONS, FUSED_ACTIVATIONS

__all__ = ["Linear", "linear"]


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> Tensor:
    op = backend.onednn_op()
    if x.dim() == 2:
        return op(x, weight, bias, activation, [], "")
    out = op(x.reshape(-1, x.shape[-1]), weight, bias, activation, [], "")
    return out.reshape(*x.shape[:-1], weight.shape[0])


class _OneDNNLinear(torch.autograd.Function):
    """y = act(x·Wᵀ + b) with the three products (forward, ∂x, ∂W) in oneDNN."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None) -> Tensor:  # type: ignore[override]
        y = _onednn_linear(x, weight, bias, activation or "none")
        ctx.activation = activation
        ctx.has_bias = bias is not None
        if activation is None:
            ctx.save_for_backward(x, weight)
        else:  # each fused activation's derivative is a function of its output
            ctx.save_for_backward(x, weight, y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, *saved_y = ctx.saved_tensors
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        if ctx.activation is not None:
            grad = ACTIVATIONS[ctx.activation][1](grad, saved_y[0])
        grad2 = grad.reshape(-1, grad.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        if not torch.is_grad_enabled() and backend.is_plain_float32(grad2):
            # The usual backward: straight to the kernels (for ∂W oneDNN copies Gᵀ to make it contiguous).
            op = backend.onednn_op()
            grad_x = op(grad2, weight.t(), None, "none", [], "").view(x.shape) if need_x else None
            grad_w = op(grad2.t(), x2.t(), None, "none", [], "") if need_w else None
        else:
            # create_graph=True or batched gradients: torch ops, which record their own derivatives.
            grad_x = grad.matmul(weight) if need_x else None
            grad_w = grad2.t().mm(x2) if need_w else None
        grad_b = grad2.sum(0) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


def _takes_fast_path(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    return (
        weight.dim() == 2
        and backend.worth_it(x.numel() // max(weight.shape[1], 1), weight)
        and backend.is_plain_float32(x)
        and backend.is_plain_float32(weight)
        and (bias is None or backend.is_plain_float32(bias))
        and backend.plain_context()
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """``act(F.linear(x, weight, bias))``, through oneDNN for CPU float32 where that is faster.

    ``activation`` is ``None`` or one of :data:`FUSED_ACTIVATIONS`.
    """
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"linear() fuses {', '.join(FUSED_ACTIVATIONS)} or None, not {activation!r}")
    if not _takes_fast_path(x, weight, bias):
        out = F.linear(x, weight, bias)
        return out if activation is None else ACTIVATIONS[activation][0](out)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if needs_grad:
        return _OneDNNLinear.apply(x, weight, bias, activation)
    return _onednn_linear(x, weight, bias, activation or "none")


class Linear(nn.Linear):
    """``nn.Linear`` with :func:`linear`'s faster CPU path; parameters and state dict are unchanged."""

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - nn.Linear's own argument name
        return linear(input, self.weight, self.bias)
