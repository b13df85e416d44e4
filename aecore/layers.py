"""A faster CPU path for Linear layers, with the same weights and the same maths.

Why this exists: on CPU, ``torch.nn.Linear`` runs its float32 matrix
products through MKL's ``sgemm``. On CPUs MKL does not tune for (AMD's,
for one) that is its AVX2 code path, while the oneDNN library that ships
inside the same torch wheel picks its kernels from the CPU's instruction
set and uses AVX-512 where present. For the reference models' shapes
oneDNN measured about twice as fast on the AMD EPYC this project is
benchmarked on (docs/performance.md). oneDNN also applies an activation
to the product's output while it is still in cache, which saves one pass
over the activations forward and one backward.

:func:`linear` is ``act(F.linear(x, weight, bias))`` and :class:`Linear` is an
``nn.Linear`` that calls it (same parameters, same state dict, same
checkpoints). Every case the fast path does not handle falls back to torch:
other devices and dtypes, autocast, ``torch.compile`` tracing, ``torch.func``
transforms, tensor subclasses and empty batches. Gradients of gradients
(``create_graph=True``, as the contractive penalty needs) are supported.

The backend is chosen once per process: ``AECORE_LINEAR_BACKEND`` set to
``torch`` or ``onednn`` forces one, and ``auto`` (the default) uses oneDNN
where this torch build has it and a self-check on first use agrees with
torch. The choice is a rule, not a timing, so two runs on one machine do
the same arithmetic (resumed runs stay bit-identical).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._C import _functorch

__all__ = ["BACKENDS", "FUSED_ACTIVATIONS", "Linear", "linear", "linear_backend", "set_linear_backend"]

#: Accepted values of ``AECORE_LINEAR_BACKEND`` and :func:`set_linear_backend`.
BACKENDS = ("auto", "torch", "onednn")
ENV_VAR = "AECORE_LINEAR_BACKEND"

#: Activations :func:`linear` can apply inside the product: each one's
#: function, and its derivative written in terms of its output y.
_ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    "relu": (torch.relu, lambda grad, y: torch.ops.aten.threshold_backward(grad, y, 0)),
    "sigmoid": (torch.sigmoid, torch.ops.aten.sigmoid_backward),
    "tanh": (torch.tanh, torch.ops.aten.tanh_backward),
}
FUSED_ACTIVATIONS = tuple(_ACTIVATIONS)

#: Products smaller than MIN_MULTIPLY_ADDS (rows·in·out), or with a side under
#: MIN_SIDE, stay with torch: oneDNN's fixed cost per call outweighs its gain there.
MIN_MULTIPLY_ADDS = 1_000_000
MIN_SIDE = 32

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
    return "onednn" if _onednn_enabled() else "torch"


def _onednn_op():
    return torch.ops.mkldnn._linear_pointwise


def _self_check() -> str | None:
    """None if oneDNN's linear runs here and matches torch, activations included; else why not."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    try:
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=gen) for s in ((5, 7), (3, 7), (3,)))
        expected = F.linear(x, w, b)
        ok = torch.allclose(_onednn_op()(x, w, b, "none", [], ""), expected, atol=1e-5)
        for name, (act, _) in _ACTIVATIONS.items():
            ok = ok and torch.allclose(_onednn_op()(x, w, b, name, [], ""), act(expected), atol=1e-5)
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        return f"oneDNN's linear failed its self-check: {exc}"
    return None if ok else "oneDNN's linear disagreed with torch in its self-check"


def _onednn_enabled() -> bool:
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


def _is_plain_float32(t: Tensor) -> bool:
    """A dense CPU float32 tensor, not a subclass, not wrapped by vmap or grad transforms."""
    return (
        type(t) in _PLAIN_TYPES
        and t.dtype == torch.float32
        and t.device.type == "cpu"
        and t.layout == torch.strided
        and not _functorch.is_functorch_wrapped_tensor(t)
        and not _functorch.is_legacy_batchedtensor(t)  # autograd.grad(..., is_grads_batched=True)
    )


def _worth_it(x: Tensor, weight: Tensor) -> bool:
    """Whether a product this size gains from oneDNN: a rule of shapes only, so runs repeat exactly."""
    n = x.numel()
    return n > 0 and n * weight.shape[0] >= MIN_MULTIPLY_ADDS and min(weight.shape) >= MIN_SIDE


def _takes_fast_path(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    return (
        weight.dim() == 2
        and _worth_it(x, weight)
        and _is_plain_float32(x)
        and _is_plain_float32(weight)
        and (bias is None or _is_plain_float32(bias))
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch._C._are_functorch_transforms_active()
        and _onednn_enabled()
    )


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> Tensor:
    if x.dim() == 2:
        return _onednn_op()(x, weight, bias, activation, [], "")
    out = _onednn_op()(x.reshape(-1, x.shape[-1]), weight, bias, activation, [], "")
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
            grad = _ACTIVATIONS[ctx.activation][1](grad, saved_y[0])
        grad2 = grad.reshape(-1, grad.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        if not torch.is_grad_enabled() and _is_plain_float32(grad2):
            # The usual backward: straight to the kernels (for ∂W oneDNN copies Gᵀ to make it contiguous).
            op = _onednn_op()
            grad_x = op(grad2, weight.t(), None, "none", [], "").view(x.shape) if need_x else None
            grad_w = op(grad2.t(), x2.t(), None, "none", [], "") if need_w else None
        else:
            # create_graph=True or batched gradients: torch ops, which record their own derivatives.
            grad_x = grad.matmul(weight) if need_x else None
            grad_w = grad2.t().mm(x2) if need_w else None
        grad_b = grad2.sum(0) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """``act(F.linear(x, weight, bias))``, through oneDNN for CPU float32 where that is faster.

    ``activation`` is ``None`` or one of :data:`FUSED_ACTIVATIONS`.
    """
    if activation is not None and activation not in _ACTIVATIONS:
        raise ValueError(f"linear() fuses {', '.join(FUSED_ACTIVATIONS)} or None, not {activation!r}")
    if not _takes_fast_path(x, weight, bias):
        out = F.linear(x, weight, bias)
        return out if activation is None else _ACTIVATIONS[activation][0](out)
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


#: Activation modules :class:`Sequential` folds into a preceding :class:`Linear`.
_FUSABLE_MODULES: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


class Sequential(nn.Sequential):
    """``nn.Sequential`` that runs each :class:`Linear` and the ReLU, Sigmoid or Tanh after it as one call.

    The modules, their order and the state dict are exactly ``nn.Sequential``'s;
    only the forward pass changes. A pair is left unfused when either module
    carries forward hooks (``ae features`` hooks every layer), so hooks always
    see what they would see in ``nn.Sequential``.
    """

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - nn.Sequential's own argument name
        modules = list(self._modules.values())
        hooks = nn.modules.module
        global_hooks = bool(hooks._global_forward_hooks or hooks._global_forward_pre_hooks)
        h, i = input, 0
        while i < len(modules):
            module = modules[i]
            nxt = modules[i + 1] if i + 1 < len(modules) else None
            fused = _FUSABLE_MODULES.get(type(nxt)) if type(module) is Linear else None
            if fused is not None and not (global_hooks or _hooked(module) or _hooked(nxt)):
                h = linear(h, module.weight, module.bias, fused)
                i += 2
            else:
                h = module(h)
                i += 1
        return h
