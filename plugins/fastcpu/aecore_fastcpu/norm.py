"""Batch norm on channels-last tensors with float32 statistics as exact as the NCHW kernel's.

torch's channels-last batch norm on CPU sums each channel's values one row
after another in float32, so its batch variance, and the gradients computed
from it, carry rounding errors that grow with the batch: far larger than
those of its NCHW kernel, which sums in a cascade. Everything else about the
channels-last kernels is exact enough, and fast: normalising with given
statistics, and the backward pass given the saved mean and inverse standard
deviation. :func:`precise_batch_norm` therefore computes the statistics
itself, in two passes of torch's cascaded sums (the mean, then the squared
deviations from it), and hands the rest to those kernels.

:func:`use_precise_batch_norm` routes a model's ``BatchNorm2d`` layers
through it for channels-last training batches on CPU; any other call (eval
mode, NCHW input, another device or dtype) runs the layer's own forward.
The layer, its parameters and its buffers are untouched.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["precise_batch_norm", "routes_batch_norm", "use_precise_batch_norm"]


def _batch_stats(x: Tensor) -> tuple[Tensor, Tensor, int]:
    """Per-channel mean and biased variance over (N, H, W), in two cascaded-sum passes; the count."""
    count = x.numel() // x.shape[1]
    mean = x.sum((0, 2, 3)) / count
    centred = x - mean.view(1, -1, 1, 1)
    var = centred.square_().sum((0, 2, 3)) / count
    return mean, var, count


class _PreciseBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        momentum: float,
        eps: float,
    ) -> Tensor:
        mean, var, count = _batch_stats(x)
        if running_mean is not None and running_var is not None:
            running_mean.lerp_(mean, momentum)
            running_var.lerp_(var * (count / max(count - 1, 1)), momentum)  # unbiased, as torch keeps it
        invstd = (var + eps).rsqrt_()
        # Inference mode of the kernel: it normalises with the statistics it is given.
        y, _, _ = torch.ops.aten.native_batch_norm(x, weight, bias, mean, var, False, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, mean, invstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad,  # channels-last from the layers around it (and layouts cannot be asked under vmap)
            x,
            weight,
            None,
            None,
            mean,
            invstd,
            True,
            ctx.eps,
            [needs[0], weight is not None and needs[1], needs[2]],
        )
        return gx, gw, gb, None, None, None, None


def precise_batch_norm(layer: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """``layer(x)`` in training mode, its statistics summed in cascades; updates its running buffers."""
    momentum = layer.momentum
    if layer.track_running_stats and layer.num_batches_tracked is not None:
        layer.num_batches_tracked.add_(1)
        if momentum is None:  # a cumulative average, as torch's layer keeps it
            momentum = 1.0 / float(layer.num_batches_tracked)
    return _PreciseBatchNorm.apply(
        x,
        layer.weight,
        layer.bias,
        layer.running_mean if layer.track_running_stats else None,
        layer.running_var if layer.track_running_stats else None,
        0.0 if momentum is None else float(momentum),
        layer.eps,
    )


def _routed(x: Tensor) -> bool:
    return (
        x.dim() == 4
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.shape[0] * x.shape[2] * x.shape[3] > 1
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


def _forward(self: nn.BatchNorm2d, x: Tensor) -> Tensor:
    if self.training and _routed(x):
        return precise_batch_norm(self, x)
    return type(self).forward(self, x)


def routes_batch_norm(layer: nn.Module) -> bool:
    """Whether ``layer`` is a batch norm whose training pass :func:`use_precise_batch_norm` takes over."""
    return isinstance(layer, nn.BatchNorm2d) and type(layer).forward is nn.BatchNorm2d.forward


def use_precise_batch_norm(model: nn.Module) -> int:
    """Route every plain ``BatchNorm2d`` of ``model`` through :func:`precise_batch_norm`; how many."""
    count = 0
    for layer in model.modules():
        if routes_batch_norm(layer):
            if "forward" not in vars(layer):  # once per layer, however often a model is prepared
                layer.forward = types.MethodType(_forward, layer)
            count += 1
    return count
