"""aecore's pytest plugin: its fixtures work in a project of their own, and loading it costs no torch."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

GENERATED = """
import pytest
import torch

from aecore import registry
from aecore.data import Dataset
from aecore.testing import LinearEncoder


def test_the_four_fixtures(ae_one_thread, ae_tiny_dataset, ae_run_dir, ae_registry):
    assert torch.get_num_threads() == 3  # AECORE_TEST_THREADS, set by the outer test
    assert isinstance(ae_tiny_dataset, Dataset)
    assert (len(ae_tiny_dataset.train), ae_tiny_dataset.train.shape) == (64, (1, 8, 8))
    assert ae_run_dir.is_dir() and not any(ae_run_dir.iterdir())
    info = ae_registry.register("encoder", "generated", LinearEncoder, dist="gen")
    assert registry.get("encoder", "generated") is LinearEncoder and info.qualified_name == "gen:generated"


def test_the_registration_was_undone():
    assert "generated" not in registry.names("encoder")


@pytest.mark.slow
def test_usefixtures_applies_the_one_thread_fixture_and_slow_is_known():
    assert torch.get_num_threads() == 3
"""


def test_a_project_of_its_own_gets_the_fixtures(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AECORE_TEST_THREADS", "3")
    pytester.makeini(
        "[pytest]\nusefixtures = ae_one_thread\naddopts = --strict-markers -p no:cacheprovider\n"
    )
    pytester.makepyfile(test_generated=GENERATED)
    result = pytester.runpytest()
    result.assert_outcomes(passed=3)


def test_the_plugin_restores_the_thread_count_after_its_session(pytester: pytest.Pytester, monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("AECORE_TEST_THREADS", str(before + 1))
    pytester.makepyfile(
        "def test_threads(ae_one_thread):\n    import torch\n    assert torch.get_num_threads() > 1\n"
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert torch.get_num_threads() == before


def test_importing_the_plugin_imports_no_torch():
    code = "import sys, aecore.pytest_plugin; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_plugin_is_declared_for_pytest():
    declared = {
        (ep.name, ep.value)
        for dist in importlib.metadata.distributions()
        for ep in dist.entry_points
        if ep.group == "pytest11"
    }
    assert ("aecore", "aecore.pytest_plugin") in declared


def test_ae_registry_registers_for_one_test(ae_registry):
    from aecore import registry

    def halved(recon, target):
        return ((recon - target) ** 2).mean() / 2

    ae_registry.register("loss", "halved-by-fixture", halved)
    assert registry.get("loss", "halved-by-fixture") is halved
    ae_registry.close()
    assert "halved-by-fixture" not in registry.names("loss")
