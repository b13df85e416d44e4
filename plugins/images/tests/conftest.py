"""Every test gets a private dataset cache, and reads its files afresh unless it asks for the cache."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("AECORE_CACHE_DIR", str(tmp_path_factory.mktemp("aecore-cache")))
    monkeypatch.setenv("AECORE_NO_DATA_CACHE", "1")


@pytest.fixture
def cache(monkeypatch) -> None:
    """The dataset cache on (in the private cache folder)."""
    monkeypatch.delenv("AECORE_NO_DATA_CACHE", raising=False)


@pytest.fixture
def decodes(monkeypatch) -> list:
    """Every image file decoded from now on, in call order (the real decoder still runs)."""
    import aecore_images.decode as decode

    calls: list = []
    real = decode.decode_image

    def counting(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(decode, "decode_image", counting)
    monkeypatch.setattr(decode, "_can_fork", lambda: False)  # a forked worker's calls would not be seen
    return calls
