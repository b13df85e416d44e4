"""A training step's gradients without the autograd engine, for models that are one run of Linear layers.

``loss.backward()`` on a small model spends much of its time on bookkeeping:
recording the graph in the forward pass, the engine scheduling its nodes,
an AccumulateGrad per parameter. When a model is nothing but Linear layers
with their activations (and reshapes around them), :mod:`aecore.layers`
already computes that backward pass itself, inside one autograd node.
:class:`ByHandGradients` calls the same code directly: the forward pass
keeps each layer's output, the loss's own backward formula gives the
gradient of the reconstruction, and each parameter's ``.grad`` is set as
``backward()`` would set it. The kernels and their order are unchanged, so
the gradients are the same to the bit (a test checks).

Anything outside that case returns None and the trainer runs autograd as
usual: regularizers, hooks on modules or parameters, anomaly detection,
autocast, other devices and dtypes, frozen models, and inputs that need
a gradient themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aecore.layers import backend
from aecore.layers.chain import plan_layers, single_run
from aecore.layers.run import gradients_by_hand
from aecore.model import Autoencoder

__all__ = ["ByHandGradients"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _has_grad_hooks(t: Tensor) -> bool:
    return bool(t._backward_hooks or getattr(t, "_post_accumulate_grad_hooks", None))


class ByHandGradients:
    """``model(x, loss_fn)`` and its ``backward()`` in one call, where the model allows."""

    def __init__(self, model: Autoencoder, loss_fn: LossFn) -> None:
        self.model = model
        self.loss_fn = loss_fn

    def __call__(self, x: Tensor) -> dict[str, Tensor] | None:
        """The loss terms (detached), with each parameter's ``.grad`` set or added to as
        ``backward()`` would; None, with nothing done, where autograd has to run instead."""
        if (
            not torch.is_grad_enabled()
            or torch.is_anomaly_enabled()
            or x.requires_grad
            or backend.global_hooks()
        ):
            return None
        chain = self.model.module_chain()
        split = None if chain is None else single_run(chain)
        if split is None:
            return None
        before, layers, after = split
        with torch.no_grad():
            h = x
            for module in before:
                h = module(h)
            planned = plan_layers(h, layers)
            if planned is None:
                return None
            plan, tensors = planned
            if not any(t.requires_grad for t in tensors) or any(_has_grad_hooks(t) for t in tensors):
                return None
            loss: list[Tensor] = []

            def output_grad(out: Tensor) -> Tensor:
                value, grad = self._loss_and_grad(out, after, x)
                loss.append(value)
                return grad

            _, grads = gradients_by_hand(h, plan, tensors, output_grad)
            for t, grad in zip(tensors, grads, strict=True):
                if grad is None:
                    continue
                if t.grad is None:
                    t.grad = grad
                else:
                    t.grad += grad
        return {"recon": loss[0]}

    def _loss_and_grad(self, out: Tensor, after: list[nn.Module], x: Tensor) -> tuple[Tensor, Tensor]:
        """The loss of the run's output ``out`` (passed through the reshapes ``after``) and its
        gradient with respect to ``out``, by the loss's own backward formula."""
        shaped = out
        for module in after:
            shaped = module(shaped)
        if self.loss_fn is F.mse_loss and shaped.shape == x.shape:
            return _mse_and_grad(shaped, x, out.shape)
        with torch.enable_grad():
            leaf = out.detach().requires_grad_()
            shaped = leaf
            for module in after:
                shaped = module(shaped)
            value = self.loss_fn(shaped, x)
            (grad,) = torch.autograd.grad(value, leaf)
        return value.detach(), grad


def _mse_and_grad(recon: Tensor, target: Tensor, shape: torch.Size) -> tuple[Tensor, Tensor]:
    """``F.mse_loss(recon, target)`` and its gradient (in ``shape``) from one difference.

    The same operations as ``mse_loss`` and ``mse_loss_backward`` (``2/n · (recon - target)``),
    so the same numbers to the bit, in three passes over the data instead of five.
    """
    diff = torch.sub(recon, target)
    value = diff.square().mean()
    return value, diff.mul_(2.0 / diff.numel()).view(shape)
