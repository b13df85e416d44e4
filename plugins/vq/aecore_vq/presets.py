"""``vq-mnist``: a VQ-VAE-style model for 1×28×28 images with a 7×7 grid of codebook indices.

The conv encoder's two stride-2 stages give a spatial code of 64 channels
at 7×7 positions; ``vq`` quantises each position's 64-vector against a
codebook of 512, so an image is 49 indices, 49 · log2 512 = 441 bits. The
preset names the conv encoder and decoder of aecore-conv by name, as presets
compose.
"""

from __future__ import annotations

from aecore.presets import Preset

vq_mnist = Preset(
    "conv",
    64 * 7 * 7,
    "conv",
    regularizers=("vq",),
    params={
        "encoder": {"channels": (32, 64), "latent": "spatial"},
        "vq": {"codebook_size": 512, "dim": 64, "layout": "spatial"},
        "trainer": {"epochs": 10, "lr": 2e-3, "batch_size": 128},
    },
    description=(
        "Conv 1→32→64 k3 s2 to a 64×7×7 spatial code, each position quantised against 512 codebook "
        "vectors (441 bits per image), restarts of dead codes; mirrored ConvT decoder, sigmoid"
    ),
    input_shape=(1, 28, 28),
    reference_params=70_337,
)
