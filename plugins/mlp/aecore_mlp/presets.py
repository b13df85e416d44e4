"""The fully connected reference models of seed-models.md, as presets.

Each gives exactly the parameter count of the reference table on 1×28×28
inputs; the decoder mirrors the encoder's hidden widths and blocks.
"""

from __future__ import annotations

from aecore.presets import Preset

_DEEP_TRAINING = {"grad_clip": 1.0, "plateau_patience": 2, "plateau_factor": 0.5}


def _mlp(
    latent: int,
    description: str,
    count: int,
    decoder: dict | None = None,
    trainer: dict | None = None,
    **encoder: object,
) -> Preset:
    params: dict[str, dict] = {"encoder": dict(encoder)}
    if decoder:
        params["decoder"] = decoder
    if trainer:
        params["trainer"] = trainer
    return Preset("mlp", latent, "mlp", params=params, description=description, reference_params=count)


fc_400_20 = _mlp(20, "784→400 ReLU →20 linear code; sigmoid output", 644_804, hidden=(400,))
simple = _mlp(
    64, "784→256→128→64, ReLU everywhere incl. the code", 484_944, hidden=(256, 128), code_activation="relu"
)
flexible = _mlp(
    64,
    "784→256→64 ReLU code (set --latent-dim above 784 for an overcomplete code)",
    435_536,
    hidden=(256,),
    code_activation="relu",
)
deep = _mlp(
    32,
    "784→512→256→128→32, each block Linear, ReLU, BN, Dropout 0.2; clipping and LR plateau",
    1_144_880,
    trainer=_DEEP_TRAINING,
    hidden=(512, 256, 128),
    code_activation="relu",
    batch_norm=True,
    dropout=0.2,
)
very_deep = _mlp(
    16,
    "784→512→384→256→128→64→16, blocks with BN and Dropout 0.3; clipping and LR plateau",
    1_485_472,
    trainer=_DEEP_TRAINING,
    hidden=(512, 384, 256, 128, 64),
    code_activation="relu",
    batch_norm=True,
    dropout=0.3,
)
tanh_12 = _mlp(
    12,
    "784→128→64 ReLU →12 linear code; tanh output",
    219_804,
    decoder={"output_activation": "tanh"},
    hidden=(128, 64),
)
basic_32 = _mlp(32, "784→512→256 ReLU →32 linear code; sigmoid output", 1_083_696, hidden=(512, 256))
symmetric = _mlp(
    150,
    "layer sizes [784, 2500, 150], ReLU incl. the code; mirror with tanh output (best by 5-fold CV)",
    4_675_934,
    decoder={"output_activation": "tanh"},
    hidden=(2500,),
    code_activation="relu",
)
