"""channels_last: which models the backend puts in channels-last order, and that nothing else changes."""

from __future__ import annotations

import copy

import pytest
import torch
from fastcpu_helpers import wrap
from torch import nn

from aecore.checkpoint import load
from aecore.testing import InterruptAt
from aecore.training import resume, train
from aecore.training.default import TrainingInterrupted
from aecore_fastcpu import FastCPU, FastCPUConfig, probes
from aecore_fastcpu.layout import has_normalisation, wants_channels_last

CPU = torch.device("cpu")
SHAPE = (3, 8, 8)


def _conv_model(norm: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    encoder = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        *([norm] if norm is not None else []),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 4),
    )
    decoder = nn.Sequential(
        nn.Linear(4, 8 * 4 * 4),
        nn.Unflatten(1, (8, 4, 4)),
        nn.ConvTranspose2d(8, 3, 3, stride=2, padding=1, output_padding=1),
        nn.Sigmoid(),
    )
    return wrap(encoder, decoder, shape=SHAPE, latent=4)


def _is_channels_last(model: nn.Module) -> bool:
    """Whether every convolution weight is channels-last (ones with a single input channel are both)."""
    weights = [
        m.weight
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.weight.shape[1] > 1
    ]
    assert weights
    return all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in weights)


@pytest.mark.parametrize(
    ("choice", "norm", "expected"),
    [
        ("auto", None, True),
        ("auto", nn.BatchNorm2d(8), True),
        ("auto", nn.GroupNorm(2, 8), False),
        ("always", nn.BatchNorm2d(8), True),
        ("never", None, False),
    ],
)
def test_prepare_puts_convolutions_in_channels_last_order_as_chosen(choice, norm, expected):
    if expected and choice == "auto" and not torch.backends.mkldnn.is_available():
        pytest.skip("auto needs oneDNN")
    model = _conv_model(norm)
    prepared = FastCPU(FastCPUConfig(channels_last=choice)).prepare(model, CPU)
    assert prepared is model
    assert _is_channels_last(model) is expected


def test_batch_norms_are_routed_only_in_a_channels_last_model():
    model = _conv_model(nn.BatchNorm2d(8))
    FastCPU(FastCPUConfig(channels_last="never")).prepare(model, CPU)
    assert "forward" not in vars(model.encoder[2])
    FastCPU(FastCPUConfig(channels_last="always")).prepare(model, CPU)
    assert "forward" in vars(model.encoder[2])


def test_where_the_batch_norm_probe_fails_auto_keeps_such_models_in_nchw(monkeypatch):
    monkeypatch.setattr(probes, "NORM", (lambda: "the kernels changed",))
    assert not wants_channels_last(_conv_model(nn.BatchNorm2d(8)), "auto", batch_norm_routed=False)
    model = _conv_model(nn.BatchNorm2d(8))
    FastCPU(FastCPUConfig(channels_last="auto")).prepare(model, CPU)
    assert not _is_channels_last(model)
    FastCPU(FastCPUConfig(channels_last="always")).prepare(model, CPU)
    assert _is_channels_last(model) and "forward" not in vars(model.encoder[2])  # asked for, not routed


def test_models_without_convolutions_and_other_devices_are_left_alone(make_mlp):
    mlp = make_mlp()
    assert not wants_channels_last(mlp, "always")
    model = _conv_model()
    FastCPU(FastCPUConfig(channels_last="always")).prepare(model, torch.device("meta"))
    assert not _is_channels_last(model)


def test_normalisation_is_found_in_nested_modules():
    assert has_normalisation(nn.Sequential(nn.Sequential(nn.LazyBatchNorm2d())))
    assert not has_normalisation(_conv_model())


@pytest.mark.parametrize("norm", [None, nn.BatchNorm2d(8)], ids=["plain", "batch-norm"])
def test_channels_last_gives_the_same_outputs_and_gradients(norm):
    x = torch.rand(16, *SHAPE)
    results = []
    for choice in ("never", "always"):
        model = _conv_model(copy.deepcopy(norm))
        FastCPU(FastCPUConfig(channels_last=choice)).prepare(model, CPU)
        out = model(x)
        torch.nn.functional.mse_loss(out, x).backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:  # float rounding only: the same sums in another order
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


# --- whole runs, with the conv plugin --------------------------------------------------------------------


def _train_conv(tiny_data, out, choice: str, batch_norm: bool = False, **kwargs):
    pytest.importorskip("aecore_conv")
    return train(
        "conv",
        params={
            "encoder": {"channels": (4, 8), "batch_norm": batch_norm},
            "decoder": {"batch_norm": batch_norm},
            "trainer": {"epochs": 2, "batch_size": 100, "save_every_steps": 3},
            "backend": {"channels_last": choice},
        },
        latent_dim=6,
        data=tiny_data,
        out=out,
        progress=False,
        **kwargs,
    )


def test_a_channels_last_run_saves_a_checkpoint_that_reloads_to_the_same_model(tiny_data, tmp_path):
    result = _train_conv(tiny_data, tmp_path / "run", "always")
    assert _is_channels_last(result.model)
    reloaded = load(result.checkpoint)
    assert not _is_channels_last(reloaded)  # the file is plain contiguous tensors
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    x = tiny_data.test.batch(slice(0, 20))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), result.model.eval()(x))


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batch-norm"])
def test_a_channels_last_run_learns_as_well_as_an_nchw_one(tiny_data, tmp_path, batch_norm):
    runs = {c: _train_conv(tiny_data, tmp_path / c, c, batch_norm) for c in ("auto", "never")}
    assert _is_channels_last(runs["auto"].model) is torch.backends.mkldnn.is_available()
    last, nchw = (runs[c].metrics["test_mse_per_pixel"] for c in ("auto", "never"))
    assert abs(last / nchw - 1) < 0.02


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batch-norm"])
def test_resuming_a_channels_last_run_is_bit_identical(tiny_data, tmp_path, batch_norm):
    """The resume file's optimizer moments are contiguous; they must take their parameters' layout,
    because the fused Adam kernel pairs moments and parameters element by element in memory. With
    batch norm the running buffers and batch counts carry over as well."""
    reference = _train_conv(tiny_data, tmp_path / "reference", "always", batch_norm)
    with pytest.raises(TrainingInterrupted):
        _train_conv(tiny_data, tmp_path / "interrupted", "always", batch_norm, hooks=[InterruptAt(1, 6)])
    resumed = resume(tmp_path / "interrupted", data=tiny_data, progress=False)
    assert _is_channels_last(resumed.model)
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
