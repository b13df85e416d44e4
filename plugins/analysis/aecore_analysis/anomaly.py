"""Anomaly detection by reconstruction error.

An autoencoder trained on normal data only (``ae train --normal-class 0``)
reconstructs what it has seen well and everything else badly, so the
per-sample reconstruction error is an anomaly score. A threshold turns scores
into flags: either a percentile of the scores the model gets on its own
training data (what "normal" costs), or a contamination rate (the share of
the scored samples to flag).

Image data is scored in one pass by :func:`aecore_analysis.localisation.localise`,
which also measures the pixel-level ROC-AUC when the test split carries
defect masks. A dataset's ``spec`` may say which labels are normal
(``normal_classes``) and name the labels (``label_names``, e.g. MVTec AD's
defect types); :func:`normal_classes_of` and :func:`label_names_of` read them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from aecore.data import TensorData
from aecore.errors import ConfigError, DataError
from aecore.model import Autoencoder
from aecore_analysis.localisation import EXACT_PIXELS, PixelMetrics, localise, rows_per_batch

__all__ = [
    "AnomalyReport",
    "LabelAUC",
    "anomaly_mask",
    "detect",
    "detection_metrics",
    "label_names_of",
    "normal_classes_of",
    "per_label_auc",
    "reconstruction_scores",
    "threshold_from_contamination",
    "threshold_from_percentile",
]


@torch.no_grad()
def reconstruction_scores(
    model: Autoencoder,
    data: TensorData,
    *,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Mean squared error per sample (over all its elements), in float64, in data order.

    Batches hold at most 1000 samples and 2**24 values (``batch_size`` overrides).
    """
    was_training = model.training
    model.eval()
    out = []
    try:
        for xb in data.batches(batch_size or rows_per_batch(data.shape)):
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


def normal_classes_of(spec: Mapping[str, Any]) -> list[int] | None:
    """The labels a dataset declares normal (``spec["normal_classes"]``), or None when it says nothing."""
    value = spec.get("normal_classes")
    if value is None:
        return None
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(c, int) and not isinstance(c, bool) for c in value)
    ):
        raise DataError(f"the data's normal_classes {value!r} is not a list of integer labels.")
    return sorted(set(value))


def label_names_of(spec: Mapping[str, Any]) -> list[str] | None:
    """The names of labels 0, 1, ... (``spec["label_names"]``), or None when the data has none."""
    value = spec.get("label_names")
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(n, str) for n in value):
        raise DataError(f"the data's label_names {value!r} is not a list of names.")
    return list(value)


@dataclass(frozen=True)
class LabelAUC:
    """How well the score separates one anomalous label (a defect type) from the normal samples."""

    label: int
    name: str
    count: int
    roc_auc: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "name": self.name, "samples": self.count, "roc_auc": self.roc_auc}


def per_label_auc(
    scores: Tensor, labels: Tensor, normal_classes: Sequence[int], names: Sequence[str]
) -> list[LabelAUC]:
    """ROC-AUC of each anomalous label present against all normal samples, in label order.

    A label beyond ``names`` is named by its number.
    """
    from sklearn.metrics import roc_auc_score

    normal = ~anomaly_mask(labels, normal_classes)
    if not bool(normal.any()):
        return []
    out = []
    for label in sorted(set(labels[~normal].tolist())):
        mine = labels == label
        keep = mine | normal
        auc = float(roc_auc_score(mine[keep].numpy().astype(int), scores[keep].double().numpy()))
        name = names[label] if 0 <= label < len(names) else str(label)
        out.append(LabelAUC(int(label), name, int(mine.sum()), auc))
    return out


