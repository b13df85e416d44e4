"""Chain discovery: plain torch models are read by structure, and anything more than a chain is refused."""

from __future__ import annotations

import pytest
import torch
from fastcpu_helpers import Flattening, Reshaping, wrap
from torch import Tensor, nn

from aecore.composition import compose
from aecore.model import Autoencoder
from aecore_fastcpu import FastCPU
from aecore_fastcpu.chain import find_chain

CPU = torch.device("cpu")


def test_the_simple_preset_model_is_one_chain(simple):
    chain = find_chain(simple)
    assert chain is not None
    linears = [m for m in simple.modules() if type(m) is nn.Linear]
    assert [m for m, _ in chain.layers] == linears  # the model's own layers, in order
    assert [act for _, act in chain.layers] == ["relu"] * 5 + ["sigmoid"]
    assert [type(f) for f in chain.before] == [nn.Flatten]
    assert [type(f) for f in chain.after] == [nn.Unflatten]
    assert set(chain.modules) == set(simple.modules())


def test_reshapes_by_method_and_function_with_constant_arguments_are_part_of_a_chain():
    model = wrap(Flattening(), Reshaping())
    chain = find_chain(model)
    assert chain is not None
    assert [(m, act) for m, act in chain.layers] == [
        (model.encoder.lin, "tanh"),
        (model.decoder.lin, "sigmoid"),
    ]
    x = torch.rand(5, 1, 4, 4)
    h = chain.before[0](x)
    assert h.shape == (5, 16)
    assert chain.after[0](torch.zeros(5, 16)).shape == (5, 1, 4, 4)


@pytest.mark.parametrize(
    "encoder",
    [{"batch_norm": True}, {"dropout": 0.1}, {"residual": True}, {"activation": "leaky_relu"}],
    ids=["batch-norm", "dropout", "residual", "leaky-relu"],
)
def test_mlp_blocks_with_more_than_linear_layers_and_activations_are_not_a_chain(make_mlp, encoder):
    assert find_chain(make_mlp(encoder=encoder)) is None


def test_a_regularizer_or_a_convolutional_model_is_not_a_chain(make_mlp):
    assert find_chain(make_mlp("sparse")) is None
    torch.manual_seed(0)
    assert find_chain(compose("conv", input_shape=(1, 8, 8), latent_dim=4)) is None


class _DataDependent(nn.Module):
    """fx cannot trace a branch on a tensor's value."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.lin(x.flatten(1))
        return h if h.sum() > 0 else -h


class _ShapeFromInput(nn.Module):
    """``view(x.shape[0], -1)``: a reshape whose argument is computed, not a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x.view(x.shape[0], -1))


class _OwnWeight(nn.Module):
    """A parameter used directly: a product fx sees as a function of two tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 3))

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight


class _Scaled(nn.Linear):
    """A Linear subclass with its own forward: not torch's Linear."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * super().forward(x)


class _Twice(nn.Module):
    """One layer applied twice: autograd sums its two gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, z: Tensor) -> Tensor:
        return self.lin(self.lin(z))


def _linear_decoder() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 16), nn.Sigmoid(), nn.Unflatten(1, (1, 4, 4)))


@pytest.mark.parametrize(
    "build",
    [
        lambda: wrap(_DataDependent(), _linear_decoder()),
        lambda: wrap(_ShapeFromInput(), _linear_decoder()),
        lambda: wrap(_OwnWeight(), _linear_decoder()),
        lambda: wrap(nn.Sequential(nn.Flatten(), _Scaled(16, 3)), _linear_decoder()),
        lambda: wrap(
            nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), nn.Sequential(_Twice(), _linear_decoder())
        ),
        lambda: wrap(nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.ReLU(), nn.ReLU()), _linear_decoder()),
        lambda: wrap(
            nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), nn.Sequential(nn.Flatten(), _linear_decoder())
        ),
        lambda: wrap(nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(16, 3)), _linear_decoder()),
        lambda: wrap(nn.Flatten(), nn.Unflatten(1, (1, 4, 4)), latent=16),
    ],
    ids=[
        "untraceable",
        "computed-shape",
        "own-weight",
        "linear-subclass",
        "layer-used-twice",
        "two-activations",
        "reshape-between-layers",
        "activation-first",
        "no-linear-layer",
    ],
)
def test_anything_but_reshapes_around_a_run_of_layers_is_not_a_chain(build):
    torch.manual_seed(0)
    assert find_chain(build()) is None


def test_a_model_class_that_computes_its_loss_its_own_way_is_not_a_chain(make_mlp):
    class Weighted(Autoencoder):
        def loss_terms(self, x, loss_fn):
            return {"recon": 2 * loss_fn(self(x), x)}

    model = make_mlp()
    model.__class__ = Weighted
    assert find_chain(model) is None


def test_tracing_leaves_each_modules_mode_as_it_was(make_mlp):
    model = make_mlp()
    model.eval()
    model.decoder.train()
    modes = {name: m.training for name, m in model.named_modules()}
    assert find_chain(model) is not None
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_the_backend_traces_once_in_prepare_and_reuses_it(make_mlp, monkeypatch):
    import aecore_fastcpu.backend as backend_module

    calls = []
    real = backend_module.find_chain
    monkeypatch.setattr(backend_module, "find_chain", lambda m: calls.append(m) or real(m))
    backend = FastCPU()
    model = make_mlp()
    assert backend.prepare(model, CPU) is model
    assert backend.step(model, torch.nn.functional.mse_loss) is not None
    assert backend.step(model, torch.nn.functional.l1_loss) is not None
    assert calls == [model]
