"""Figures and image grids: matplotlib (headless) for plots, torchvision for pixel-exact grids.

Images are ``(C, H, W)`` with 1 channel (drawn grey) or 3 (drawn in colour),
of any height and width. Both libraries are imported on first use so the
CLI's start-up stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["figure", "image_array", "save_figure", "save_grid", "show_image"]


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


def _check_images(images: Tensor, what: str) -> None:
    """Internal callers pass images only; anything else is a bug, not a user's mistake."""
    if images.dim() != len(what) or images.shape[-3] not in (1, 3):
        raise ValueError(f"expected images shaped {what} with 1 or 3 channels, got {tuple(images.shape)}")


def save_grid(images: Tensor, path: Path, nrow: int, padding: int = 2) -> Path:
    """Save a batch of images in [0, 1], shaped (N, C, H, W), as one PNG grid.

    torchvision writes every pixel as it is (no resampling), so a tile of the
    grid is the image itself: 1-channel images come out grey, 3-channel ones
    in colour.
    """
    from torchvision.utils import save_image

    _check_images(images, "NCHW")
    save_image(images.detach().float().clamp(0, 1).cpu(), path, nrow=nrow, padding=padding)
    return path


def image_array(image: Tensor) -> Any:
    """An image (C, H, W) in [0, 1] as what ``imshow`` takes: (H, W) for grey, (H, W, 3) for colour."""
    _check_images(image, "CHW")
    img = image.detach().float().cpu().clamp(0, 1)
    return (img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)).numpy()


def show_image(ax: Any, image: Tensor) -> Any:
    """Draw an image (C, H, W) in [0, 1] on ``ax``: grey colormap for 1 channel, colour for 3."""
    array = image_array(image)
    cmap = "gray" if array.ndim == 2 else None
    shown = ax.imshow(array, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return shown
