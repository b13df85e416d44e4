"""Every installed component passes the conformance kit in :mod:`aecore.testing`.

The parameters come from the registry when this module is collected, so a
newly installed plugin is checked with no change here. The second half shows
that the kit does catch broken components.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from aecore import registry, testing
from aecore.components import ImageComponent, RegularizerBase
from aecore.config import param

registry.refresh()
COMPONENTS = {kind: registry.list_components(kind) for kind in registry.KINDS}
#: Defaults are checked at the CLI's default code size: a default that needs more units fails here.
LATENT = 32


def _ids(infos: list[registry.ComponentInfo]) -> list[str]:
    return [c.qualified_name for c in infos]


def _base_pair() -> tuple[str, str] | None:
    """An encoder/decoder pair of the same name to put other components in (mlp if installed)."""
    decoders = {c.name: c for c in COMPONENTS["decoder"]}
    pairs = [(e, decoders[e.name]) for e in COMPONENTS["encoder"] if e.name in decoders]
    pairs.sort(key=lambda p: p[0].name != "mlp")
    return (pairs[0][0].qualified_name, pairs[0][1].qualified_name) if pairs else None


BASE = _base_pair()


def test_shipped_components_are_found():
    for kind, name in [
        ("encoder", "mlp"),
        ("encoder", "conv"),
        ("decoder", "conv"),
        ("regularizer", "sparse"),
    ]:
        assert name in [c.name for c in COMPONENTS[kind]], f"{kind} '{name}' is not installed"
    assert "default" in [c.name for c in COMPONENTS["trainer"]]


@pytest.mark.parametrize("info", COMPONENTS["encoder"], ids=_ids(COMPONENTS["encoder"]))
def test_encoder(info):
    testing.check_encoder(info.load(), latent_dim=LATENT)


@pytest.mark.parametrize("info", COMPONENTS["decoder"], ids=_ids(COMPONENTS["decoder"]))
def test_decoder(info):
    testing.check_decoder(info.load(), latent_dim=LATENT)


@pytest.mark.parametrize("info", COMPONENTS["regularizer"], ids=_ids(COMPONENTS["regularizer"]))
def test_regularizer(info):
    testing.check_regularizer(info.load(), latent_dim=LATENT)


@pytest.mark.parametrize("info", COMPONENTS["trainer"], ids=_ids(COMPONENTS["trainer"]))
def test_trainer(info):
    testing.check_trainer(info.load())


@pytest.mark.parametrize("info", COMPONENTS["encoder"], ids=_ids(COMPONENTS["encoder"]))
def test_encoder_checkpoint_roundtrip(info, tmp_path):
    """With its decoder of the same name if there is one, else the base decoder."""
    decoders = {c.name for c in COMPONENTS["decoder"]}
    if info.name not in decoders and BASE is None:
        pytest.skip("no decoder to pair with")
    decoder = None if info.name in decoders else BASE[1]
    testing.check_checkpoint_roundtrip(info.qualified_name, decoder, latent_dim=LATENT, tmp_path=tmp_path)


@pytest.mark.parametrize("info", COMPONENTS["regularizer"], ids=_ids(COMPONENTS["regularizer"]))
def test_regularizer_checkpoint_roundtrip(info, tmp_path):
    if BASE is None:
        pytest.skip("no encoder/decoder pair installed")
    testing.check_checkpoint_roundtrip(*BASE, [info.qualified_name], latent_dim=LATENT, tmp_path=tmp_path)


# -- the kit catches broken components ---------------------------------------


@dataclass(frozen=True)
class ToyConfig:
    scale: float = param(1.0, "Output scale.")


class ToyEncoder(ImageComponent):
    Config = ToyConfig

    def __init__(self, config, *, input_shape, latent_dim):
        super().__init__(config, input_shape=input_shape, latent_dim=latent_dim)
        self.lin = nn.Linear(int(torch.tensor(self.input_shape).prod()), latent_dim)

    def forward(self, x):
        return self.lin(x.flatten(1)) * self.config.scale


class DropsAUnit(ToyEncoder):
    def forward(self, x):
        return super().forward(x)[:, 1:]


class UnusedLayer(ToyEncoder):
    def __init__(self, config, **context):
        super().__init__(config, **context)
        self.spare = nn.Linear(2, 2)


class Unseeded(ToyEncoder):
    builds = 0

    def __init__(self, config, **context):
        super().__init__(config, **context)
        Unseeded.builds += 1
        nn.init.constant_(self.lin.bias, Unseeded.builds)


class DeadWhenBatched(ToyEncoder):
    def forward(self, x):
        out = super().forward(x)
        return out if not self.training else out.detach() + 0 * out


@dataclass(frozen=True)
class UnstorableConfig:
    name: str = param(None, "A str that defaults to None cannot come back from JSON.")


class UnstorableEncoder(ToyEncoder):
    Config = UnstorableConfig

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_kit_accepts_a_correct_encoder():
    testing.check_encoder(ToyEncoder, input_shape=(2, 3), latent_dim=3)


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (DropsAUnit, r"shape \(1, 2\), expected \(1, 3\)"),
        (UnusedLayer, "'spare.weight' gets no gradient"),
        (Unseeded, "same torch.manual_seed have different weights"),
        (DeadWhenBatched, "'lin.weight' gets an all-zero gradient"),
        (UnstorableEncoder, "cannot be stored and rebuilt"),
        (nn.Linear, "no 'Config' dataclass"),
    ],
)
def test_kit_rejects_a_broken_encoder(cls, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_encoder(cls, input_shape=(2, 3), latent_dim=3)


class FlatDecoder(ImageComponent):
    Config = ToyConfig

    def __init__(self, config, *, input_shape, latent_dim):
        super().__init__(config, input_shape=input_shape, latent_dim=latent_dim)
        self.lin = nn.Linear(latent_dim, int(torch.tensor(self.input_shape).prod()))

    def forward(self, z):
        return self.lin(z)


class ToyDecoder(FlatDecoder):
    def forward(self, z):
        return super().forward(z).unflatten(1, self.input_shape)


def test_kit_checks_decoder_output_shape():
    testing.check_decoder(ToyDecoder, input_shape=(2, 3), latent_dim=3)
    with pytest.raises(AssertionError, match=r"gives shape \(1, 6\), expected \(1, 2, 3\)"):
        testing.check_decoder(FlatDecoder, input_shape=(2, 3), latent_dim=3)
    # the kit names the class, the input and the mode; the rest is torch's own message, whatever its wording
    with pytest.raises(AssertionError, match=r"ToyEncoder on input \(1, 3\) \(eval mode\) fails: \S"):
        testing.check_decoder(ToyEncoder, input_shape=(2, 3), latent_dim=3)


@dataclass(frozen=True)
class WeightConfig:
    weight: float = param(0.5, "Penalty weight.")


class CorruptsInPlace(RegularizerBase):
    Config = WeightConfig

    def transform_input(self, x):
        return x.mul_(0.5)

    def penalty(self, x, z, recon, model):
        return self.config.weight * z.pow(2).mean()


class VectorPenalty(CorruptsInPlace):
    def transform_input(self, x):
        return x

    def penalty(self, x, z, recon, model):
        return self.config.weight * z.pow(2).mean(dim=0)


class DetachedPenalty(VectorPenalty):
    def penalty(self, x, z, recon, model):
        return self.config.weight * z.detach().pow(2).mean()


class ShrinksCode(VectorPenalty):
    def penalty(self, x, z, recon, model):
        return self.config.weight * z.pow(2).mean()

    def transform_code(self, z):
        return z[:, :-1] if self.training else z


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (CorruptsInPlace, "changed its argument in place"),
        (VectorPenalty, r"must return a 0-d tensor, got tensor\(\["),
        (DetachedPenalty, "carries no gradient"),
        (ShrinksCode, r"transform_code \(train mode\) gives shape"),
    ],
)
def test_kit_rejects_a_broken_regularizer(cls, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_regularizer(cls, input_shape=(4,))


class StraightThroughQuantiser(RegularizerBase):
    """A vector-quantisation code written against penalty's z alone: the bug the kit must catch.

    z is the straight-through code ze + (q - ze).detach(), so ``z - ze`` carries no gradient
    and the 'commitment' term below is about 1e-19 with zero gradients everywhere.
    """

    Config = WeightConfig

    def __init__(self, config, *, latent_dim):
        super().__init__(config, latent_dim=latent_dim)
        self.codebook = torch.nn.Parameter(torch.randn(4, latent_dim))
        self.last_raw = None

    def quantise(self, ze):
        return self.codebook[torch.cdist(ze, self.codebook).argmin(dim=1)]

    def transform_code(self, z):
        self.last_raw = z
        return z + (self.quantise(z) - z).detach()

    def penalty(self, x, z, recon, model):
        return self.config.weight * (z - self.last_raw).pow(2).mean()


class AuxQuantiser(StraightThroughQuantiser):
    """The same quantiser through the (code, aux) protocol: it trains the codebook and the encoder."""

    def transform_code(self, z):
        q = self.quantise(z)
        return z + (q - z).detach(), (z, q)

    def penalty(self, x, z, recon, model, *, aux):
        ze, q = aux
        return self.config.weight * ((q - ze.detach()).pow(2).mean() + 0.25 * (ze - q.detach()).pow(2).mean())


def test_kit_rejects_a_penalty_that_moves_no_parameter():
    with pytest.raises(AssertionError, match="zero gradient to every parameter"):
        testing.check_regularizer(StraightThroughQuantiser, input_shape=(4,))


def test_a_penalty_gets_the_aux_its_transform_code_returned():
    reg = testing.check_regularizer(AuxQuantiser, input_shape=(4,))
    model = compose_toy(reg)
    x = torch.rand(6, 4)
    z, aux = model.encode_with_aux(x)
    ze, q = aux["reg"]
    assert torch.equal(ze, model.encoder(x))
    torch.testing.assert_close(z, q)  # the code the decoder saw is q (straight through)
    terms = model.train().loss_terms(x, lambda r, t: ((r - t) ** 2).mean())
    terms["reg"].backward()
    assert reg.codebook.grad.abs().sum() > 0  # the codebook learns from the aux term
    assert model.encoder[1].weight.grad.abs().sum() > 0  # and so does the encoder (commitment)


def test_transform_code_returning_a_triple_is_a_clear_error():
    class Triple(AuxQuantiser):
        def transform_code(self, z):
            return z, z, z

    with pytest.raises(AssertionError, match=r"code or \(code, aux\)"):
        testing.check_regularizer(Triple, input_shape=(4,))


def compose_toy(reg):
    from aecore.model import Autoencoder, ComponentSpec, ModelSpec

    toy = ComponentSpec("linear", "test", "0", {})
    spec = ModelSpec((4,), reg.latent_dim, toy, toy, [ComponentSpec("reg", "test", "0", {})])
    encoder = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(4, reg.latent_dim))
    return Autoencoder(encoder, torch.nn.Linear(reg.latent_dim, 4), {"reg": reg}, spec)


def test_kit_checks_that_loss_targets_the_clean_input(monkeypatch):
    from aecore.model import Autoencoder

    class Noisy(ShrinksCode):
        def transform_input(self, x):
            return x + 0.1

        def transform_code(self, z):
            return z

    testing.check_regularizer(Noisy, input_shape=(4,))

    def loss_on_noisy_target(self, x, loss_fn):  # what a broken core would do
        x_in = self.regularizers["reg"].transform_input(x)
        recon = self(x_in)
        return {"recon": loss_fn(recon, x_in), "reg": torch.zeros(())}

    monkeypatch.setattr(Autoencoder, "loss_terms", loss_on_noisy_target)
    with pytest.raises(AssertionError, match="clean input"):
        testing.check_regularizer(Noisy, input_shape=(4,))


NONPERSISTENT = '''
import torch
from aecore_mlp import MLPEncoder


class RandomBuffer(MLPEncoder):
    """Adds a random offset kept out of the state dict: reloading cannot restore it."""

    def __init__(self, config, **context):
        super().__init__(config, **context)
        self.register_buffer("offset", torch.randn(self.latent_dim), persistent=False)

    def forward(self, x):
        return super().forward(x) + self.offset
'''


def test_kit_catches_state_lost_by_a_checkpoint(make_dist, tmp_path):
    make_dist(
        "aefake-buffer",
        {"aecore.encoders": {"buffered": "aefake_buffer:RandomBuffer"}},
        modules={"aefake_buffer": NONPERSISTENT},
    )
    with pytest.raises(AssertionError, match="outputs differ"):
        testing.check_checkpoint_roundtrip("buffered", "mlp", params={"encoder": {"hidden": [8]}})
