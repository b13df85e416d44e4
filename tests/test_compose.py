"""Composing encoders, decoders and regularizers into one model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aecore.composition import compose
from aecore.config import config_to_dict
from aecore.errors import ConfigError, ShapeError, UnknownComponentError
from aecore.losses import build_loss
from aecore.model import Autoencoder, ModelSpec

MNIST = (1, 28, 28)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_conv_encoder_mlp_decoder_round_trips_shapes():
    model = compose(
        "conv",
        "mlp",
        input_shape=MNIST,
        latent_dim=12,
        params={"encoder": {"channels": "8,16"}, "decoder": {"hidden": "20"}},
    )
    assert isinstance(model, Autoencoder)
    x = torch.rand(3, *MNIST)
    z = model.encode(x)
    assert z.shape == (3, 12)
    out = model(x)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1  # the default decoder output is a sigmoid
    assert model.spec.encoder.name == "conv" and model.spec.encoder.dist == "aecore-conv"
    assert model.spec.decoder.name == "mlp" and model.spec.decoder.dist == "aecore-mlp"
    assert model.spec.encoder.params["channels"] == [8, 16]
    assert model.spec.decoder.params["hidden"] == [20]
    assert model.compression_ratio == pytest.approx(784 / 12)


def test_mlp_encoder_conv_decoder_round_trips_shapes():
    model = compose(
        "mlp", "conv", input_shape=(3, 32, 32), latent_dim=10, params={"encoder": {"hidden": "24"}}
    )
    x = torch.rand(2, 3, 32, 32)
    assert model.encode(x).shape == (2, 10)
    assert model(x).shape == (2, 3, 32, 32)
    # the conv decoder is not the mlp encoder's counterpart: mlp params must not leak into it
    assert "hidden" not in model.spec.decoder.params


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 27, 29), (2, 9, 9), (3, 32, 32)])
def test_conv_counterpart_restores_odd_sizes(shape):
    model = compose("conv", input_shape=shape, latent_dim=4, params={"encoder": {"channels": "4,4"}})
    assert model(torch.rand(2, *shape)).shape == (2, *shape)


def test_mlp_on_tabular_data():
    model = compose("mlp", input_shape=(20,), latent_dim=3, params={"encoder": {"hidden": "8"}})
    assert model(torch.rand(5, 20)).shape == (5, 20)


def test_counterpart_decoder_mirrors_encoder_params():
    model = compose(
        "mlp", input_shape=MNIST, latent_dim=8, params={"encoder": {"hidden": "64", "activation": "tanh"}}
    )
    assert model.spec.decoder.name == "mlp"
    assert model.decoder.config.hidden == (64,)
    assert model.decoder.config.activation == "tanh"
    # encoder-only params are not passed on
    assert "code_activation" not in model.spec.decoder.params
    widths = [m.out_features for m in model.decoder.modules() if isinstance(m, nn.Linear)]
    assert widths == [64, 784]


def test_explicit_decoder_params_win_over_mirrored_ones():
    model = compose(
        "conv",
        input_shape=MNIST,
        latent_dim=8,
        params={"encoder": {"channels": "8,16"}, "decoder": {"channels": "4,4", "output_activation": "none"}},
    )
    assert model.encoder.config.channels == (8, 16)
    assert model.decoder.config.channels == (4, 4)
    assert model.decoder.config.output_activation == "none"


def test_counterpart_mirroring_applies_with_explicit_same_name_decoder():
    model = compose("conv", "conv", input_shape=MNIST, latent_dim=8, params={"encoder": {"channels": "8"}})
    assert model.decoder.config.channels == (8,)


@pytest.mark.parametrize("latent_dim", [0, -3])
def test_non_positive_latent_size(latent_dim):
    with pytest.raises(ShapeError, match=f"latent size must be positive, got {latent_dim}"):
        compose("mlp", input_shape=MNIST, latent_dim=latent_dim)


@pytest.mark.parametrize("shape", [(), (1, 0, 28), (-1,)])
def test_invalid_input_shape(shape):
    with pytest.raises(ShapeError, match="is not valid"):
        compose("mlp", input_shape=shape, latent_dim=4)


def test_conv_encoder_on_tabular_shape_explains():
    with pytest.raises(ShapeError) as excinfo:
        compose("conv", "mlp", input_shape=(20,), latent_dim=4)
    message = str(excinfo.value)
    assert "conv encoder needs images shaped C×H×W" in message
    assert "(20,)" in message
    assert "mlp" in message  # names the fix


def test_conv_decoder_on_tabular_shape_explains():
    with pytest.raises(ShapeError, match="conv decoder needs images shaped C×H×W"):
        compose("mlp", "conv", input_shape=(20,), latent_dim=4)


def test_image_too_small_for_conv_stages():
    with pytest.raises(ShapeError) as excinfo:
        compose("conv", input_shape=(1, 4, 4), latent_dim=4, params={"encoder": {"channels": "8,8,8"}})
    message = str(excinfo.value)
    assert "4×4 image is too small" in message and "3 stride-2" in message
    assert "at most 2 channels entries" in message and "\n" not in message
    # with fewer stages the same image works
    model = compose("conv", input_shape=(1, 4, 4), latent_dim=4, params={"encoder": {"channels": "8"}})
    assert model(torch.rand(1, 1, 4, 4)).shape == (1, 1, 4, 4)


def test_params_for_a_component_not_in_the_model():
    with pytest.raises(ConfigError) as excinfo:
        compose("mlp", input_shape=MNIST, latent_dim=4, params={"sparse": {"weight": 1.0}})
    message = str(excinfo.value)
    assert "'sparse', which is not a component of this model" in message
    assert "regularizer names (none)" in message
    # the same params are accepted once sparse is part of the model
    model = compose(
        "mlp", regularizers=["sparse"], input_shape=MNIST, latent_dim=4, params={"sparse": {"weight": 1.0}}
    )
    assert model.regularizers["sparse"].config.weight == 1.0


def test_bad_component_param_is_named_with_its_owner():
    with pytest.raises(ConfigError, match=r"unknown parameter 'encoder\.hiden'\. Did you mean: hidden\?"):
        compose("mlp", input_shape=MNIST, latent_dim=4, params={"encoder": {"hiden": "8"}})
    with pytest.raises(ConfigError, match=r"'decoder\.output_activation'"):
        compose("mlp", input_shape=MNIST, latent_dim=4, params={"decoder": {"output_activation": "softmax"}})


def test_regularizer_listed_twice():
    with pytest.raises(ConfigError, match="listed twice"):
        compose("mlp", regularizers=["sparse", "sparse"], input_shape=MNIST, latent_dim=4)


def test_unknown_names():
    with pytest.raises(UnknownComponentError, match="Did you mean: conv"):
        compose("cnv", input_shape=MNIST, latent_dim=4)
    with pytest.raises(UnknownComponentError, match="unknown regularizer 'sprase'"):
        compose("mlp", regularizers=["sprase"], input_shape=MNIST, latent_dim=4)


def test_encoder_without_counterpart_needs_a_decoder(make_dist, encoder_source):
    make_dist(
        "aefake-solo",
        {"aecore.encoders": {"solo": "aefake_solo:FakeEncoder"}},
        modules={"aefake_solo": encoder_source()},
    )
    with pytest.raises(ConfigError) as excinfo:
        compose("solo", input_shape=MNIST, latent_dim=4)
    assert "no decoder of the same name" in str(excinfo.value)
    installed = str(excinfo.value).split("installed decoders: ")[1]
    assert "conv" in installed and "mlp" in installed
    model = compose("solo", "mlp", input_shape=MNIST, latent_dim=4, params={"encoder": {"scale": "0.5"}})
    assert model.spec.encoder.dist == "aefake-solo"
    assert "scale" not in model.spec.decoder.params  # not mirrored: a different component


def test_encoder_with_wrong_code_size_is_caught_by_dry_run(make_dist):
    source = """
    from dataclasses import dataclass
    from torch import nn
    from aecore.components import ImageComponent

    @dataclass(frozen=True)
    class C:
        pass

    class Wrong(ImageComponent):
        Config = C

        def __init__(self, config, *, input_shape, latent_dim):
            super().__init__(config, input_shape=input_shape, latent_dim=latent_dim)
            self.lin = nn.LazyLinear(latent_dim + 1)

        def forward(self, x):
            return self.lin(x.flatten(1))
    """
    make_dist(
        "aefake-wrong", {"aecore.encoders": {"wrong": "aefake_wrong:Wrong"}}, modules={"aefake_wrong": source}
    )
    with pytest.raises(
        ShapeError, match=r"encoder 'wrong' produced codes of shape \(5,\), but the model's latent"
    ):
        compose("wrong", "mlp", input_shape=MNIST, latent_dim=4)


def test_gradients_reach_every_parameter():
    model = compose(
        "conv",
        "conv",
        ["sparse"],
        input_shape=MNIST,
        latent_dim=6,
        params={"encoder": {"channels": "4,8", "batch_norm": "true"}, "sparse": {"weight": "0.1"}},
    )
    model.train()
    terms = model.loss_terms(torch.rand(4, *MNIST), build_loss("mse"))
    assert set(terms) == {"recon", "sparse"}
    assert terms["sparse"] > 0
    sum(terms.values()).backward()
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("encoder.") for n in names) and any(n.startswith("decoder.") for n in names)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_mlp_gradients_reach_every_parameter():
    model = compose(
        "mlp", input_shape=(10,), latent_dim=3, params={"encoder": {"hidden": "7,5", "batch_norm": "true"}}
    )
    model.train()
    sum(model.loss_terms(torch.rand(8, 10), build_loss("mse")).values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_compose_leaves_training_mode_and_counts_parameters():
    model = compose("mlp", input_shape=(10,), latent_dim=3, params={"encoder": {"hidden": "7"}})
    assert model.training
    # 10*7+7 + 7*3+3 (encoder)  +  3*7+7 + 7*10+10 (decoder)
    assert model.num_parameters() == (77 + 24) + (28 + 80)


def test_model_spec_round_trips_through_a_dict():
    model = compose(
        "conv", "mlp", ["sparse"], input_shape=MNIST, latent_dim=5, params={"sparse": {"kind": "kl"}}
    )
    spec = ModelSpec.from_dict(model.spec.to_dict())
    assert spec == model.spec
    assert spec.input_shape == MNIST and isinstance(spec.input_shape, tuple)
    assert spec.regularizers[0].params["kind"] == "kl"
    assert spec.regularizers[0].params == config_to_dict(model.regularizers["sparse"].config)


# -- sizes that cannot be allocated are refused before anything is allocated -----------


def _recording_encoder(made: list[str], *, meta_ok: bool = True):
    """An encoder class that records the device each instance's weights were made on."""
    from dataclasses import dataclass

    from aecore.components import ImageComponent
    from aecore.config import param

    @dataclass(frozen=True)
    class WidthConfig:
        width: int = param(4, "Hidden width.")

    class Recording(ImageComponent):
        Config = WidthConfig

        def __init__(self, config, *, input_shape, latent_dim):
            super().__init__(config, input_shape=input_shape, latent_dim=latent_dim)
            if not meta_ok:
                torch.zeros(1).item()  # a value read in __init__: impossible on the meta device
            n = 1
            for s in self.input_shape:
                n *= s
            self.body = nn.Sequential(nn.Linear(n, config.width), nn.Linear(config.width, latent_dim))
            made.append(self.body[0].weight.device.type)

        def forward(self, x):
            return self.body(x.flatten(1))

    return Recording


