"""The contractive penalty against finite differences, its estimator, gradients and modes."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import Tensor, nn

from aecore.composition import compose
from aecore.config import config_from_dict
from aecore.errors import ConfigError
from aecore.testing import check_regularizer
from aecore_contractive import Contractive, ContractiveConfig, jacobian_frobenius_sq


def fd_jacobian_sq(encoder: nn.Module, x: Tensor, eps: float = 1e-6) -> float:
    """Batch mean of ‖J‖²_F from float64 central differences, one sample at a time."""
    x = x.double()
    total = 0.0
    with torch.no_grad():
        for sample in x:
            flat = sample.flatten()
            columns = []
            for j in range(flat.numel()):
                step = torch.zeros_like(flat)
                step[j] = eps
                plus = encoder((flat + step).view(1, *sample.shape))
                minus = encoder((flat - step).view(1, *sample.shape))
                columns.append(((plus - minus) / (2 * eps)).flatten())
            total += torch.stack(columns, dim=1).pow(2).sum().item()
    return total / x.shape[0]


def small_mlp(**encoder: object) -> nn.Module:
    params = {"hidden": (5, 4), "activation": "tanh", "code_activation": "sigmoid", **encoder}
    model = compose(
        "mlp",
        regularizers=["contractive"],
        input_shape=(6,),
        latent_dim=3,
        params={"encoder": params},
    )
    return model.double()


class Gated(nn.Module):
    """A non-MLP encoder with cross terms: z = tanh(Ax) * softplus(Bx) + (Cx)²."""

    def __init__(self, d: int = 5, k: int = 4) -> None:
        super().__init__()
        self.input_shape, self.latent_dim, self.config = (d,), k, None
        self.a, self.b, self.c = nn.Linear(d, k), nn.Linear(d, k), nn.Linear(d, k)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.a(x)) * nn.functional.softplus(self.b(x)) + self.c(x).pow(2)


def test_conforms_to_the_regularizer_protocol() -> None:
    check_regularizer(Contractive)
    check_regularizer(Contractive, params={"method": "hutchinson", "samples": 2})
    check_regularizer(Contractive, params={"weight": 0.0})


def test_bad_parameters_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="samples"):
        config_from_dict(ContractiveConfig, {"samples": "0"})
    with pytest.raises(ConfigError, match="weight"):
        config_from_dict(ContractiveConfig, {"weight": "-1"})


def test_exact_matches_finite_differences_for_a_composed_mlp() -> None:
    torch.manual_seed(0)
    model = small_mlp().train()
    x = torch.rand(4, 6, dtype=torch.float64)
    expected = fd_jacobian_sq(model.encoder, x)
    assert expected > 1e-3  # not a degenerate encoder
    reg = model.regularizers["contractive"]
    z = model.encode(x)
    penalty = reg.penalty(x, z, model.decode(z), model)
    assert penalty.dim() == 0
    assert penalty.item() == pytest.approx(1e-4 * expected, rel=1e-6)


def test_exact_matches_finite_differences_for_any_encoder() -> None:
    torch.manual_seed(1)
    encoder = Gated().double()
    x = torch.randn(3, 5, dtype=torch.float64)
    got = jacobian_frobenius_sq(encoder, x).item()
    assert got == pytest.approx(fd_jacobian_sq(encoder, x), rel=1e-6)


def test_batchnorm_is_per_sample_and_running_stats_untouched() -> None:
    torch.manual_seed(2)
    model = small_mlp(batch_norm=True).train()
    encoder = model.encoder
    with torch.no_grad():  # make running statistics differ from their defaults
        for _ in range(3):
            encoder(torch.rand(16, 6, dtype=torch.float64) * 3)
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    x = torch.rand(5, 6, dtype=torch.float64)
    got = jacobian_frobenius_sq(encoder, x).item()
    # batch statistics would couple samples; the penalty uses the running statistics
    assert got == pytest.approx(fd_jacobian_sq(encoder.eval(), x), rel=1e-6)
    encoder.train()
    assert all(m.training for m in encoder.modules()), "BatchNorm layers were not put back in train mode"
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, state[key]), f"the penalty changed {key}"


def test_hutchinson_is_close_with_many_samples_and_unbiased() -> None:
    torch.manual_seed(3)
    encoder = Gated(d=8, k=6).double()
    x = torch.randn(4, 8, dtype=torch.float64)
    exact = jacobian_frobenius_sq(encoder, x).item()
    many = jacobian_frobenius_sq(encoder, x, method="hutchinson", samples=4000).item()
    assert many == pytest.approx(exact, rel=0.05)

    estimates = torch.tensor(
        [jacobian_frobenius_sq(encoder, x, method="hutchinson", samples=1).item() for _ in range(400)]
    )
    assert estimates.std() > 0.01 * exact  # a real estimator, not the exact value in disguise
    stderr = estimates.std().item() / math.sqrt(len(estimates))
    assert abs(estimates.mean().item() - exact) < 4 * stderr


def test_one_hutchinson_sample_is_the_projection_of_the_true_jacobian() -> None:
    """One direction takes a plain backward pass, several a batched one: both give ‖vᵀJ‖² per sample."""
    torch.manual_seed(5)
    encoder = Gated(d=8, k=6).double()
    x = torch.randn(4, 8, dtype=torch.float64)
    full = torch.autograd.functional.jacobian(encoder, x)  # (n, k, n, d); samples do not mix
    jacobians = torch.stack([full[i, :, i] for i in range(4)])  # (n, k, d)
    for samples in (1, 3):
        torch.manual_seed(11)
        value = jacobian_frobenius_sq(encoder, x, method="hutchinson", samples=samples).item()
        torch.manual_seed(11)
        v = torch.randn(samples, 4, 6, dtype=torch.float64)
        expected = torch.einsum("snk,nkd->snd", v, jacobians).pow(2).sum() / (4 * samples)
        assert value == pytest.approx(expected.item(), rel=1e-10), samples


def test_gradient_reaches_the_encoder_and_is_the_true_gradient() -> None:
    torch.manual_seed(4)
    model = small_mlp().train()
    encoder = model.encoder
    x = torch.rand(3, 6, dtype=torch.float64)
    reg = model.regularizers["contractive"]
    z = model.encode(x)
    reg.penalty(x, z, model.decode(z), model).backward()
    got = {n: p.grad.clone() for n, p in encoder.named_parameters()}
    weights = [n for n in got if n.endswith("weight")]
    assert weights and all(got[n].abs().sum() > 0 for n in weights)

    # reference: per-sample Jacobians from torch.autograd.functional, differentiated again
    encoder.zero_grad()
    total = sum(
        torch.autograd.functional.jacobian(lambda s: encoder(s.unsqueeze(0)), xs, create_graph=True)
        .pow(2)
        .sum()
        for xs in x
    )
    (1e-4 * total / x.shape[0]).backward()
    for name, p in encoder.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-8, atol=1e-12, msg=name)


def test_no_graph_under_no_grad() -> None:
    torch.manual_seed(5)
    model = small_mlp().eval()
    x = torch.rand(3, 6, dtype=torch.float64)
    with torch.no_grad():
        z = model.encode(x)
        penalty = model.regularizers["contractive"].penalty(x, z, model.decode(z), model)
    assert not penalty.requires_grad
    assert penalty.item() == pytest.approx(1e-4 * fd_jacobian_sq(model.encoder, x), rel=1e-6)


def test_training_with_the_penalty_contracts_the_encoder() -> None:
    torch.manual_seed(6)
    x = torch.rand(64, 6)
    norms = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(7)
        model = compose(
            "mlp",
            regularizers=["contractive"],
            input_shape=(6,),
            latent_dim=3,
            params={"encoder": {"hidden": (16,)}, "contractive": {"weight": weight}},
        ).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(60):
            loss = sum(model.loss_terms(x, nn.functional.mse_loss).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        norms[weight] = jacobian_frobenius_sq(model.encoder, x).item()
    assert norms[1.0] < 0.5 * norms[0.0], norms


def test_timing_mlp_784_512_256_32(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints the cost of one penalty forward+backward; asserts only agreement."""
    torch.manual_seed(8)
    model = compose("mlp", regularizers=["contractive"], input_shape=(1, 28, 28), latent_dim=32).train()
    x = torch.rand(128, 1, 28, 28)
    values = {}
    with capsys.disabled():
        for method, samples in (("exact", 1), ("hutchinson", 1), ("hutchinson", 8)):
            start = time.perf_counter()
            value = jacobian_frobenius_sq(model.encoder, x, method=method, samples=samples)
            value.backward()
            values[method, samples] = value.item()
            print(f"\ncontractive {method}(samples={samples}): {time.perf_counter() - start:.3f} s", end="")
        print()
    assert values["hutchinson", 8] == pytest.approx(values["exact", 1], rel=0.5)
