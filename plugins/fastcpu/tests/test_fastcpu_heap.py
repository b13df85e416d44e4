"""keep_heap: the backend fixes glibc's malloc thresholds once, on CPU runs, unless told not to."""

from __future__ import annotations

import ctypes
import sys

import pytest
import torch

import aecore
from aecore_fastcpu import backend as backend_module
from aecore_fastcpu import heap
from aecore_fastcpu.backend import FastCPU, FastCPUConfig


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc(), reason="needs glibc")
def test_the_thresholds_are_set_once_on_glibc(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "_applied", None)
    real = heap._mallopt
    monkeypatch.setattr(heap, "_mallopt", lambda: calls.append(1) or real())
    assert heap.keep_freed_memory() is True
    assert heap.keep_freed_memory() is True
    assert calls == [1]


def test_without_glibc_nothing_is_asked(monkeypatch):
    monkeypatch.setattr(heap, "_applied", None)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert heap.keep_freed_memory() is False


@pytest.mark.parametrize(
    ("keep", "device", "expected"), [(True, "cpu", 1), (False, "cpu", 0), (True, "meta", 0)]
)
def test_prepare_applies_it_for_cpu_runs_when_asked(monkeypatch, keep, device, expected):
    calls = []
    monkeypatch.setattr(backend_module, "keep_freed_memory", lambda: calls.append(1) or True)
    model = aecore.compose("mlp", input_shape=(1, 4, 4), latent_dim=2)
    FastCPU(FastCPUConfig(keep_heap=keep)).prepare(model, torch.device(device))
    assert len(calls) == expected