def test_a_latent_size_too_large_to_allocate_is_refused_in_one_line():
    for latent in (10**12, 10**30):
        with pytest.raises(ShapeError) as excinfo:
            compose("mlp", input_shape=MNIST, latent_dim=latent)
        message = str(excinfo.value)
        assert f"latent size {latent}" in message and "AECORE_MAX_MODEL_ELEMENTS" in message
        assert "\n" not in message


def test_a_model_too_large_to_allocate_is_refused_naming_its_size_settings():
    with pytest.raises(ConfigError) as excinfo:
        compose("mlp", input_shape=MNIST, latent_dim=32, params={"encoder": {"hidden": "99999999999"}})
    message = str(excinfo.value)
    for fragment in ("encoder.hidden=99999999999", "decoder.hidden=99999999999", "latent_dim=32"):
        assert fragment in message
    assert "input_shape=1×28×28" in message and " GB" in message and "AECORE_MAX_MODEL_ELEMENTS" in message
    assert "\n" not in message


def test_the_bound_is_checked_on_the_meta_device_before_a_real_build(monkeypatch):
    from aecore import registry

    made: list[str] = []
    with registry.registered("encoder", "recording", _recording_encoder(made)):
        monkeypatch.setenv("AECORE_MAX_MODEL_ELEMENTS", "1000")
        with pytest.raises(ConfigError, match=r"encoder 'recording' .*encoder\.width=64"):
            compose("recording", "mlp", input_shape=MNIST, latent_dim=4, params={"encoder": {"width": 64}})
        assert made == ["meta"]  # counted without allocating; never built for real
        monkeypatch.setenv("AECORE_MAX_MODEL_ELEMENTS", "1e6")
        model = compose("recording", "mlp", input_shape=MNIST, latent_dim=4, params={"encoder": {"width": 8}})
    assert made == ["meta", "meta", "cpu"]
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize("value", ["lots", "0", "-5", "1.5", "nan", "inf", "1e30"])
def test_a_bad_bound_in_the_environment_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("AECORE_MAX_MODEL_ELEMENTS", value)
    with pytest.raises(ConfigError, match="AECORE_MAX_MODEL_ELEMENTS"):
        compose("mlp", input_shape=(6,), latent_dim=2)


