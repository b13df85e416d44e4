"""Which products go through oneDNN: the backend switch, its self-check and the size rule.

Everything here is a rule of the process's settings and the tensors'
shapes, never a timing, so two runs on one machine do the same arithmetic
(resumed runs stay bit-identical).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._C import _functorch

__all__ = ["BACKENDS", "ENV_VAR", "FUSED_ACTIVATIONS", "linear_backend", "set_linear_backend"]

#: Accepted values of ``AECORE_LINEAR_BACKEND`` and :func:`set_linear_backend`.
BACKENDS = ("auto", "torch", "onednn")
ENV_VAR = "AECORE_LINEAR_BACKEND"

#: Products smaller than MIN_MULTIPLY_ADDS (rows·in·out), or with a side under MIN_SIDE,
#: stay with torch. oneDNN costs about 15 µs more per call here, so below roughly
#: 4-5 million multiply-adds MKL's slower kernel still finishes first (measured
#: per layer, forward and backward, on the reference AMD EPYC at 2 threads).
MIN_MULTIPLY_ADDS = 5_000_000
MIN_SIDE = 32
#: Inside a fused run of layers there is no per-layer autograd node to pay for, so the
#: break-even is lower: 2 million, measured on the ``simple`` model's training step. A weight
#: gradient keeps the higher bar even there: oneDNN first needs a transposed copy of the
#: gradient, so at 128×256×128 MKL's product was ahead (56 against 62-72 µs).
MIN_MULTIPLY_ADDS_IN_RUN = 2_000_000

#: Activations fused into a product: each one's function, and its derivative
#: written in terms of its output y (so only the output needs keeping).
ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    "relu": (torch.relu, lambda grad, y: torch.ops.aten.threshold_backward(grad, y, 0)),
    "sigmoid": (torch.sigmoid, torch.ops.aten.sigmoid_backward),
    "tanh": (torch.tanh, torch.ops.aten.tanh_backward),
}
FUSED_ACTIVATIONS = tuple(ACTIVATIONS)

_requested: str | None = None  # None: read the environment on first use
_use_onednn: bool | None = None  # the resolved choice, cached


def set_linear_backend(name: str) -> None:
    """Choose ``auto``, ``torch`` or ``onednn`` for this process (overrides ``AECORE_LINEAR_BACKEND``)."""
    global _requested, _use_onednn
    if name not in BACKENDS:
        raise ValueError(f"unknown linear backend {name!r}; choose one of {', '.join(BACKENDS)}")
    _requested, _use_onednn = name, None


def linear_backend() -> str:
    """The backend large CPU float32 products use in this process: ``onednn`` or ``torch``."""
    return "onednn" if onednn_enabled() else "torch"


def onednn_op() -> Callable[..., Tensor]:
    """oneDNN's dense linear kernel: ``op(x, weight, bias, activation, [], "")``."""
    return torch.ops.mkldnn._linear_pointwise


def _self_check() -> str | None:
    """None if oneDNN's linear runs here and matches torch, activations included; else why not."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    try:
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=gen) for s in ((5, 7), (3, 7), (3,)))
        expected = F.linear(x, w, b)
        ok = torch.allclose(onednn_op()(x, w, b, "none", [], ""), expected, atol=1e-5)
        for name, (act, _) in ACTIVATIONS.items():
            ok = ok and torch.allclose(onednn_op()(x, w, b, name, [], ""), act(expected), atol=1e-5)
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        return f"oneDNN's linear failed its self-check: {exc}"
    return None if ok else "oneDNN's linear disagreed with torch in its self-check"


def onednn_enabled() -> bool:
    """Whether this process uses oneDNN at all (resolved once, then cached)."""
    global _use_onednn
    if _use_onednn is None:
        requested = _requested or os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if requested not in BACKENDS:
            warnings.warn(
                f"{ENV_VAR}={requested!r} is not one of {', '.join(BACKENDS)}; using auto.", stacklevel=3
            )
            requested = "auto"
        problem = None if requested == "torch" else _self_check()
        if requested == "onednn" and problem:
            warnings.warn(f"{ENV_VAR}=onednn: {problem}; using torch's linear.", stacklevel=3)
        _use_onednn = requested != "torch" and problem is None
    return _use_onednn


_PLAIN_TYPES = (Tensor, nn.Parameter)


def is_plain_parameter(t: Tensor) -> bool:
    """A dense CPU float32 tensor or parameter, not a subclass.

    Enough for weights and biases: parameters are never vmap-wrapped outside a
    ``torch.func`` transform, and :func:`plain_context` rules those out.
    """
    return type(t) in _PLAIN_TYPES and t.dtype == torch.float32 and t.is_cpu and t.layout == torch.strided


def is_plain_float32(t: Tensor) -> bool:
    """A plain parameter-like tensor that is also not wrapped by vmap or grad transforms."""
    return (
        is_plain_parameter(t)
        and not _functorch.is_functorch_wrapped_tensor(t)
        and not _functorch.is_legacy_batchedtensor(t)  # autograd.grad(..., is_grads_batched=True)
    )


def plain_context() -> bool:
    """No autocast, tracing or ``torch.func`` transform is active, and oneDNN is on."""
    return (
        not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch._C._are_functorch_transforms_active()
        and onednn_enabled()
    )


def worth_it(rows: int, weight: Tensor, in_run: bool = False) -> bool:
    """Whether a product of ``rows`` rows with this weight gains from oneDNN."""
    least = MIN_MULTIPLY_ADDS_IN_RUN if in_run else MIN_MULTIPLY_ADDS
    return rows > 0 and rows * weight.numel() >= least and min(weight.shape) >= MIN_SIDE


def hooked(module: nn.Module) -> bool:
    """Whether a module has forward hooks of its own, which fusing it would skip."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def global_hooks() -> bool:
    """Whether forward hooks are registered for every module (``register_module_forward_hook``)."""
    hooks = nn.modules.module
    return bool(hooks._global_forward_hooks or hooks._global_forward_pre_hooks)
