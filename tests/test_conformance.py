"""Every installed component passes the conformance kit in :mod:`aecore.testing`.

The parameters come from the registry when this module is collected, so a
newly installed plugin is checked with no change here. The rest shows that
the kit accepts a correct plugin of every kind and catches broken ones.
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import dataclass, replace
from typing import ClassVar

import pytest
import torch
import typer
from torch import nn

from aecore import registry, testing
from aecore.components import ImageComponent, RegularizerBase
from aecore.config import param
from aecore.data import Dataset, TensorData
from aecore.hooks import hookimpl
from aecore.presets import Preset

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
def test_trainer(info, ae_run_dir):
    result = testing.check_trainer(info.load(), directory=ae_run_dir)
    assert result.metrics["epoch"] == 2  # the kit's two epochs, where the trainer takes an epoch count


@pytest.mark.parametrize("info", COMPONENTS["hook"], ids=_ids(COMPONENTS["hook"]))
def test_hook(info, ae_run_dir):
    testing.check_hook(info.load(), directory=ae_run_dir)


@pytest.mark.parametrize("info", COMPONENTS["loss"], ids=_ids(COMPONENTS["loss"]))
def test_loss(info):
    testing.check_loss(info.load())


@pytest.mark.parametrize("info", COMPONENTS["backend"], ids=_ids(COMPONENTS["backend"]))
def test_backend(info, ae_run_dir):
    testing.check_backend(info.load(), directory=ae_run_dir)


@pytest.mark.parametrize("info", COMPONENTS["command"], ids=_ids(COMPONENTS["command"]))
def test_command(info):
    testing.check_command(info.load(), name=info.name)


@pytest.mark.parametrize("info", COMPONENTS["preset"], ids=_ids(COMPONENTS["preset"]))
def test_preset(info):
    testing.check_preset(info.load())


def test_embedded_dataset():
    dataset = testing.check_dataset(registry.get("dataset", "aecore:embedded"))
    assert dataset.train.shape == (1, 28, 28)


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


@dataclass(frozen=True)
class PatienceConfig:
    weight: float = param(0.5, "Penalty weight.")
    patience: int = param(100, "Training batches before the penalty acts.")


class Patient(RegularizerBase):
    """A penalty that acts only after ``patience`` training batches: zero in a fresh model."""

    Config = PatienceConfig

    def __init__(self, config, *, latent_dim):
        super().__init__(config, latent_dim=latent_dim)
        self.seen = 0

    def penalty(self, x, z, recon, model):
        self.seen += 1
        if self.seen <= self.config.patience:
            return torch.zeros(())
        return self.config.weight * z.pow(2).mean()


class DeclaresItsCheck(Patient):
    conformance_params: ClassVar[dict[str, int]] = {"patience": 0}


def test_kit_checks_a_history_dependent_penalty_under_its_declared_settings():
    with pytest.raises(AssertionError, match="carries no gradient"):
        testing.check_regularizer(Patient, input_shape=(4,))  # zero at first: looks like it trains nothing
    assert testing.check_regularizer(DeclaresItsCheck, input_shape=(4,)).config.patience == 0
    with pytest.raises(AssertionError, match="carries no gradient"):  # explicit params win
        testing.check_regularizer(DeclaresItsCheck, input_shape=(4,), params={"patience": 5})


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


# -- trainers ---------------------------------------------------------------------


@dataclass(frozen=True)
class SGDConfig:
    epochs: int = param(2, "Passes over the data.")
    lr: float = param(0.5, "Learning rate.")


class SGDTrainer:
    """A third party's minimal trainer: plain SGD, one ae_epoch_end per epoch."""

    Config = SGDConfig

    def __init__(self, config):
        self.config = config

    def fit(self, model, train, val, run):
        optimizer = torch.optim.SGD(model.parameters(), lr=self.config.lr)
        metrics = {}
        for epoch in range(1, self.config.epochs + 1):
            for xb in train.batches(16):
                optimizer.zero_grad()
                loss = sum(model(xb, loss_fn=run.loss_fn).values())
                loss.backward()
                self.update(optimizer)
            metrics = self.metrics(epoch, loss.item())
            run.hooks.ae_epoch_end(run=run, epoch=epoch, metrics=dict(metrics))
        return metrics

    def update(self, optimizer):
        optimizer.step()

    def metrics(self, epoch, loss):
        return {"epoch": epoch, "train_loss": loss}


