"""The quantiser: conformance, layouts, gradients, EMA, restarts, figures, integer codes, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import aecore
from aecore import registry
from aecore.composition import compose
from aecore.config import config_from_dict
from aecore.errors import ConfigError, DataError, ShapeError
from aecore.evaluate import component_metrics
from aecore.testing import (
    InterruptAt,
    check_checkpoint_roundtrip,
    check_preset,
    check_regularizer,
    tiny_dataset,
)
from aecore.training.default import TrainingInterrupted
from aecore_vq import VectorQuantiser, VQConfig, perplexity
from aecore_vq.presets import vq_mnist

#: A conv model on 8×8 images whose spatial code is 16 channels at 2×2 positions, K = 16.
CONV = {
    "encoder": {"channels": (8, 16), "latent": "spatial"},
    "vq": {"codebook_size": 16, "dim": 16, "layout": "spatial", "restart_after": 4, "buffer_size": 64},
}
CONV_LATENT = 16 * 2 * 2


def make(latent_dim: int = 8, code_shape: tuple[int, ...] | None = None, **params) -> VectorQuantiser:
    return VectorQuantiser(
        config_from_dict(VQConfig, params, owner="vq"), latent_dim=latent_dim, code_shape=code_shape
    )


def nearest(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The reference assignment: argmin of the Euclidean distance, computed the obvious way."""
    return torch.cdist(vectors.double(), codebook.double()).argmin(1)


# ---------------------------------------------------------------------- conformance


@pytest.mark.parametrize(
    "params",
    [
        {"dim": 4, "codebook_size": 16},
        {"dim": 8, "layout": "spatial", "codebook_size": 16},
        {"dim": 4, "ema": True},
        {"dim": 2, "restart": False, "beta": 0.0},
        {"dim": 4, "weight": 0.0},
    ],
)
def test_the_quantiser_conforms(params):
    latent = 32 if params.get("layout") == "spatial" else 8
    check_regularizer(VectorQuantiser, latent_dim=latent, params=params)


@pytest.mark.parametrize("ema", [False, True])
def test_conv_and_mlp_models_with_the_quantiser_save_and_reload(ema, tmp_path):
    conv = {**CONV, "vq": {**CONV["vq"], "ema": ema}}
    reloaded = check_checkpoint_roundtrip(
        "conv", regularizers=("vq",), input_shape=(1, 8, 8), latent_dim=CONV_LATENT, params=conv,
        tmp_path=tmp_path / "conv",
    )  # fmt: skip
    assert reloaded.regularizers["vq"].layout == "spatial"
    mlp = {"encoder": {"hidden": (16,)}, "vq": {"dim": 3, "codebook_size": 8, "ema": ema}}
    check_checkpoint_roundtrip(
        "mlp",
        regularizers=("vq",),
        input_shape=(1, 8, 8),
        latent_dim=6,
        params=mlp,
        tmp_path=tmp_path / "mlp",
    )


def test_the_preset_gives_a_7x7_grid_of_64_vectors_against_512_codes():
    model = check_preset(vq_mnist)
    vq = model.regularizers["vq"]
    assert model.encoder.code_shape == (64, 7, 7)
    assert (vq.positions, vq.dim, vq.codebook_size, vq.layout) == (49, 64, 512, "spatial")


# ---------------------------------------------------------------------- configuration


def test_the_vector_size_comes_from_a_spatial_code_shape_or_must_be_given():
    vq = make(latent_dim=2 * 3 * 5, code_shape=(2, 3, 5))
    assert (vq.layout, vq.dim, vq.positions) == ("spatial", 2, 15)
    assert make(latent_dim=12, dim=4).layout == "flat"  # no shape known: groups of D
    whole = make(latent_dim=12)  # a flat code without dim: one vector per sample
    assert (whole.layout, whole.dim, whole.positions) == ("flat", 12, 1)
    with pytest.raises(ShapeError, match=r"set --set vq.dim=D"):
        make(latent_dim=12, layout="spatial")  # spatial, but no shape known
    with pytest.raises(ShapeError, match=r"does not divide the latent size 10"):
        make(latent_dim=10, dim=4)
    with pytest.raises(ShapeError, match=r"has 2 channels per position; set --set vq.dim=2"):
        make(latent_dim=30, code_shape=(2, 3, 5), dim=3)


