"""Channels-last memory order for convolutional models on CPU.

oneDNN's convolution kernels work in channels-last (NHWC) order. Given
torch's default NCHW tensors, each convolution reorders its input, weight
and gradients to that order and back on every call. Converting the model's
4-D weights once makes every 2-D convolution choose channels-last itself,
so its activations and gradients come out in that order and the reorders
go. Values are unchanged: checkpoints are written contiguous as always, and
a layer's result differs from NCHW only by float rounding.

Normalisation layers need care. torch's channels-last batch norm on CPU
sums the batch statistics in float32 in an order that loses precision: its
gradients differ from a float64 reference far more than the NCHW kernel's,
which in a deep model reaches percent-level errors in the first layers. The
backend routes plain ``BatchNorm2d`` layers through
:mod:`aecore_fastcpu.norm`, which computes those statistics as exactly as
the NCHW kernel does; ``auto`` puts a model in channels-last order when
every normalisation layer it holds is such a layer, and leaves one with any
other kind (group, instance, layer norm...) in NCHW.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from aecore_fastcpu.norm import routes_batch_norm

__all__ = [
    "Layout",
    "has_convolutions",
    "has_normalisation",
    "has_unrouted_normalisation",
    "to_channels_last",
    "wants_channels_last",
]

Layout = Literal["auto", "always", "never"]

_CONVOLUTIONS = (nn.Conv2d, nn.ConvTranspose2d)
# Public classes only (torch's common base of them is private); the lazy ones subclass none of the rest.
_NORMALISATIONS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LazyInstanceNorm1d,
    nn.LazyInstanceNorm2d,
    nn.LazyInstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def has_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` holds a 2-D convolution or transposed convolution."""
    return any(isinstance(m, _CONVOLUTIONS) for m in model.modules())


def has_normalisation(model: nn.Module) -> bool:
    """Whether ``model`` holds a batch, instance, group, layer or local response norm."""
    return any(isinstance(m, _NORMALISATIONS) for m in model.modules())


def has_unrouted_normalisation(model: nn.Module) -> bool:
    """Whether ``model`` holds a normalisation layer other than a plain ``BatchNorm2d``."""
    return any(isinstance(m, _NORMALISATIONS) and not routes_batch_norm(m) for m in model.modules())


def wants_channels_last(model: nn.Module, choice: Layout, *, batch_norm_routed: bool = True) -> bool:
    """``always``: any model with convolutions; ``auto``: those, where oneDNN runs, whose only norms are
    plain batch norms (no norms at all when ``batch_norm_routed`` is False)."""
    if choice == "never" or not has_convolutions(model):
        return False
    if choice == "always":
        return True
    unsafe = has_unrouted_normalisation(model) if batch_norm_routed else has_normalisation(model)
    return torch.backends.mkldnn.is_available() and not unsafe


def to_channels_last(model: nn.Module) -> None:
    """Every 4-D parameter and buffer of ``model`` in channels-last order, in place (the same objects)."""
    model.to(memory_format=torch.channels_last)
