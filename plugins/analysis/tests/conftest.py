"""Fixtures of the aecore-analysis tests: private cache, named data, models trained once.

The commands reload a model's data by the name its checkpoint records, so
the small datasets here are real data sources: a throwaway distribution
(``aefake-analysis-data``) on ``sys.path`` publishes them in the
``aecore.datasets`` group, exactly as a data plugin would.

``small`` (``--data small?train=N&test=M&labels=false``)
    the first N training and M test images of the embedded MNIST sample
    (default 1,000 and 200), with or without labels;
``rows``
    100 rows of 10 features in [0, 1] (80 train, 20 test): not images;
``synthetic`` (``--data synthetic?channels=3&height=32&width=32&masks=true&names=true``)
    MVTec-like images: smooth colour fields (training images all "good"),
    and a test split of good images and images with bright defects (label 1
    "square", label 2 "stripe") whose masks are ``extras["mask"]``; the spec
    names the labels and says label 0 is normal.

``trained(name)`` trains one of the models in :data:`MODELS` the first time
it is asked for, and hands back its run directory after that.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from analysis_helpers import APPLY_DATA

from aecore import registry

DATA_MODULE = "aefake_analysis_data"
DATA_SOURCE = '''
"""Test data sources for aecore-analysis: cuts of the embedded sample, and a small table."""

from dataclasses import dataclass

import torch

from aecore.config import param
from aecore.data import UINT8_IMAGES, Dataset, TensorData
from aecore.sources import load_dataset


@dataclass(frozen=True)
class SmallConfig:
    train: int = param(1000, "Training images: the first N of the embedded sample.")
    test: int = param(200, "Test images: the first N.")
    labels: bool = param(True, "Keep the labels.")


class Small:
    """The first images of the embedded MNIST sample."""

    Config = SmallConfig

    def __init__(self, config):
        self.config = config

    def load(self, location, *, data_dir, normalisation):
        full = load_dataset("embedded")
        c = self.config

        def cut(split, n):
            part = split.subset(torch.arange(min(n, len(split))))
            return part if c.labels else TensorData(part.x, None, part.normalisation)

        return Dataset("small", cut(full.train, c.train), cut(full.test, c.test), {"name": "small"})


@dataclass(frozen=True)
class RowsConfig:
    """No options."""


class Rows:
    """100 seeded rows of 10 features in [0, 1]: tabular, not images."""

    Config = RowsConfig

    def __init__(self, config):
        self.config = config

    def load(self, location, *, data_dir, normalisation):
        g = torch.Generator().manual_seed(0)
        return Dataset(
            "rows",
            TensorData(torch.rand(80, 10, generator=g)),
            TensorData(torch.rand(20, 10, generator=g)),
            {"name": "rows"},
        )


@dataclass(frozen=True)
class SyntheticConfig:
    channels: int = param(3, "Channels: 1 or 3.")
    height: int = param(32, "Image height.")
    width: int = param(32, "Image width.")
    train: int = param(48, "Training images (all good).")
    test: int = param(24, "Test images: half good, then squares, then stripes.")
    masks: bool = param(True, "Attach the defect masks to the test split (extras['mask']).")
    names: bool = param(True, "Name the labels and declare label 0 normal in the spec.")


def _fields(n, c, h, w, generator):
    """Smooth colour fields in [0.15, 0.65]: a colour per image, a gentle gradient, a little noise."""
    colour = 0.2 + 0.3 * torch.rand(n, c, 1, 1, generator=generator)
    ramp = torch.linspace(-0.05, 0.05, w).reshape(1, 1, 1, w)
    noise = 0.02 * torch.rand(n, c, h, w, generator=generator)
    return colour + ramp + noise


def _as_uint8(images):
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


class Synthetic:
    """Seeded MVTec-like images with synthetic defects (bright squares and stripes) and their masks."""

    Config = SyntheticConfig

    def __init__(self, config):
        self.config = config

    def load(self, location, *, data_dir, normalisation):
        c = self.config
        g = torch.Generator().manual_seed(0)
        shape = (c.channels, c.height, c.width)
        train = _fields(c.train, *shape, g)
        test = _fields(c.test, *shape, g)
        labels = torch.zeros(c.test, dtype=torch.long)
        mask = torch.zeros(c.test, 1, c.height, c.width, dtype=torch.uint8)
        good = c.test // 2
        side = max(2, min(c.height, c.width) // 4)
        for i in range(good, c.test):
            kind = 1 if i < good + (c.test - good) // 2 else 2
            labels[i] = kind
            if kind == 1:
                top = int(torch.randint(0, c.height - side + 1, (1,), generator=g))
                left = int(torch.randint(0, c.width - side + 1, (1,), generator=g))
                mask[i, 0, top : top + side, left : left + side] = 1
            else:
                row = int(torch.randint(0, c.height - 2, (1,), generator=g))
                mask[i, 0, row : row + 2, :] = 1
        test = torch.where(mask.bool(), torch.tensor(1.0), test)
        extras = {"mask": mask} if c.masks else None
        spec = {"name": "synthetic"}
        if c.names:
            spec.update({"label_names": ["good", "square", "stripe"], "normal_classes": [0]})
        return Dataset(
            "synthetic",
            TensorData(_as_uint8(train), torch.zeros(c.train, dtype=torch.long), UINT8_IMAGES),
            TensorData(_as_uint8(test), labels, UINT8_IMAGES, extras=extras),
            spec,
        )
'''


#: Models the tests share, by name: ``aecore.train`` keywords (all on CPU, without progress).
MODELS: dict[str, dict[str, Any]] = {
    # small images (1,000 / 200): the visual and data commands
    "mlp": {"encoder": "mlp", "latent_dim": 8, "params": {"encoder": {"hidden": "32"}}, "epochs": 2},
    "mlp2": {"encoder": "mlp", "latent_dim": 2, "params": {"encoder": {"hidden": "16"}}, "epochs": 1},
    "conv": {"encoder": "conv", "latent_dim": 8, "params": {"encoder": {"channels": "4,8"}}, "epochs": 1},
    "vae": {
        "encoder": "mlp",
        "regularizers": ["variational"],
        "latent_dim": 4,
        "params": {"encoder": {"hidden": "16"}, "variational": {"weight": 1e-3}},
        "epochs": 1,
    },
    "rows": {
        "encoder": "mlp",
        "latent_dim": 3,
        "params": {"encoder": {"hidden": "8"}},
        "epochs": 1,
        "data": "rows",
    },
    # colour and non-square images (synthetic, MVTec-like): every visual command in colour, anomaly maps
    "rgb": {
        "encoder": "mlp",
        "latent_dim": 8,
        "params": {"encoder": {"hidden": "32"}},
        "epochs": 3,
        "lr": 3e-3,
        "batch_size": 16,
        "data": "synthetic",
    },
    "rgb_conv": {
        "encoder": "conv",
        "latent_dim": 8,
        "params": {"encoder": {"channels": "4,8"}},
        "epochs": 2,
        "batch_size": 16,
        "data": "synthetic?height=40&width=24",
    },
    # more images (4,000 / 500): the apply commands
    "general": {
        "encoder": "mlp",
        "latent_dim": 16,
        "params": {"encoder": {"hidden": "64"}},
        "epochs": 4,
        "lr": 3e-3,
        "data": APPLY_DATA,
    },
    "zero": {
        "encoder": "mlp",
        "latent_dim": 16,
        "params": {"encoder": {"hidden": "64"}},
        "epochs": 15,
        "lr": 3e-3,
        "classes": [0],
        "data": APPLY_DATA,
    },
    "denoising": {
        "encoder": "mlp",
        "regularizers": ["denoising"],
        "latent_dim": 16,
        "params": {"encoder": {"hidden": "64"}},
        "epochs": 4,
        "lr": 3e-3,
        "data": APPLY_DATA,
    },
}


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the plugin-status record and the prepared-data cache out of the user's home."""
    previous = os.environ.get("AECORE_CACHE_DIR")
    os.environ["AECORE_CACHE_DIR"] = str(tmp_path_factory.mktemp("aecore-cache"))
    yield
    if previous is None:
        os.environ.pop("AECORE_CACHE_DIR", None)
    else:
        os.environ["AECORE_CACHE_DIR"] = previous


