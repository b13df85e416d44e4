"""The sparse plugin: conformance, the L1 and KL penalties against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from aecore.config import config_from_dict
from aecore.errors import ConfigError
from aecore.testing import check_checkpoint_roundtrip, check_regularizer
from aecore_sparse import Sparse, SparseConfig


def _sparse(**values) -> Sparse:
    return Sparse(config_from_dict(SparseConfig, values), latent_dim=2)


def _penalty(reg: Sparse, z: torch.Tensor) -> torch.Tensor:
    x = torch.zeros(z.shape[0], 1, 2, 2)
    return reg.penalty(x, z, x, torch.nn.Identity())


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"kind": "kl"},
        {"kind": "kl", "weight": 2.0, "target": 0.3},
        {"weight": 0.0},
        {"kind": "kl", "weight": 0},
    ],
)
def test_conforms(params):
    reg = check_regularizer(Sparse, params=params)
    z = torch.randn(3, 8)
    assert torch.equal(reg.transform_code(z), z)  # a pure penalty: the code passes through unchanged
    x = torch.rand(3, 1, 4, 4)
    assert torch.equal(reg.transform_input(x), x)


def test_roundtrip_in_a_model(tmp_path):
    check_checkpoint_roundtrip(
        "mlp",
        regularizers=["sparse"],
        params={"encoder": {"hidden": [16]}, "sparse": {"kind": "kl", "weight": 0.5, "target": 0.2}},
        tmp_path=tmp_path,
    )


def test_l1_is_weighted_mean_absolute_code():
    z = torch.tensor([[1.0, -2.0], [0.5, 0.0], [-3.0, 4.0]])
    penalty = _penalty(_sparse(kind="l1", weight=0.5), z)
    assert penalty.dim() == 0
    assert penalty.item() == pytest.approx(0.5 * (1 + 2 + 0.5 + 0 + 3 + 4) / 6)


def test_kl_matches_hand_computed_bernoulli_kl():
    rows = [[0.0, 1.0], [2.0, -1.0]]
    target, weight = 0.05, 0.1
    sig = [[1 / (1 + math.exp(-v)) for v in row] for row in rows]
    expected = 0.0
    for unit in range(2):
        rho_hat = (sig[0][unit] + sig[1][unit]) / 2
        expected += target * math.log(target / rho_hat) + (1 - target) * math.log(
            (1 - target) / (1 - rho_hat)
        )
    penalty = _penalty(_sparse(kind="kl", weight=weight, target=target), torch.tensor(rows))
    assert penalty.dim() == 0
    assert penalty.item() == pytest.approx(weight * expected, rel=1e-5)


def test_kl_is_zero_when_mean_activation_equals_target():
    # Activations 0.02 and 0.08 average to the target 0.05: only the batch mean matters.
    z = torch.tensor([[_logit(0.02), _logit(0.05)], [_logit(0.08), _logit(0.05)]], dtype=torch.float64)
    penalty = _penalty(_sparse(kind="kl", weight=1.0, target=0.05), z)
    assert abs(penalty.item()) < 1e-9


def test_kl_grows_as_activation_moves_from_target():
    reg = _sparse(kind="kl", weight=1.0, target=0.05)
    values = [_penalty(reg, torch.full((4, 2), _logit(p))).item() for p in (0.05, 0.2, 0.5, 0.9)]
    assert values == sorted(values) and values[0] < 1e-6 < values[1]


def test_kl_gradient_pushes_activation_toward_target():
    z = torch.full((4, 2), _logit(0.5), requires_grad=True)
    _penalty(_sparse(kind="kl", weight=1.0, target=0.05), z).backward()
    assert (z.grad > 0).all()  # descending lowers the activations toward 0.05


@pytest.mark.parametrize(
    "values",
    [
        {"weight": -0.1},
        {"weight": float("nan")},
        {"weight": "inf"},
        {"target": 0.0},
        {"target": 1.0},
        {"target": 1.5},
        {"target": -0.2},
        {"target": "nan"},
        {"kind": "l2"},
    ],
)
def test_invalid_params_raise_config_error(values):
    with pytest.raises(ConfigError):
        config_from_dict(SparseConfig, values, owner="sparse")


# -- topk and l2 ---------------------------------------------------------------------------------


def test_topk_keeps_exactly_k_units_per_sample_and_they_are_the_largest():
    from aecore_sparse import TopK, TopKConfig

    torch.manual_seed(0)
    z = torch.randn(7, 12)
    reg = TopK(TopKConfig(k=3), latent_dim=12)
    out = reg.transform_code(z)
    assert ((out != 0).sum(dim=1) == 3).all()  # the sparsity count
    kept_min = out.masked_fill(out == 0, float("inf")).min(dim=1).values
    dropped_max = z.masked_fill(out != 0, float("-inf")).max(dim=1).values
    assert (kept_min >= dropped_max).all()
    assert torch.equal(out[out != 0], z[out != 0])  # kept values are unchanged
    assert float(reg.penalty(z, out, z, None)) == 0.0


def test_topk_larger_than_the_code_is_refused():
    from aecore.errors import ConfigError
    from aecore_sparse import TopK, TopKConfig

    with pytest.raises(ConfigError, match="larger than the latent size 4"):
        TopK(TopKConfig(k=5), latent_dim=4)


def test_l2_penalty_is_weight_times_mean_code_norm():
    from aecore_sparse import CodeL2, CodeL2Config

    z = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5 and 1
    reg = CodeL2(CodeL2Config(weight=0.5), latent_dim=2)
    assert float(reg.penalty(z, z, z, None)) == pytest.approx(0.5 * (5 + 1) / 2)
