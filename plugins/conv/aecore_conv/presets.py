"""The convolutional reference models of seed-models.md, and colour recipes, as presets.

The reference models give exactly the parameter count of the reference table
on 1×28×28 inputs, from the conv encoder's and decoder's parameters alone.
The colour presets (``conv-cifar`` for 3×32×32, ``conv-64`` for 3×64×64)
declare their own ``input_shape``, on which ``ae presets`` counts their
parameters; with a flat code they compose on any image large enough for
their stages.
"""

from __future__ import annotations

from aecore.presets import Preset

conv_simple = Preset(
    "conv",
    16 * 14 * 14,
    "conv",
    params={
        "encoder": {"channels": (16,), "downsample": "pool", "latent": "spatial"},
        "decoder": {"kernel_size": 2},
    },
    description="Conv 1→16 k3, ReLU, MaxPool (code 16×14×14); ConvT 16→1 k2 s2, sigmoid",
    input_shape=(1, 28, 28),
    reference_params=225,
)
conv_deep = Preset(
    "conv",
    64 * 3 * 3,
    "conv",
    params={
        "encoder": {"channels": (16, 32, 64), "downsample": "pool", "batch_norm": True, "latent": "spatial"},
        "decoder": {"head": "conv"},
    },
    description="1→16→32→64 (Conv k3, ReLU, BN, MaxPool) to 64×3×3; ConvT 64→64→32→16, Conv 16→1, sigmoid",
    input_shape=(1, 28, 28),
    reference_params=83_905,
)
conv_strided = Preset(
    "conv",
    128,
    "conv",
    params={"encoder": {"channels": (32, 64, 128), "collapse": True, "latent": "spatial"}},
    description="Conv 1→32→64 k3 s2, Conv 64→128 k7 to 128×1×1, ReLU; ConvT 128→64 k7 →32 →1, sigmoid",
    input_shape=(1, 28, 28),
    reference_params=840_577,
)

# The 30-d MNIST record recipe (docs/recipes/record-30.md): three stride-2 stages with GELU and batch
# norm and a flat 30-d code, trained with Adam on small batches and a cosine schedule that fits the
# record's 30-minute budget on two CPU cores (batches of 32 beat 128 for the same time).
record_30 = Preset(
    "conv",
    30,
    "conv",
    params={
        "encoder": {"channels": (32, 64, 128), "batch_norm": True, "activation": "gelu"},
        "trainer": {"epochs": 64, "lr": 4e-3, "cosine": True, "batch_size": 32},
    },
    description=(
        "1→32→64→128 stride-2 convs with GELU and BN, Linear to a 30-d code; Adam 4e-3, batch 32, "
        "cosine, 64 epochs"
    ),
    input_shape=(1, 28, 28),
    reference_params=310_815,
)

# Colour images in [0, 1] (CIFAR-10/100, SVHN; 64×64 crops such as CelebA or Tiny ImageNet): the
# record-30 architecture, with ReLU and batches of 128, and three colour channels in and out, one
# stride-2 stage per halving down to a 4×4 map, and a code wide enough for natural images (12× and 24×
# compression); sigmoid output.
_COLOUR_TRAINER = {"epochs": 30, "lr": 2e-3, "cosine": True, "batch_size": 128}

conv_cifar = Preset(
    "conv",
    256,
    "conv",
    params={"encoder": {"channels": (32, 64, 128), "batch_norm": True}, "trainer": dict(_COLOUR_TRAINER)},
    description=(
        "3→32→64→128 stride-2 convs with BN to 128×4×4, Linear to a 256-d code; mirrored, sigmoid; "
        "Adam 2e-3, cosine, 30 epochs"
    ),
    input_shape=(3, 32, 32),
    reference_params=1_237_891,
)
conv_64 = Preset(
    "conv",
    512,
    "conv",
    params={
        "encoder": {"channels": (32, 64, 128, 256), "batch_norm": True},
        "trainer": dict(_COLOUR_TRAINER),
    },
    description=(
        "3→32→64→128→256 stride-2 convs with BN to 256×4×4, Linear to a 512-d code; mirrored, sigmoid; "
        "Adam 2e-3, cosine, 30 epochs"
    ),
    input_shape=(3, 64, 64),
    reference_params=4_976_899,
)
