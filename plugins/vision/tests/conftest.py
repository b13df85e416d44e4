"""Every test gets its own data root and a private dataset cache: nothing touches ~/.cache."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_roots(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("AECORE_CACHE_DIR", str(tmp_path_factory.mktemp("aecore-cache")))
    monkeypatch.setenv("AECORE_DATA_DIR", str(tmp_path_factory.mktemp("aecore-data")))