@dataclass
class AnomalyReport:
    """Test scores, the threshold and flags, and detection quality where labels and masks allow it.

    ``metrics`` holds the image-level ``roc_auc`` and ``average_precision``;
    ``per_label`` the AUC of each named anomalous label; ``pixel`` the
    pixel-level AUC of the error maps against the test masks. ``note`` and
    ``pixel_note`` say why a figure is missing.
    """

    scores: Tensor
    threshold: float
    flagged: Tensor
    labels: Tensor | None = None
    is_anomaly: Tensor | None = None
    normal_classes: list[int] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""
    per_label: list[LabelAUC] = field(default_factory=list)
    pixel: PixelMetrics | None = None
    pixel_note: str = ""
    #: The score's name (``mse``, ``ssim``, ``code`` or a sum such as ``ssim+code``).
    score: str = "mse"
    #: Each score's test values when the chosen one is not the plain ``mse``: the parts, mse, the sum.
    by_score: dict[str, Tensor] = field(default_factory=dict)
    #: ``metrics`` of each score in ``by_score``, so the chosen one can be read beside the plain one.
    metrics_by_score: dict[str, dict[str, float]] = field(default_factory=dict)


def detect(
    model: Autoencoder,
    train: TensorData,
    test: TensorData,
    *,
    percentile: float | None = None,
    contamination: float | None = None,
    normal_classes: Sequence[int] | None = None,
    label_names: Sequence[str] | None = None,
    smooth: float = 0.0,
    exact_pixels: int = EXACT_PIXELS,
    score: str = "mse",
    device: torch.device | str = "cpu",
) -> AnomalyReport:
    """Score ``test``, set the threshold, flag, and measure detection against the labels and masks.

    With ``percentile`` the reference is the training split restricted to the
    normal classes (the data a one-class model learnt from). Without normal
    classes every label is normal, so there are no positives and no AUC.
    Images (C, H, W) are also scored per pixel when ``test`` has masks
    (``extras["mask"]``), the error maps smoothed by a Gaussian of ``smooth``
    pixels first; ``label_names`` adds the AUC of each anomalous label.
    ``score`` names the image score (see :mod:`aecore_analysis.scores`); any
    but ``mse`` is fitted to the same normal training samples as the
    percentile, and the report then also measures the plain score and each
    part beside it. The pixel maps stay squared errors whatever the score.
    """
    from aecore_analysis.scores import fit_score, parse_score

    parts = parse_score(score)
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
    from aecore_analysis.latent import is_image_shape

    pixel, pixel_note = None, ""
    if is_image_shape(test.shape):
        located = localise(model, test, smooth=smooth, exact_pixels=exact_pixels, device=device)
        scores, pixel, pixel_note = located.scores, located.pixel, located.note
    else:
        if smooth:
            raise ConfigError(
                f"--smooth smooths per-pixel error maps; the samples have shape {test.shape}, not images."
            )
        scores = reconstruction_scores(model, test, device=device) if parts == ("mse",) else None
    reference = train
    if classes is not None and train.y is not None:
        reference = train.subset(anomaly_mask(train.y, classes).logical_not().nonzero().flatten())
    by_score: dict[str, Tensor] = {}
    reference_scores = None
    if parts != ("mse",):
        fitted = fit_score(model, reference, parts, device=device)
        by_score = fitted.score(model, test, device=device)
        scores, reference_scores = by_score[fitted.name], fitted.reference[fitted.name]
    assert scores is not None
    if percentile is not None:
        if reference_scores is None:
            reference_scores = reconstruction_scores(model, reference, device=device)
        threshold = threshold_from_percentile(reference_scores, percentile)
    else:
        assert contamination is not None
        threshold = threshold_from_contamination(scores, contamination)
    report = AnomalyReport(
        scores,
        threshold,
        scores > threshold,
        labels=test.y,
        normal_classes=classes,
        pixel=pixel,
        pixel_note=pixel_note,
        score="+".join(parts),
        by_score=by_score,
    )
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
            report.metrics_by_score = {
                name: detection_metrics(values, report.is_anomaly) for name, values in by_score.items()
            }
            if label_names is not None:
                report.per_label = per_label_auc(scores, test.y, classes, label_names)
        else:
            report.note = "the test labels are all normal or all anomalous: no AUC."
    return report