class LazyTrainer(SGDTrainer):
    def update(self, optimizer):
        pass


class CountsFromZero(SGDTrainer):
    def metrics(self, epoch, loss):
        return {"epoch": epoch - 1, "train_loss": loss}


class NaNMetrics(SGDTrainer):
    def metrics(self, epoch, loss):
        return {"epoch": epoch, "train_loss": math.nan}


class Silent(SGDTrainer):
    def fit(self, model, train, val, run):
        return {"train_loss": 0.5}


def test_kit_trains_a_correct_third_party_trainer(tmp_path):
    result = testing.check_trainer(SGDTrainer, params={"epochs": 3}, directory=tmp_path / "run")
    assert result.metrics["epoch"] == 3 and result.checkpoint == tmp_path / "run" / "model.safetensors"
    assert result.checkpoint.is_file()  # a directory the caller gives is kept
    assert result.model.spec.encoder.qualified_name == "aecore-testing:linear"
    assert "SGDTrainer" not in registry.names("trainer")  # registered only while the check ran


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (LazyTrainer, "did not change the model's weights"),
        (CountsFromZero, r"metrics\['epoch'\] = \[0, 1\]; expected 1, 2"),
        (NaNMetrics, "metrics that are not finite numbers: {'train_loss': nan}"),
        (Silent, "never fired ae_epoch_end"),
        (ToyEncoder, "not a valid trainer: it has no 'fit' method"),
    ],
)
def test_kit_rejects_a_broken_trainer(cls, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_trainer(cls)


def test_kit_leaves_the_random_state_alone(ae_run_dir):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    testing.check_trainer(SGDTrainer, directory=ae_run_dir)
    testing.check_loss(torch.nn.functional.mse_loss)
    assert torch.equal(torch.rand(3), expected)


# -- hooks --------------------------------------------------------------------------


class EpochCounter:
    def __init__(self):
        self.epochs = []
        self.saved = []

    @hookimpl
    def ae_epoch_end(self, run, epoch, metrics):
        self.epochs.append(epoch)

    @hookimpl
    def ae_checkpoint_saved(self, run, path, metrics):
        self.saved.append(path.name)


class WrongArgument:
    @hookimpl
    def ae_epoch_end(self, run, epoch, metrix):
        pass


class MisspeltHook:
    @hookimpl
    def ae_epoch_ended(self, run, epoch, metrics):
        pass


class RaisesMidRun(EpochCounter):
    @hookimpl
    def ae_step_end(self, run, epoch, step, batch_size, loss):
        raise RuntimeError("logger lost its connection")


class NoHooks:
    def ae_epoch_end(self, run, epoch, metrics):  # not marked with hookimpl
        pass


def test_kit_runs_a_correct_hook_in_a_real_training(ae_run_dir):
    hook = EpochCounter()
    result = testing.check_hook(hook, epochs=3, directory=ae_run_dir)
    assert hook.epochs == [1, 2, 3]
    assert hook.saved[-1] == "model.safetensors" and result.checkpoint.parent == ae_run_dir


def test_kit_creates_a_hook_class_and_keeps_a_passing_run(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the kit's own folders go
    result = testing.check_hook(EpochCounter)  # a class, as an entry point names it, is created first
    assert result.checkpoint.is_file() and result.run_dir.parent.parent == tmp_path
    with pytest.raises(AssertionError):
        testing.check_hook(RaisesMidRun)
    assert [p.name for p in tmp_path.iterdir()] == [result.run_dir.parent.name]  # a failed run is removed


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (WrongArgument(), "WrongArgument does not match the hook specification"),
        (MisspeltHook(), "MisspeltHook does not match the hook specification"),
        (RaisesMidRun(), "RaisesMidRun failed in a real training run"),
        (NoHooks(), "implements no hook"),
    ],
)
def test_kit_rejects_a_broken_hook(plugin, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_hook(plugin)


# -- backends -----------------------------------------------------------------------


@dataclass(frozen=True)
class BackendConfig:
    lr_scale: float = param(1.0, "Multiplies the learning rate.")


class AutogradBackend:
    """A correct backend: SGD, and a step that is autograd itself."""

    Config = BackendConfig

    def __init__(self, config):
        self.config = config

    def probe(self, device):
        return None

    def prepare(self, model, device):
        return model

    def optimizer(self, params, *, lr, weight_decay):
        return torch.optim.SGD(params, lr=lr * self.config.lr_scale, weight_decay=weight_decay)

    def step(self, model, loss_fn):
        def step(x):
            terms = model(x, loss_fn=loss_fn)
            sum(terms.values()).backward()
            return {k: v.detach() for k, v in terms.items()}

        return step


class DoubledGradients(AutogradBackend):
    def step(self, model, loss_fn):
        inner = super().step(model, loss_fn)

        def step(x):
            terms = inner(x)
            for p in model.parameters():
                p.grad.mul_(2)
            return terms

        return step


class RenamedTerms(AutogradBackend):
    def step(self, model, loss_fn):
        inner = super().step(model, loss_fn)
        return lambda x: {"loss": inner(x)["recon"]}


class PartialOptimizer(AutogradBackend):
    def optimizer(self, params, *, lr, weight_decay):
        return torch.optim.SGD(list(params)[:1], lr=lr)


class ProbeSaysZero(AutogradBackend):
    def probe(self, device):
        return 0


class PreparesAModule(AutogradBackend):
    def prepare(self, model, device):
        return nn.Sequential(model)


class ServesNothing(AutogradBackend):
    def probe(self, device):
        return "it needs hardware this machine lacks"

    def prepare(self, model, device):
        raise AssertionError("prepare must not run when the probe says no")


def test_kit_accepts_a_correct_backend_and_one_that_steps_aside(ae_run_dir):
    backend = testing.check_backend(AutogradBackend, params={"lr_scale": 2.0}, directory=ae_run_dir)
    assert backend.config.lr_scale == 2.0
    testing.check_backend(ServesNothing)


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (DoubledGradients, r"gradient of 'encoder\.net\.1\.weight' differs from autograd's"),
        (RenamedTerms, r"gives loss terms \['loss'\], but the model's are \['recon'\]"),
        (PartialOptimizer, "not exactly the 4 parameters given"),
        (ProbeSaysZero, "must return None .* or a reason"),
        (PreparesAModule, "must return an aecore Autoencoder, got Sequential"),
    ],
)
def test_kit_rejects_a_broken_backend(cls, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_backend(cls)


# -- losses -------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightedConfig:
    weight: float = param(2.0, "Multiplies the error.")


class WeightedMSE:
    Config = WeightedConfig

    def __init__(self, config):
        self.config = config

    def __call__(self, recon, target):
        return self.config.weight * ((recon - target) ** 2).mean()


def per_sample(recon, target):
    return ((recon - target) ** 2).flatten(1).mean(dim=1)


def summed(recon, target):
    return ((recon - target) ** 2).sum()


def detached(recon, target):
    return ((recon.detach() - target) ** 2).mean()


def rewards_error(recon, target):
    return -((recon - target) ** 2).mean()


def shifts_target(recon, target):
    target.add_(0.01)
    return ((recon - target) ** 2).mean()


def test_kit_accepts_a_loss_function_and_a_loss_class():
    assert testing.check_loss(torch.nn.functional.mse_loss) is torch.nn.functional.mse_loss
    built = testing.check_loss(WeightedMSE, params={"weight": "0.5"})
    assert built.config.weight == 0.5


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (per_sample, r"must return a 0-d tensor, got a tensor of shape \(4,\)"),
        (summed, "is not a mean over the batch"),
        (detached, "carries no gradient"),
        (rewards_error, "costs a perfect reconstruction"),
        (shifts_target, "changed its arguments in place"),
        (42, "not a valid loss"),
    ],
)
def test_kit_rejects_a_broken_loss(loss, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_loss(loss)


def test_kit_refuses_parameters_for_a_loss_function():
    with pytest.raises(AssertionError, match="takes no parameters"):
        testing.check_loss(torch.nn.functional.mse_loss, params={"weight": 2})


# -- data sources -------------------------------------------------------------------


@dataclass(frozen=True)
class SourceConfig:
    n_test: int = param(16, "Test samples.")


class TinySource:
    """A correct data source (it takes a location, which it records as given)."""

    Config = SourceConfig
    takes_location = True

    def __init__(self, config):
        self.config = config

    def locate(self, location, data_dir):
        return str(location)

    def files(self, location, *, data_dir):
        return []

    def load(self, location, *, data_dir, normalisation):
        return testing.tiny_dataset(n_test=self.config.n_test)


class ShapeDiffers(TinySource):
    def load(self, location, *, data_dir, normalisation):
        data = super().load(location, data_dir=data_dir, normalisation=normalisation)
        data.test = TensorData(torch.rand(4, 1, 9, 9))
        return data


class ShufflesAtRandom(TinySource):
    def load(self, location, *, data_dir, normalisation):
        data = super().load(location, data_dir=data_dir, normalisation=normalisation)
        data.train = data.train.subset(torch.randperm(len(data.train))[:32])
        return data


class UnstorableNormalisation(TinySource):
    def load(self, location, *, data_dir, normalisation):
        data = super().load(location, data_dir=data_dir, normalisation=normalisation)
        data.train.normalisation = {"kind": "scale", "divisor": torch.tensor(255.0)}
        return data


class ForgetsOnReload(TinySource):
    """Rescales its data when a trained model hands its normalisation back."""

    def load(self, location, *, data_dir, normalisation):
        data = super().load(location, data_dir=data_dir, normalisation=normalisation)
        if normalisation is not None:
            data.train = TensorData(data.train.x // 2, data.train.y, data.train.normalisation)
        return data


class LocatesAPath(TinySource):
    def locate(self, location, data_dir):
        from pathlib import Path

        return Path(location)


class EmptyTrain(TinySource):
    def load(self, location, *, data_dir, normalisation):
        data = super().load(location, data_dir=data_dir, normalisation=normalisation)
        return Dataset(data.name, data.train.subset(torch.arange(0)), data.test, data.spec)


def test_kit_accepts_a_correct_data_source():
    dataset = testing.check_dataset(TinySource, "anywhere", params={"n_test": "8"})
    assert (len(dataset.train), len(dataset.test), dataset.train.shape) == (64, 8, (1, 8, 8))


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (ShapeDiffers, r"shaped \(1, 8, 8\) in train but \(1, 9, 9\) in test"),
        (ShufflesAtRandom, "loads different data each time"),
        (UnstorableNormalisation, "normalisation a checkpoint cannot store"),
        (ForgetsOnReload, "gives different data"),
        (LocatesAPath, "locate returned PosixPath, not a str"),
        (EmptyTrain, "train split is empty"),
    ],
)
def test_kit_rejects_a_broken_data_source(cls, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_dataset(cls, "anywhere")


def test_kit_checks_whether_a_data_source_takes_a_location():
    with pytest.raises(AssertionError, match="takes a location"):
        testing.check_dataset(TinySource)
    with pytest.raises(AssertionError, match="takes no location"):
        testing.check_dataset(registry.get("dataset", "embedded"), "somewhere")


# -- commands -----------------------------------------------------------------------


def greet(name: str = "world") -> None:
    """Say hello: a correct command."""
    typer.echo(f"hello {name}")


def undocumented(name: str = "world") -> None:
    typer.echo(name)


def unconvertible(value: object) -> None:
    """Takes a parameter type no command line can give."""


group = typer.Typer(help="A group of commands.")
group.command()(greet)
group.command("again")(greet)


def test_kit_accepts_a_command_function_and_a_typer_app():
    command = testing.check_command(greet, name="greet")
    assert command.name == "greet"
    testing.check_command(group, name="group")


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (42, "not a valid command: it is a int, which cannot be called"),
        (undocumented, "no one-line help that 'ae --help' can read"),
        (unconvertible, "unconvertible cannot be made a command"),
    ],
)
def test_kit_rejects_a_broken_command(command, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_command(command)


# -- presets ------------------------------------------------------------------------

#: The kit's linear pair on 8×8 images with 4 units, no biases: 64·4 weights each way.
LINEAR = Preset("aecore-testing:linear", 4, params={"encoder": {"bias": False}}, input_shape=(1, 8, 8))


def test_kit_accepts_a_correct_preset(ae_registry):
    ae_registry.register("encoder", "linear", testing.LinearEncoder, dist="aecore-testing")
    ae_registry.register("decoder", "linear", testing.LinearDecoder, dist="aecore-testing")
    model = testing.check_preset(replace(LINEAR, reference_params=512))
    assert model.num_parameters() == 512  # the decoder mirrors the encoder's bias=False
    assert testing.check_preset(LINEAR, input_shape=(1, 4, 4)).input_shape == (1, 4, 4)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"params": {"encoder": {"width": 3}}}, "encoder parameters that do not fit: unknown parameter"),
        ({"params": {"sparse": {"weight": 1}}}, "sets parameters for 'sparse', which is not one of"),
        ({"encoder": "nosuch"}, "names a component that cannot be found: unknown encoder 'nosuch'"),
        ({"reference_params": 500}, "gives 512 parameters on (1, 8, 8), but its reference_params says 500"),
        ({"latent_dim": 0}, "latent_dim 0"),
    ],
)
def test_kit_rejects_a_broken_preset(ae_registry, changes, message):
    ae_registry.register("encoder", "linear", testing.LinearEncoder, dist="aecore-testing")
    ae_registry.register("decoder", "linear", testing.LinearDecoder, dist="aecore-testing")
    with pytest.raises(AssertionError, match=re.escape(message)):
        testing.check_preset(replace(LINEAR, **changes))


