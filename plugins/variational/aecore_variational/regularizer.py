"""The ``variational`` regularizer: a Gaussian code with a KL term, and optionally the whole ELBO.

The regularizer owns a linear head, ``latent_dim -> 2 · latent_dim``, that
reads the encoder's output h and gives the mean and log-variance of a
diagonal Gaussian q(z | x) = N(mu, exp(logvar)). ``transform_code`` returns a
reparameterised sample mu + exp(logvar / 2) · eps in training and the mean
in evaluation, with ``Posterior(mu, logvar, sample)`` beside it for the
penalty (aecore's ``(code, aux)`` protocol: nothing is kept between calls).

Two ways to use it:

``likelihood=none`` (the default)
    The run's ``--loss`` is the reconstruction term, whatever it is, and the
    penalty is ``weight · mean over the batch of KL(q ‖ N(0, I))``. With a
    per-pixel MSE a weight near 1/pixels balances the two terms.

``likelihood=bernoulli`` (with ``--loss bce``) or ``gaussian`` (with ``--loss mse``)
    The run's loss and the penalty add up to the negative ELBO per pixel:
    aecore's losses are means over every element of the batch, so the KL of
    each image (a sum over code units) is divided by the number of pixels D,
    and the penalty adds whatever the run's loss lacks to be
    −(1/D)·log p(x | z): the binarised target's correction, the Gaussian's
    1/(2σ²) scaling and normalising constant (σ fixed or learned), or the
    importance-weighted bound. ``weight`` = 1 is then the true ELBO, and
    ``train_loss`` × D is minus the ELBO per image in nats; the epoch's ELBO,
    KL and reconstruction NLL per image are reported as ``vae_*`` figures.
    ``ae eval`` adds the importance-sampled test log-likelihood.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aecore.components import RegularizerBase
from aecore.config import param
from aecore.errors import ConfigError
from aecore.hooks import hookimpl
from aecore_variational.bounds import (
    bernoulli_log_prob,
    gaussian_kl_per_image,
    gaussian_log_prob,
    log_mean_exp,
    log_normal,
    log_standard_normal,
    tc_decomposition,
)
from aecore_variational.evaluation import binarize, importance_sampled

__all__ = [
    "EVAL_SEED",
    "LOGVAR_RANGE",
    "NLL_IMAGES_ENV",
    "NLL_SAMPLES_ENV",
    "Posterior",
    "Variational",
    "VariationalConfig",
    "binarize",
]

LOGVAR_RANGE = (-30.0, 20.0)
#: Environment variables that override, for ``ae eval``, the number of importance samples per
#: test image (the ``eval_samples`` parameter) and the number of test images used (all by default).
NLL_SAMPLES_ENV = "AECORE_NLL_SAMPLES"
NLL_IMAGES_ENV = "AECORE_NLL_IMAGES"
#: Seed of the evaluation's random draws (the test set's binarisation and the importance samples).
EVAL_SEED = 0

Likelihood = Literal["none", "bernoulli", "gaussian"]
Binarize = Literal["none", "dynamic", "fixed"]


@dataclass(frozen=True)
class VariationalConfig:
    weight: float = param(
        1.0, "β: multiplier of the KL term (1 is the plain VAE; with a likelihood, 1 is the true ELBO)."
    )
    likelihood: Literal["none", "bernoulli", "gaussian"] = param(
        "none",
        "none: the run's --loss is the reconstruction term; bernoulli (with --loss bce) or gaussian "
        "(with --loss mse): the loss adds up to the negative ELBO per pixel.",
    )
    variance: Literal["fixed", "learned"] = param(
        "fixed", "Gaussian likelihood: sigma fixed, or one learned log-variance shared by every pixel."
    )
    sigma: float = param(0.1, "Gaussian likelihood: standard deviation (fixed), or its starting value.")
    binarize: Literal["none", "dynamic", "fixed"] = param(
        "none",
        "Bernoulli likelihood: none (data as it is), dynamic (each pixel drawn from Bernoulli(x) at "
        "every step), fixed (x > 0.5).",
    )
    warmup_steps: int = param(
        0,
        "Raise the KL weight linearly to weight over this many optimizer steps (0: none).",
        minimum=0,
    )
    objective: Literal["elbo", "betatc"] = param(
        "elbo", "elbo: weight·KL; betatc: weight·(mi_weight·MI + tc_weight·TC + dim_kl_weight·dim-KL)."
    )
    mi_weight: float = param(1.0, "β-TC objective: weight α of the index-code mutual information.", minimum=0)
    tc_weight: float = param(1.0, "β-TC objective: weight β of the total correlation.", minimum=0)
    dim_kl_weight: float = param(1.0, "β-TC objective: weight γ of the dimension-wise KL.", minimum=0)
    decompose: bool = param(False, "Report the epoch's MI, TC and dimension-wise KL (vae_mi, vae_tc, ...).")
    dataset_size: int | None = param(
        None, "N of the β-TC estimator (default: the run's training-set size).", minimum=1
    )
    iwae_samples: int = param(
        1, "Train on the importance-weighted bound with k samples (1: the ELBO).", minimum=1, maximum=4096
    )
    eval_samples: int = param(
        5000,
        f"Importance samples per test image for ae eval's log-likelihood ({NLL_SAMPLES_ENV} overrides).",
        minimum=1,
    )

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight cannot be negative, got {self.weight}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")
        if self.binarize != "none" and self.likelihood != "bernoulli":
            raise ValueError(f"binarize={self.binarize} needs likelihood=bernoulli")
        if self.variance == "learned" and self.likelihood != "gaussian":
            raise ValueError("variance=learned needs likelihood=gaussian")
        if self.iwae_samples > 1 and self.likelihood == "none":
            raise ValueError(
                "iwae_samples > 1 needs a likelihood (bernoulli or gaussian) to weigh samples by"
            )
        if self.iwae_samples > 1 and self.objective != "elbo":
            raise ValueError("iwae_samples > 1 works with objective=elbo only, not betatc")


class Posterior(NamedTuple):
    """What ``transform_code`` hands the penalty: the moments of q(z | x) and the code it drew."""

    mu: Tensor
    logvar: Tensor
    sample: Tensor


class Variational(RegularizerBase):
    """Gaussian code: (mu, logvar) head, reparameterised sampling in training, a KL or ELBO penalty."""

    Config = VariationalConfig
    prior = "N(0, I)"

    def __init__(self, config: VariationalConfig, *, latent_dim: int) -> None:
        super().__init__(config, latent_dim=latent_dim)
        self.head = nn.Linear(self.latent_dim, 2 * self.latent_dim)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.weight[: self.latent_dim].copy_(torch.eye(self.latent_dim))
        learned = config.likelihood == "gaussian" and config.variance == "learned"
        # One log σ² for every pixel: a regularizer is built knowing the code size, not the image's.
        self.log_variance: nn.Parameter | None = (
            nn.Parameter(torch.full((1,), 2 * math.log(config.sigma))) if learned else None
        )
        # Optimizer steps taken, for the warm-up: a buffer, so checkpoints and resume files carry it.
        self.steps: Tensor | None
        if config.warmup_steps:
            self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        else:
            self.steps = None
        self._batch: tuple[Tensor, Tensor] | None = None  # (clean, observed) of the batch in flight
        self._train_size: int | None = None
        self._sums: dict[str, Tensor] = {}
        self._count = 0
        self._beta = config.weight

    # -- the code ---------------------------------------------------------------------------

    def moments(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) for encoder outputs ``h``; logvar clamped to ``LOGVAR_RANGE``."""
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def transform_input(self, x: Tensor) -> Tensor:
        """In training with a likelihood: the batch the likelihood scores (binarised if asked)."""
        cfg = self.config
        if not self.training or cfg.likelihood == "none":
            return x
        observed = x if cfg.binarize == "none" else binarize(x, cfg.binarize)
        if cfg.likelihood == "gaussian" or observed is not x:
            self._batch = (x, observed)  # the penalty needs the clean batch the run's loss compares with
        return observed

    def transform_code(self, z: Tensor) -> tuple[Tensor, Posterior]:
        """A sample in training, the mean in evaluation; the posterior's moments for the penalty."""
        mu, logvar = self.moments(z)
        if not self.training:
            return mu, Posterior(mu, logvar, mu)
        sample = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        return sample, Posterior(mu, logvar, sample)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes from the prior the KL term pulls codes towards: N(0, I) (aecore's optional
        ``sample_prior`` protocol, which ``ae sample`` uses)."""
        return torch.randn(n, self.latent_dim, generator=generator)

    # -- the penalty ------------------------------------------------------------------------

    def beta(self) -> float:
        """The KL weight of the coming step: ``weight``, ramped up linearly over ``warmup_steps``.

        After s optimizer steps it is weight · min(1, (s + 1) / warmup_steps):
        the first step already has a KL term, and step ``warmup_steps`` has
        the full weight.
        """
        cfg = self.config
        if self.steps is None:
            return cfg.weight
        return cfg.weight * min(1.0, (int(self.steps) + 1) / cfg.warmup_steps)

    def log_likelihood(self, recon: Tensor, observed: Tensor) -> Tensor:
        """log p(observed | z) of each image, in nats, from the decoder's output ``recon``."""
        if self.config.likelihood == "bernoulli":
            try:
                return bernoulli_log_prob(recon, observed)
            except RuntimeError:
                if recon.numel() and (recon.min() < 0 or recon.max() > 1):
                    raise ConfigError(
                        "likelihood=bernoulli needs decoder outputs in [0, 1]; "
                        "use a sigmoid output (decoder.output_activation=sigmoid)."
                    ) from None
                raise
        if self.config.likelihood == "gaussian":
            if self.log_variance is not None:
                log_var = self.log_variance.clamp(*LOGVAR_RANGE)
            else:
                log_var = recon.new_tensor(2 * math.log(self.config.sigma))
            return gaussian_log_prob(recon, observed, log_var)
        raise ValueError("likelihood=none has no log-likelihood")

    def run_term(self, recon: Tensor, clean: Tensor) -> Tensor:
        """The reconstruction term the run's loss computes: ``bce`` or ``mse``, a mean over elements."""
        if self.config.likelihood == "bernoulli":
            return F.binary_cross_entropy(recon, clean)
        return F.mse_loss(recon, clean)

    def penalty(
        self,
        x: Tensor,
        z: Tensor,
        recon: Tensor,
        model: nn.Module,
        *,
        aux: Posterior,
        target: Tensor | None = None,
    ) -> Tensor:
        """β·KL (likelihood none), or what the run's loss lacks to be the negative ELBO per pixel.

        ``target`` is the clean batch the run's loss compared against, where
        the caller passes it; otherwise it is the batch this regularizer's
        ``transform_input`` received, or ``x`` itself.
        """
        cfg = self.config
        mu, logvar, sample = aux
        beta = self.beta()
        kl = gaussian_kl_per_image(mu, logvar)
        parts = self._decomposition(sample, mu, logvar)
        if cfg.objective == "betatc":
            assert parts is not None
            kl_term = (
                cfg.mi_weight * parts.mutual_information
                + cfg.tc_weight * parts.total_correlation
                + cfg.dim_kl_weight * parts.dimension_kl
            )
        else:
            kl_term = kl.mean()
        if cfg.likelihood == "none":
            self._record(kl, None, None, parts, beta)
            return beta * kl_term

        clean, observed = self._targets(x, target)
        pixels = recon[0].numel()
        log_lik = self.log_likelihood(recon, observed)
        if cfg.iwae_samples > 1:
            log_w = self._log_weights(model, aux, log_lik, observed, beta)
            bound = log_mean_exp(log_w, dim=1)
            self._record(kl, log_lik, bound, parts, beta)
            return -bound.mean() / pixels - self.run_term(recon, clean)
        loss = beta * kl_term / pixels
        if cfg.likelihood == "gaussian" or observed is not clean:
            # the run's loss scored recon against the clean batch with bce or mse: complete it
            loss = loss + (-log_lik.mean() / pixels - self.run_term(recon, clean))
        self._record(kl, log_lik, None, parts, beta)
        return loss

    def _targets(self, x: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:
        """(the clean batch the run's loss compares with, the batch the likelihood scores)."""
        pending, self._batch = self._batch, None
        if target is not None:
            return target, x
        if pending is not None and pending[1] is x:
            return pending
        return x, x

    def _log_weights(
        self, model: nn.Module, aux: Posterior, log_lik: Tensor, observed: Tensor, beta: float
    ) -> Tensor:
        """log w = log p(x|z) + β·(log p(z) − log q(z|x)) of the drawn code and k − 1 more: (N, k)."""
        mu, logvar, sample = aux
        n, k = mu.shape[0], self.config.iwae_samples
        std = (0.5 * logvar).exp()
        more = mu[:, None] + std[:, None] * torch.randn(
            n, k - 1, mu.shape[1], dtype=mu.dtype, device=mu.device
        )
        decoded = model.decode(more.reshape(n * (k - 1), -1))
        repeated = observed[:, None].expand(n, k - 1, *observed.shape[1:]).reshape(decoded.shape)
        lik = torch.cat([log_lik[:, None], self.log_likelihood(decoded, repeated).reshape(n, k - 1)], dim=1)
        codes = torch.cat([sample[:, None], more], dim=1)
        log_ratio = log_standard_normal(codes) - log_normal(codes, mu[:, None], logvar[:, None])
        return lik + beta * log_ratio

    def _decomposition(self, sample: Tensor, mu: Tensor, logvar: Tensor) -> Any:
        """The batch's MI, TC and dimension-wise KL, where the objective or the report needs them."""
        cfg = self.config
        if cfg.objective != "betatc" and not (cfg.decompose and self.training):
            return None
        size = cfg.dataset_size or self._train_size or sample.shape[0]
        if cfg.objective == "betatc":
            return tc_decomposition(sample, mu, logvar, size)
        with torch.no_grad():
            return tc_decomposition(sample, mu, logvar, size)

    # -- figures ----------------------------------------------------------------------------

    def _record(
        self, kl: Tensor, log_lik: Tensor | None, bound: Tensor | None, parts: Any, beta: float
    ) -> None:
        """Add the batch's figures (nats per image) to the epoch's sums; in training only."""
        if not self.training:
            return
        n = kl.shape[0]
        figures = {"kl": kl.detach().sum()}
        if log_lik is not None:
            figures["recon_nll"] = -log_lik.detach().sum()
        if bound is not None:
            figures["iwae_bound"] = bound.detach().sum()
        if parts is not None and self.config.decompose:
            figures["mi"] = parts.mutual_information.detach() * n
            figures["tc"] = parts.total_correlation.detach() * n
            figures["dim_kl"] = parts.dimension_kl.detach() * n
        for key, value in figures.items():
            if key in self._sums:
                self._sums[key] += value.double()
            else:
                self._sums[key] = value.double()
        self._count += n
        self._beta = beta

    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's mean figures per image, in nats (aecore's optional ``epoch_metrics``); resets them.

        ``vae_elbo`` is the true ELBO (β = 1, closed-form KL) whatever the
        weight or warm-up; ``vae_beta`` is the KL weight at the epoch's end.
        """
        count, sums = self._count, self._sums
        self._count, self._sums = 0, {}
        if not count:
            return {}
        figures = {"vae_beta": self._beta}
        means = {key: float(value) / count for key, value in sums.items()}
        figures["vae_kl"] = means["kl"]
        if "recon_nll" in means:
            figures["vae_recon_nll"] = means["recon_nll"]
            figures["vae_elbo"] = -(means["recon_nll"] + means["kl"])
        if "iwae_bound" in means:
            figures["vae_iwae_bound"] = means["iwae_bound"]
        for key in ("mi", "tc", "dim_kl"):
            if key in means:
                figures[f"vae_{key}"] = means[key]
        return figures

    @torch.no_grad()
    def eval_metrics(self, model: nn.Module, dataset: Any, *, device: torch.device | str) -> dict[str, float]:
        """The test split's KL and, with a likelihood, its importance-sampled log-likelihood (nats/image).

        ``vae_test_nll`` is −log p(x) estimated with k importance samples from
        q(z | x) (Burda et al. 2016): k = ``eval_samples``, or
        ``$AECORE_NLL_SAMPLES``; ``$AECORE_NLL_IMAGES`` limits it to the first
        test images. ``vae_test_elbo`` is the mean of the same samples' log
        weights. Binarised models are scored on the test images binarised the
        way they were trained (``dynamic``: one seeded draw, the same for every
        k). Reproducible: every draw comes from generators seeded with
        ``EVAL_SEED``.
        """
        test = dataset.test
        images = _env_count(NLL_IMAGES_ENV, len(test))
        samples = _env_count(NLL_SAMPLES_ENV, self.config.eval_samples)
        images = min(images, len(test))
        if images == 0:
            return {}
        result = importance_sampled(
            model, self, test, images=images, samples=samples, seed=EVAL_SEED, device=device
        )
        figures = {"vae_test_kl": result.kl}
        if self.config.likelihood != "none":
            figures.update(
                vae_test_nll=result.nll,
                vae_test_elbo=result.elbo,
                vae_nll_samples=float(samples),
                vae_nll_images=float(images),
            )
        return figures

    # -- hooks ------------------------------------------------------------------------------

    @hookimpl
    def ae_train_start(self, run: Any) -> None:
        """Check that the run's loss is the one this likelihood completes; learn the training size."""
        self._sums, self._count, self._batch = {}, 0, None
        self._train_size = run.info.get("train_size") or None
        likelihood = self.config.likelihood
        if likelihood == "none":
            return
        from aecore.losses import bce

        expected, needed = {"bernoulli": (bce, "bce"), "gaussian": (F.mse_loss, "mse")}[likelihood]
        if run.loss_fn is not expected:
            got = getattr(run.loss_fn, "__name__", type(run.loss_fn).__name__)
            raise ConfigError(
                f"variational.likelihood={likelihood} adds up to the ELBO with --loss {needed}, "
                f"but this run's loss is {got}; pass --loss {needed}."
            )

    @hookimpl
    def ae_after_step(self) -> None:
        """Count the optimizer step, for the KL warm-up."""
        if self.steps is not None:
            self.steps += 1


def _env_count(name: str, default: int) -> int:
    """A positive whole number from the environment variable ``name``, or ``default``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name}={text!r} is not a positive whole number; set it to e.g. 500 or unset it.")
    return value
