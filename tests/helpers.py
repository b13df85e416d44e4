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


def one_line_error(result, *fragments: str, code: int = 2) -> str:
    """Assert a CLI failure printed exactly one 'error: ...' line on stderr, no traceback; returns it."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exception  # an exit, not a crash
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def ok(result) -> str:
    """Assert a CLI command succeeded; returns its stdout."""
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout
