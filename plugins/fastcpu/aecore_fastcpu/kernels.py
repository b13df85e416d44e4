"""The arithmetic of a run of Linear layers: a forward pass that keeps each output, and its backward by hand.

Why oneDNN: on CPU, ``nn.Linear`` runs float32 products through MKL's
``sgemm``. On CPUs MKL does not tune for (AMD's, for one) that is its AVX2
code path, while the oneDNN library inside the same torch wheel picks
kernels by instruction set and uses AVX-512 where present, and applies the
activation while the product is still in cache. Where the CPU has no
AVX-512 that gain is gone and oneDNN's extra cost per call remains (on an
AVX2-only AMD EPYC every product of the ``simple`` model was 5-50% slower
through oneDNN), and below a size its fixed cost loses to MKL anyway. So
which kernel a product uses is a rule of the CPU and the shapes, never a
timing: two runs on one machine do the same arithmetic, and resumed runs
stay bit-identical.

The backward pass uses the kernels, in the order, of a backward pass
through autograd over the same forward ops: on torch's kernels that is
plain ``nn.Linear`` autograd, to the bit.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from aecore_fastcpu import private

__all__ = ["ACTIVATIONS", "Plan", "forward_keeping", "gradients_by_hand", "onednn_pays", "plan", "worth_it"]

#: Activations fused into a product (oneDNN's names for them).
ACTIVATIONS = ("relu", "sigmoid", "tanh")

#: Products smaller than MIN_MULTIPLY_ADDS (rows·in·out), or with a side under MIN_SIDE, stay
#: with torch: oneDNN costs about 15 µs more per call, so below 4-5 million multiply-adds MKL's
#: slower kernel still finishes first (measured per layer on an AMD EPYC at 2 threads).
MIN_MULTIPLY_ADDS = 5_000_000
MIN_SIDE = 32
#: Without a per-layer autograd node to pay for, forward and input-gradient products break even
#: lower: 2 million, measured on the ``simple`` model's step. A weight gradient keeps the higher
#: bar: oneDNN first needs a transposed copy of the gradient.
MIN_MULTIPLY_ADDS_IN_RUN = 2_000_000

#: Per layer: (weight position, bias position or None in the flat tensor list, activation or None,
#: oneDNN for the forward and input-gradient products, oneDNN for the weight-gradient product).
Plan = tuple[tuple[int, int | None, str | None, bool, bool], ...]

_REQUIRES_GRAD = operator.attrgetter("requires_grad")


def onednn_pays() -> bool:
    """Whether this CPU has AVX-512, where oneDNN's products beat MKL's (as torch reports the CPU)."""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")
    return capability().startswith("AVX512")


def worth_it(rows: int, weight: Tensor, least: int = MIN_MULTIPLY_ADDS) -> bool:
    """Whether a product of ``rows`` rows with this weight gains from oneDNN."""
    return rows > 0 and rows * weight.numel() >= least and min(weight.shape) >= MIN_SIDE


def plan(rows: int, layers: Sequence[tuple[Tensor, Tensor | None, str | None]], onednn: bool) -> Plan:
    """Which kernels each ``(weight, bias, activation)`` layer uses for ``rows`` rows.

    The flat tensor list the other functions take holds each weight, then its bias if it has one.
    """
    steps, k = [], 0
    for weight, bias, act in layers:
        forward = onednn and worth_it(rows, weight, MIN_MULTIPLY_ADDS_IN_RUN)
        steps.append((k, None if bias is None else k + 1, act, forward, onednn and worth_it(rows, weight)))
        k += 1 if bias is None else 2
    return tuple(steps)


@functools.lru_cache(maxsize=256)
def _wanted_upstream(plan: Plan, needs: tuple[bool, ...]) -> tuple[bool, ...]:
    """Per layer: whether an earlier layer's tensors need a gradient (else the backward pass stops there)."""
    upstream, wanted = [], False
    for w_at, b_at, *_ in plan:
        upstream.append(wanted)
        wanted = wanted or needs[w_at] or (b_at is not None and needs[b_at])
    return tuple(upstream)


@functools.cache
def _activation_backwards() -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    return {name: private.activation_backward(name) for name in ACTIVATIONS}


def _forward_layer(h: Tensor, weight: Tensor, bias: Tensor | None, act: str | None, onednn: bool) -> Tensor:
    if onednn:
        return private.linear_pointwise()(h, weight, bias, act or "none", [], "")
    out = torch.addmm(bias, h, weight.t()) if bias is not None else h.mm(weight.t())
    if act == "relu":
        return out.relu_()
    if act is not None:
        return out.sigmoid_() if act == "sigmoid" else out.tanh_()
    return out


def forward_keeping(x: Tensor, plan: Plan, tensors: Sequence[Tensor]) -> list[Tensor]:
    """Each layer's output on 2-D ``x``, the last one the run's: what :func:`gradients_by_hand` needs.

    ``tensors`` holds each layer's weight, then its bias if it has one. Call it under ``torch.no_grad()``.
    """
    outputs: list[Tensor] = []
    h = x
    for w_at, b_at, act, onednn, _ in plan:
        h = _forward_layer(h, tensors[w_at], None if b_at is None else tensors[b_at], act, onednn)
        outputs.append(h)
    return outputs


def gradients_by_hand(
    grad: Tensor, x: Tensor, plan: Plan, tensors: Sequence[Tensor], outputs: Sequence[Tensor]
) -> list[Tensor | None]:
    """Each tensor's gradient given the gradient of the run's output; None where none is required.

    ``outputs`` come from :func:`forward_keeping` on the same ``x``, which needs no gradient. The
    backward pass stops after the earliest layer whose tensors need one. Call it under ``torch.no_grad()``.
    """
    needs = tuple(map(_REQUIRES_GRAD, tensors))
    upstream = _wanted_upstream(plan, needs)
    backwards = _activation_backwards()
    grads: list[Tensor | None] = [None] * len(tensors)
    g = grad
    for i in range(len(plan) - 1, -1, -1):
        w_at, b_at, act, onednn, onednn_weight_grad = plan[i]
        inp = outputs[i - 1] if i else x
        if act is not None:
            g = backwards[act](g, outputs[i])
        if needs[w_at]:
            grads[w_at] = _matmul(g.t(), inp, onednn_weight_grad)
        if b_at is not None and needs[b_at]:
            grads[b_at] = g.sum(0)
        if not upstream[i]:
            break
        g = _matmul(g, tensors[w_at], onednn)
    return grads


def _matmul(a: Tensor, b: Tensor, onednn: bool) -> Tensor:
    """``a @ b``: ``a.mm(b)`` on torch's kernels, or oneDNN's linear of ``a`` with the weight ``b.t()``."""
    if onednn:
        return private.linear_pointwise()(a, b.t(), None, "none", [], "")
    return a.mm(b)