def test_a_component_that_cannot_be_built_on_meta_is_built_for_real():
    from aecore import registry

    made: list[str] = []
    with registry.registered("encoder", "realonly", _recording_encoder(made, meta_ok=False)):
        model = compose("realonly", "mlp", input_shape=MNIST, latent_dim=4)
        assert made == ["cpu"] and model(torch.zeros(2, *MNIST)).shape == (2, *MNIST)
        # sizes that overflow even the meta device's arithmetic still fail in one line, naming them
        with pytest.raises(ConfigError, match=r"encoder 'realonly' could not be built with encoder\.width="):
            compose("realonly", "mlp", input_shape=MNIST, latent_dim=4, params={"encoder": {"width": 2**62}})


def test_counting_on_meta_changes_no_random_numbers():
    from aecore import registry

    torch.manual_seed(7)
    model = compose("mlp", input_shape=(6,), latent_dim=3, params={"encoder": {"hidden": "5"}})
    torch.manual_seed(7)
    alone = registry.build("encoder", "mlp", {"hidden": "5"}, input_shape=(6,), latent_dim=3)
    for (name, a), (_, b) in zip(model.encoder.state_dict().items(), alone.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_loading_a_checkpoint_is_bounded_the_same_way(tmp_path, monkeypatch):
    from aecore import checkpoint
    from aecore.errors import AecoreError

    model = compose("mlp", input_shape=(6,), latent_dim=3, params={"encoder": {"hidden": "5"}})
    path = tmp_path / "model.safetensors"
    checkpoint.save(model, path, data={"name": "embedded"}, metrics={})
    assert checkpoint.load(path).num_parameters() == model.num_parameters()
    monkeypatch.setenv("AECORE_MAX_MODEL_ELEMENTS", "10")
    with pytest.raises(AecoreError, match="AECORE_MAX_MODEL_ELEMENTS"):
        checkpoint.load(path)