def test_kit_rejects_what_is_not_a_preset():
    with pytest.raises(AssertionError, match="not an aecore Preset"):
        testing.check_preset({"encoder": "mlp", "latent_dim": 4})


# -- the kit's own components -------------------------------------------------------


def test_kit_components_pass_the_kit():
    testing.check_encoder(testing.LinearEncoder, input_shape=(1, 8, 8), latent_dim=4)
    testing.check_decoder(testing.LinearDecoder, input_shape=(1, 8, 8), latent_dim=4)
    out = testing.LinearDecoder(testing.LinearConfig(), input_shape=(1, 8, 8), latent_dim=4)(
        torch.randn(3, 4)
    )
    assert out.min() > 0 and out.max() < 1  # sigmoid outputs, like pixels


def test_tiny_dataset_is_the_same_whatever_the_random_state():
    torch.manual_seed(1)
    first = testing.tiny_dataset()
    torch.manual_seed(2)
    second = testing.tiny_dataset()
    assert torch.equal(first.train.x, second.train.x) and first.train.x.dtype == torch.uint8
    assert set(first.train.y.tolist()) == {0, 1}


# -- InterruptAt: Ctrl-C at a chosen point, for a plugin's resume tests -----------------


def _kit_run(out, hooks=(), *, resume_from=None):
    from aecore.training import resume, train

    with (
        registry.registered("encoder", "kit-lin", testing.LinearEncoder),
        registry.registered("decoder", "kit-lin", testing.LinearDecoder),
    ):
        if resume_from is not None:
            return resume(resume_from, data=testing.tiny_dataset(), progress=False)
        return train(
            encoder="kit-lin",
            data=testing.tiny_dataset(),
            latent_dim=4,
            params={"trainer": {"epochs": 3, "batch_size": 16}},
            out=out,
            progress=False,
            hooks=hooks,
        )


