"""What ``ae eval`` reports for a sparse autoencoder, and the feature-recovery measures.

Every figure is computed on the test split (docs/sae.md defines each):

- ``sae_l0``: mean number of nonzero latents per sample;
- ``sae_fvu``: fraction of variance unexplained, Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the test mean;
- ``sae_dead_fraction``: latents dead under the training window (``dead_window``), as saved;
- ``sae_dead_fraction_test``: latents that fire on no test sample;
- with a true dictionary in the data (``sparse-features``): ``sae_mean_max_cosine`` and
  ``sae_matched_cosine`` (:func:`feature_recovery`).

A histogram of the latents' firing frequencies (log10 of the share of test
samples each fires on) is written as ``sae-firing-frequencies.png`` next to
the checkpoint.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aecore.data import Dataset
from aecore.errors import Notice
from aecore.evaluate import EVAL_BATCH
from aecore.io import atomic_write_bytes

__all__ = [
    "HISTOGRAM_FILE",
    "MATCHING_LIMIT",
    "evaluate_sae",
    "feature_recovery",
    "firing_histogram_png",
    "fraction_of_variance_unexplained",
]

HISTOGRAM_FILE = "sae-firing-frequencies.png"
#: The largest cosine matrix (true features × latents) matched one-to-one; beyond it only the
#: mean max cosine is reported (the assignment takes time cubic in the size).
MATCHING_LIMIT = 8192 * 8192


def fraction_of_variance_unexplained(x: Tensor, recon: Tensor) -> float:
    """Σ‖x − x̂‖² / Σ‖x − x̄‖² over the rows of ``x`` (N, d), x̄ their mean; in float64."""
    x64, r64 = x.flatten(1).double(), recon.flatten(1).double()
    spread = (x64 - x64.mean(dim=0)).pow(2).sum()
    return float((x64 - r64).pow(2).sum() / spread)


def _unit(rows: Tensor) -> Tensor:
    rows = rows.double()
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


def feature_recovery(true: Tensor, learned: Tensor, *, match: bool = True) -> dict[str, float]:
    """How well ``learned`` directions (n, d) recover ``true`` features (N, d), by cosine similarity.

    With C[i, j] the cosine of true feature i and learned direction j:

    - mean max cosine: (1/N) Σ_i max_j C[i, j] (a direction may serve several features);
    - matched cosine: (1/N) Σ_i C[i, π(i)] for the one-to-one assignment π of features to
      directions that maximises the sum (Hungarian algorithm); with fewer directions than
      features the unassigned features count 0.

    A perfect dictionary, in any order, gives 1 for both.
    """
    from scipy.optimize import linear_sum_assignment

    cosine = _unit(true) @ _unit(learned).T
    figures = {"sae_mean_max_cosine": float(cosine.max(dim=1).values.mean())}
    if match:
        rows, cols = linear_sum_assignment(cosine.cpu().numpy(), maximize=True)
        figures["sae_matched_cosine"] = float(cosine[rows, cols].sum()) / true.shape[0]
    return figures


def firing_histogram_png(fires: Tensor, samples: int) -> bytes:
    """A PNG histogram of log10(firing frequency) per latent; latents that never fire are counted apart."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frequency = fires.double().cpu() / max(samples, 1)
    never = int((fires == 0).sum())
    logs = frequency[frequency > 0].log10().numpy()
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    low = math.log10(1.0 / max(samples, 1))
    axes.hist(logs, bins=50, range=(low, 0.0), color="#3b6ea8")
    axes.set_xlabel("log10 firing frequency (share of test samples)")
    axes.set_ylabel("latents")
    axes.set_title(f"{len(fires)} latents on {samples} test samples; {never} never fire")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


@torch.no_grad()
def evaluate_sae(
    model: nn.Module,
    decoder: Any,
    dataset: Dataset,
    *,
    device: torch.device | str = "cpu",
    out_dir: Path | None = None,
) -> dict[str, float]:
    """The figures of the module docstring for ``model`` (its decoder ``decoder``) on ``dataset.test``."""
    was_training = model.training
    model.eval()
    try:
        test = dataset.test
        fires = torch.zeros(decoder.latent_dim, dtype=torch.int64, device=device)
        sse = torch.zeros((), dtype=torch.float64, device=device)
        sum_sq = torch.zeros((), dtype=torch.float64, device=device)
        total = torch.zeros(math.prod(test.shape), dtype=torch.float64, device=device)
        for xb in test.batches(EVAL_BATCH, reuse=True):
            xb = xb.to(device)
            z = model.encode(xb)
            recon = model.decode(z)
            fires += torch.count_nonzero(z, dim=0)
            flat = xb.flatten(1).double()
            sse += (recon.flatten(1).double() - flat).pow(2).sum()
            sum_sq += flat.pow(2).sum()
            total += flat.sum(dim=0)
    finally:
        model.train(was_training)
    n = len(test)
    figures = {"sae_l0": float(fires.sum()) / n}
    spread = float(sum_sq) - float(total.pow(2).sum()) / n
    if spread > 0:
        figures["sae_fvu"] = float(sse) / spread
    figures["sae_dead_fraction"] = float(decoder.dead_mask().float().mean())
    figures["sae_dead_fraction_test"] = float((fires == 0).float().mean())
    true = dataset.tensors.get("true_dictionary")
    learned = decoder.weight.detach()
    if true is not None and true.dim() == 2 and true.shape[1] == learned.shape[1]:
        match = true.shape[0] * learned.shape[0] <= MATCHING_LIMIT
        if not match:
            warnings.warn(
                f"sae_matched_cosine is left out: matching {true.shape[0]} features to "
                f"{learned.shape[0]} latents one-to-one is too large (limit {MATCHING_LIMIT:,} pairs).",
                Notice,
                stacklevel=2,
            )
        figures.update(feature_recovery(true.to(learned.device), learned, match=match))
    if out_dir is not None:
        atomic_write_bytes(Path(out_dir) / HISTOGRAM_FILE, firing_histogram_png(fires, n))
    return figures
