"""Convolutional encoder and decoder for C×H×W images.

Each entry of ``channels`` is one stage: a stride-2 convolution going down
(halving height and width) and a transposed convolution coming up. A linear
layer joins the last feature map to a flat code of ``latent_dim``. Output
padding is chosen per stage from the input size, so odd sizes (28→14→7→4)
come back exactly. Works for 1×28×28 (MNIST) and 3×32×32 (CIFAR) alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from aecore.components import Activation, ImageComponent, activation
from aecore.config import param
from aecore.errors import ShapeError

__all__ = ["ConvDecoder", "ConvDecoderConfig", "ConvEncoder", "ConvEncoderConfig", "stage_sizes"]

_STRIDE = 2


def _check(channels: tuple[int, ...], kernel_size: int) -> None:
    if not channels or any(c <= 0 for c in channels):
        raise ValueError(f"channels must be a non-empty list of positive widths, got {channels}")
    if kernel_size < 2:
        raise ValueError(f"kernel_size must be at least 2, got {kernel_size}")


@dataclass(frozen=True)
class ConvEncoderConfig:
    channels: tuple[int, ...] = param((32, 64), "Output channels of each stride-2 stage.")
    kernel_size: int = param(3, "Convolution kernel size.")
    activation: Activation = param("relu", "Activation after each convolution.")
    batch_norm: bool = param(False, "BatchNorm2d after each convolution.")

    def __post_init__(self) -> None:
        _check(self.channels, self.kernel_size)


@dataclass(frozen=True)
class ConvDecoderConfig:
    channels: tuple[int, ...] = param((32, 64), "Channels of each stage, listed from the image side (mirrored).")
    kernel_size: int = param(3, "Transposed convolution kernel size.")
    activation: Activation = param("relu", "Activation after each hidden layer.")
    batch_norm: bool = param(False, "BatchNorm2d after each hidden transposed convolution.")
    output_activation: Literal["sigmoid", "tanh", "none"] = param("sigmoid", "Activation on the output image.")

    def __post_init__(self) -> None:
        _check(self.channels, self.kernel_size)


def _image_shape(input_shape: tuple[int, ...], who: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ShapeError(
            f"the {who} needs images shaped C×H×W, got inputs of shape {input_shape}; "
            "use an mlp encoder and decoder for flat or tabular data."
        )
    c, h, w = input_shape
    return c, h, w


def stage_sizes(size: int, stages: int, kernel_size: int) -> list[int]:
    """Spatial size before each stage and after the last: [28, 14, 7] for two stages."""
    pad = kernel_size // 2
    sizes = [size]
    for _ in range(stages):
        sizes.append((sizes[-1] + 2 * pad - kernel_size) // _STRIDE + 1)
    return sizes


def _plan(input_shape: tuple[int, ...], channels: tuple[int, ...], kernel_size: int, who: str):
    c, h, w = _image_shape(input_shape, who)
    hs = stage_sizes(h, len(channels), kernel_size)
    ws = stage_sizes(w, len(channels), kernel_size)
    if min(hs[-1], ws[-1]) < 1 or min(hs[-2], ws[-2]) < kernel_size // 2 + 1:
        raise ShapeError(
            f"a {h}×{w} image is too small for {len(channels)} stride-2 stages of kernel {kernel_size}; "
            "use fewer entries in channels (e.g. --set encoder.channels=32)."
        )
    return c, hs, ws


class ConvEncoder(ImageComponent):
    """Stride-2 convolutions, then a linear layer to a flat code."""

    Config = ConvEncoderConfig

    def __init__(self, config: ConvEncoderConfig, *, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__(config, input_shape=input_shape, latent_dim=latent_dim)
        c, hs, ws = _plan(self.input_shape, config.channels, config.kernel_size, "conv encoder")
        layers: list[nn.Module] = []
        for c_in, c_out in zip((c, *config.channels[:-1]), config.channels):
            layers.append(nn.Conv2d(c_in, c_out, config.kernel_size, _STRIDE, config.kernel_size // 2))
            layers.append(activation(config.activation))
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
        flat = config.channels[-1] * hs[-1] * ws[-1]
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, latent_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(ImageComponent):
    """A linear layer to the smallest feature map, then stride-2 transposed convolutions."""

    Config = ConvDecoderConfig

    def __init__(self, config: ConvDecoderConfig, *, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__(config, input_shape=input_shape, latent_dim=latent_dim)
        c, hs, ws = _plan(self.input_shape, config.channels, config.kernel_size, "conv decoder")
        k, pad = config.kernel_size, config.kernel_size // 2
        top = config.channels[-1]
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, top * hs[-1] * ws[-1]),
            activation(config.activation),
            nn.Unflatten(1, (top, hs[-1], ws[-1])),
        ]
        outs = (c, *config.channels[:-1])
        for i in reversed(range(len(config.channels))):
            c_in, c_out = config.channels[i], outs[i]
            pad_h = hs[i] - ((hs[i + 1] - 1) * _STRIDE - 2 * pad + k)
            pad_w = ws[i] - ((ws[i + 1] - 1) * _STRIDE - 2 * pad + k)
            layers.append(nn.ConvTranspose2d(c_in, c_out, k, _STRIDE, pad, output_padding=(pad_h, pad_w)))
            if i > 0:
                layers.append(activation(config.activation))
                if config.batch_norm:
                    layers.append(nn.BatchNorm2d(c_out))
        layers.append(activation(config.output_activation))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
