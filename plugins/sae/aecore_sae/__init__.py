"""Sparse autoencoders for interpretability, as aecore plugins.

- encoder and decoder ``sae``: f = act(W_enc (x − b_pre) + b_enc), x̂ = W_dec f + b_dec, with
  tied initialisation, biases at the geometric median, unit-norm dictionary directions and a
  dead-latent window (:mod:`aecore_sae.components`);
- regularizers ``batchtopk``, ``jumprelu`` and ``auxk`` (:mod:`aecore_sae.codes`); TopK is
  aecore-sparse's ``topk``;
- data sources ``activations:PATH`` (``.npy``/``.safetensors`` shards) and ``sparse-features``
  (synthetic, with its true dictionary);
- the preset ``sae-synthetic``;
- ``ae eval`` figures: L0, FVU, dead latents, feature recovery and a firing-frequency histogram
  (:mod:`aecore_sae.metrics`).

See docs/sae.md in the aecore repository.
"""

from aecore_sae.activations import Activations, ActivationsConfig
from aecore_sae.codes import AuxK, AuxKConfig, BatchTopK, BatchTopKConfig, JumpReLU, JumpReLUConfig
from aecore_sae.components import SAEDecoder, SAEDecoderConfig, SAEEncoder, SAEEncoderConfig
from aecore_sae.median import geometric_median
from aecore_sae.metrics import feature_recovery, fraction_of_variance_unexplained
from aecore_sae.synthetic import SparseFeatures, SparseFeaturesConfig

__all__ = [
    "Activations",
    "ActivationsConfig",
    "AuxK",
    "AuxKConfig",
    "BatchTopK",
    "BatchTopKConfig",
    "JumpReLU",
    "JumpReLUConfig",
    "SAEDecoder",
    "SAEDecoderConfig",
    "SAEEncoder",
    "SAEEncoderConfig",
    "SparseFeatures",
    "SparseFeaturesConfig",
    "feature_recovery",
    "fraction_of_variance_unexplained",
    "geometric_median",
]