@pytest.mark.parametrize(
    "bad",
    [{"decay": 1.0}, {"decay": 0.0}, {"epsilon": 0.0}, {"beta": -1.0}, {"codebook_size": 0}, {"dim": 0}],
)
def test_bad_settings_are_one_line_config_errors(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        compose(
            "mlp", regularizers=("vq",), input_shape=(1, 8, 8), latent_dim=8, params={"vq": {"dim": 4, **bad}}
        )


def test_a_spatial_encoder_code_read_as_flat_groups_is_refused_at_the_first_step(tmp_path):
    # compose hands vq the encoder's code shape, so by default it reads a spatial code per position
    model = aecore.compose(
        "conv", regularizers=["vq"], input_shape=(1, 8, 8), latent_dim=CONV_LATENT,
        params={**CONV, "vq": {"codebook_size": 8}},
    )  # fmt: skip
    assert (model.regularizers["vq"].layout, model.regularizers["vq"].dim) == ("spatial", 16)
    params = {**CONV, "vq": {"dim": 16, "codebook_size": 8, "layout": "flat"}, "trainer": {"epochs": 1}}
    with pytest.raises(ShapeError, match=r"spatial \(16×2×2\).*set --set vq.layout=spatial --set vq.dim=16"):
        aecore.train(
            encoder="conv", regularizers=["vq"], data=tiny_dataset(shape=(1, 8, 8)), latent_dim=CONV_LATENT,
            params=params, out=str(tmp_path / "run"), progress=False,
        )  # fmt: skip


# ---------------------------------------------------------------------- the quantisation


def test_spatial_codes_are_quantised_per_position_and_flat_codes_in_groups():
    torch.manual_seed(0)
    maps = torch.randn(3, 4, 2, 5)  # N × C × H × W, as a conv encoder makes it
    z = maps.flatten(1)
    spatial = make(latent_dim=40, dim=4, layout="spatial", codebook_size=6).eval()
    per_position = maps.permute(0, 2, 3, 1).reshape(-1, 4)  # each pixel's channel vector
    expected = nearest(per_position, spatial.codebook).reshape(3, 10)
    assert torch.equal(spatial.code_indices(z), expected)
    code, _ = spatial.transform_code(z)
    quantised = spatial.codebook[expected].reshape(3, 2, 5, 4).permute(0, 3, 1, 2).flatten(1)
    assert torch.equal(code, quantised)

    flat = make(latent_dim=40, dim=4, layout="flat", codebook_size=6).eval()
    groups = z.reshape(-1, 4)
    assert torch.equal(flat.code_indices(z), nearest(groups, flat.codebook).reshape(3, 10))
    assert torch.equal(
        flat.transform_code(z)[0], flat.codebook[nearest(groups, flat.codebook)].reshape(3, 40)
    )


def test_assignments_are_made_in_float32_under_bfloat16_autocast():
    torch.manual_seed(1)
    vq = make(latent_dim=64, dim=8, codebook_size=64).eval()
    vq.codebook.data = torch.randn(64, 8)
    z = torch.randn(50, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = vq.code_indices(z)
    assert torch.equal(under, vq.code_indices(z))


def test_the_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    encoder = nn.Linear(5, 8)
    vq = make(latent_dim=8, dim=2, codebook_size=4).train()
    code, _ = vq.transform_code(encoder(torch.randn(6, 5)))
    code.pow(2).sum().backward()  # a loss on the quantised code alone
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    assert vq.codebook.grad is None  # the decoder's loss does not move the codebook


def _grads(
    vq: VectorQuantiser, encoder: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    encoder.zero_grad()
    vq.zero_grad()
    code, aux = vq.transform_code(encoder(x))
    vq.penalty(x, code, x, nn.Module(), aux=aux).backward()
    cb = vq.codebook.grad if isinstance(vq.codebook, nn.Parameter) else None
    return encoder.weight.grad.clone(), None if cb is None else cb.clone()


def test_the_codebook_term_moves_only_the_codebook_and_the_commitment_term_only_the_encoder():
    torch.manual_seed(0)
    x = torch.randn(10, 5)
    encoder = nn.Linear(5, 8)
    state = {"restart": False}
    codebook_only = make(latent_dim=8, dim=2, codebook_size=4, beta=0.0, **state)
    both = make(latent_dim=8, dim=2, codebook_size=4, beta=0.25, **state)
    both.codebook.data.copy_(codebook_only.codebook.data)

    enc_grad, cb_grad = _grads(codebook_only, encoder, x)
    assert enc_grad.abs().sum() == 0  # the codebook term gives the encoder nothing
    assert cb_grad is not None and cb_grad.abs().sum() > 0
    enc_grad, cb_both = _grads(both, encoder, x)
    assert enc_grad.abs().sum() > 0  # the commitment term reaches the encoder ...
    assert torch.allclose(cb_both, cb_grad)  # ... and adds nothing to the codebook's gradient

    ema = make(latent_dim=8, dim=2, codebook_size=4, ema=True, **state)
    enc_grad, cb_grad = _grads(ema, encoder, x)
    assert cb_grad is None and enc_grad.abs().sum() > 0  # with EMA only the commitment term is a loss


def test_the_penalty_is_the_weighted_sum_of_the_two_terms():
    torch.manual_seed(0)
    vq = make(latent_dim=6, dim=3, codebook_size=5, beta=0.5, weight=2.0, restart=False).train()
    z = torch.randn(7, 6, requires_grad=True)
    code, (vectors, q) = vq.transform_code(z)
    distance = (vectors - q).pow(2).mean()
    assert torch.allclose(vq.penalty(z, code, z, nn.Module(), aux=(vectors, q)), 2.0 * (1 + 0.5) * distance)


# ---------------------------------------------------------------------- EMA


def test_ema_moves_each_vector_to_the_smoothed_average_of_its_assignments():
    vq = make(latent_dim=2, dim=2, codebook_size=3, ema=True, decay=0.9, epsilon=1e-5, restart=False).train()
    start = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]])
    vq.codebook.copy_(start)
    vq.ema_sum.copy_(start)
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 11.0], [1.0, 1.0]])  # 3 near code 0, 1 near code 1
    vq.transform_code(vectors)

    counts = torch.tensor([3.0, 1.0, 0.0])
    sums = torch.stack([vectors[[0, 1, 3]].sum(0), vectors[2], torch.zeros(2)])
    ema_count = 0.9 * torch.ones(3) + 0.1 * counts
    ema_sum = 0.9 * start + 0.1 * sums
    n = ema_count.sum()
    smoothed = (ema_count + 1e-5) / (n + 3e-5) * n
    assert torch.allclose(vq.ema_count, ema_count) and torch.allclose(vq.ema_sum, ema_sum)
    assert torch.allclose(vq.codebook, ema_sum / smoothed[:, None])
    assert torch.linalg.norm(vq.codebook[0] - torch.tensor([2 / 3, 2 / 3])) < torch.linalg.norm(
        start[0] - 2 / 3
    )

    for _ in range(300):  # the same batch again and again: each used vector converges to its mean
        vq.transform_code(vectors)
    assert torch.allclose(vq.codebook[0], torch.tensor([2 / 3, 2 / 3]), atol=1e-3)
    assert torch.allclose(vq.codebook[1], torch.tensor([9.0, 11.0]), atol=1e-3)


