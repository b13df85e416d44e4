"""Any C×H×W: the composed conv model gives back exactly its input's shape, or compose refuses in one line.

The expected sizes come from the layers' own output formulas (a stride-2
convolution padded by k//2, a 2×2 max-pool), not from the plugin's planner:
an image is accepted exactly when every halving stage shrinks its input, and
a refusal must name sizes that do work.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aecore import compose
from aecore.errors import ShapeError
from aecore_conv import min_image_size

SHARED = ("channels", "kernel_size", "downsample", "collapse")
ISSUE_SHAPES = [(3, 32, 32), (3, 64, 64), (1, 28, 28), (3, 40, 24), (1, 17, 33), (3, 96, 96), (1, 1, 1)]


def sides(size: int, config: dict) -> list[int] | None:
    """The side before each stage and after the last, or None where a halving stage would not shrink."""
    n, k = len(config["channels"]), config["kernel_size"]
    out = [size]
    for i in range(n):
        if config["collapse"] and i == n - 1:
            out.append(1)  # a valid convolution as large as its input
            break
        s = out[-1]
        halved = s // 2 if config["downsample"] == "pool" else (s + 2 * (k // 2) - k) // 2 + 1
        if not 1 <= halved < s:
            return None
        out.append(halved)
    return out


def code_size(shape: tuple[int, ...], config: dict) -> int | None:
    """C·h·w of the last feature map, or None where these stages do not fit the image."""
    hs, ws = sides(shape[1], config), sides(shape[2], config)
    return None if hs is None or ws is None else config["channels"][-1] * hs[-1] * ws[-1]


def smallest_side(config: dict) -> int:
    """The least side these stages accept, by trying every one."""
    return next(s for s in range(1, 1000) if sides(s, config) is not None)


def build(shape: tuple[int, ...], encoder: dict, decoder: dict, latent: str) -> torch.nn.Module:
    """Compose conv + conv; a spatial code takes the size the oracle says its last map has."""
    size = code_size(shape, encoder) if latent == "spatial" else 5
    params = {"encoder": {**encoder, "latent": latent}, "decoder": decoder}
    return compose("conv", "conv", [], input_shape=shape, latent_dim=size or 5, params=params)


@st.composite
def cases(draw: st.DrawFn) -> tuple[tuple[int, ...], dict, dict, str]:
    """An image shape, the encoder's settings, the decoder's own settings and the kind of code."""
    shape = draw(
        st.one_of(
            st.sampled_from(ISSUE_SHAPES),
            st.tuples(st.integers(1, 4), st.integers(1, 40), st.integers(1, 40)),
        )
    )
    n = draw(st.integers(1, 3))
    encoder = {
        "channels": draw(st.lists(st.integers(1, 4), min_size=n, max_size=n)),
        "kernel_size": draw(st.integers(2, 5)),
        "downsample": draw(st.sampled_from(["stride", "pool"])),
        "collapse": draw(st.booleans()),
        "batch_norm": draw(st.booleans()),
        "activation": draw(st.sampled_from(["relu", "elu", "tanh"])),
    }
    latent = draw(st.sampled_from(["flat", "spatial"]))
    decoder = {
        "upsample": draw(st.sampled_from(["transpose", "upsample"])),
        "head": draw(st.sampled_from(["stage", "conv"])),
        "output_activation": draw(st.sampled_from(["sigmoid", "tanh", "none"])),
    }
    if latent == "flat" and draw(st.booleans()):  # a flat code lets the decoder climb its own way
        m = draw(st.integers(1, 3))
        decoder["channels"] = draw(st.lists(st.integers(1, 4), min_size=m, max_size=m))
        decoder["kernel_size"] = draw(st.integers(2, 5))
        decoder["downsample"] = draw(st.sampled_from(["stride", "pool"]))
        decoder["collapse"] = draw(st.booleans())
    return shape, encoder, decoder, latent


BASE = {
    "kernel_size": 3,
    "downsample": "stride",
    "collapse": False,
    "batch_norm": False,
    "activation": "relu",
}


@settings(max_examples=150, deadline=None, database=None)
@given(cases())
@example(((1, 1, 1), {**BASE, "channels": [3], "collapse": True, "batch_norm": True}, {}, "spatial"))
@example(((1, 5, 5), {**BASE, "channels": [2, 2, 2], "downsample": "pool"}, {}, "flat"))
@example(((2, 12, 30), {**BASE, "channels": [2]}, {"channels": [2] * 4, "downsample": "pool"}, "flat"))
def test_output_shape_is_the_input_shape_or_compose_refuses(case):
    shape, encoder, decoder, latent = case
    mirrored = {**encoder, **{k: v for k, v in decoder.items() if k in SHARED}}
    refused_by = next(
        (
            part
            for part, config in (("encoder", encoder), ("decoder", mirrored))
            if code_size(shape, config) is None
        ),
        None,
    )
    if refused_by is None:
        model = build(shape, encoder, decoder, latent)
        x = torch.rand(2, *shape)
        for training in (True, False):
            model.train(training)
            with torch.no_grad():
                assert model.encoder(x).shape == (2, model.latent_dim)
                assert model(x).shape == x.shape
        if latent == "spatial":
            assert math.prod(model.encoder.code_shape) == model.latent_dim
        return

    with pytest.raises(ShapeError) as err:
        build(shape, encoder, decoder, latent)
    message = str(err.value)
    assert "\n" not in message and f"conv {refused_by}" in message
    config = encoder if refused_by == "encoder" else mirrored
    least = smallest_side(config)
    assert f"at least {least}×{least}" in message
    # both ways out that the message names work: a large enough image, or its --set values
    c, h, w = shape
    bigger = (c, max(h, least), max(w, least))
    if code_size(bigger, encoder) and code_size(bigger, mirrored):  # the other part may need more
        build(bigger, encoder, decoder, latent)
    fixed = dict(re.findall(rf"--set {refused_by}\.(\w+)=([\w,]+)", message))
    assert fixed, message
    values = {"channels": [int(v) for v in fixed.pop("channels").split(",")]}
    values.update({k: v == "true" for k, v in fixed.items()})  # only collapse=true
    assert code_size(shape, {**config, **values}) is not None, message
    if refused_by == "encoder":
        encoder = {**encoder, **values}
    else:
        decoder = {**decoder, **values}
    mirrored = {**encoder, **{k: v for k, v in decoder.items() if k in SHARED}}
    if code_size(shape, mirrored) is not None:  # a decoder with its own stages may need its own fix
        build(shape, encoder, decoder, latent)


@pytest.mark.parametrize("shape", ISSUE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(
    "variant",
    [
        {"channels": [4, 8], "kernel_size": 3},
        {"channels": [4, 8, 8], "kernel_size": 4, "downsample": "pool", "batch_norm": True},
        {"channels": [4, 8, 8], "kernel_size": 5, "collapse": True, "latent": "spatial"},
        {"channels": [4], "collapse": True, "head": "conv", "upsample": "upsample"},
    ],
    ids=["stride", "pool-bn", "collapse-spatial", "one-collapse"],
)
def test_the_shapes_of_the_issue(shape, variant):
    variant = dict(variant)  # shared by every shape
    decoder = {k: variant.pop(k) for k in ("head", "upsample") if k in variant}
    latent = variant.pop("latent", "flat")
    encoder = {"kernel_size": 3, "downsample": "stride", "collapse": False, **variant}
    if code_size(shape, encoder) is None:
        with pytest.raises(ShapeError, match=r"too small .* at least \d+×\d+"):
            build(shape, encoder, decoder, latent)
        return
    model = build(shape, encoder, decoder, latent)
    assert model(torch.rand(2, *shape)).shape == (2, *shape)


def test_a_single_collapsing_stage_takes_a_one_pixel_image():
    model = compose(
        "conv", input_shape=(1, 1, 1), latent_dim=3, params={"encoder": {"channels": [4], "collapse": True}}
    )
    assert model(torch.rand(2, 1, 1, 1)).shape == (2, 1, 1, 1)


@pytest.mark.parametrize("downsample", ["stride", "pool"])
@pytest.mark.parametrize("kernel_size", [2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("stages", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("collapse", [False, True])
def test_min_image_size_is_the_least_side_that_fits(downsample, kernel_size, stages, collapse):
    config = {
        "channels": [1] * stages,
        "kernel_size": kernel_size,
        "downsample": downsample,
        "collapse": collapse,
    }
    assert min_image_size(stages, kernel_size, downsample, collapse) == smallest_side(config)


@pytest.mark.parametrize(
    ("shape", "encoder", "fragment"),
    [
        (
            (1, 5, 5),
            {"channels": [8, 16, 32], "downsample": "pool"},
            "at least 8×8, or at most 2 channels entries",
        ),
        ((3, 5, 40), {"channels": [8, 16, 32, 64]}, "at least 9×9, or at most 3 channels entries"),
        ((1, 1, 1), {"channels": [8, 16]}, "at least 3×3, or one collapsing stage"),
        ((1, 2, 2), {"channels": [8, 16], "kernel_size": 4}, "at least 4×4, or one collapsing stage"),
        (
            (1, 2, 9),
            {"channels": [8, 16, 32], "collapse": True},
            "at least 3×3, or at most 2 channels entries",
        ),
    ],
)
def test_too_small_names_the_least_image_and_the_stages_that_fit(shape, encoder, fragment):
    with pytest.raises(ShapeError, match="too small") as err:
        compose("conv", input_shape=shape, latent_dim=4, params={"encoder": encoder})
    assert fragment in str(err.value)
    assert f"a {shape[1]}×{shape[2]} image" in str(err.value)


def test_a_decoder_with_its_own_stages_is_refused_in_its_own_name():
    params = {"encoder": {"channels": [4]}, "decoder": {"channels": [4, 4, 4, 4], "downsample": "pool"}}
    with pytest.raises(ShapeError, match=r"conv decoder.*at least 16×16.*--set decoder\.channels=4,4,4\b"):
        compose("conv", input_shape=(1, 12, 30), latent_dim=4, params=params)
