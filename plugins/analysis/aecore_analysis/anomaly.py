"""Anomaly detection by reconstruction error.

An autoencoder trained on normal data only (``ae train --normal-class 0``)
reconstructs what it has seen well and everything else badly, so the
per-sample reconstruction error is an anomaly score. A threshold turns scores
into flags: either a percentile of the scores the model gets on its own
training data (what "normal" costs), or a contamination rate (the share of
the scored samples to flag).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from aecore.data import TensorData
from aecore.errors import ConfigError
from aecore.model import Autoencoder

__all__ = [
    "AnomalyReport",
    "anomaly_mask",
    "detect",
    "detection_metrics",
    "reconstruction_scores",
    "threshold_from_contamination",
    "threshold_from_percentile",
]


@torch.no_grad()
def reconstruction_scores(
    model: Autoencoder, data: TensorData, *, batch_size: int = 1000, device: torch.device | str = "cpu"
) -> Tensor:
    """Mean squared error per sample (over all its elements), in float64, in data order."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for xb in data.batches(batch_size):
            xb = xb.to(device)
            err = (model(xb).double() - xb.double()).pow(2).flatten(1).mean(dim=1)
            out.append(err.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def threshold_from_percentile(reference: Tensor, percentile: float) -> float:
    """The ``percentile``-th percentile of reference (normal training) scores."""
    if not 0.0 <= percentile <= 100.0:
        raise ConfigError(f"--percentile must be between 0 and 100, got {percentile}.")
    if len(reference) == 0:
        raise ConfigError("no reference scores to take a percentile of (the training split is empty).")
    return float(torch.quantile(reference.double(), percentile / 100.0))


def threshold_from_contamination(scores: Tensor, contamination: float) -> float:
    """The score above which the top ``contamination`` share of ``scores`` lies."""
    if not 0.0 < contamination < 1.0:
        raise ConfigError(
            f"--contamination must be a fraction between 0 and 1 (exclusive), got {contamination}."
        )
    return float(torch.quantile(scores.double(), 1.0 - contamination))


def anomaly_mask(labels: Tensor, normal_classes: Sequence[int]) -> Tensor:
    """True for samples whose label is not one of the normal classes."""
    normal = torch.tensor(sorted({int(c) for c in normal_classes}), dtype=labels.dtype)
    return ~torch.isin(labels, normal)


def detection_metrics(scores: Tensor, is_anomaly: Tensor) -> dict[str, float]:
    """ROC-AUC and average precision of the scores, anomalies being the positives."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = is_anomaly.numpy().astype(int)
    s = scores.double().numpy()
    return {"roc_auc": float(roc_auc_score(y, s)), "average_precision": float(average_precision_score(y, s))}


@dataclass
class AnomalyReport:
    """Test scores, the threshold and flags, and detection quality where labels allow it."""

    scores: Tensor
    threshold: float
    flagged: Tensor
    labels: Tensor | None = None
    is_anomaly: Tensor | None = None
    normal_classes: list[int] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""


def detect(
    model: Autoencoder,
    train: TensorData,
    test: TensorData,
    *,
    percentile: float | None = None,
    contamination: float | None = None,
    normal_classes: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
) -> AnomalyReport:
    """Score ``test``, set the threshold, flag, and measure detection against the labels.

    With ``percentile`` the reference is the training split restricted to the
    normal classes (the data a one-class model learnt from). Without normal
    classes every label is normal, so there are no positives and no AUC.
    """
    if percentile is not None and contamination is not None:
        raise ConfigError("give either --percentile or --contamination, not both.")
    if percentile is None and contamination is None:
        percentile = 95.0
    if percentile is not None and not 0.0 <= percentile <= 100.0:
        raise ConfigError(f"--percentile must be between 0 and 100, got {percentile}.")
    if contamination is not None and not 0.0 < contamination < 1.0:
        raise ConfigError(
            f"--contamination must be a fraction between 0 and 1 (exclusive), got {contamination}."
        )
    classes = None if normal_classes is None else sorted({int(c) for c in normal_classes})
    scores = reconstruction_scores(model, test, device=device)
    if percentile is not None:
        reference = train
        if classes is not None and train.y is not None:
            reference = train.subset(anomaly_mask(train.y, classes).logical_not().nonzero().flatten())
        threshold = threshold_from_percentile(
            reconstruction_scores(model, reference, device=device), percentile
        )
    else:
        assert contamination is not None
        threshold = threshold_from_contamination(scores, contamination)
    report = AnomalyReport(scores, threshold, scores > threshold, labels=test.y, normal_classes=classes)
    if test.y is None:
        report.note = "the test split has no labels: scores only, no AUC."
    elif classes is None:
        report.note = (
            "the model was trained on every class, so no label counts as anomalous: no AUC "
            "(train with --normal-class, or pass --normal-class here)."
        )
    else:
        report.is_anomaly = anomaly_mask(test.y, classes)
        n_pos = int(report.is_anomaly.sum())
        if 0 < n_pos < len(test):
            report.metrics = detection_metrics(scores, report.is_anomaly)
        else:
            report.note = "the test labels are all normal or all anomalous: no AUC."
    return report
