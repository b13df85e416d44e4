"""aecore's pytest plugin: the conformance kit's pieces as fixtures, for any project's tests.

It is installed with aecore (the ``pytest11`` entry point ``aecore``), so
pytest loads it in every session in the environment, aecore's or not: it
imports nothing heavy (no torch) until a fixture is used.

* ``ae_one_thread``: one torch intra-op thread for the session, restored at
  its end (``AECORE_TEST_THREADS`` sets another count). Tiny models on a
  shared machine run many times slower when several threads fight over the
  cores. Apply it to every test with ``usefixtures = ["ae_one_thread"]``
  under ``[tool.pytest.ini_options]``.
* ``ae_tiny_dataset``: :func:`aecore.testing.tiny_dataset`, built once.
* ``ae_run_dir``: a fresh, empty directory in ``tmp_path`` to pass as ``out=``.
* ``ae_registry``: ``ae_registry.register(kind, name, obj)`` adds a plugin
  in-process (:func:`aecore.registry.register`) until the test ends.

It also declares the ``slow`` marker, which aecore's own plugins use.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from aecore.data import Dataset
    from aecore.registry import PluginInfo

__all__ = ["THREADS_ENV", "RegistryHelper"]

#: The torch thread count ``ae_one_thread`` sets (default 1).
THREADS_ENV = "AECORE_TEST_THREADS"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: trains for real (seconds, not minutes)")


@pytest.fixture(scope="session")
def ae_one_thread() -> Iterator[None]:
    """One torch intra-op thread (``AECORE_TEST_THREADS`` overrides) for the session."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get(THREADS_ENV, "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ae_tiny_dataset() -> Dataset:
    """The small synthetic image set the conformance kit trains on (64 train, 16 test, 1×8×8)."""
    from aecore.testing import tiny_dataset

    return tiny_dataset()


@pytest.fixture
def ae_run_dir(tmp_path: Path) -> Path:
    """A fresh, empty run directory for ``out=``."""
    path = tmp_path / "ae-run"
    path.mkdir()
    return path


class RegistryHelper:
    """Registers plugins in-process for one test; the ``ae_registry`` fixture removes them after it."""

    def __init__(self) -> None:
        self.added: list[PluginInfo] = []

    def register(
        self, kind: str, name: str, obj: Any, *, dist: str = "local", version: str = "0"
    ) -> PluginInfo:
        """:func:`aecore.registry.register`, undone at teardown; returns the plugin's metadata."""
        from aecore import registry

        info = registry.register(kind, name, obj, dist=dist, version=version)
        self.added.append(info)
        return info

    def close(self) -> None:
        """Unregister everything this helper registered (what the test removed itself is skipped)."""
        from aecore import registry

        while self.added:
            with contextlib.suppress(LookupError):
                registry.unregister(self.added.pop())


@pytest.fixture
def ae_registry() -> Iterator[RegistryHelper]:
    """A :class:`RegistryHelper`, with a fresh registry scan before and after the test."""
    from aecore import registry

    registry.refresh()
    helper = RegistryHelper()
    try:
        yield helper
    finally:
        helper.close()
        registry.refresh()
