"""The ``vae-mnist`` recipe: a one-stochastic-layer VAE on binarised MNIST (docs/recipes/vae-mnist.md).

Burda et al. (2016, Table 1) train 784-200-200-50 tanh networks for 3,280
passes; this recipe is sized for a 30-minute budget on two CPU cores instead:
wider ReLU layers learn faster per pass. The run needs ``--loss bce`` (a
preset cannot choose the loss), so that the loss is the negative ELBO per
pixel; ``--val-fraction 0`` trains on all 60,000 images as the paper does.
"""

from __future__ import annotations

from aecore.presets import Preset

vae_mnist = Preset(
    "mlp",
    50,
    "mlp",
    regularizers=("variational",),
    params={
        "encoder": {"hidden": (500, 500), "activation": "relu"},
        "decoder": {"output_activation": "sigmoid"},
        "variational": {"likelihood": "bernoulli", "binarize": "dynamic"},
        "trainer": {"epochs": 50, "batch_size": 250, "lr": 2e-3, "cosine": True},
    },
    description=(
        "VAE 784-500-500-50 ReLU (Gaussian code, Bernoulli pixels, dynamic binarisation); "
        "Adam 2e-3, batch 250, cosine, 50 epochs; train with --loss bce"
    ),
    input_shape=(1, 28, 28),
    reference_params=1_341_934,
)
