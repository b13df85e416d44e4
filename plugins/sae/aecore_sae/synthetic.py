"""``--data sparse-features``: sparse combinations of known directions, to test dictionary learning.

Each sample is x = Σ_i a_i m_i D_i: D_i are ``features`` unit directions in
``dim`` dimensions (Gaussian vectors, normalised), a_i ∈ {0, 1} says whether
feature i is active, independently per sample with probability p_i, and
m_i ≥ 0 is its magnitude. The probabilities follow Zipf's law by rank,
p_i = min(1, c·i^(−zipf)) for i = 1..features, with c chosen so that
Σ p_i = ``l0``: the expected number of active features per sample. Feature
1 is the most frequent. Magnitudes are drawn per activation: ``uniform`` on
[0, 1], ``exponential`` with mean 1, or ``one``. ``noise`` adds isotropic
Gaussian noise of that standard deviation per coordinate.

The true dictionary (features, dim) is stored with the data as the
dataset-level tensor ``true_dictionary`` (and the probabilities as
``feature_probability``), so ``ae eval`` can report how well a sparse
autoencoder recovers it. Everything is drawn from ``seed``; the data is
prepared once, through the data cache, and memory-mapped afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from aecore.config import param
from aecore.data import Dataset, TensorData, TensorStore
from aecore.errors import DataError

__all__ = ["SparseFeatures", "SparseFeaturesConfig", "zipf_probabilities"]

#: Rows drawn at a time: bounds memory (rows × features uniform draws) and fixes the random stream.
CHUNK = 2048


@dataclass(frozen=True)
class SparseFeaturesConfig:
    features: int = param(4096, "N: true feature directions.", minimum=1, maximum=1 << 20)
    dim: int = param(256, "d: dimensions of each sample.", minimum=1, maximum=1 << 16)
    l0: float = param(16.0, "Expected number of active features per sample (the true mean L0).")
    zipf: float = param(0.5, "Zipf exponent of the features' firing probabilities by rank (0: all equal).")
    magnitude: Literal["uniform", "exponential", "one"] = param(
        "uniform", "Magnitude of an active feature: uniform on [0, 1], exponential with mean 1, or 1."
    )
    noise: float = param(0.0, "Standard deviation of Gaussian noise added to every coordinate.")
    rows: int = param(200_000, "Training samples.", minimum=1)
    test_rows: int = param(10_000, "Test samples.", minimum=1)
    seed: int = param(0, "Seed of the dictionary, the activations and the noise.")

    def __post_init__(self) -> None:
        if not 0.0 < self.l0 <= self.features:
            raise ValueError(f"l0 must be in (0, features={self.features}], got {self.l0:g}")
        if not 0.0 <= self.zipf < math.inf:
            raise ValueError(f"zipf must be a finite non-negative exponent, got {self.zipf:g}")
        if not 0.0 <= self.noise < math.inf:
            raise ValueError(f"noise must be a finite non-negative number, got {self.noise:g}")


def zipf_probabilities(features: int, l0: float, exponent: float) -> np.ndarray:
    """p_i = min(1, c·i^(−exponent)), i = 1..features, with c such that Σ p_i = l0 (float64)."""
    rank = np.arange(1, features + 1, dtype=np.float64) ** -exponent
    low, high = 0.0, l0 / rank[-1]  # at ``high`` every p_i reaches 1, so Σ p_i >= l0
    for _ in range(200):  # bisection: Σ min(1, c·r_i) rises with c
        c = (low + high) / 2
        if np.minimum(1.0, c * rank).sum() < l0:
            low = c
        else:
            high = c
    return np.minimum(1.0, high * rank)


class SparseFeatures:
    """Synthetic sparse features with a known dictionary: ``--data sparse-features?rows=200000``."""

    Config = SparseFeaturesConfig

    def __init__(self, config: SparseFeaturesConfig) -> None:
        self.config = config

    def files(self, location: str | None, *, data_dir: Path | None) -> list[Path]:
        return []  # nothing on disk to watch: listing no files makes the source cached

    def load(
        self,
        location: str | None,
        *,
        data_dir: Path | None,
        normalisation: dict[str, Any] | None,
        store: TensorStore | None = None,
    ) -> Dataset:
        cfg = self.config
        if normalisation is not None and normalisation.get("kind", "identity") != "identity":
            raise DataError(
                f"sparse-features is stored as drawn, but the model's normalisation is "
                f"'{normalisation.get('kind')}'; train on this data to use it."
            )
        store = store or TensorStore(None)
        rng = np.random.Generator(np.random.PCG64(cfg.seed))
        dictionary = torch.from_numpy(rng.standard_normal((cfg.features, cfg.dim), dtype=np.float32))
        dictionary /= dictionary.norm(dim=1, keepdim=True).clamp_min(1e-12)
        probability = zipf_probabilities(cfg.features, cfg.l0, cfg.zipf)
        threshold = probability.astype(np.float32)
        total = cfg.rows + cfg.test_rows
        x = store.empty("all.x", (total, cfg.dim), torch.float32)
        advance = store.progress(total, "drawing sparse features")
        for start in range(0, total, CHUNK):
            count = min(CHUNK, total - start)
            active = rng.random((count, cfg.features), dtype=np.float32) < threshold
            rows, cols = (torch.from_numpy(a) for a in np.nonzero(active))  # row-major: rows sorted
            magnitude = torch.from_numpy(self._magnitudes(rng, len(cols)))
            counts = torch.bincount(rows, minlength=count)
            offsets = torch.cumsum(counts, 0) - counts
            chunk = F.embedding_bag(cols, dictionary, offsets, mode="sum", per_sample_weights=magnitude)
            if cfg.noise:
                chunk += cfg.noise * torch.from_numpy(rng.standard_normal(chunk.shape, dtype=np.float32))
            x[start : start + count] = chunk
            advance(count)
        whole = TensorData(x, None, {"kind": "identity"})
        spec = {
            "format": "sparse-features",
            "features": cfg.features,
            "dim": cfg.dim,
            "l0": cfg.l0,
            "zipf": cfg.zipf,
            "magnitude": cfg.magnitude,
        }
        tensors = {
            "true_dictionary": dictionary,
            "feature_probability": torch.from_numpy(probability.astype(np.float32)),
        }
        return Dataset(
            "sparse-features",
            whole.subset(torch.arange(cfg.rows)),
            whole.subset(torch.arange(cfg.rows, total)),
            spec,
            tensors,
        )

    def _magnitudes(self, rng: np.random.Generator, n: int) -> np.ndarray:
        kind = self.config.magnitude
        if kind == "uniform":
            return rng.random(n, dtype=np.float32)
        if kind == "exponential":
            return rng.standard_exponential(n, dtype=np.float32)
        return np.ones(n, dtype=np.float32)
