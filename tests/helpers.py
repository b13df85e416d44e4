"""Small helpers shared by test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def table_rows(text: str) -> list[list[str]]:
    """The cells of each row of a Rich table printed as text."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells:
            rows.append(cells)
    return rows


def mnist_dir() -> Path:
    """The real MNIST copy: $AECORE_MNIST_DIR, else ../shared/data/mnist next to the repository."""
    env = os.environ.get("AECORE_MNIST_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "mnist"


def require_real_mnist() -> Path:
    """The real MNIST folder; skip with the reason when it is missing, but fail on CI."""
    path = mnist_dir()
    if not (path / "MNIST" / "raw").is_dir():
        reason = (
            f"the real MNIST copy is not at {path} (expected MNIST/raw/ inside it); "
            "set AECORE_MNIST_DIR to a folder holding MNIST/raw/"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must test the real data path: {reason}")
        pytest.skip(reason)
    return path
