"""Linear probes: how much class information a frozen encoder's code keeps.

A logistic regression on standardised codes is the usual measure of feature
learning: the encoder is never updated, so the accuracy reflects the code
alone, and comparing it with chance (1 / number of classes) says how far
unsupervised training went towards separating the classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aecore.data import Dataset
from aecore.errors import ConfigError, DataError
from aecore.model import Autoencoder
from aecore_analysis.latent import encode

__all__ = ["ProbeResult", "linear_probe", "probe"]


@dataclass
class ProbeResult:
    """Accuracy of the linear classifier on codes, with what chance would give."""

    accuracy: float
    train_accuracy: float
    chance: float
    classes: list[int]
    confusion: list[list[int]]
    n_train: int
    n_test: int

    def to_dict(self) -> dict[str, object]:
        return {
            "accuracy": self.accuracy,
            "train_accuracy": self.train_accuracy,
            "chance": self.chance,
            "classes": self.classes,
            "confusion": self.confusion,
            "n_train": self.n_train,
            "n_test": self.n_test,
        }


def linear_probe(
    train_codes: Tensor,
    train_labels: Tensor,
    test_codes: Tensor,
    test_labels: Tensor,
    *,
    c: float = 1.0,
    max_iter: int = 1000,
) -> ProbeResult:
    """Fit a logistic regression on standardised training codes; score it on the test codes.

    The standardisation is fitted on the training codes only (lbfgs,
    multinomial). Chance is one over the number of classes seen in training.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    if not c > 0:
        raise ConfigError(f"--c must be positive, got {c}.")
    y_train = train_labels.numpy()
    classes = sorted({int(v) for v in y_train})
    if len(classes) < 2:
        raise DataError(f"a probe needs at least two classes in the training split, found {classes}.")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    with threadpool_limits(1):  # codes are small: one BLAS thread is faster than several contending
        clf.fit(train_codes.double().numpy(), y_train)
    x_test, y_test = test_codes.double().numpy(), test_labels.numpy()
    pred = clf.predict(x_test)
    labels = sorted(set(classes) | {int(v) for v in y_test})
    return ProbeResult(
        accuracy=float((pred == y_test).mean()),
        train_accuracy=float(clf.score(train_codes.double().numpy(), y_train)),
        chance=1.0 / len(classes),
        classes=labels,
        confusion=confusion_matrix(y_test, pred, labels=labels).tolist(),
        n_train=len(y_train),
        n_test=len(y_test),
    )


def probe(
    model: Autoencoder,
    dataset: Dataset,
    *,
    train_size: int | None = None,
    c: float = 1.0,
    device: torch.device | str = "cpu",
) -> ProbeResult:
    """Encode the training split (its first ``train_size`` samples) and the test split; fit and score."""
    if dataset.train.y is None or dataset.test.y is None:
        raise DataError(f"a linear probe needs class labels, but {dataset.name} has none.")
    train = dataset.train
    if train_size is not None:
        if train_size < 2:
            raise ConfigError(f"--train-size must be at least 2, got {train_size}.")
        train = train.subset(torch.arange(min(train_size, len(train))))
    assert train.y is not None
    return linear_probe(
        encode(model, train, device=device),
        train.y.cpu(),
        encode(model, dataset.test, device=device),
        dataset.test.y.cpu(),
        c=c,
    )
