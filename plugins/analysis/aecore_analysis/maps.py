"""Anomaly heat maps: test images, their reconstructions and where the error is, side by side.

One row per chosen test image: the image, the reconstruction, the per-pixel
error (:func:`aecore_analysis.localisation.pixel_errors`, smoothed as it was
scored) drawn over the image as a heat map, and, when the data has masks,
the image with the ground-truth defect outlined (the outline is drawn on the
heat map too, so error and truth can be compared at a glance). All rows share
one colour scale, so a hot row is a badly reconstructed image, not a
rescaled one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from aecore.data import TensorData
from aecore.model import Autoencoder
from aecore_analysis.localisation import gaussian_blur, has_masks, mask_batch, pixel_errors

__all__ = ["plot_anomaly_maps", "select_examples"]


def _spread(indices: Tensor, count: int) -> list[int]:
    """Up to ``count`` of ``indices``, evenly spaced: the first, the last and between (all defect types)."""
    if count <= 0 or len(indices) == 0:
        return []
    if len(indices) <= count:
        return indices.tolist()
    picks = torch.linspace(0, len(indices) - 1, count).round().long()
    return indices[picks].tolist()


def select_examples(is_anomaly: Tensor | None, count: int, total: int) -> list[int]:
    """Test positions to draw: up to ``count`` normal then up to ``count`` anomalous ones.

    Each group is spread evenly over the test order (MVTec-style test sets
    are sorted by defect type, so the anomalous rows cover the types).
    Without labels of what is anomalous, up to ``count`` positions spread
    over the whole test split.
    """
    if is_anomaly is None:
        return _spread(torch.arange(total), count)
    normal = (~is_anomaly).nonzero().flatten()
    anomalous = is_anomaly.nonzero().flatten()
    return _spread(normal, count) + _spread(anomalous, count)


@torch.no_grad()
def plot_anomaly_maps(
    model: Autoencoder,
    data: TensorData,
    indices: Sequence[int],
    path: Path,
    *,
    captions: Sequence[str],
    smooth: float = 0.0,
    device: torch.device | str = "cpu",
) -> Path:
    """Draw the rows for test positions ``indices`` of ``data`` (images (C, H, W)) into one PNG.

    ``captions`` label the rows (one per index). The heat scale runs from 0
    to the 99th percentile of the errors shown, with a colour bar.
    """
    import numpy as np

    from aecore_analysis.latent import to_display
    from aecore_analysis.plots import figure, show_image

    if not indices or len(captions) != len(indices):
        raise ValueError("one caption per index, and at least one index")
    index = torch.as_tensor(list(indices), dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        x = data.batch(index).to(device)
        recon = model(x)
        errors = gaussian_blur(pixel_errors(x, recon), smooth).cpu()
    finally:
        model.train(was_training)
    masks = mask_batch(data, index) if has_masks(data) else None
    images, recons = to_display(x, data.normalisation), to_display(recon, data.normalisation)
    vmax = float(np.percentile(errors.numpy(), 99))
    vmax = vmax if vmax > 0 else float(errors.max()) or 1e-12

    _, h, w = images.shape[1:]
    cell = min(2.8, max(1.3, w / 64))
    columns = ["image", "reconstruction", "error" + (f" (σ = {smooth:g})" if smooth else ""), "ground truth"]
    columns = columns if masks is not None else columns[:3]
    rows = len(index)
    fig, axes = figure(
        nrows=rows,
        ncols=len(columns),
        figsize=(cell * len(columns) + 1.0, cell * h / w * rows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    heat = None
    for row in range(rows):
        ax_image, ax_recon, ax_heat = axes[row, :3]
        show_image(ax_image, images[row])
        ax_image.set_ylabel(captions[row], fontsize=7)
        show_image(ax_recon, recons[row])
        show_image(ax_heat, images[row])
        heat = ax_heat.imshow(
            errors[row].numpy(), cmap="jet", alpha=0.5, vmin=0.0, vmax=vmax, interpolation="nearest"
        )
        if masks is not None:
            ax_truth = axes[row, 3]
            show_image(ax_truth, images[row])
            if bool(masks[row].any()):
                for ax, colour in ((ax_heat, "white"), (ax_truth, "lime")):
                    ax.contour(masks[row].float().numpy(), levels=[0.5], colors=colour, linewidths=1.0)
    for ax, title in zip(axes[0], columns, strict=True):
        ax.set_title(title, fontsize=8)
    assert heat is not None
    bar = fig.colorbar(heat, ax=axes.ravel().tolist(), shrink=min(0.9, 3.0 / rows + 0.3), pad=0.02)
    if bar.solids is not None:
        bar.solids.set(alpha=1.0)  # the scale in full colour, not at the overlay's transparency
    bar.set_label("squared error per pixel", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    return _save(fig, path)


def _save(fig: object, path: Path) -> Path:
    """Save a figure laid out by matplotlib's constrained layout (no tight_layout on top) and close it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path
