"""Writing small image trees with Pillow, for the image source tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def save(path: Path, pixels: np.ndarray, **options) -> Path:
    """Write a (H, W) or (H, W, C) uint8 array as an image file, its format from the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, **options)
    return path


def noise(seed: int, shape: tuple[int, ...] = (28, 28)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def tree(root: Path, layout: dict[str, int], shape: tuple[int, ...] = (8, 8), ext: str = "png") -> dict:
    """``layout`` maps a folder inside ``root`` ('' for root itself) to a number of noise images.

    Returns {relative path: pixels}.
    """
    written = {}
    seed = 0
    for folder, count in layout.items():
        for i in range(count):
            name = f"{folder}/{i:03d}.{ext}" if folder else f"{i:03d}.{ext}"
            pixels = noise(seed, shape)
            seed += 1
            save(root / name, pixels)
            written[name] = pixels
    return written


def truncated_png(path: Path, shape: tuple[int, int] = (28, 28)) -> Path:
    """A PNG whose header is intact but whose image data is cut short."""
    save(path, noise(99, shape))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