def test_the_ema_codebook_is_a_buffer_without_a_gradient():
    vq = make(latent_dim=4, dim=2, codebook_size=4, ema=True).train()
    assert not vq.codebook.requires_grad
    assert "codebook" not in dict(vq.named_parameters())
    assert {"codebook", "ema_count", "ema_sum"} <= set(vq.state_dict())
    z = torch.randn(5, 4, requires_grad=True)
    code, aux = vq.transform_code(z)
    vq.penalty(z, code, z, nn.Module(), aux=aux).backward()
    assert not vq.codebook.requires_grad and vq.codebook.grad is None
    assert z.grad is not None and z.grad.abs().sum() > 0


# ---------------------------------------------------------------------- restarts


@pytest.mark.parametrize("ema", [False, True])
def test_dead_codes_are_restarted_from_recent_encoder_outputs(ema):
    torch.manual_seed(0)
    live = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])
    data = live[torch.arange(64) % 4] + 0.1 * torch.randn(64, 2)  # every batch uses every live code
    dead = torch.full((4, 2), 100.0) + torch.arange(4.0)[:, None]  # far from every vector: never chosen

    def run(restart: bool) -> VectorQuantiser:
        vq = make(
            latent_dim=2, dim=2, codebook_size=8, ema=ema, restart=restart, restart_after=3, buffer_size=16
        )
        with torch.no_grad():
            vq.codebook.copy_(torch.cat([live, dead]))
            if ema:
                vq.ema_sum.copy_(vq.codebook)
        vq.train()
        for step in range(6):
            vq.transform_code(data[step * 8 : (step + 1) * 8])
        return vq

    kept = run(restart=False)
    assert (kept.codebook[4:] > 50).all()  # still far away (EMA's smoothing only shrinks them a little)
    assert kept.epoch_metrics()["vq_used_fraction"] <= 0.5

    revived = run(restart=True)
    assert revived.epoch_restarts == 4
    fresh = revived.codebook[4:]
    assert (fresh.abs() < 50).all()
    if not ema:  # each is one of the encoder outputs seen (with EMA, later batches have moved it since)
        assert all((data[:48] == row).all(1).any() for row in fresh)
    for step in range(6, 8):
        revived.transform_code(data[step * 8 : (step + 1) * 8])
    assert int((revived.idle_steps >= 3).sum()) < 4


