"""The ``sae-synthetic`` preset: a TopK sparse autoencoder sized for ``--data sparse-features``.

4096 latents on 256-d vectors, k = 16 (aecore-sparse's ``topk``), AuxK for
dead latents; the trainer settings are the ones docs/recipes/sae-synthetic.md
measured.
"""

from __future__ import annotations

from aecore.presets import Preset

#: Parameters of the sae encoder and decoder on 256-d inputs with 4096 latents:
#: W_enc, b_enc, b_pre, W_dec, b_dec.
SYNTHETIC_PARAMS = 4096 * 256 + 4096 + 256 + 4096 * 256 + 256

sae_synthetic = Preset(
    "sae",
    4096,
    "sae",
    regularizers=("auxk", "topk"),
    params={
        "topk": {"k": 16},
        "auxk": {"k": 128, "dead_window": 20_000},
        "decoder": {"dead_window": 20_000},
        "trainer": {"epochs": 10, "batch_size": 1024, "lr": 3e-3},
    },
    description="TopK SAE: 256-d → 4096 latents (k=16) → 256-d, AuxK; for --data sparse-features",
    input_shape=(256,),
    reference_params=SYNTHETIC_PARAMS,
)
