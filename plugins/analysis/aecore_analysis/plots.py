"""Figures and image grids: matplotlib (headless) for plots, torchvision for grids.

Both are imported on first use so the CLI's start-up stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


def figure(**kwargs: Any) -> tuple[Any, Any]:
    """A new matplotlib figure and axes on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(**kwargs)


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Save and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def save_grid(images: Tensor, path: Path, nrow: int, padding: int = 2) -> Path:
    """Save a batch of images in [0, 1], shaped (N, C, H, W), as one PNG grid.

    Flat data (N, D) with a square D is shown as square greyscale images.
    """
    import math

    from torchvision.utils import save_image

    if images.dim() == 2:
        side = math.isqrt(images.shape[1])
        if side * side != images.shape[1]:
            raise ValueError(f"cannot show {images.shape[1]}-dimensional rows as images")
        images = images.reshape(-1, 1, side, side)
    save_image(images.detach().float().clamp(0, 1).cpu(), path, nrow=nrow, padding=padding)
    return path
