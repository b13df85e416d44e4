"""Variational code on top of any encoder: a Gaussian head, sampling, and a KL term or the whole ELBO.

``variational`` (the regularizer, :class:`Variational`) turns any encoder's
output into a diagonal Gaussian posterior q(z | x) and adds a KL term to
N(0, I). With ``likelihood=bernoulli`` (``--loss bce``) or ``gaussian``
(``--loss mse``) the run's loss becomes the negative ELBO per pixel, with β
warm-up, the β-TC decomposition, the importance-weighted bound and, in
``ae eval``, the importance-sampled test log-likelihood in nats. The
``vae-mnist`` preset is the recipe of docs/recipes/vae-mnist.md.
"""

from __future__ import annotations

from aecore_variational.bounds import (
    Decomposition,
    bernoulli_log_prob,
    gaussian_kl,
    gaussian_kl_per_image,
    gaussian_log_prob,
    log_mean_exp,
    log_normal,
    log_standard_normal,
    tc_decomposition,
)
from aecore_variational.evaluation import binarize, estimate_images, importance_sampled
from aecore_variational.regularizer import (
    EVAL_SEED,
    LOGVAR_RANGE,
    NLL_IMAGES_ENV,
    NLL_SAMPLES_ENV,
    Posterior,
    Variational,
    VariationalConfig,
)

__all__ = [
    "EVAL_SEED",
    "LOGVAR_RANGE",
    "NLL_IMAGES_ENV",
    "NLL_SAMPLES_ENV",
    "Decomposition",
    "Posterior",
    "Variational",
    "VariationalConfig",
    "bernoulli_log_prob",
    "binarize",
    "estimate_images",
    "gaussian_kl",
    "gaussian_kl_per_image",
    "gaussian_log_prob",
    "importance_sampled",
    "log_mean_exp",
    "log_normal",
    "log_standard_normal",
    "tc_decomposition",
]
