"""The backend as the core sees it: listed, probed once, stepping aside with one notice, never failing."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import optimizer as torch_optimizer

from aecore import registry
from aecore.testing import InterruptAt
from aecore.training import backends, resume, train
from aecore.training.backends import BackendNotice, choose_backend
from aecore.training.default import TrainingInterrupted
from aecore_fastcpu import FastCPU, FastCPUConfig, kernels, private, probes
from aecore_fastcpu.optim import FusedAdam
from aecore_fastcpu.step import ByHandStep

CPU = torch.device("cpu")
TORCH = "torch " + ".".join(torch.__version__.split("+")[0].split(".")[:2])
ALL_PROBES = (*probes.STEP, *probes.ONEDNN, *probes.ADAM)
EVERYTHING = FastCPUConfig(onednn="always")  # every part on, so that every probe runs


@pytest.fixture
def notices(monkeypatch: pytest.MonkeyPatch):
    """The BackendNotices raised in the test, with the core's once-per-process memory emptied first."""
    monkeypatch.setattr(backends, "_noticed", set())
    probes.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield lambda: [str(w.message) for w in caught if issubclass(w.category, BackendNotice)]


def test_the_core_lists_it_and_auto_chooses_it_on_cpu(notices):
    assert "fastcpu" in [entry.name for entry in registry.list_components("backend")]
    backend, name = choose_backend("auto", CPU)
    assert isinstance(backend, FastCPU) and name == "aecore-fastcpu:fastcpu"
    assert notices() == []


def test_it_serves_only_the_cpu(notices):
    assert FastCPU().probe(torch.device("meta")) == "it serves cpu, not meta"
    assert choose_backend("auto", torch.device("meta")) == (None, "none")  # auto passes it by quietly
    assert notices() == []


