"""What each layer of an encoder computes for an input: per-layer activations and conv feature maps.

Works for any encoder plugin: forward hooks go on every leaf module, and a
layer is kept when it outputs a batch of vectors ``(N, F)`` or of feature maps
``(N, C, H, W)`` and actually changes its input (a Flatten, an Identity or an
eval-mode Dropout only passes values on, so it would show the same thing
twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "LayerActivation",
    "collect_activations",
    "feature_map_grid",
    "plot_activation_rows",
    "plot_feature_maps",
]


@dataclass
class LayerActivation:
    """One layer's output: its module path inside the encoder, its type and the values."""

    name: str
    kind: str
    output: Tensor  # (N, F) or (N, C, H, W), float32 on the CPU

    @property
    def is_map(self) -> bool:
        return self.output.dim() == 4

    def describe(self) -> str:
        return f"{self.name} ({self.kind}, {'×'.join(map(str, self.output.shape[1:]))})"


@torch.no_grad()
def collect_activations(module: nn.Module, x: Tensor) -> list[LayerActivation]:
    """Run ``x`` through ``module`` (eval mode) and return its leaf layers' outputs in call order."""
    snapshots: dict[int, Tensor | None] = {}
    found: list[LayerActivation] = []
    handles = []
    names = {id(m): n for n, m in module.named_modules()}
    calls: dict[str, int] = {}

    def before(mod: nn.Module, args: tuple[Any, ...]) -> None:
        first = args[0] if args else None
        # Cloned now: an in-place activation would otherwise change the input we compare against.
        snapshots[id(mod)] = first.detach().clone() if isinstance(first, Tensor) else None

    def after(mod: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not isinstance(output, Tensor) or output.dim() not in (2, 4):
            return
        seen = snapshots.pop(id(mod), None)
        if (
            seen is not None
            and seen.numel() == output.numel()
            and torch.equal(seen.flatten(), output.flatten())
        ):
            return  # passes values on unchanged
        name = names.get(id(mod), type(mod).__name__) or type(mod).__name__
        calls[name] = calls.get(name, 0) + 1
        label = name if calls[name] == 1 else f"{name}#{calls[name]}"
        found.append(LayerActivation(label, type(mod).__name__, output.detach().float().cpu().clone()))

    for sub in module.modules():
        if next(sub.children(), None) is None and sub is not module:
            handles.append(sub.register_forward_pre_hook(before))
            handles.append(sub.register_forward_hook(after))
    was_training = module.training
    module.eval()
    try:
        module(x)
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    return found


def feature_map_grid(maps: Tensor, nrow: int | None = None, padding: int = 1) -> Tensor:
    """One sample's feature maps (C, H, W) as one image grid (3, H', W'), up to 16 per row, each in [0, 1].

    Each channel gets its own range so weak and strong channels are both visible.
    """
    from torchvision.utils import make_grid

    c = maps.shape[0]
    flat = maps.reshape(c, -1)
    low = flat.min(1).values.reshape(c, 1, 1)
    span = (flat.max(1).values.reshape(c, 1, 1) - low).clamp(min=1e-12)
    scaled = ((maps - low) / span).unsqueeze(1)
    nrow = nrow or min(c, 16)
    return make_grid(scaled, nrow=nrow, padding=padding, pad_value=1.0)


def plot_activation_rows(
    layers: list[LayerActivation], image: Tensor | None, path: Path, title: str = ""
) -> Path:
    """One heat row per layer for sample 0: the input, then each layer's units left to right.

    An input shaped ``(C, H, W)`` with 1 or 3 channels (values in [0, 1]) is
    drawn as a picture, grey or in colour; any other input (a table row) as a
    heat row of its values, like the layers. Feature-map layers are
    summarised by the mean activation of each channel. Each row has its own
    colour scale; the row's range and the fraction of the layer's values
    that are non-zero are written beside it.
    """
    from aecore_analysis.latent import is_image_shape
    from aecore_analysis.plots import figure, save_figure, show_image

    rows = len(layers) + (1 if image is not None else 0)
    fig, axes = figure(nrows=rows, ncols=1, figsize=(8, 0.3 + 0.62 * rows), squeeze=False)
    axes = axes[:, 0]
    offset = 0
    if image is not None:
        ax = axes[0]
        if is_image_shape(tuple(image.shape)):
            show_image(ax, image)
            ax.axis("off")
        else:
            _heat_row(ax, image.detach().float().cpu().reshape(-1), "input", "values", None)
        ax.set_title(title or "input", fontsize=8, loc="left")
        offset = 1
    for ax, layer in zip(axes[offset:], layers, strict=True):
        values = layer.output[0]
        row = values.mean(dim=(1, 2)) if layer.is_map else values
        active = float((values != 0).float().mean())  # over every value, not the channel means
        summary = "channel means" if layer.is_map else "units"
        _heat_row(ax, row.reshape(-1), layer.describe().replace(" (", "\n("), summary, active)
    return save_figure(fig, path, dpi=100)


def _heat_row(ax: Any, row: Tensor, label: str, summary: str, active: float | None) -> None:
    """``row`` as one strip of colour (viridis, its own range), labelled on the left, summarised right."""
    values = row.reshape(1, -1).numpy()
    ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks([])
    ax.set_xticks([])
    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    text = f"{summary}\n[{values.min():.2g}, {values.max():.2g}]"
    if active is not None:
        text += f"\n{active:.0%} non-zero"
    ax.text(1.01, 0.5, text, transform=ax.transAxes, fontsize=6, va="center")


def plot_feature_maps(layers: list[LayerActivation], path: Path) -> Path:
    """Every channel of every feature-map layer for sample 0, one panel per layer."""
    from aecore_analysis.plots import figure, save_figure

    maps = [layer for layer in layers if layer.is_map]
    if not maps:
        raise ValueError("no feature-map layers to draw")
    grids = [feature_map_grid(layer.output[0]) for layer in maps]
    width = 7.0
    heights = [max(0.6, width * g.shape[1] / g.shape[2]) + 0.3 for g in grids]
    fig, axes = figure(
        nrows=len(maps),
        ncols=1,
        figsize=(width, sum(heights)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for ax, layer, grid in zip(axes[:, 0], maps, grids, strict=True):
        ax.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(layer.describe(), fontsize=8, loc="left")
        ax.axis("off")
    return save_figure(fig, path, dpi=100)
