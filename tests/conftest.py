"""Shared fixtures: throwaway plugin distributions, a small dataset, registry hygiene."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from aecore import registry

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Every fake plugin module in these tests starts with this prefix, so teardown can forget them.
FAKE_PREFIX = "aefake_"

VALID_ENCODER = '''
import math
from dataclasses import dataclass

from torch import nn

from aecore.components import ImageComponent
from aecore.config import param


@dataclass(frozen=True)
class FakeConfig:
    scale: float = param(1.0, "Output scale.")
    width: int = param(4, "Unused width.")


class FakeEncoder(ImageComponent):
    """A linear encoder used only by the tests."""

    Config = FakeConfig
    TAG = "{tag}"

    def __init__(self, config, *, input_shape, latent_dim):
        super().__init__(config, input_shape=input_shape, latent_dim=latent_dim)
        self.lin = nn.Linear(math.prod(self.input_shape), latent_dim)

    def forward(self, x):
        return self.lin(x.flatten(1)) * self.config.scale
'''


def valid_encoder_source(tag: str = "") -> str:
    """Source of a module defining a valid encoder class ``FakeEncoder``."""
    return VALID_ENCODER.replace("{tag}", tag)


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the plugin-status record and other caches out of the user's home."""
    previous = os.environ.get("AECORE_CACHE_DIR")
    os.environ["AECORE_CACHE_DIR"] = str(tmp_path_factory.mktemp("aecore-cache"))
    yield
    if previous is None:
        os.environ.pop("AECORE_CACHE_DIR", None)
    else:
        os.environ["AECORE_CACHE_DIR"] = previous


@pytest.fixture
def encoder_source() -> Callable[[str], str]:
    """``encoder_source(tag)``: source of a module with a valid encoder class ``FakeEncoder``."""
    return valid_encoder_source


@pytest.fixture
def fresh_registry() -> Iterator[None]:
    """Forget the entry-point scan before and after the test."""
    registry.refresh()
    yield
    registry.refresh()


MakeDist = Callable[..., Path]


@pytest.fixture
def make_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None) -> Iterator[MakeDist]:
    """Create installed-looking distributions in a folder on ``sys.path``.

    ``make_dist("aefake-one", {"aecore.encoders": {"thing": "aefake_one:Thing"}},
    modules={"aefake_one": "source"})`` writes ``aefake_one-0.3.1.dist-info/`` with
    METADATA and entry_points.txt, plus the module files, and refreshes the registry.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def make(
        name: str,
        entry_points: Mapping[str, Mapping[str, str]],
        *,
        version: str = "0.3.1",
        modules: Mapping[str, str] | None = None,
    ) -> Path:
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = []
        for group, entries in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{ep} = {target}" for ep, target in entries.items()]
            lines.append("")
        (info / "entry_points.txt").write_text("\n".join(lines))
        for module, source in (modules or {}).items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
        registry.refresh()
        return info

    yield make
    for module in [m for m in sys.modules if m.startswith(FAKE_PREFIX)]:
        del sys.modules[module]


@pytest.fixture(scope="session")
def embedded():
    """The embedded MNIST subset (loaded once)."""
    from aecore.sources import load_dataset

    return load_dataset("embedded")


@pytest.fixture(scope="session")
def tiny_data(embedded):
    """1,000 training and 200 test images from the embedded set: trains in well under a second."""
    import torch

    from aecore.data import Dataset, TensorData

    train = embedded.train.subset(torch.arange(1000))
    test = embedded.test.subset(torch.arange(200))
    assert isinstance(train, TensorData)
    return Dataset("tiny", train, test, {"name": "tiny"})


@pytest.fixture(scope="session")
def real_mnist_dir() -> Path:
    """The real MNIST copy (../shared/data/mnist or $AECORE_MNIST_DIR); skips loudly, fails on CI."""
    from helpers import require_real_mnist

    return require_real_mnist()
