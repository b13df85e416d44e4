"""The mlp plugin: conformance, reference parameter counts, validation, output range."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aecore.composition import compose
from aecore.config import config_from_dict
from aecore.errors import ConfigError
from aecore.testing import check_checkpoint_roundtrip, check_decoder, check_encoder
from aecore_mlp import MLPDecoder, MLPDecoderConfig, MLPEncoder, MLPEncoderConfig

DEEP = {"hidden": [512, 256, 128], "code_activation": "relu", "batch_norm": True, "dropout": 0.2}


@pytest.mark.parametrize(
    "params",
    [{}, {"hidden": [64]}, {"hidden": [], "code_activation": "tanh"}, {**DEEP, "hidden": [32, 16]}],
    ids=["default", "one-hidden", "linear", "deep-blocks"],
)
def test_encoder_and_decoder_conform(params):
    check_encoder(MLPEncoder, params=params)
    decoder_params = {k: v for k, v in params.items() if k != "code_activation"}
    check_decoder(MLPDecoder, params=decoder_params)


def test_tabular_input():
    check_encoder(MLPEncoder, input_shape=(20,), latent_dim=4, params={"hidden": [16]})
    check_decoder(MLPDecoder, input_shape=(20,), latent_dim=4, params={"hidden": [16]})
    model = compose("mlp", input_shape=(20,), latent_dim=4, params={"encoder": {"hidden": [16]}})
    assert model(torch.rand(7, 20)).shape == (7, 20)


@pytest.mark.parametrize(
    ("latent", "params", "expected"),
    [
        (20, {"hidden": [400]}, 644_804),
        (64, {"hidden": [256, 128], "code_activation": "relu"}, 484_944),
        (32, DEEP, 1_144_880),
    ],
    ids=["fc-400-20", "simple", "deep"],
)
def test_reference_parameter_counts(latent, params, expected):
    model = compose("mlp", input_shape=(1, 28, 28), latent_dim=latent, params={"encoder": params})
    assert sum(p.numel() for p in model.parameters()) == expected


def test_reference_layer_kinds():
    """fc-400-20 has a linear code and a sigmoid output; deep has BatchNorm and Dropout(0.2) blocks."""
    fc = compose("mlp", input_shape=(1, 28, 28), latent_dim=20, params={"encoder": {"hidden": [400]}})
    assert isinstance(fc.encoder.net[-1], nn.Identity)
    assert any(isinstance(m, nn.Sigmoid) for m in fc.decoder.modules())
    deep = compose("mlp", input_shape=(1, 28, 28), latent_dim=32, params={"encoder": DEEP})
    for part in (deep.encoder, deep.decoder):
        assert sum(isinstance(m, nn.BatchNorm1d) for m in part.modules()) == 3
        assert [m.p for m in part.modules() if isinstance(m, nn.Dropout)] == [0.2] * 3
    assert isinstance(deep.encoder.net[-1], nn.ReLU)


def test_roundtrip_with_batch_norm(tmp_path):
    check_checkpoint_roundtrip("mlp", params={"encoder": DEEP}, latent_dim=8, tmp_path=tmp_path)


@pytest.mark.parametrize("config_cls", [MLPEncoderConfig, MLPDecoderConfig])
@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"hidden": [0]}, "hidden widths must be positive"),
        ({"hidden": [64, -8]}, "hidden widths must be positive"),
        ({"hidden": "64,abc"}, "hidden"),
        ({"hidden": [1.5]}, "hidden"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
    ],
)
def test_invalid_params_raise_config_error(config_cls, values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        config_from_dict(config_cls, values, owner="encoder")


def test_hidden_parses_from_command_line_text():
    assert config_from_dict(MLPEncoderConfig, {"hidden": "256,128"}).hidden == (256, 128)


@pytest.mark.parametrize(("name", "low", "high"), [("sigmoid", 0.0, 1.0), ("tanh", -1.0, 1.0)])
def test_output_activation_bounds_outputs(name, low, high):
    config = config_from_dict(MLPDecoderConfig, {"hidden": [32], "output_activation": name})
    decoder = MLPDecoder(config, input_shape=(1, 28, 28), latent_dim=8)
    torch.manual_seed(0)
    out = decoder(torch.randn(16, 8) * 100)
    assert out.min() >= low and out.max() <= high
    assert out.min() < low + 0.5 and out.max() > high - 0.5  # saturates, so the bound is the activation's


def test_no_output_activation_is_unbounded():
    config = config_from_dict(MLPDecoderConfig, {"hidden": [32], "output_activation": "none"})
    decoder = MLPDecoder(config, input_shape=(1, 28, 28), latent_dim=8)
    torch.manual_seed(0)
    out = decoder(torch.randn(16, 8) * 100)
    assert out.min() < -1 and out.max() > 1


def test_layer_stack_lists_each_linear_with_its_activation_for_layerwise_pretraining():
    encoder = MLPEncoder(MLPEncoderConfig(hidden=(16, 8), dropout=0.1), input_shape=(1, 6, 6), latent_dim=4)
    decoder = MLPDecoder(MLPDecoderConfig(hidden=(16, 8)), input_shape=(1, 6, 6), latent_dim=4)
    assert [(lin.in_features, lin.out_features) for lin, _ in encoder.layer_stack()] == [
        (36, 16),
        (16, 8),
        (8, 4),
    ]
    assert [(lin.in_features, lin.out_features) for lin, _ in decoder.layer_stack()] == [
        (4, 8),
        (8, 16),
        (16, 36),
    ]
    assert isinstance(decoder.layer_stack()[-1][1], nn.Sigmoid)  # the output activation comes last
    for options in ({"residual": True}, {"batch_norm": True}):
        built = MLPEncoder(MLPEncoderConfig(hidden=(16,), **options), input_shape=(1, 6, 6), latent_dim=4)
        with pytest.raises(ConfigError, match=f"encoder.{next(iter(options))}=false"):
            built.layer_stack()
