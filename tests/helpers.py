"""Small helpers shared by test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import re


def table_rows(text: str) -> list[list[str]]:
    """The cells of each row of a Rich table printed as text."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells:
            rows.append(cells)
    return rows
