"""A training step's loss and gradients without the autograd engine, for a model that is a :class:`Chain`.

``loss.backward()`` on a small model spends much of its time on bookkeeping:
recording the graph, the engine scheduling its nodes, an AccumulateGrad per
parameter. For a chain of Linear layers the backward pass is short enough
to write out (:mod:`aecore_fastcpu.kernels`): the forward pass keeps each
layer's output, the loss's own backward formula gives the gradient of the
reconstruction, and each parameter's ``.grad`` is set, or added to, as
``backward()`` would. The structure is found once (:func:`find_chain`);
each call re-checks only what can change between steps, and returns None,
with nothing done, wherever autograd has to run instead.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aecore.model import LossFn
from aecore.training.backends import BackendNotice
from aecore_fastcpu import kernels, private
from aecore_fastcpu.chain import Chain, Reshape

__all__ = ["ByHandStep"]

_PLAIN_TYPES = (Tensor, nn.Parameter)
_TRAINING = operator.attrgetter("training")
_REQUIRES_GRAD = operator.attrgetter("requires_grad")

#: One layer as the step reads it: the Linear module, its parameter dict, its activation.
_Layer = tuple[nn.Linear, dict[str, "nn.Parameter | None"], "str | None"]


class ByHandStep:
    """``model(x, loss_fn)`` and its ``backward()`` in one call, for a model that is a chain.

    What a call re-checks is kept cheap: the hook dicts of every module are taken once (torch
    fills them in place), parameters are read from each layer's parameter dict, and the kernel
    plan is kept per batch size for as long as the layers hold the same tensors.
    """

    def __init__(self, chain: Chain, loss_fn: LossFn, *, onednn: bool) -> None:
        self.chain = chain
        self.loss_fn = loss_fn
        self.onednn = onednn
        self.broken = False  # set once the kernels raise: the rest of the run uses autograd
        self._hook_dicts = tuple(d for m in chain.modules for d in private.hook_dicts(m))
        self._layers: tuple[_Layer, ...] = tuple(
            (m, private.parameter_dict(m), act) for m, act in chain.layers
        )
        self._before = _direct(chain.before)  # hooks are checked, so no module call is needed
        self._after = _direct(chain.after)
        self._seen: list[Tensor] = []  # the tensors last checked in full
        self._plans: dict[int, kernels.Plan] = {}

    def __call__(self, x: Tensor) -> dict[str, Tensor] | None:
        """The loss terms (detached) with each parameter's ``.grad`` set or added to; or None."""
        if self.broken or not _plain_context(x) or any(self._hook_dicts):
            return None
        if not all(map(_TRAINING, self.chain.modules)):  # traced in training mode
            return None
        layers = self._read_layers()
        if layers is None:
            return None
        tensors = [t for w, b, _ in layers for t in ((w,) if b is None else (w, b))]
        if not self._tensors_plain(tensors):
            return None
        with torch.no_grad():
            try:
                h = _through(self._before, x)
                flat = h if h.dim() == 2 else h.reshape(-1, h.shape[-1])
                plan = self._plan(flat.shape[0], layers)
                outputs = kernels.forward_keeping(flat, plan, tensors)
            except Exception as exc:  # a kernel that fails here: autograd can still train
                return self._give_up(exc)
            out = outputs[-1] if h.dim() == 2 else outputs[-1].view(*h.shape[:-1], outputs[-1].shape[-1])
            loss, grad = self._loss_and_grad(out, x)
            try:
                grads = kernels.gradients_by_hand(
                    grad.reshape(flat.shape[0], -1), flat, plan, tensors, outputs
                )
            except Exception as exc:
                return self._give_up(exc)
            _accumulate(tensors, grads)
        return {"recon": loss}

    def _read_layers(self) -> list[tuple[Tensor, Tensor | None, str | None]] | None:
        """Each layer's (weight, bias, activation) now; None if a layer is no longer a plain Linear."""
        layers = []
        for module, params, act in self._layers:
            weight, bias = params.get("weight"), params.get("bias")
            if type(module) is not nn.Linear or weight is None or "bias" not in params:  # parametrized since
                return None
            layers.append((weight, bias, act))
        return layers

    def _tensors_plain(self, tensors: list[Tensor]) -> bool:
        """Whether every tensor is a plain CPU float32 parameter without gradient hooks, one trainable."""
        if len(tensors) != len(self._seen) or not all(map(operator.is_, tensors, self._seen)):
            if not _fixed_facts_plain(tensors):
                return False
            self._seen, self._plans = tensors, {}
        return all(map(_plain_now, tensors)) and any(map(_REQUIRES_GRAD, tensors))

    def _plan(self, rows: int, layers: list[tuple[Tensor, Tensor | None, str | None]]) -> kernels.Plan:
        plan = self._plans.get(rows)
        if plan is None:
            plan = self._plans[rows] = kernels.plan(rows, layers, self.onednn)
        return plan

    def _loss_and_grad(self, out: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """The loss of the run's output ``out`` (through the reshapes after it) and its gradient
        with respect to ``out``, by the loss's own backward formula."""
        if self.loss_fn is F.mse_loss:
            shaped = _through(self._after, out)
            if shaped.shape == x.shape:  # else mse_loss broadcasts (and warns): its own autograd
                return _mse_and_grad(shaped, x, out.shape)
        with torch.enable_grad():
            leaf = out.detach().requires_grad_()
            value = self.loss_fn(_through(self._after, leaf), x)
            (grad,) = torch.autograd.grad(value, leaf)
        return value.detach(), grad

    def _give_up(self, exc: Exception) -> None:
        self.broken = True
        warnings.warn(
            f"aecore-fastcpu's step failed ({type(exc).__name__}: {exc}); this run goes on with autograd.",
            BackendNotice,
            stacklevel=3,
        )


def _direct(reshapes: Sequence[Reshape]) -> tuple[Reshape, ...]:
    return tuple(f.forward if isinstance(f, nn.Module) else f for f in reshapes)


def _plain_context(x: Tensor) -> bool:
    """Nothing that autograd must see: grad mode on, no anomaly mode, autocast, compile or transform,
    no hooks on every module, and a plain float32 CPU input that needs no gradient."""
    return (
        torch.is_grad_enabled()
        and not torch.is_anomaly_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not private.functorch_active()
        and not private.global_module_hooks()
        and type(x) is Tensor
        and x.dtype == torch.float32
        and x.is_cpu
        and x.layout == torch.strided
        and not x.requires_grad
        and x.dim() > 0
        and x.numel() > 0
        and not private.functorch_wrapped(x)
    )


def _fixed_facts_plain(tensors: Sequence[Tensor]) -> bool:
    """What a tensor object keeps for life: a plain dense contiguous tensor; and none is used twice."""
    return len({id(t) for t in tensors}) == len(tensors) and all(
        type(t) in _PLAIN_TYPES and t.layout == torch.strided and t.is_contiguous() for t in tensors
    )


def _plain_now(t: Tensor) -> bool:
    """What can change on a parameter between steps: dtype, device, gradient hooks, its ``.grad``."""
    grad = t.grad
    return (
        t.dtype is torch.float32
        and t.is_cpu
        and not private.grad_hooks(t)
        and (grad is None or (type(grad) is Tensor and grad.layout == torch.strided))
    )


def _through(reshapes: Sequence[Reshape], t: Tensor) -> Tensor:
    for reshape in reshapes:
        t = reshape(t)
    return t


def _accumulate(tensors: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Set or add to each ``.grad`` as ``backward()`` does (in place where one exists)."""
    for t, g in zip(tensors, grads, strict=True):
        if g is None:
            continue
        if t.grad is None:
            t.grad = g
        else:
            t.grad += g


def _mse_and_grad(recon: Tensor, target: Tensor, shape: torch.Size) -> tuple[Tensor, Tensor]:
    """``F.mse_loss(recon, target)`` and its gradient (in ``shape``) from one difference.

    The same operations as ``mse_loss`` and its backward (``2/n · (recon - target)``), so
    the same numbers to the bit, in three passes over the data instead of five.
    """
    diff = torch.sub(recon, target)
    value = diff.square().mean()
    return value, diff.mul_(2.0 / diff.numel()).view(shape)
