"""Fixtures of the aecore-fastcpu tests: a private cache, fresh probes, models, data."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch

from aecore.composition import compose
from aecore.data import Dataset
from aecore.model import Autoencoder
from aecore_fastcpu import probes


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the plugin-status record and dataset caches out of the user's home."""
    previous = os.environ.get("AECORE_CACHE_DIR")
    os.environ["AECORE_CACHE_DIR"] = str(tmp_path_factory.mktemp("aecore-cache"))
    yield
    if previous is None:
        os.environ.pop("AECORE_CACHE_DIR", None)
    else:
        os.environ["AECORE_CACHE_DIR"] = previous


@pytest.fixture(autouse=True)
def _fresh_probes() -> Iterator[None]:
    """Tests that break torch on purpose must not leave their probe results behind."""
    yield
    probes.clear()


def _mlp(
    *regularizers: str, encoder: dict | None = None, decoder: dict | None = None, shape=(1, 6, 6), latent=4
) -> Autoencoder:
    torch.manual_seed(0)
    params = {
        "encoder": {"hidden": [16, 8], "code_activation": "relu", **(encoder or {})},
        "decoder": decoder or {},
    }
    return compose("mlp", "mlp", regularizers, input_shape=shape, latent_dim=latent, params=params)


@pytest.fixture
def make_mlp() -> Callable[..., Autoencoder]:
    """``make_mlp(*regularizers, encoder={...}, decoder={...})``: a small seeded aecore-mlp model
    on 1×6×6 inputs (hidden 16, 8; latent 4; ReLU code, sigmoid output)."""
    return _mlp


@pytest.fixture
def simple() -> Autoencoder:
    """The ``simple`` preset's model: 784→256→128→64, ReLU everywhere, a sigmoid output (seeded)."""
    torch.manual_seed(0)
    params = {"encoder": {"hidden": [256, 128], "code_activation": "relu"}}
    return compose("mlp", params=params, input_shape=(1, 28, 28), latent_dim=64)


@pytest.fixture(scope="session")
def tiny_data() -> Dataset:
    """1,000 training and 200 test images of the embedded MNIST sample."""
    from aecore.data import TensorData
    from aecore.sources import load_dataset

    full = load_dataset("embedded")
    train, test = full.train.subset(torch.arange(1000)), full.test.subset(torch.arange(200))
    assert isinstance(train, TensorData)
    return Dataset("tiny", train, test, {"name": "tiny"})
