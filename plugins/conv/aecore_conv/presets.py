"""The convolutional reference models of seed-models.md, as presets.

Each gives exactly the parameter count of the reference table on 1×28×28
inputs, from the conv encoder's and decoder's parameters alone.
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
    reference_params=83_905,
)
conv_strided = Preset(
    "conv",
    128,
    "conv",
    params={"encoder": {"channels": (32, 64, 128), "collapse": True, "latent": "spatial"}},
    description="Conv 1→32→64 k3 s2, Conv 64→128 k7 to 128×1×1, ReLU; ConvT 128→64 k7 →32 →1, sigmoid",
    reference_params=840_577,
)

# The 30-d MNIST record recipe (docs/recipes/record-30.md): three stride-2 stages with batch norm
# and a flat 30-d code, trained with Adam and a cosine schedule inside a time budget.
record_30 = Preset(
    "conv",
    30,
    "conv",
    params={
        "encoder": {"channels": (32, 64, 128), "batch_norm": True},
        "trainer": {"epochs": 45, "lr": 2e-3, "cosine": True, "batch_size": 128},
    },
    description="1→32→64→128 stride-2 convs with BN, Linear to a 30-d code; Adam 2e-3, cosine, 45 epochs",
    reference_params=310_815,
)
