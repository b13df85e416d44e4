"""Optional base classes for plugin authors.

Conforming to the protocols is enough; these bases only fill in the
boring parts (identity transforms, storing the config and shapes).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "Activation", "ImageComponent", "RegularizerBase", "activation"]

Activation = Literal["relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid", "none"]
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "none": nn.Identity,
}


def activation(name: str) -> nn.Module:
    """A fresh activation module by its config name."""
    return ACTIVATIONS[name]()


class ImageComponent(nn.Module):
    """Base for encoders and decoders: keeps ``config``, ``input_shape`` and ``latent_dim``."""

    def __init__(self, config: Any, *, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.config = config
        self.input_shape = tuple(int(s) for s in input_shape)
        self.latent_dim = int(latent_dim)


class RegularizerBase(nn.Module):
    """Base for regularizers: identity transforms and a zero penalty by default."""

    def __init__(self, config: Any, *, latent_dim: int) -> None:
        super().__init__()
        self.config = config
        self.latent_dim = int(latent_dim)

    def transform_input(self, x: Tensor) -> Tensor:
        return x

    def transform_code(self, z: Tensor) -> Tensor:
        return z

    def penalty(self, x: Tensor, z: Tensor, recon: Tensor, model: nn.Module) -> Tensor:
        return torch.zeros((), device=z.device, dtype=z.dtype)
