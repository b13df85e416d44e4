"""The ``wae-mnist`` recipe: WAE-MMD with an 8-d code on MNIST (docs/recipes/wae-mnist.md).

Tolstikhin et al. (2018) use convolutional networks, an 8-d code, λ = 10 and
batches of 100 on MNIST; this recipe keeps the code size, λ, the kernel and
the batch size with aecore-mlp's fully connected networks, sized for a few
minutes on a CPU.
"""

from __future__ import annotations

from aecore.presets import Preset

wae_mnist = Preset(
    "mlp",
    8,
    "mlp",
    regularizers=("wae",),
    params={
        "encoder": {"hidden": (512, 256), "activation": "relu"},
        "decoder": {"output_activation": "sigmoid"},
        "wae": {"weight": 10.0, "prior_var": 1.0},
        "trainer": {"epochs": 10, "batch_size": 100, "lr": 1e-3, "cosine": True},
    },
    description="WAE-MMD 784-512-256-8 ReLU, IMQ kernel, λ=10, prior N(0, I); Adam 1e-3, cosine, 10 epochs",
    input_shape=(1, 28, 28),
    reference_params=1_071_384,
)
