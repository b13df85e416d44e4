"""Convolutional encoder and decoder for images of any C×H×W.

Each entry of ``channels`` is one encoder stage that halves height and width,
either with a stride-2 convolution or with a stride-1 convolution and a 2×2
max-pool; ``collapse`` turns the last stage into a valid convolution as large
as its input (7×7 → 1×1, 5×3 → 1×1). The code is either flat (a linear layer
to ``latent_dim``) or spatial (the last feature map itself, flattened).

Odd and non-square sizes round-trip exactly without padding the image or
cropping the output: the encoder lets each stage round as its layer does
(a stride-2 convolution rounds up, 17 → 9; a max-pool rounds down, 17 → 8),
and the decoder recomputes those sizes from the same settings and climbs
back stage by stage, giving each up-stage the exact size it must reach (the
padding and output padding of a transposed convolution, or the target size
of a bilinear upsampling). Height and width are planned separately, so
40×24 → 20×12 → 10×6 works like 32×32. The code's size therefore follows
from the image, never from a fixed 28×28 or one channel.

An image too small for its stages is refused when the model is composed, by
one :class:`~aecore.errors.ShapeError` naming the smallest image that works
(:func:`min_image_size`) and how many stages the given one allows: each
halving stage must shrink its input, so it needs at least 2 pixels a side
(3 for a stride-2 convolution with an even kernel, which pads by ``k//2`` and
turns 2 into 2). By parameters alone this expresses the reference models;
see :mod:`aecore_conv.presets`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from aecore.components import Activation, ImageComponent, activation
from aecore.config import param
from aecore.errors import ShapeError

__all__ = [
    "ConvDecoder",
    "ConvDecoderConfig",
    "ConvEncoder",
    "ConvEncoderConfig",
    "min_image_size",
    "same_conv",
    "stage_sizes",
    "transpose_padding",
]

Downsample = Literal["stride", "pool"]
Latent = Literal["flat", "spatial"]

_STRIDE = 2


def _check(channels: tuple[int, ...], kernel_size: int) -> None:
    if not channels or any(c <= 0 for c in channels):
        raise ValueError(f"channels must be a non-empty list of positive widths, got {channels}")
    if kernel_size < 2:
        raise ValueError(f"kernel_size must be at least 2, got {kernel_size}")


# Shared by encoder and decoder under the same names, so a counterpart decoder mirrors them.
_CHANNELS = "Output channels of each encoder stage, from the image side (the decoder mirrors them)."
_KERNEL = "Convolution kernel size (a decoder set to 2 with pool exactly inverts the 2×2 max-pool)."
_BATCH_NORM = "BatchNorm2d after each hidden stage's activation (Conv, act, BN)."
_DOWNSAMPLE = "stride: stride-2 convolution; pool: stride-1 'same' convolution, then MaxPool2d(2)."
_COLLAPSE = "Last stage is a valid convolution as large as its input map (e.g. 7×7 → 1×1), not a halving."
_LATENT = "flat: a Linear layer to --latent-dim; spatial: the last feature map is the code (no Linear)."


@dataclass(frozen=True)
class ConvEncoderConfig:
    channels: tuple[int, ...] = param((32, 64), _CHANNELS)
    kernel_size: int = param(3, _KERNEL)
    activation: Activation = param("relu", "Activation after each convolution.")
    batch_norm: bool = param(False, _BATCH_NORM)
    downsample: Downsample = param("stride", _DOWNSAMPLE)
    collapse: bool = param(False, _COLLAPSE)
    latent: Latent = param("flat", _LATENT)

    def __post_init__(self) -> None:
        _check(self.channels, self.kernel_size)


@dataclass(frozen=True)
class ConvDecoderConfig:
    channels: tuple[int, ...] = param((32, 64), _CHANNELS)
    kernel_size: int = param(3, _KERNEL)
    activation: Activation = param("relu", "Activation after each hidden layer.")
    batch_norm: bool = param(False, _BATCH_NORM)
    downsample: Downsample = param("stride", "How the encoder halved the image (its sizes are mirrored).")
    collapse: bool = param(False, _COLLAPSE)
    latent: Latent = param("flat", _LATENT)
    upsample: Literal["transpose", "upsample"] = param(
        "transpose",
        "transpose: stride-2 ConvTranspose2d; upsample: bilinear Upsample + conv (no checkerboard).",
    )
    head: Literal["stage", "conv"] = param(
        "stage",
        "stage: the last up-stage makes the image; conv: up-stages keep widths, then a stride-1 conv.",
    )
    output_activation: Literal["sigmoid", "tanh", "none"] = param("sigmoid", "Activation of the image.")

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


def _halve(size: int, kernel_size: int, downsample: str) -> int:
    """The side a halving stage gives.

    A max-pool floors (17 → 8); a stride-2 conv padded by ``k//2`` gives ⌈s/2⌉
    for an odd kernel (17 → 9) and s//2 + 1 for an even one (16 → 9).
    """
    if downsample == "pool":
        return size // 2
    return (size + 2 * (kernel_size // 2) - kernel_size) // _STRIDE + 1


def _least_halved(kernel_size: int, downsample: str) -> int:
    """The smallest side a halving stage shrinks (an even-kernel stride-2 conv keeps 2 at 2)."""
    return 3 if downsample == "stride" and kernel_size % 2 == 0 else 2


def stage_sizes(
    size: int, stages: int, kernel_size: int, downsample: str = "stride", collapse: bool = False
) -> list[int]:
    """Spatial size before each stage and after the last: [28, 14, 7] for two stages."""
    sizes = [size]
    for i in range(stages):
        last = collapse and i == stages - 1
        sizes.append(1 if last else _halve(sizes[-1], kernel_size, downsample))
    return sizes


def min_image_size(
    stages: int, kernel_size: int = 3, downsample: str = "stride", collapse: bool = False
) -> int:
    """The smallest height (and width) that ``stages`` encoder stages accept.

    Every halving stage must shrink its input, so with a stride-2 conv of
    kernel 3, three stages need 5 (5 → 3 → 2 → 1) and three max-pools need 8;
    a collapsing last stage takes any size, so it adds nothing.
    """
    halvings = stages - 1 if collapse else stages
    if halvings <= 0:
        return 1
    least = _least_halved(kernel_size, downsample)
    # Walk back from what the last halving stage must get: s // 2 >= t needs s >= 2t for a
    # max-pool; (s + 2*(k//2) - k) // 2 + 1 >= t needs s >= 2t - 2 + k % 2 for a stride-2 conv.
    slack = 0 if downsample == "pool" else kernel_size % 2 - 2
    need = least
    for _ in range(halvings - 1):
        need = max(least, 2 * need + slack)
    return need


def _stages_that_fit(size: int, kernel_size: int, downsample: str) -> int:
    """How many halving stages a side of ``size`` takes, each still shrinking its input."""
    least, count = _least_halved(kernel_size, downsample), 0
    while size >= least:
        size, count = _halve(size, kernel_size, downsample), count + 1
    return count


def transpose_padding(src: int, dst: int, kernel_size: int) -> tuple[int, int]:
    """(padding, output_padding) of a stride-2 transposed conv taking ``src`` to exactly ``dst``.

    The smallest padding that works: ``k//2`` undoes a stride-2 conv, 0 takes 3 → 7 with k3.
    """
    need = dst - (_STRIDE * (src - 1) + kernel_size)  # = output_padding - 2 * padding
    pad = max(0, -(need // 2))
    return pad, need + 2 * pad


def same_conv(c_in: int, c_out: int, kernel_size: int) -> nn.Module:
    """A stride-1 convolution that keeps height and width (explicit padding: no warning for even kernels)."""
    if kernel_size % 2:
        return nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2)
    left = (kernel_size - 1) // 2
    pad = nn.ZeroPad2d((left, kernel_size - 1 - left) * 2)
    return nn.Sequential(pad, nn.Conv2d(c_in, c_out, kernel_size))


@dataclass(frozen=True)
class _Plan:
    channels: int
    hs: list[int]
    ws: list[int]

    def size(self, i: int) -> tuple[int, int]:
        return self.hs[i], self.ws[i]


def _plan(input_shape: tuple[int, ...], config: ConvEncoderConfig | ConvDecoderConfig, who: str) -> _Plan:
    c, h, w = _image_shape(input_shape, who)
    n, k, down = len(config.channels), config.kernel_size, config.downsample
    least = min_image_size(n, k, down, config.collapse)
    if min(h, w) < least:
        raise ShapeError(_too_small(h, w, least, config, who))
    hs, ws = (stage_sizes(s, n, k, down, config.collapse) for s in (h, w))
    return _Plan(c, hs, ws)


def _too_small(h: int, w: int, least: int, config: ConvEncoderConfig | ConvDecoderConfig, who: str) -> str:
    """One line: the smallest image these stages take, and how many stages this image takes."""
    part, k, down, ch = who.split()[-1], config.kernel_size, config.downsample, config.channels
    halvings = len(ch) - 1 if config.collapse else len(ch)
    kind = "max-pool" if down == "pool" else f"stride-2 (kernel {k})"
    entries = _stages_that_fit(min(h, w), k, down) + (1 if config.collapse else 0)
    if entries:
        widths = ",".join(map(str, ch[:entries]))
        fewer = f"at most {entries} channels entries (e.g. --set {part}.channels={widths})"
    else:
        fewer = f"one collapsing stage (--set {part}.channels={ch[0]} --set {part}.collapse=true)"
    return (
        f"a {h}×{w} image is too small for the {who}'s {halvings} {kind} halving "
        f"stage{'s' if halvings > 1 else ''}; use images of at least {least}×{least}, or {fewer}."
    )


def _spatial_code(plan: _Plan, channels: tuple[int, ...], latent_dim: int, who: str) -> tuple[int, int, int]:
    code = (channels[-1], plan.hs[-1], plan.ws[-1])
    if latent_dim != math.prod(code):
        raise ShapeError(
            f"the {who}'s spatial code is its last feature map, {'×'.join(map(str, code))} = "
            f"{math.prod(code)} values, but the latent size is {latent_dim}; pass --latent-dim "
            f"{math.prod(code)} (or --set {who.split()[-1]}.latent=flat for a Linear layer to any size)."
        )
    return code


class ConvEncoder(ImageComponent):
    """Halving conv stages (optionally a collapsing last one), then a flat or spatial code."""

    Config = ConvEncoderConfig

    def __init__(self, config: ConvEncoderConfig, *, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__(config, input_shape=input_shape, latent_dim=latent_dim)
        plan = _plan(self.input_shape, config, "conv encoder")
        k, n = config.kernel_size, len(config.channels)
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(
            zip((plan.channels, *config.channels[:-1]), config.channels, strict=True)
        ):
            full = config.collapse and i == n - 1
            if full:
                layers.append(nn.Conv2d(c_in, c_out, plan.size(i)))
            elif config.downsample == "pool":
                layers.append(same_conv(c_in, c_out, k))
            else:
                layers.append(nn.Conv2d(c_in, c_out, k, _STRIDE, k // 2))
            layers.append(activation(config.activation))
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            if config.downsample == "pool" and not full:
                layers.append(nn.MaxPool2d(2))
        layers.append(nn.Flatten())
        self.code_shape: tuple[int, int, int] | None = None
        if config.latent == "spatial":
            self.code_shape = _spatial_code(plan, config.channels, latent_dim, "conv encoder")
        else:
            layers.append(nn.Linear(config.channels[-1] * plan.hs[-1] * plan.ws[-1], latent_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(ImageComponent):
    """The encoder's sizes in reverse: from the code to the smallest map, then one up-stage per stage."""

    Config = ConvDecoderConfig

    def __init__(self, config: ConvDecoderConfig, *, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__(config, input_shape=input_shape, latent_dim=latent_dim)
        plan = _plan(self.input_shape, config, "conv decoder")
        ch, n = config.channels, len(config.channels)
        top = (ch[-1], plan.hs[-1], plan.ws[-1])
        self.code_shape: tuple[int, int, int] | None = None
        if config.latent == "spatial":
            self.code_shape = _spatial_code(plan, ch, latent_dim, "conv decoder")
            layers: list[nn.Module] = [nn.Unflatten(1, top)]
        else:
            layers = [
                nn.Linear(latent_dim, math.prod(top)),
                activation(config.activation),
                nn.Unflatten(1, top),
            ]
        # stage: widths step down to the image channels; conv: up-stage i outputs the encoder's width i.
        if config.head == "conv":
            ins, outs = (*ch[1:], ch[-1]), ch
        else:
            ins, outs = ch, (plan.channels, *ch[:-1])
        for i in reversed(range(n)):
            layers.append(self._up(ins[i], outs[i], plan, i, full=config.collapse and i == n - 1))
            if i > 0 or config.head == "conv":
                layers.append(activation(config.activation))
                if config.batch_norm:
                    layers.append(nn.BatchNorm2d(outs[i]))
        if config.head == "conv":
            layers.append(same_conv(ch[0], plan.channels, config.kernel_size))
        layers.append(activation(config.output_activation))
        self.net = nn.Sequential(*layers)

    def _up(self, c_in: int, c_out: int, plan: _Plan, i: int, *, full: bool) -> nn.Module:
        """Map stage i's output size back to its input size."""
        k, dst = self.config.kernel_size, plan.size(i)
        if full:  # the mirror of a collapsing conv; upsampling a 1×1 map would only copy it
            return nn.ConvTranspose2d(c_in, c_out, dst)
        if self.config.upsample == "upsample":
            return nn.Sequential(nn.Upsample(size=dst, mode="bilinear"), same_conv(c_in, c_out, k))
        (pad_h, out_h), (pad_w, out_w) = (
            transpose_padding(s, d, k) for s, d in zip(plan.size(i + 1), dst, strict=True)
        )
        return nn.ConvTranspose2d(c_in, c_out, k, _STRIDE, (pad_h, pad_w), output_padding=(out_h, out_w))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
