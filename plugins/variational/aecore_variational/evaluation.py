"""The importance-sampled log-likelihood of test images (Burda et al. 2016, eq. 8), in bounded memory.

log p(x) ≈ log (1/k) Σ_s p(x | z_s) p(z_s) / q(z_s | x), z_s ~ q(z | x): a lower
bound in expectation that tightens as k grows, and the figure VAE papers
report as the test NLL. With k in the thousands the decoder runs on
images × k codes, so the samples are drawn and decoded in chunks and the
log-sum-exp is accumulated chunk by chunk: memory is bounded by
``EVAL_BLOCK`` values however large k is.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from aecore.errors import DataError
from aecore.model import split_code
from aecore_variational.bounds import gaussian_kl_per_image, log_normal, log_standard_normal

if TYPE_CHECKING:
    from aecore.data import TensorData
    from aecore_variational.regularizer import Variational

__all__ = [
    "EVAL_BLOCK",
    "Estimate",
    "ImageEstimate",
    "binarize",
    "estimate_images",
    "importance_sampled",
    "posterior_of",
]

#: Elements of the largest (images × samples × pixels) block decoded at once: 16 MiB of float32.
EVAL_BLOCK = 1 << 22
#: Test images scored together (the sample chunk shrinks so that images × samples × pixels stays bounded).
IMAGE_BATCH = 100


class ImageEstimate(NamedTuple):
    """Per image, in nats: the k-sample log-likelihood bound, the mean log weight (an ELBO
    estimate) and the closed-form KL of q(z | x) to the prior."""

    log_likelihood: Tensor
    elbo: Tensor
    kl: Tensor


class Estimate(NamedTuple):
    """Means over the test images, in nats per image: NLL = −log p̂(x), the ELBO, the KL."""

    nll: float
    elbo: float
    kl: float


def posterior_of(model: nn.Module, reg: Variational, x: Tensor) -> tuple[Tensor, Tensor]:
    """(mu, logvar) of q(z | x): the encoder, the regularizers before ``reg``, then ``reg``'s head."""
    h = model.encoder(x)
    for other in model.regularizers.values():
        if other is reg:
            break
        h = split_code(other.transform_code(h))[0]
    return reg.moments(h)


def estimate_images(
    model: nn.Module, reg: Variational, observed: Tensor, *, samples: int, generator: torch.Generator
) -> ImageEstimate:
    """The importance-sampled estimate for a batch of (already binarised) images; eval mode, no grad."""
    mu, logvar = posterior_of(model, reg, observed)
    kl = gaussian_kl_per_image(mu, logvar).double()
    n, d = mu.shape
    if reg.config.likelihood == "none":
        nothing = torch.full((n,), math.nan, dtype=torch.float64, device=mu.device)
        return ImageEstimate(nothing, nothing, kl)
    pixels = observed[0].numel()
    chunk = max(1, min(samples, EVAL_BLOCK // max(1, n * pixels)))
    std = (0.5 * logvar).exp()
    lse = torch.full((n,), -math.inf, dtype=torch.float64, device=mu.device)
    total = torch.zeros(n, dtype=torch.float64, device=mu.device)
    done = 0
    while done < samples:
        s = min(chunk, samples - done)
        # one draw per sample index, so that the figures do not depend on how the samples are chunked
        eps = torch.stack([torch.randn(n, d, generator=generator) for _ in range(s)], dim=1)
        eps = eps.to(device=mu.device, dtype=mu.dtype)
        z = mu[:, None] + std[:, None] * eps
        decoded = model.decode(z.reshape(n * s, d))
        repeated = observed[:, None].expand(n, s, *observed.shape[1:]).reshape(decoded.shape)
        log_w = reg.log_likelihood(decoded, repeated).reshape(n, s)
        log_w = (log_w + log_standard_normal(z) - log_normal(z, mu[:, None], logvar[:, None])).double()
        lse = torch.logaddexp(lse, torch.logsumexp(log_w, dim=1))
        total += log_w.sum(dim=1)
        done += s
    return ImageEstimate(lse - math.log(samples), total / samples, kl)


def binarize(x: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """``x`` in [0, 1] as binary pixels: drawn from Bernoulli(x) (``dynamic``) or x > 0.5 (``fixed``)."""
    if mode == "fixed":
        return (x > 0.5).to(x.dtype)
    if mode != "dynamic":
        raise ValueError(f"unknown binarisation {mode!r}")
    try:
        return torch.bernoulli(x, generator=generator)
    except RuntimeError:
        raise DataError(
            "binarize=dynamic draws each pixel from Bernoulli(x), so the data must lie in [0, 1]; "
            "use images scaled to [0, 1] or set variational.binarize=none."
        ) from None


@torch.no_grad()
def importance_sampled(
    model: nn.Module,
    reg: Variational,
    test: TensorData,
    *,
    images: int,
    samples: int,
    seed: int,
    device: torch.device | str,
) -> Estimate:
    """Mean NLL, ELBO and KL per image over the first ``images`` test images, ``samples`` draws each.

    The test images are binarised (where the model was trained on binarised
    data) by a generator of their own, seeded with ``seed``, so every k and
    every number of images scores the same binary images; the importance
    samples come from a second generator seeded with ``seed + 1``.
    """
    pixels = torch.Generator().manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    try:
        for start in range(0, images, IMAGE_BATCH):
            x = test.batch(slice(start, min(images, start + IMAGE_BATCH)))
            if reg.config.binarize != "none":
                x = binarize(x, reg.config.binarize, pixels)  # drawn on the CPU: the same on any device
            found = estimate_images(model, reg, x.to(device), samples=samples, generator=generator)
            sums += torch.stack([-found.log_likelihood.sum(), found.elbo.sum(), found.kl.sum()]).cpu()
    finally:
        model.train(was_training)
    nll, elbo, kl = (sums / images).tolist()
    return Estimate(nll, elbo, kl)