def test_onednn_on_auto_follows_the_cpu(monkeypatch):
    for capability, expected in (("AVX512", True), ("AVX2", False), ("DEFAULT", False)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert FastCPU().uses_onednn() is expected
    assert FastCPU(FastCPUConfig(onednn="always")).uses_onednn()
    assert not FastCPU(FastCPUConfig(onednn="never")).uses_onednn()


def test_every_probe_passes_here_and_runs_once_per_process():
    probes.clear()
    assert FastCPU(EVERYTHING).probe(CPU) is None
    assert FastCPU(EVERYTHING).probe(CPU) is None
    info = probes._result.cache_info()
    assert info.misses == len(ALL_PROBES) and info.hits == len(ALL_PROBES)


MISSING = [
    (torch, "_fused_adam_", "torch._fused_adam_"),
    (torch, "_foreach_add_", "torch._foreach_add_"),
    (torch._C, "_are_functorch_transforms_active", "torch._C._are_functorch_transforms_active"),
    (torch._C._functorch, "is_functorch_wrapped_tensor", "torch._C._functorch.is_functorch_wrapped_tensor"),
    (nn.modules.module, "_global_forward_hooks", "torch.nn.modules.module._global_forward_hooks"),
    (nn.modules.module, "_global_backward_hooks", "torch.nn.modules.module._global_backward_hooks"),
    (
        torch_optimizer,
        "_global_optimizer_pre_hooks",
        "torch.optim.optimizer._global_optimizer_pre_hooks",
    ),
    (torch.autograd.profiler, "_is_profiler_enabled", "torch.autograd.profiler._is_profiler_enabled"),
    (torch.optim.Optimizer, "profile_hook_step", "torch.optim.Optimizer.profile_hook_step"),
]


@pytest.mark.parametrize(("owner", "name", "label"), MISSING, ids=[label for *_, label in MISSING])
def test_a_missing_private_api_is_named_in_the_reason(monkeypatch, owner, name, label):
    monkeypatch.delattr(owner, name)
    probes.clear()
    assert FastCPU(EVERYTHING).probe(CPU) == f"{label} is missing in {TORCH}"


def _ignores_the_activation(*args):
    return lambda x, w, b, act, *rest: F.linear(x, w, b)


DIFFERENT = [
    ("linear_pointwise", _ignores_the_activation, "torch.ops.mkldnn._linear_pointwise disagrees"),
    ("activation_backward", lambda name: lambda g, y: g, "torch.ops.aten.threshold_backward disagrees"),
    ("functorch_active", lambda: False, "torch._C._functorch no longer tells"),
    ("grad_hooks", lambda t: False, "Tensor._backward_hooks or _post_accumulate_grad_hooks no longer"),
    ("hook_dicts", lambda module: (), "nn.Module's hook dicts no longer"),
    ("parameter_dict", lambda module: {}, "nn.Module._parameters no longer"),
    ("global_module_hooks", lambda: False, "torch.nn.modules.module's global hook dicts no longer"),
    ("global_optimizer_hooks", lambda: False, "torch.optim.optimizer's global hook dicts no longer"),
    ("fused_adam_", lambda *args, **kwargs: None, "torch._fused_adam_ no longer gives"),
]


@pytest.mark.parametrize(("name", "fake", "reason"), DIFFERENT, ids=[name for name, *_ in DIFFERENT])
def test_a_private_api_that_behaves_differently_is_named_in_the_reason(monkeypatch, name, fake, reason):
    monkeypatch.setattr(private, name, fake)
    probes.clear()
    found = FastCPU(EVERYTHING).probe(CPU)
    assert found is not None and found.startswith(reason) and found.endswith(f"in {TORCH}")


def test_a_probe_that_raises_is_a_reason_not_an_error(monkeypatch):
    def broken(*args):
        raise ValueError("surprise")

    monkeypatch.setattr(private, "hook_dicts", broken)
    probes.clear()
    assert "surprise" in FastCPU(EVERYTHING).probe(CPU)


def test_a_missing_private_api_makes_it_step_aside_with_one_notice(monkeypatch, notices):
    monkeypatch.delattr(torch, "_fused_adam_")
    assert choose_backend("auto", CPU) == (None, "none")
    assert choose_backend("auto", CPU) == (None, "none")  # the next run in this process: no second notice
    assert choose_backend("fastcpu", CPU) == (None, "none")
    (notice,) = notices()
    assert notice == (
        f"backend 'fastcpu' from aecore-fastcpu 0.1.0 steps aside: torch._fused_adam_ is missing in {TORCH}; "
        "training runs on plain autograd."
    )


def test_nothing_private_is_touched_until_the_probe_passes(monkeypatch):
    """With the private APIs gone, step, optimizer and prepare answer None or do nothing, and never raise."""
    monkeypatch.delattr(torch._C, "_are_functorch_transforms_active")
    monkeypatch.delattr(torch, "_fused_adam_")
    probes.clear()
    backend = FastCPU()
    model = nn.Sequential(nn.Linear(3, 2))
    assert backend.probe(CPU) is not None
    assert backend.prepare(model, CPU) is model  # type: ignore[arg-type]
    assert backend.step(model, F.mse_loss) is None  # type: ignore[arg-type]
    assert backend.optimizer(list(model.parameters()), lr=1e-3, weight_decay=0.0) is None


def test_it_imports_on_a_torch_without_its_private_apis():
    script = "\n".join(
        [
            "import torch",
            "for owner, name in [(torch, '_fused_adam_'), (torch, '_foreach_add_'),",
            "                    (torch._C, '_are_functorch_transforms_active'), (torch._C, '_functorch'),",
            "                    (torch.autograd.profiler, '_is_profiler_enabled')]:",
            "    delattr(owner, name)",
            "import aecore_fastcpu",
            "print(aecore_fastcpu.FastCPU().probe(torch.device('cpu')))",
        ]
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"torch._C._are_functorch_transforms_active is missing in {TORCH}"


def _train(data, tmp_path, name: str, backend: str, **kwargs):
    params = {
        "encoder": {"hidden": [64], "code_activation": "relu"},
        "trainer": {"epochs": 2, "batch_size": 50},
    }
    return train(
        encoder="mlp",
        latent_dim=16,
        params=params,
        data=data,
        backend=backend,
        out=str(tmp_path / name),
        progress=False,
        **kwargs,
    )


@pytest.fixture
def taken(monkeypatch):
    """Whether each training step went the by-hand way, and which optimizers the backend handed out."""
    record: dict[str, list] = {"steps": [], "optimizers": [], "onednn": []}
    real_step, real_optimizer = ByHandStep.__call__, FastCPU.optimizer

    def counting_step(self, x):
        terms = real_step(self, x)
        record["steps"].append(terms is not None)
        record["onednn"].append(any(forward for plan in self._plans.values() for *_, forward, _ in plan))
        return terms

    def counting_optimizer(self, params, **kwargs):
        optimizer = real_optimizer(self, params, **kwargs)
        record["optimizers"].append(type(optimizer))
        return optimizer

    monkeypatch.setattr(ByHandStep, "__call__", counting_step)
    monkeypatch.setattr(FastCPU, "optimizer", counting_optimizer)
    return record


def test_training_on_torchs_kernels_is_plain_autograd_to_the_bit(tiny_data, tmp_path, monkeypatch, taken):
    """Without oneDNN (``auto`` on a CPU without AVX-512), the by-hand step and FusedAdam change no bit."""
    monkeypatch.setattr(kernels, "onednn_pays", lambda: False)
    fast = _train(tiny_data, tmp_path, "fast", "fastcpu")
    assert taken["steps"] and all(taken["steps"]) and taken["optimizers"] == [FusedAdam]
    assert not any(taken["onednn"])
    plain = _train(tiny_data, tmp_path, "plain", "none")
    assert fast.metrics == plain.metrics
    for a, b in zip(fast.model.state_dict().values(), plain.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_training_with_onednn_ends_where_plain_autograd_does(tiny_data, tmp_path, monkeypatch, taken):
    monkeypatch.setattr(kernels, "onednn_pays", lambda: True)  # ``auto`` on a CPU with AVX-512
    fast = _train(tiny_data, tmp_path, "fast", "auto")
    assert taken["steps"] and all(taken["steps"]) and all(taken["onednn"])
    plain = _train(tiny_data, tmp_path, "plain", "none")
    for key in ("train_loss", "val_recon", "test_mse_per_pixel"):
        assert math.isclose(fast.metrics[key], plain.metrics[key], rel_tol=1e-4), key


def test_training_under_a_torch_without_the_private_apis_falls_back_with_one_notice(
    tiny_data, tmp_path, monkeypatch, notices
):
    monkeypatch.delattr(torch._C._functorch, "is_functorch_wrapped_tensor")
    fallback = _train(tiny_data, tmp_path, "fallback", "fastcpu")
    assert len(notices()) == 1 and "is_functorch_wrapped_tensor is missing" in notices()[0]
    plain = _train(tiny_data, tmp_path, "plain", "none")
    assert fallback.metrics == plain.metrics  # it is plain autograd


def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(tiny_data, tmp_path, monkeypatch, taken):
    """FusedAdam's cached lists and the by-hand step pick up a resume file's state exactly."""
    monkeypatch.setattr(kernels, "onednn_pays", lambda: True)
    reference = _train(tiny_data, tmp_path, "reference", "fastcpu")
    with pytest.raises(TrainingInterrupted):
        _train(tiny_data, tmp_path, "interrupted", "fastcpu", hooks=[InterruptAt(1, 7)])
    resumed = resume(tmp_path / "interrupted", data=tiny_data, progress=False)
    assert all(taken["steps"]) and all(taken["onednn"]) and set(taken["optimizers"]) == {FusedAdam}
    assert resumed.history == reference.history
    for a, b in zip(reference.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
