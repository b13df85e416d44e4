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
from aecore.layers.run import forward_keeping, gradients_by_hand
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
            h = _through(before, x)
            planned = plan_layers(h, layers)
            if planned is None:
                return None
            plan, tensors = planned
            if not any(t.requires_grad for t in tensors) or any(_has_grad_hooks(t) for t in tensors):
                return None
            outputs = forward_keeping(h, plan, tensors)
            loss, grad = self._loss_and_grad(outputs[-1], after, x)
            grads = gradients_by_hand(grad, h, plan, tensors, outputs)
            for t, g in zip(tensors, grads, strict=True):
                if g is None:
                    continue
                if t.grad is None:
                    t.grad = g
                else:
                    t.grad += g
        return {"recon": loss}

    def _loss_and_grad(self, out: Tensor, after: list[nn.Module], x: Tensor) -> tuple[Tensor, Tensor]:
        """The loss of the run's output ``out`` (passed through the reshapes ``after``) and its
        gradient with respect to ``out``, by the loss's own backward formula."""
        if self.loss_fn is F.mse_loss:
            shaped = _through(after, out)
            if shaped.shape == x.shape:  # else mse_loss broadcasts (and warns): its own autograd
                return _mse_and_grad(shaped, x, out.shape)
        with torch.enable_grad():
            leaf = out.detach().requires_grad_()
            value = self.loss_fn(_through(after, leaf), x)
            (grad,) = torch.autograd.grad(value, leaf)
        return value.detach(), grad


def _through(modules: list[nn.Module], t: Tensor) -> Tensor:
    for module in modules:
        t = module(t)
    return t


def _mse_and_grad(recon: Tensor, target: Tensor, shape: torch.Size) -> tuple[Tensor, Tensor]:
    """``F.mse_loss(recon, target)`` and its gradient (in ``shape``) from one difference.

    The same operations as ``mse_loss`` and ``mse_loss_backward`` (``2/n · (recon - target)``),
    so the same numbers to the bit, in three passes over the data instead of five.
    """
    diff = torch.sub(recon, target)
    value = diff.square().mean()
    return value, diff.mul_(2.0 / diff.numel()).view(shape)
