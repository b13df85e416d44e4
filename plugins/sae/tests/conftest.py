"""Every test gets a private data cache, and a small synthetic dataset is at hand."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("AECORE_CACHE_DIR", str(tmp_path_factory.mktemp("aecore-cache")))


@pytest.fixture(scope="session")
def features():
    """sparse-features with 64 true directions in 16 dimensions, 2 active per sample on average."""
    from aecore_sae.synthetic import SparseFeatures, SparseFeaturesConfig

    config = SparseFeaturesConfig(features=64, dim=16, l0=2.0, rows=2000, test_rows=500, seed=1)
    return SparseFeatures(config).load(None, data_dir=None, normalisation=None)
