"""One Linear layer, optionally with its activation, through oneDNN where that is faster."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from aecore.layers import backend
from aecore.layers.backend import ACTIVATIONS, FUSED_ACTIVATIONS
from aecore.layers.run import apply_run

__all__ = ["Linear", "linear"]


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
    tensors = [weight] if bias is None else [weight, bias]
    return apply_run(x, ((activation, bias is not None, True, True),), tensors)  # a run of one layer


class Linear(nn.Linear):
    """``nn.Linear`` with :func:`linear`'s faster CPU path; parameters and state dict are unchanged."""

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - nn.Linear's own argument name
        return linear(input, self.weight, self.bias)