def test_restart_draws_repeat_with_the_seed_and_leave_the_global_stream_alone():
    data = torch.randn(40, 2, generator=torch.Generator().manual_seed(3))

    def codebook(seed: int) -> torch.Tensor:
        torch.manual_seed(9)  # the same starting codebook for every seed
        vq = make(latent_dim=2, dim=2, codebook_size=6, restart_after=1, buffer_size=8, seed=seed).train()
        before = torch.get_rng_state()
        for step in range(5):
            vq.transform_code(data[step * 8 : (step + 1) * 8])
        assert torch.equal(torch.get_rng_state(), before)
        return vq.codebook.detach().clone()

    assert torch.equal(codebook(0), codebook(0))
    assert not torch.equal(codebook(0), codebook(1))


# ---------------------------------------------------------------------- figures


def test_perplexity_is_exp_of_the_entropy_of_the_frequencies():
    assert perplexity(torch.tensor([2, 2, 0, 4])) == pytest.approx(
        math.exp(-(0.25 * math.log(0.25) * 2 + 0.5 * math.log(0.5)))
    )
    assert perplexity(torch.tensor([2, 2, 0, 4])) == pytest.approx(2**1.5)
    assert perplexity(torch.tensor([5, 5, 5, 5])) == pytest.approx(4.0)
    assert perplexity(torch.tensor([0, 7, 0])) == pytest.approx(1.0)


def test_epoch_figures_count_the_assignments_of_the_epoch_and_reset():
    vq = make(latent_dim=2, dim=2, codebook_size=4, restart=False).train()
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [9.0, 9.0]]))
    vectors = torch.tensor(
        [[0.1, 0.0], [0.0, 0.1], [5.0, 0.2], [4.9, 0.0], [0.0, 5.0], [5.1, 0.1], [0.2, 0.2]]
    )
    vq.transform_code(vectors)  # codes 0, 0, 1, 1, 2, 1, 0: counts 3, 3, 1, 0
    figures = vq.epoch_metrics()
    assert figures["vq_perplexity"] == pytest.approx(perplexity(torch.tensor([3, 3, 1, 0])))
    assert figures["vq_used_fraction"] == 0.75
    assert vq.epoch_metrics() == {}  # reset: nothing trained since