@pytest.mark.parametrize(("at", "saved"), [((1, 0), (1, 1)), ((2, 2), (2, 3)), ((2, None), (3, 0))])
def test_interrupt_at_stops_the_run_where_asked_and_it_resumes_to_the_same_weights(tmp_path, at, saved):
    from aecore.state import read_resume
    from aecore.training.default import TrainingInterrupted

    reference = _kit_run(tmp_path / "reference")
    hook = testing.InterruptAt(*at)
    with pytest.raises(TrainingInterrupted):
        _kit_run(tmp_path / "run", [hook])
    assert hook.fired
    state = read_resume(tmp_path / "run")
    assert (state.trainer["epoch"], state.trainer["step"]) == saved
    resumed = _kit_run(tmp_path / "run", resume_from=tmp_path / "run")
    ref, got = reference.model.state_dict(), resumed.model.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_interrupt_at_a_point_the_run_never_reaches_does_nothing(tmp_path):
    hook = testing.InterruptAt(9, 0)
    result = _kit_run(tmp_path / "run", [hook])
    assert not hook.fired and [m["epoch"] for m in result.history] == [1, 2, 3]


def test_interrupt_at_fires_once_even_if_its_point_comes_again(monkeypatch):
    import os
    import signal

    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    hook = testing.InterruptAt(1, 0)
    hook.ae_step_end(epoch=1, step=0)
    hook.ae_step_end(epoch=1, step=0)  # a resumed run replaying the step is not stopped again
    hook.ae_epoch_end(epoch=1)
    assert sent == [(os.getpid(), signal.SIGINT)] and hook.fired
