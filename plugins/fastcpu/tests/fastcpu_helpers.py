"""Hand-written components for the aecore-fastcpu tests: plain torch, composed as a plugin would."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aecore.model import Autoencoder, ComponentSpec, ModelSpec

__all__ = ["Flattening", "Reshaping", "wrap"]


def wrap(encoder: nn.Module, decoder: nn.Module, shape=(1, 4, 4), latent=3) -> Autoencoder:
    """Hand-written components in an Autoencoder, as a plugin would compose them."""
    component = ComponentSpec("handmade", "tests", "0", {})
    return Autoencoder(encoder, decoder, {}, ModelSpec(shape, latent, component, component))


class Flattening(nn.Module):
    """An encoder written with a method reshape: ``x.flatten(1)`` then Linear and Tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 3, bias=False)
        self.act = nn.Tanh()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.lin(x.flatten(1)))


class Reshaping(nn.Module):
    """A decoder ending in a function reshape with constant arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 16)
        self.out = nn.Sigmoid()
        self.keep = nn.Identity()

    def forward(self, z: Tensor) -> Tensor:
        return torch.reshape(self.keep(self.out(self.lin(z))), (-1, 1, 4, 4))
