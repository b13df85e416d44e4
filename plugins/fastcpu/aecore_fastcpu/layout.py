"""Channels-last memory order for convolutional models on CPU.

oneDNN's convolution kernels work in channels-last (NHWC) order. Given
torch's default NCHW tensors, each convolution reorders its input, weight
and gradients to that order and back on every call. Converting the model's
4-D weights once makes every 2-D convolution choose channels-last itself,
so its activations and gradients come out in that order and the reorders
go. Values are unchanged: checkpoints are written contiguous as always, and
a layer's result differs from NCHW only by float rounding.

Normalisation layers are the exception. torch's channels-last batch norm on
CPU reduces over the batch in float32 in an order that loses precision: its
gradients differ from a float64 reference about four orders of magnitude
more than the NCHW kernel's, which in a deep model reaches percent-level
errors in the first layers. ``auto`` therefore leaves a model with any
normalisation layer in NCHW.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["Layout", "has_convolutions", "has_normalisation", "to_channels_last", "wants_channels_last"]

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


def wants_channels_last(model: nn.Module, choice: Layout) -> bool:
    """``always``: any model with convolutions; ``auto``: those without normalisation, where oneDNN runs."""
    if choice == "never" or not has_convolutions(model):
        return False
    if choice == "always":
        return True
    return torch.backends.mkldnn.is_available() and not has_normalisation(model)


def to_channels_last(model: nn.Module) -> None:
    """Every 4-D parameter and buffer of ``model`` in channels-last order, in place (the same objects)."""
    model.to(memory_format=torch.channels_last)
