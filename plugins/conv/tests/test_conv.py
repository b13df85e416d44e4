"""The conv plugin: conformance on several image sizes, shape errors, batch norm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aecore.errors import ConfigError, ShapeError
from aecore.model import compose
from aecore.testing import check_checkpoint_roundtrip, check_decoder, check_encoder
from aecore_conv import ConvDecoder, ConvEncoder, stage_sizes

SMALL = {"channels": [8, 16]}


@pytest.mark.parametrize(
    ("shape", "params"),
    [
        ((1, 28, 28), {}),
        ((3, 32, 32), SMALL),
        ((1, 27, 27), SMALL),
        ((3, 30, 20), SMALL),
        ((2, 9, 13), {"channels": [4, 4, 4], "kernel_size": 4}),
        ((1, 28, 28), {"channels": [8], "kernel_size": 5, "batch_norm": True, "activation": "elu"}),
    ],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else None,
)
def test_encoder_and_decoder_conform(shape, params):
    check_encoder(ConvEncoder, input_shape=shape, latent_dim=6, params=params)
    check_decoder(ConvDecoder, input_shape=shape, latent_dim=6, params=params)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 27, 27), (3, 30, 20), (1, 5, 7)])
@pytest.mark.parametrize("kernel_size", [2, 3, 4, 5])
def test_composed_output_shape_is_exact(shape, kernel_size):
    model = compose(
        "conv",
        input_shape=shape,
        latent_dim=4,
        params={"encoder": {"channels": [4, 4], "kernel_size": kernel_size}},
    )
    assert model(torch.rand(2, *shape)).shape == (2, *shape)


def test_stage_sizes_halve_rounding_up():
    assert stage_sizes(28, 3, 3) == [28, 14, 7, 4]
    assert stage_sizes(27, 2, 3) == [27, 14, 7]


def test_conv_encoder_with_mlp_decoder():
    model = compose("conv", "mlp", input_shape=(3, 32, 32), latent_dim=10, params={"encoder": SMALL})
    assert isinstance(model.encoder, ConvEncoder)
    assert type(model.decoder).__name__ == "MLPDecoder"
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_roundtrip(tmp_path):
    check_checkpoint_roundtrip(
        "conv", input_shape=(3, 30, 20), params={"encoder": {**SMALL, "batch_norm": True}}, tmp_path=tmp_path
    )


@pytest.mark.parametrize("cls", [ConvEncoder, ConvDecoder])
@pytest.mark.parametrize("shape", [(20,), (28, 28), (1, 1, 28, 28)])
def test_non_image_shape_raises_shape_error(cls, shape):
    with pytest.raises(ShapeError, match="C×H×W") as err:
        cls(cls.Config(), input_shape=shape, latent_dim=4)
    assert "mlp" in str(err.value)


def test_compose_on_tabular_data_names_the_shape():
    with pytest.raises(ShapeError, match=r"C×H×W.*\(20,\)"):
        compose("conv", input_shape=(20,), latent_dim=4)


@pytest.mark.parametrize(("shape", "channels"), [((1, 2, 2), [8, 8]), ((1, 1, 1), [8]), ((1, 28, 2), [8, 8])])
def test_too_small_image_raises_shape_error(shape, channels):
    with pytest.raises(ShapeError, match="too small"):
        compose("conv", input_shape=shape, latent_dim=4, params={"encoder": {"channels": channels}})


@pytest.mark.parametrize(
    ("values", "fragment"), [({"channels": []}, "channels"), ({"kernel_size": 1}, "kernel")]
)
def test_invalid_params_raise_config_error(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        compose("conv", input_shape=(1, 28, 28), latent_dim=4, params={"encoder": values})


@pytest.mark.parametrize("batch_norm", [False, True])
def test_batch_norm_option(batch_norm):
    params = {"encoder": {"channels": [4, 8, 16], "batch_norm": batch_norm}}
    model = compose("conv", input_shape=(1, 28, 28), latent_dim=4, params=params)
    encoder_bn = [m.num_features for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    decoder_bn = [m.num_features for m in model.decoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert encoder_bn == ([4, 8, 16] if batch_norm else [])
    assert decoder_bn == ([8, 4] if batch_norm else [])  # not on the output image