def test_training_logs_the_figures_and_eval_reports_bits_per_image(tmp_path):
    data = tiny_dataset(n_train=96, n_test=24, shape=(1, 8, 8))
    result = aecore.train(
        encoder="conv", regularizers=["vq"], data=data, latent_dim=CONV_LATENT, out=str(tmp_path / "run"),
        params={**CONV, "trainer": {"epochs": 2, "batch_size": 32}}, progress=False,
    )  # fmt: skip
    for epoch in result.history:
        assert 1.0 <= epoch["vq_perplexity"] <= 16 and 0 < epoch["vq_used_fraction"] <= 1
        assert epoch["vq_codebook_loss"] > 0 and epoch["vq_commitment_loss"] > 0
        assert epoch["vq_codebook_loss"] + epoch["vq_commitment_loss"] == pytest.approx(epoch["train_vq"])
    figures = component_metrics(result.model, data)
    assert figures["vq_bits_per_image"] == 4 * math.log2(16)  # 2×2 positions of 16 codes
    assert 1.0 <= figures["vq_test_perplexity"] <= 16
    codes = result.model.regularizers["vq"].code_indices(result.model.encoder(data.test.batch(slice(0, 24))))
    assert figures["vq_test_used_fraction"] == len(codes.unique()) / 16


# ---------------------------------------------------------------------- integer codes


def test_indices_round_trip_to_the_quantised_code():
    torch.manual_seed(0)
    for layout in ("spatial", "flat"):
        vq = make(latent_dim=24, dim=4, layout=layout, codebook_size=10).eval()
        z = torch.randn(9, 24)
        index = vq.code_indices(z)
        assert index.dtype == torch.int64 and index.shape == (9, 6)
        assert torch.equal(vq.code_from_indices(index), vq.transform_code(z)[0])


def test_bad_indices_are_one_line_errors():
    vq = make(latent_dim=8, dim=2, codebook_size=4)
    with pytest.raises(DataError, match=r"codebook index 4 is out of range .* 4 vectors \(0 to 3\)"):
        vq.code_from_indices(torch.tensor([[0, 1, 2, 4]]))
    with pytest.raises(DataError, match=r"index -1 is out of range"):
        vq.code_from_indices(torch.tensor([[0, -1, 2, 3]]))
    with pytest.raises(ShapeError, match=r"4 indices per row .* got 3 per row"):
        vq.code_from_indices(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(DataError, match="whole numbers"):
        vq.code_from_indices(torch.zeros(2, 4))


def test_the_eval_forward_changes_no_state():
    vq = make(latent_dim=8, dim=2, codebook_size=4, ema=True, restart_after=1)
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq.eval()
    for _ in range(3):
        vq.transform_code(torch.randn(5, 8))
        vq.code_indices(torch.randn(5, 8))
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())


# ---------------------------------------------------------------------- checkpoints and resuming


def _train_ema(data, out, **kwargs):
    params = {**CONV, "vq": {**CONV["vq"], "ema": True, "restart_after": 2}}
    return aecore.train(
        encoder="conv", regularizers=["vq"], data=data, latent_dim=CONV_LATENT, out=str(out), progress=False,
        params={**params, "trainer": {"epochs": 2, "batch_size": 16}}, **kwargs,
    )  # fmt: skip


def test_the_ema_state_is_saved_reloaded_and_resumed_bit_for_bit(tmp_path):
    data = tiny_dataset(n_train=80, n_test=16, shape=(1, 8, 8))
    reference = _train_ema(data, tmp_path / "reference")
    vq = reference.model.regularizers["vq"]
    assert int(vq.steps) == 10 and float(vq.ema_count.sum()) > 0
    assert sum(epoch["vq_restarts"] for epoch in reference.history) > 0  # the draws are resumed too

    loaded = aecore.load(reference.checkpoint)  # rebuilt from the checkpoint's metadata alone
    mine, theirs = reference.model.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    x = data.test.batch(slice(0, 16))
    assert torch.equal(loaded.eval()(x), reference.model.eval()(x))

    with pytest.raises(TrainingInterrupted):
        _train_ema(data, tmp_path / "stopped", hooks=[InterruptAt(1, 2)])
    resumed = aecore.resume(tmp_path / "stopped", data=data, progress=False)
    done = resumed.model.state_dict()
    assert all(torch.equal(mine[k], done[k]) for k in mine)
    assert resumed.history == reference.history


def test_the_quantiser_is_found_by_the_registry():
    assert registry.get("regularizer", "vq") is VectorQuantiser
    assert registry.get("preset", "vq-mnist") is vq_mnist
