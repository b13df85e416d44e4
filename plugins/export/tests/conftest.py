"""Fixtures of the aecore-export tests: real inputs, a trained run, and a faster exporter.

``mnist`` is the first test images of the embedded MNIST sample as the model
sees them (float, ÷255); ``colour`` makes 3×32×32 images from them (padded,
each channel a shifted or inverted copy), so colour models see real
structure too. ``trained_run`` is one run directory trained for an epoch
through the Python API, shared by the CLI tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import aecore
from aecore.data import Dataset


@pytest.fixture(scope="session", autouse=True)
def one_translation_table() -> Iterator[None]:
    """Build the exporter's table of ONNX translations once per session instead of once per export.

    torch rebuilds it from onnxscript's sources on every export (more than half of a small export's
    time); without a custom translation table, which aecore-export never passes, it is the same table
    every time. This reaches into torch's private exporter: where that is missing the tests only run
    slower, and what they check is unchanged (every export is still run and compared).
    """
    try:
        from torch.onnx._internal.exporter import _registration

        original = _registration.ONNXRegistry.__dict__["from_torchlib"]
        build = original.__func__
    except (ImportError, AttributeError, KeyError):
        yield
        return
    tables: dict[tuple, object] = {}

    def from_torchlib(cls, *args, **kwargs):
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in tables:
            tables[key] = build(cls, *args, **kwargs)
        return tables[key]

    _registration.ONNXRegistry.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        _registration.ONNXRegistry.from_torchlib = original


@pytest.fixture(scope="session")
def mnist() -> torch.Tensor:
    """Sixteen real digits, (16, 1, 28, 28) float32 in [0, 1]: the embedded sample's test images."""
    test = aecore.load_dataset("embedded").test
    return test.batch(torch.arange(16))


@pytest.fixture(scope="session")
def colour(mnist: torch.Tensor) -> torch.Tensor:
    """(16, 3, 32, 32) colour images from real digits: padded to 32, then digit, shifted digit, inverse."""
    padded = torch.nn.functional.pad(mnist, (2, 2, 2, 2))
    return torch.cat([padded, padded.roll(3, dims=-1), 1 - padded], dim=1).contiguous()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory: a small mlp trained for one epoch on 2,000 digits of the embedded sample (÷255)."""
    full = aecore.load_dataset("embedded")
    cut = Dataset("embedded", full.train.subset(torch.arange(2000)), full.test.subset(torch.arange(200)))
    out = tmp_path_factory.mktemp("runs") / "mlp"
    result = aecore.train(
        encoder="mlp",
        data=cut,
        latent_dim=6,
        params={"encoder": {"hidden": (24,)}, "trainer": {"epochs": 1}},
        out=str(out),
        progress=False,
    )
    return result.run_dir
