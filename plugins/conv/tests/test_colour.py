"""Colour images: the conv parts conform on C=3 shapes, and the colour presets count, compose and train."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aecore import compose, registry, train
from aecore.composition import compose_preset
from aecore.config import config_from_dict
from aecore.errors import ConfigError, ShapeError
from aecore.testing import check_decoder, check_encoder, check_preset, check_roundtrip, tiny_dataset
from aecore.training.default import DefaultTrainerConfig
from aecore_conv import ConvDecoder, ConvEncoder

#: preset: (input shape, code size, parameters on that shape, encoder widths); each ends on a 4×4 map
COLOUR = {
    "conv-cifar": ((3, 32, 32), 256, 1_237_891, [32, 64, 128]),
    "conv-64": ((3, 64, 64), 512, 4_976_899, [32, 64, 128, 256]),
}


@pytest.mark.parametrize(
    ("shape", "params"),
    [
        ((3, 32, 32), {"channels": [8, 16, 32], "batch_norm": True}),
        ((3, 64, 64), {"channels": [4, 8, 8, 8], "downsample": "pool", "head": "conv"}),
        ((3, 40, 24), {"channels": [4, 8], "upsample": "upsample", "kernel_size": 4}),
        ((3, 17, 33), {"channels": [4, 8, 8], "collapse": True, "latent": "spatial"}),
    ],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else None,
)
def test_colour_shapes_conform(shape, params, tmp_path):
    encoder_fields = ConvEncoder.Config.__dataclass_fields__
    latent_dim = 8 * 1 * 1 if params.get("latent") == "spatial" else 6
    encoder = check_encoder(
        ConvEncoder,
        input_shape=shape,
        latent_dim=latent_dim,
        params={k: v for k, v in params.items() if k in encoder_fields},
    )
    decoder = check_decoder(ConvDecoder, input_shape=shape, latent_dim=latent_dim, params=params)
    assert encoder.net[0].in_channels == 3  # the image's channels, not one
    assert decoder(torch.randn(2, latent_dim)).shape == (2, *shape)
    split = {"encoder": {k: v for k, v in params.items() if k in encoder_fields}, "decoder": params}
    check_roundtrip(compose("conv", input_shape=shape, latent_dim=latent_dim, params=split), tmp_path)


@pytest.mark.parametrize("name", sorted(COLOUR))
def test_colour_presets_count_their_parameters_on_their_own_shape(name):
    preset = registry.get("preset", name)
    shape, latent_dim, count, widths = COLOUR[name]
    assert (preset.input_shape, preset.latent_dim, preset.reference_params) == (shape, latent_dim, count)
    model = compose(
        "conv", "conv", [], input_shape=shape, latent_dim=latent_dim, params=preset.component_params
    )
    assert model.num_parameters() == count
    assert check_preset(preset).num_parameters() == count  # what 'ae presets' shows
    assert [m.num_features for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)] == widths
    linear = next(m for m in model.encoder.modules() if isinstance(m, nn.Linear))
    assert (linear.in_features, linear.out_features) == (widths[-1] * 4 * 4, latent_dim)
    with torch.no_grad():
        out = model.eval()(torch.rand(2, *shape))
    assert out.shape == (2, *shape) and out.min() >= 0 and out.max() <= 1  # sigmoid, for [0, 1] images


@pytest.mark.parametrize("name", sorted(COLOUR))
def test_colour_presets_trainer_settings_fit_the_default_trainer(name):
    settings = dict(registry.get("preset", name).params["trainer"])
    config = config_from_dict(DefaultTrainerConfig, settings, owner="trainer")
    assert config.cosine and config.lr == 2e-3
    with pytest.raises(ConfigError):  # the check is real: an unknown setting is refused
        config_from_dict(DefaultTrainerConfig, {**settings, "cosin": True}, owner="trainer")


@pytest.mark.parametrize("name", sorted(COLOUR))
@pytest.mark.parametrize(
    "shape", [(3, 40, 24), (3, 96, 96), (1, 28, 28)], ids=lambda s: "x".join(map(str, s))
)
def test_colour_presets_compose_on_other_image_sizes(name, shape):
    """A flat code lets the recipe follow the data: 'ae train --preset conv-cifar' on MNIST works too."""
    preset = registry.get("preset", name)
    model = compose("conv", input_shape=shape, latent_dim=preset.latent_dim, params=preset.component_params)
    assert model(torch.rand(2, *shape)).shape == (2, *shape)


def test_colour_presets_refuse_an_image_too_small_for_their_stages():
    preset = registry.get("preset", "conv-64")
    with pytest.raises(ShapeError, match=r"at least 9×9, or at most 3 channels entries"):
        compose("conv", input_shape=(3, 8, 8), latent_dim=preset.latent_dim, params=preset.component_params)


def test_the_preset_round_trips_through_a_checkpoint(tmp_path):
    check_roundtrip(compose_preset(registry.get("preset", "conv-cifar")), tmp_path)


@pytest.mark.parametrize("name", sorted(COLOUR))
def test_a_short_training_on_colour_images_reduces_the_loss(name, tmp_path):
    shape = COLOUR[name][0]
    result = train(
        preset=name,
        data=tiny_dataset(48, 16, shape=shape),
        params={"trainer": {"epochs": 3, "batch_size": 16}},
        out=tmp_path / "run",
        progress=False,
    )
    assert result.model.input_shape == shape
    assert result.model.num_parameters() == COLOUR[name][2]
    losses = [epoch["train_loss"] for epoch in result.history]
    assert losses[-1] < 0.9 * losses[0], losses
