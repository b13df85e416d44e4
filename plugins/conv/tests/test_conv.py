"""The conv plugin: conformance on several image sizes and variants, shape errors, the reference presets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aecore import registry
from aecore.composition import compose, compose_preset
from aecore.errors import ConfigError, ShapeError
from aecore.testing import check_checkpoint_roundtrip, check_decoder, check_encoder, check_roundtrip
from aecore_conv import ConvDecoder, ConvEncoder, stage_sizes, transpose_padding

SMALL = {"channels": [8, 16]}
REFERENCE = {"conv-simple": (3136, 225), "conv-deep": (576, 83_905), "conv-strided": (128, 840_577)}


@pytest.mark.parametrize(
    ("shape", "params"),
    [
        ((1, 28, 28), {}),
        ((3, 32, 32), SMALL),
        ((1, 27, 27), SMALL),
        ((3, 30, 20), SMALL),
        ((2, 9, 13), {"channels": [4, 4, 4], "kernel_size": 4}),
        ((1, 28, 28), {"channels": [8], "kernel_size": 5, "batch_norm": True, "activation": "elu"}),
        ((1, 27, 27), {**SMALL, "downsample": "pool", "batch_norm": True, "head": "conv"}),
        ((3, 30, 20), {**SMALL, "upsample": "upsample"}),
        ((2, 9, 13), {"channels": [4, 4], "kernel_size": 2, "downsample": "pool", "upsample": "upsample"}),
        ((1, 27, 27), {"channels": [4, 8, 6], "collapse": True, "head": "conv", "upsample": "upsample"}),
    ],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else None,
)
def test_encoder_and_decoder_conform(shape, params):
    encoder_fields = ConvEncoder.Config.__dataclass_fields__
    check_encoder(
        ConvEncoder,
        input_shape=shape,
        latent_dim=6,
        params={k: v for k, v in params.items() if k in encoder_fields},
    )
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


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 27, 27), (3, 30, 20), (1, 5, 7)])
@pytest.mark.parametrize(
    "variant",
    [
        {"downsample": "pool"},
        {"downsample": "pool", "kernel_size": 2},
        {"upsample": "upsample"},
        {"downsample": "pool", "upsample": "upsample", "head": "conv"},
        {"collapse": True, "head": "conv"},
    ],
    ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()),
)
def test_variants_give_exact_output_shape(shape, variant):
    params = {
        "encoder": {"channels": [4, 4], "downsample": variant.pop("downsample", "stride")},
        "decoder": variant,
    }
    model = compose("conv", input_shape=shape, latent_dim=4, params=params)
    assert model(torch.rand(2, *shape)).shape == (2, *shape)


def test_stage_sizes_halve_rounding_up():
    assert stage_sizes(28, 3, 3) == [28, 14, 7, 4]
    assert stage_sizes(27, 2, 3) == [27, 14, 7]


def test_stage_sizes_pool_floor_and_collapse():
    assert stage_sizes(28, 3, 3, "pool") == [28, 14, 7, 3]
    assert stage_sizes(28, 3, 3, "stride", collapse=True) == [28, 14, 7, 1]


@pytest.mark.parametrize(
    ("src", "dst", "kernel", "expected"),
    [(3, 7, 3, (0, 0)), (7, 14, 3, (1, 1)), (4, 7, 3, (1, 0)), (14, 28, 2, (0, 0)), (14, 28, 5, (2, 1))],
)
def test_transpose_padding_is_the_smallest_that_fits(src, dst, kernel, expected):
    assert transpose_padding(src, dst, kernel) == expected
    pad, extra = expected
    assert (src - 1) * 2 - 2 * pad + kernel + extra == dst


def test_default_model_is_unchanged():
    model = compose("conv", input_shape=(1, 28, 28), latent_dim=32)
    assert model.num_parameters() == 241_441
    assert model.encoder.code_shape is None and model.decoder.code_shape is None


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_presets_have_exact_counts(name):
    preset = registry.get("preset", name)
    latent_dim, count = REFERENCE[name]
    assert (preset.latent_dim, preset.reference_params) == (latent_dim, count)
    model = compose_preset(preset)
    assert model.num_parameters() == count
    assert model.encoder.code_shape == model.decoder.code_shape
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)


def test_conv_deep_layers_match_the_reference():
    model = compose_preset(registry.get("preset", "conv-deep"))
    ups = [
        (m.in_channels, m.out_channels, m.padding, m.output_padding)
        for m in model.decoder.modules()
        if isinstance(m, nn.ConvTranspose2d)
    ]
    assert ups == [(64, 64, (0, 0), (0, 0)), (64, 32, (1, 1), (1, 1)), (32, 16, (1, 1), (1, 1))]
    assert [type(m).__name__ for m in model.encoder.net[:4]] == ["Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d"]
    assert model.encoder.code_shape == (64, 3, 3)


def test_upsample_mode_has_no_transposed_convolution():
    model = compose(
        "conv", input_shape=(1, 28, 28), latent_dim=8, params={"decoder": {"upsample": "upsample"}}
    )
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in model.decoder.modules())
    assert sum(isinstance(m, nn.Upsample) for m in model.decoder.modules()) == 2


def test_preset_roundtrip(tmp_path):
    check_roundtrip(compose_preset(registry.get("preset", "conv-deep")), tmp_path)


@pytest.mark.parametrize("cls", [ConvEncoder, ConvDecoder])
def test_spatial_code_with_wrong_latent_dim_names_the_right_one(cls):
    config = cls.Config(channels=(16, 32, 64), downsample="pool", latent="spatial")
    with pytest.raises(ShapeError, match=r"64×3×3 = 576.*--latent-dim 576"):
        cls(config, input_shape=(1, 28, 28), latent_dim=32)


def test_mismatched_spatial_codes_are_refused():
    deep, simple = (registry.get("preset", n).params for n in ("conv-deep", "conv-simple"))
    with pytest.raises(ShapeError, match="3136"):  # the decoder says which latent size it needs
        compose(
            "conv",
            input_shape=(1, 28, 28),
            latent_dim=576,
            params={"encoder": deep["encoder"], "decoder": simple["encoder"]},
        )
    # the same size (3136) but different shapes: compose compares the declared code shapes
    params = {"encoder": simple["encoder"], "decoder": {"channels": [4, 64]}}
    with pytest.raises(ShapeError, match=r"16×14×14 but decoder 'conv' expects 64×7×7"):
        compose("conv", input_shape=(1, 28, 28), latent_dim=3136, params=params)


def test_spatial_encoder_with_flat_decoders():
    params = {
        "encoder": {"channels": [32, 64, 128], "collapse": True, "latent": "spatial"},
        "decoder": {"latent": "flat"},
    }
    model = compose("conv", input_shape=(1, 28, 28), latent_dim=128, params=params)
    assert model.decoder.code_shape is None
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    model = compose(
        "conv",
        "mlp",
        input_shape=(1, 28, 28),
        latent_dim=3136,
        params={"encoder": {"channels": [16], "downsample": "pool", "latent": "spatial"}},
    )
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)


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
@pytest.mark.parametrize("downsample", ["stride", "pool"])
def test_too_small_image_raises_shape_error(shape, channels, downsample):
    params = {"encoder": {"channels": channels, "downsample": downsample}}
    with pytest.raises(ShapeError, match="too small"):
        compose("conv", input_shape=shape, latent_dim=4, params=params)


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
