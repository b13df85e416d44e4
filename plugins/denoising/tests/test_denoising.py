"""Corruption statistics, train/eval behaviour, and the clean target inside a composed model."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from aecore.composition import compose
from aecore.config import config_from_dict
from aecore.errors import ConfigError
from aecore.testing import check_regularizer
from aecore_denoising import Denoising, DenoisingConfig, corrupt


def build(**params: object) -> Denoising:
    return Denoising(config_from_dict(DenoisingConfig, params), latent_dim=4)


@pytest.mark.parametrize("kind", ["gaussian", "mask", "salt_pepper"])
def test_conforms_to_the_regularizer_protocol(kind: str) -> None:
    check_regularizer(Denoising, params={"kind": kind})


def test_bad_parameters_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="prob"):
        config_from_dict(DenoisingConfig, {"prob": "1.5"})
    with pytest.raises(ConfigError, match="factor"):
        config_from_dict(DenoisingConfig, {"factor": "-0.1"})
    with pytest.raises(ConfigError, match="kind"):
        config_from_dict(DenoisingConfig, {"kind": "blur"})


def test_gaussian_residual_has_std_factor_before_clamping() -> None:
    torch.manual_seed(0)
    x = torch.rand(200, 1, 28, 28)
    noisy = build(factor=0.3, clamp=False).train().transform_input(x)
    residual = noisy - x
    assert residual.mean().item() == pytest.approx(0.0, abs=0.005)
    assert residual.std().item() == pytest.approx(0.3, rel=0.01)
    assert noisy.min() < 0 and noisy.max() > 1  # really not clamped


def test_gaussian_is_clamped_by_default() -> None:
    torch.manual_seed(1)
    x = torch.rand(100, 50)
    noisy = build().train().transform_input(x)
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert (noisy == 0).any() and (noisy == 1).any()  # the clamp was needed
    inside = (noisy > 0) & (noisy < 1)
    assert (noisy - x)[inside].std().item() > 0.2  # noise was added, not just clamped


@pytest.mark.parametrize("prob", [0.1, 0.5])
def test_mask_zeroes_a_fraction_prob_and_keeps_the_rest(prob: float) -> None:
    torch.manual_seed(2)
    x = torch.rand(100, 1000) + 0.5  # no zeros to start with
    out = build(kind="mask", prob=prob).train().transform_input(x)
    zeroed = out == 0
    assert zeroed.float().mean().item() == pytest.approx(prob, abs=0.01)
    assert torch.equal(out[~zeroed], x[~zeroed])


def test_salt_and_pepper_sets_zeros_and_ones_half_each() -> None:
    torch.manual_seed(3)
    x = torch.full((200, 500), 0.5)
    out = build(kind="salt_pepper", prob=0.2).train().transform_input(x)
    values = set(out.unique().tolist())
    assert values == {0.0, 0.5, 1.0}
    hit = out != 0.5
    assert hit.float().mean().item() == pytest.approx(0.2, abs=0.005)
    assert (out[hit] == 1).float().mean().item() == pytest.approx(0.5, abs=0.02)


def test_input_is_never_modified_in_place() -> None:
    torch.manual_seed(4)
    x = torch.rand(8, 20)
    clean = x.clone()
    for kind in ("gaussian", "mask", "salt_pepper"):
        corrupt(x, kind, prob=0.5)
    assert torch.equal(x, clean)


def test_eval_mode_leaves_the_input_alone() -> None:
    torch.manual_seed(5)
    x = torch.rand(8, 20)
    for kind in ("gaussian", "mask", "salt_pepper"):
        assert build(kind=kind).eval().transform_input(x) is x


def test_penalty_is_a_zero_scalar_on_the_right_dtype() -> None:
    reg = build()
    recon = torch.rand(3, 5, dtype=torch.float64)
    penalty = reg.penalty(recon, torch.zeros(3, 4, dtype=torch.float64), recon, torch.nn.Identity())
    assert penalty.dim() == 0 and penalty.item() == 0
    assert penalty.dtype == torch.float64 and penalty.device == recon.device


def _composed(**params: object) -> torch.nn.Module:
    return compose(
        "mlp",
        regularizers=["denoising"],
        input_shape=(1, 8, 8),
        latent_dim=4,
        params={"encoder": {"hidden": (16,)}, "denoising": params},
    )


def _record_encoder_input(model: torch.nn.Module, seen: list[Tensor]) -> None:
    model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))


@pytest.mark.parametrize("kind", ["gaussian", "mask", "salt_pepper"])
def test_loss_compares_against_the_clean_batch_in_a_composed_model(kind: str) -> None:
    torch.manual_seed(6)
    model = _composed(kind=kind).train()
    seen: list[Tensor] = []
    targets: list[Tensor] = []
    _record_encoder_input(model, seen)

    def recording_loss(recon: Tensor, target: Tensor) -> Tensor:
        targets.append(target.detach().clone())
        return (recon - target).pow(2).mean()

    x = torch.rand(16, 1, 8, 8)
    clean = x.clone()
    terms = model.loss_terms(x, recording_loss)
    assert terms["denoising"].item() == 0
    assert torch.equal(x, clean)
    assert len(targets) == 1 and torch.equal(targets[0], clean)
    assert len(seen) == 1 and not torch.equal(seen[0], clean), "the encoder saw the clean batch"
    assert (seen[0] - clean).abs().mean() > 0.05


def test_eval_mode_model_encodes_the_clean_batch() -> None:
    torch.manual_seed(7)
    model = _composed(kind="mask", prob=0.9).eval()
    seen: list[Tensor] = []
    _record_encoder_input(model, seen)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        model.loss_terms(x, torch.nn.functional.mse_loss)
        model(x)
    assert len(seen) == 2 and all(torch.equal(s, x) for s in seen)
