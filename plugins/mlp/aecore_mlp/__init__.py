"""Fully connected encoder and decoder for aecore.

The decoder mirrors the encoder: both list hidden widths from the data side,
so the same ``hidden`` gives a symmetric network. With the right parameters
these express the reference models exactly, for example::

    fc-400-20  --latent-dim 20 --set encoder.hidden=400
    simple     --latent-dim 64 --set encoder.hidden=256,128 --set encoder.code_activation=relu
    deep       --latent-dim 32 --set encoder.hidden=512,256,128 --set encoder.code_activation=relu
               --set encoder.batch_norm=true --set encoder.dropout=0.2
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

from torch import Tensor, nn

from aecore.components import Activation, ImageComponent, activation
from aecore.config import param
from aecore.errors import ConfigError

__all__ = ["HiddenBlock", "MLPDecoder", "MLPDecoderConfig", "MLPEncoder", "MLPEncoderConfig"]


def _check(hidden: Sequence[int], dropout: float) -> None:
    if any(h <= 0 for h in hidden):
        raise ValueError(f"hidden widths must be positive, got {tuple(hidden)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


@dataclass(frozen=True)
class MLPEncoderConfig:
    hidden: tuple[int, ...] = param((512, 256), "Hidden layer widths from the input side.")
    activation: Activation = param("relu", "Activation after each hidden layer.")
    code_activation: Activation = param("none", "Activation on the code ('none' gives a linear code).")
    batch_norm: bool = param(False, "BatchNorm1d after each hidden activation.")
    dropout: float = param(0.0, "Dropout after each hidden layer (0 disables).")
    residual: bool = param(
        False, "Residual skips h + f(h) around hidden layers (projected where widths differ)."
    )

    def __post_init__(self) -> None:
        _check(self.hidden, self.dropout)


@dataclass(frozen=True)
class MLPDecoderConfig:
    hidden: tuple[int, ...] = param((512, 256), "Hidden widths from the data side; used in reverse (mirror).")
    activation: Activation = param("relu", "Activation after each hidden layer.")
    batch_norm: bool = param(False, "BatchNorm1d after each hidden activation.")
    dropout: float = param(0.0, "Dropout after each hidden layer (0 disables).")
    residual: bool = param(
        False, "Residual skips h + f(h) around hidden layers (projected where widths differ)."
    )
    output_activation: Literal["sigmoid", "tanh", "none"] = param(
        "sigmoid", "Output activation: sigmoid for [0,1] data, tanh for [-1,1], none for standardised data."
    )

    def __post_init__(self) -> None:
        _check(self.hidden, self.dropout)


class HiddenBlock(nn.Module):
    """Linear → activation → [BatchNorm1d] → [Dropout], with an optional residual skip.

    With ``residual``, the block computes f(h) + h, projecting h with a
    bias-free Linear layer where the widths differ.
    """

    def __init__(
        self, width_in: int, width_out: int, act: str, batch_norm: bool, dropout: float, residual: bool
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(width_in, width_out), activation(act)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(width_out))
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*layers)
        self.skip: nn.Module | None = None
        if residual:
            self.skip = nn.Identity() if width_in == width_out else nn.Linear(width_in, width_out, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        out = self.body(h)
        return out if self.skip is None else out + self.skip(h)


def _stack(
    part: str, config: MLPEncoderConfig | MLPDecoderConfig, net: nn.Sequential, tail: slice
) -> list[tuple[nn.Linear, nn.Module]]:
    """The (Linear, activation) pairs of ``net`` in forward order; ``tail`` picks the last pair."""
    if config.residual:
        raise ConfigError(
            f"the mlp {part}'s layers cannot be trained one at a time with residual blocks "
            f"({part}.residual=true): a skip adds each block's input to its output, so the stacked layers "
            f"would not compute what each layer learned alone; set {part}.residual=false"
        )
    if config.batch_norm:
        raise ConfigError(
            f"the mlp {part}'s layers cannot be trained one at a time with batch norm "
            f"({part}.batch_norm=true): untrained BatchNorm between them would rescale what each layer "
            f"learned alone; set {part}.batch_norm=false"
        )
    pairs = [(b.body[0], b.body[1]) for b in net if isinstance(b, HiddenBlock)]
    last = list(net)[tail]
    return [*pairs, (last[0], last[1])]


def _hidden_blocks(widths: Sequence[int], config: MLPEncoderConfig | MLPDecoderConfig) -> list[nn.Module]:
    return [
        HiddenBlock(a, b, config.activation, config.batch_norm, config.dropout, config.residual)
        for a, b in pairwise(widths)
    ]


class MLPEncoder(ImageComponent):
    """Flatten, hidden Linear blocks, then a Linear layer to the code."""

    Config = MLPEncoderConfig

    def __init__(self, config: MLPEncoderConfig, *, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__(config, input_shape=input_shape, latent_dim=latent_dim)
        widths = (math.prod(self.input_shape), *config.hidden)
        self.net = nn.Sequential(
            nn.Flatten(),
            *_hidden_blocks(widths, config),
            nn.Linear(widths[-1], latent_dim),
            activation(config.code_activation),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def layer_stack(self) -> list[tuple[nn.Linear, nn.Module]]:
        """Its Linear layers, each with the activation after it, from the input side: for layer-wise
        pretraining (aecore's optional ``layer_stack`` protocol). Dropout is left out (no weights)."""
        return _stack("encoder", self.config, self.net, slice(-2, None))


class MLPDecoder(ImageComponent):
    """The encoder's mirror: hidden Linear blocks in reverse, then the output layer."""

    Config = MLPDecoderConfig

    def __init__(self, config: MLPDecoderConfig, *, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__(config, input_shape=input_shape, latent_dim=latent_dim)
        widths = (latent_dim, *reversed(config.hidden))
        self.net = nn.Sequential(
            *_hidden_blocks(widths, config),
            nn.Linear(widths[-1], math.prod(self.input_shape)),
            activation(config.output_activation),
            nn.Unflatten(1, self.input_shape),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)

    def layer_stack(self) -> list[tuple[nn.Linear, nn.Module]]:
        """Its Linear layers, each with the activation after it, from the code side (aecore's optional
        ``layer_stack`` protocol, as the encoder's)."""
        return _stack("decoder", self.config, self.net, slice(-3, -1))