@pytest.fixture(scope="session", autouse=True)
def _data_sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Install the test data sources as a distribution on ``sys.path`` for the whole session."""
    site = tmp_path_factory.mktemp("site")
    info = site / "aefake_analysis_data-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: aefake-analysis-data\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        f"[aecore.datasets]\nsmall = {DATA_MODULE}:Small\nrows = {DATA_MODULE}:Rows\n"
        f"synthetic = {DATA_MODULE}:Synthetic\n"
    )
    (site / f"{DATA_MODULE}.py").write_text(textwrap.dedent(DATA_SOURCE))
    sys.path.insert(0, str(site))
    registry.refresh()
    yield
    sys.path.remove(str(site))
    sys.modules.pop(DATA_MODULE, None)
    registry.refresh()


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``trained(name)``: the run directory of model ``name`` of :data:`MODELS`, trained on first use."""
    from aecore.training import train

    root = tmp_path_factory.mktemp("runs")
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            fields = {"data": "small", **MODELS[name]}
            if "variational" in fields.get("regularizers", ()) and "variational" not in registry.names(
                "regularizer"
            ):
                pytest.skip("the aecore-variational plugin is not installed")
            done[name] = train(**fields, device="cpu", progress=False, out=str(root / name)).run_dir
        return done[name]

    return get


@pytest.fixture(scope="session")
def small():
    """The ``small`` dataset as the commands load it (1,000 / 200 images)."""
    from aecore.sources import load_dataset

    return load_dataset("small")


@pytest.fixture(scope="session")
def apply_data():
    """The data of the apply tests (4,000 / 500 images)."""
    from aecore.sources import load_dataset

    return load_dataset(APPLY_DATA)


@pytest.fixture(scope="session")
def real_mnist_dir() -> Path:
    """The real MNIST copy ($AECORE_MNIST_DIR, else ../shared/data/mnist); skips loudly, fails on CI."""
    env = os.environ.get("AECORE_MNIST_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mnist"
    if not (path / "MNIST" / "raw").is_dir():
        reason = f"the real MNIST copy is not at {path}; set AECORE_MNIST_DIR to a folder holding MNIST/raw/"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must test the real data path: {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A CLI runner in a fresh folder (default outputs such as runs/sweep land there), 200 columns wide."""
    from typer.testing import CliRunner

    from aecore.cli import output as cli_output

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_output.rich_console(), "_width", 200)
    return CliRunner()
