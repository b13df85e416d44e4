"""Small helpers of the aecore-analysis tests (import as ``from analysis_helpers import ...``)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
from PIL import Image

TILE = 28 + 2  # an MNIST image plus torchvision's default padding
#: The data of the apply tests (anomaly, denoise, probe): 4,000 training and 500 test images.
APPLY_DATA = "small?train=4000&test=500"


def one_line_error(result, *fragments: str, code: int = 2) -> str:
    """Assert a CLI failure printed exactly one 'error: ...' line on stderr, no traceback; returns it."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exception  # an exit, not a crash
    lines = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def ok(result) -> str:
    """Assert a CLI command succeeded; returns its stdout."""
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def table_rows(text: str) -> list[list[str]]:
    """The cells of each row of a Rich table printed as text."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells:
            rows.append(cells)
    return rows


def read_csv(path: Path | str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def png_size(path: Path | str) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()
        return image.size


def png(path: Path | str) -> np.ndarray:
    """The PNG as an (H, W) uint8 array (grids are grey, saved as RGB)."""
    with Image.open(path) as img:
        img.load()
        arr = np.asarray(img.convert("RGB"))
    return arr[:, :, 0]
