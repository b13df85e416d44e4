"""scikit-learn estimators backed by aecore: an autoencoder as a transformer, and as an outlier detector.

:class:`AutoencoderTransformer` encodes rows into codes (``transform``) and
decodes codes back (``inverse_transform``); :class:`AutoencoderOutlierDetector`
scores rows by their reconstruction error, with PyOD's conventions. Both
train through :func:`aecore.train`, so the same components, trainer, hooks
and checkpoints serve them as serve ``ae train``; both pass scikit-learn's
own estimator checks. Component parameters are searchable by name
(``GridSearchCV(est, {"encoder__hidden": [(16,), (64,)]})``).

scikit-learn is an optional dependency of aecore: importing this module
imports it, and ``import aecore`` never does. See docs/sklearn.md.
"""

from __future__ import annotations

try:
    import sklearn  # first: without it, the error below is the whole story
except ImportError:
    raise ImportError(
        "aecore.sklearn needs scikit-learn, which is not installed; run: pip install scikit-learn"
    ) from None

import contextlib
import math
import numbers
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy.special import erf
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from aecore import checkpoint, registry
from aecore.config import params_of
from aecore.errors import AecoreError, CheckpointError, ConfigError, ShapeError, suggest
from aecore.evaluate import EVAL_BATCH
from aecore.model import Autoencoder
from aecore.request import FIXED_TARGETS
from aecore.training import train
from aecore.training.run import resolve_device

__all__ = ["AutoencoderOutlierDetector", "AutoencoderTransformer"]

#: The key under the checkpoint's ``training`` entry that holds the estimator's record.
RECORD_KEY = "sklearn"
RECORD_FORMAT = "aecore.sklearn"
RECORD_VERSION = 1

#: The dtypes inputs are accepted in (others, integers included, become float64).
_FLOATS = [np.float64, np.float32]
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_AUTO_LATENT_MAX = 8


class _AutoencoderEstimator(BaseEstimator):
    """What both estimators share: parameters, training through aecore, scoring, saving.

    Component parameters live in ``params`` (``{"encoder": {"hidden": (64,)}}``)
    and are also reachable flat, as ``encoder__hidden``, through
    :meth:`set_params` and :meth:`get_params` (``deep=True``): that is how
    ``GridSearchCV`` and ``Pipeline`` address them.
    """

    def __init__(
        self,
        encoder: str = "mlp",
        *,
        decoder: str | None = None,
        regularizers: Sequence[str] | str = (),
        latent_dim: int | Literal["auto"] = "auto",
        epochs: int = 20,
        batch_size: int = 128,
        lr: float = 1e-3,
        loss: str = "mse",
        params: Mapping[str, Mapping[str, Any]] | None = None,
        input_shape: Sequence[int] | None = None,
        val_fraction: float = 0.0,
        trainer: str = "default",
        backend: str = "auto",
        device: str = "cpu",
        random_state: int | np.random.RandomState | None = 0,
        n_jobs: int | None = None,
        runs_root: str | os.PathLike[str] | None = None,
        verbose: bool = False,
    ) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.regularizers = regularizers
        self.latent_dim = latent_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.loss = loss
        self.params = params
        self.input_shape = input_shape
        self.val_fraction = val_fraction
        self.trainer = trainer
        self.backend = backend
        self.device = device
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.runs_root = runs_root
        self.verbose = verbose

    # -- parameters ----------------------------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters; with ``deep``, each component parameter also as ``TARGET__PARAM``."""
        out = super().get_params(deep=deep)
        if deep and isinstance(self.params, Mapping):
            for target, values in self.params.items():
                if isinstance(values, Mapping):
                    out.update({f"{target}__{name}": value for name, value in values.items()})
        return out

    def set_params(self, **params: Any) -> _AutoencoderEstimator:
        """Set parameters; ``encoder__hidden=(64,)`` sets ``params["encoder"]["hidden"]``.

        A target is ``encoder``, ``decoder``, ``trainer``, ``loss``, ``backend``
        or a regularizer's name (``sparse__weight``). Whether the component
        takes the parameter is checked by :meth:`fit`, as any value is.
        ``params`` is replaced by an updated copy, never changed in place.
        """
        plain = {k: v for k, v in params.items() if "__" not in k}
        nested = {k: v for k, v in params.items() if "__" in k}
        super().set_params(**plain)  # the regularizers may change in the same call
        if not nested:
            return self
        targets = self._targets()
        given = self.params if self.params is not None else {}
        if not isinstance(given, Mapping) or not all(isinstance(v, Mapping) for v in given.values()):
            raise ValueError(
                f"cannot set {next(iter(nested))!r}: params is {given!r}, not a dict of dicts; "
                "set params={} first."
            )
        merged = {str(t): dict(v) for t, v in given.items()}
        for key, value in nested.items():
            target, _, name = key.partition("__")
            if target not in targets or not name:
                raise ValueError(
                    f"Invalid parameter {key!r} for estimator {type(self).__name__}: '{target}' is not a "
                    f"part of this model; name component parameters TARGET__PARAM with TARGET one of "
                    f"{', '.join(sorted(targets))}."
                )
            merged.setdefault(target, {})[name] = value
        self.params = merged
        return self

    def _targets(self) -> set[str]:
        """The names ``params`` may be given for: the fixed targets and the regularizers' short names."""
        regs = _as_names(self.regularizers)
        names = [str(r).rpartition(":")[2] for r in regs] if isinstance(regs, tuple) else []
        return {*FIXED_TARGETS, *names, *(("reg",) if len(names) == 1 else ())}

    # -- scikit-learn protocol -----------------------------------------------------------------

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        # On the CPU a seeded fit is bit-for-bit repeatable; GPU kernels need not be.
        tags.non_deterministic = str(self.device) != "cpu"
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    # -- fitting -------------------------------------------------------------------------------

    def _fit(self, X: np.ndarray) -> None:
        """Train on all of ``X`` (already validated) through :func:`aecore.train`; set ``model_`` and co."""
        n_features = X.shape[1]
        shape = self._sample_shape(n_features)
        if self.n_jobs is not None and not (_is_int(self.n_jobs) and self.n_jobs >= 1):
            raise ConfigError(
                f"n_jobs must be None or a positive number of torch threads, got {self.n_jobs!r}."
            )
        if not (_is_number(self.val_fraction) and 0.0 <= self.val_fraction < 1.0):
            raise ConfigError(f"val_fraction must be a share in [0, 1), got {self.val_fraction!r}.")
        seed = self._seed()
        fields = {
            "encoder": self.encoder,
            "decoder": self.decoder,
            "regularizers": _as_names(self.regularizers),
            "latent_dim": self._latent_dim(n_features),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "loss": self.loss,
            "params": self._run_params(),
            "val_fraction": self.val_fraction,
            "trainer": self.trainer,
            "backend": self.backend,
            "device": self.device,
            "seed": seed,
        }
        samples = self._tensor(X, shape)
        with (
            _torch_threads(self.n_jobs),
            _own_random_state(self.device),
            _runs_root(self.runs_root) as root,
        ):
            # Train and test are both X: the estimator learns from all it is given, and the run's
            # test_* figures are its error on the training rows.
            result = train(
                progress=bool(self.verbose),
                data=(samples, samples),
                runs_root=str(root),
                **{k: _plain(v) for k, v in fields.items()},
            )
            meta = checkpoint.read_metadata(result.checkpoint)
        self.model_ = result.model.eval()
        self.seed_ = seed
        self.history_ = [dict(h) for h in result.history]
        self.run_dir_ = None if self.runs_root is None else result.run_dir
        self._fit_meta = {key: meta[key] for key in ("data", "training", "metrics")}

    def _sample_shape(self, n_features: int) -> tuple[int, ...]:
        """The shape one row is given to the model in: ``input_shape``, or the row itself."""
        if self.input_shape is None:
            return (n_features,)
        shape = self.input_shape
        if (
            isinstance(shape, str | bytes)
            or not isinstance(shape, Sequence)
            or not shape
            or not all(_is_int(s) and s > 0 for s in shape)
        ):
            raise ShapeError(
                f"input_shape must be a tuple of positive integers such as (1, 28, 28), got {shape!r}."
            )
        shape = tuple(int(s) for s in shape)
        if math.prod(shape) != n_features:
            raise ShapeError(
                f"input_shape {shape} holds {math.prod(shape)} values per sample, but X has {n_features} "
                f"features; give a shape whose product is {n_features}."
            )
        return shape

    def _latent_dim(self, n_features: int) -> int:
        if self.latent_dim == "auto":
            return max(1, min(_AUTO_LATENT_MAX, n_features // 2))
        if not _is_int(self.latent_dim) or self.latent_dim < 1:
            raise ConfigError(f"latent_dim must be a positive integer or 'auto', got {self.latent_dim!r}.")
        return int(self.latent_dim)

    def _seed(self) -> int:
        """``random_state`` as aecore's seed: an int as it is, else one drawn from it (sklearn's rules)."""
        if _is_int(self.random_state):
            if self.random_state < 0:
                raise ConfigError(
                    "random_state must be a non-negative integer, a RandomState or None, "
                    f"got {self.random_state}."
                )
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(0, np.iinfo(np.int32).max))

    def _run_params(self) -> dict[str, dict[str, Any]]:
        """``params`` for the run, the decoder's output activation defaulting to none (see the docs)."""
        given = self.params if self.params is not None else {}
        if not isinstance(given, Mapping) or not all(
            isinstance(t, str) and isinstance(v, Mapping) for t, v in given.items()
        ):
            raise ConfigError(
                f"params must map a part (encoder, decoder, trainer, loss, backend or a regularizer) to a "
                f"dict of its parameters, e.g. {{'encoder': {{'hidden': (64,)}}}}; got {given!r}."
            )
        targets = self._targets()
        for target in given:
            if target not in targets:
                raise ConfigError(
                    f"params names '{target}', which is not a part of this model.{suggest(target, targets)} "
                    f"Give parameters for one of: {', '.join(sorted(targets))}."
                )
        out = {t: {str(k): v for k, v in values.items()} for t, values in given.items()}
        decoder = out.get("decoder", {})
        if "output_activation" not in decoder and "output_activation" in _decoder_params(self):
            out["decoder"] = {**decoder, "output_activation": "none"}
        return out

    @staticmethod
    def _tensor(X: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
        """Rows as float32 samples of ``shape`` (a copy: the caller's array may be read-only)."""
        if X.dtype == np.float64 and X.size and float(np.abs(X).max()) > _FLOAT32_MAX:
            raise ValueError("X holds a value beyond float32's range; rescale it (e.g. with StandardScaler).")
        return torch.tensor(np.asarray(X, dtype=np.float32)).reshape(len(X), *shape)

    # -- using the model -----------------------------------------------------------------------

    def _checked(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, dtype=_FLOATS, reset=False)

    def _device(self) -> torch.device:
        return next(iter(self.model_.parameters()), torch.zeros(())).device

    @torch.no_grad()
    def _each_batch(self, X: np.ndarray, fn: Any) -> torch.Tensor:
        """``fn(batch)`` over fixed-size batches of ``X``'s rows in order, concatenated on the CPU."""
        samples = self._tensor(X, tuple(self.model_.input_shape))
        device = self._device()
        with _torch_threads(self.n_jobs):
            out = [fn(samples[i : i + EVAL_BATCH].to(device)).cpu() for i in range(0, len(X), EVAL_BATCH)]
        return torch.cat(out)

    def _errors(self, X: np.ndarray) -> np.ndarray:
        """Mean squared reconstruction error of each row, in float64."""
        model = self.model_

        def error(xb: torch.Tensor) -> torch.Tensor:
            return (model(xb).double() - xb.double()).pow(2).flatten(1).mean(dim=1)

        return self._each_batch(X, error).numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Minus the mean squared reconstruction error per row: higher is better, as scikit-learn wants.

        This is what ``GridSearchCV`` maximises unless given another ``scoring``.
        ``y`` is ignored.
        """
        return -float(self._errors(self._checked(X)).mean())

    # -- saving --------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model as an aecore checkpoint, with this estimator's parameters and fitted state.

        The file is an ordinary ``.safetensors`` checkpoint (``aecore.load`` and
        ``ae eval`` read it); the estimator's record sits in its metadata under
        ``training.sklearn``. :meth:`load` restores the fitted estimator.
        """
        check_is_fitted(self)
        record = {
            "format": RECORD_FORMAT,
            "format_version": RECORD_VERSION,
            "estimator": type(self).__name__,
            "sklearn_version": sklearn.__version__,
            "params": self._stored_params(),
            "fitted": self._stored_fitted(),
        }
        meta = self._fit_meta
        training = {**meta["training"], RECORD_KEY: record}
        return checkpoint.save(
            self.model_, path, data=meta["data"], training=training, metrics=meta["metrics"]
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str | None = None) -> Any:
        """The fitted estimator a :meth:`save` wrote; ``device`` overrides the one it was fitted on.

        Everything is read from the safetensors file: weights, metadata, no pickle.
        A checkpoint that holds no estimator, or another kind of estimator, is
        a one-line :class:`~aecore.errors.CheckpointError`.
        """
        meta = checkpoint.read_metadata(path)
        record = meta["training"].get(RECORD_KEY)
        where = checkpoint.resolve(path)
        if record is None:
            raise CheckpointError(
                f"{where} is an aecore checkpoint without a scikit-learn estimator; load the model with "
                "aecore.load(), or fit an estimator and save() it."
            )
        params, fitted = _check_record(record, cls, where)
        if device is not None:
            params["device"] = device
        estimator = cls(**params)
        target = resolve_device(str(estimator.device))
        model = checkpoint.load(where, map_location=target)
        estimator._restore(model, fitted, where)
        training = {k: v for k, v in meta["training"].items() if k != RECORD_KEY}
        estimator._fit_meta = {"data": meta["data"], "training": training, "metrics": meta["metrics"]}
        return estimator

    def _stored_params(self) -> dict[str, Any]:
        params = self.get_params(deep=False)
        if not (self.random_state is None or _is_int(self.random_state)):
            params["random_state"] = self.seed_  # a RandomState object: the seed it gave this fit
        if params.get("runs_root") is not None:
            params["runs_root"] = os.fspath(params["runs_root"])
        return {name: _json_value(value, name) for name, value in params.items()}

    def _stored_fitted(self) -> dict[str, Any]:
        fitted: dict[str, Any] = {
            "n_features_in_": int(self.n_features_in_),
            "seed_": int(self.seed_),
            "history_": self.history_,
            "run_dir_": None if self.run_dir_ is None else str(self.run_dir_),
        }
        if hasattr(self, "feature_names_in_"):
            fitted["feature_names_in_"] = [str(n) for n in self.feature_names_in_]
        return fitted

    def _restore(self, model: Autoencoder, fitted: Mapping[str, Any], path: Path) -> None:
        """Set the fitted attributes from a checked record."""
        n = fitted["n_features_in_"]
        if n != math.prod(model.input_shape):
            raise CheckpointError(
                f"{path} has a damaged scikit-learn record (n_features_in_ {n} does not fit the model's "
                f"input shape {tuple(model.input_shape)})."
            )
        self.model_ = model.eval()
        self.n_features_in_ = n
        if "feature_names_in_" in fitted:
            self.feature_names_in_ = np.asarray(fitted["feature_names_in_"], dtype=object)
        self.seed_ = fitted["seed_"]
        self.history_ = [dict(h) for h in fitted["history_"]]
        self.run_dir_ = None if fitted["run_dir_"] is None else Path(fitted["run_dir_"])


class AutoencoderTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, _AutoencoderEstimator):
    """An aecore autoencoder as a scikit-learn transformer: rows in, codes out.

    ``fit`` trains on all rows of ``X`` (``y`` is ignored); ``transform`` gives
    the codes, ``inverse_transform`` decodes codes back into rows, and
    ``score`` is minus the mean squared reconstruction error per row (higher
    is better).

    Parameters mirror :class:`aecore.RunRequest`: ``encoder``, ``decoder`` and
    ``regularizers`` are plugin names, ``params`` maps a part to its
    parameters (``{"encoder": {"hidden": (64,)}}``), also settable flat as
    ``encoder__hidden``. ``latent_dim="auto"`` is half the features, at most
    8. ``input_shape`` reshapes each row (e.g. ``(1, 28, 28)``) for
    encoders that need images. The decoder's output activation defaults to
    ``none`` (scale or standardise the data yourself, e.g. with a
    ``StandardScaler`` in a ``Pipeline``). ``random_state`` is aecore's seed;
    on the CPU the same seed gives the same model to the bit. ``n_jobs`` sets
    torch's thread count during ``fit`` and ``transform`` only (``None``
    leaves it alone). ``runs_root`` keeps each fit's run directory under it;
    by default runs go to a temporary folder that is removed after ``fit``.

    Fitted attributes: ``model_`` (the :class:`aecore.Autoencoder`),
    ``n_features_in_``, ``feature_names_in_`` (DataFrames with string column
    names), ``seed_``, ``history_`` (the metrics of each epoch), ``run_dir_``.
    """

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    @property
    def _n_features_out(self) -> int:
        """The code size (what ``get_feature_names_out`` counts); AttributeError before ``fit``."""
        return int(self.model_.latent_dim)

    def fit(self, X: Any, y: Any = None) -> AutoencoderTransformer:
        """Train the autoencoder on ``X`` of shape (n_samples, n_features); ``y`` is ignored."""
        X = validate_data(self, X, dtype=_FLOATS)
        self._fit(X)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """The codes of ``X``: shape (n_samples, latent size), in ``X``'s float dtype."""
        X = self._checked(X)
        model = self.model_
        return self._each_batch(X, model.encode).numpy().astype(X.dtype, copy=False)

    def inverse_transform(self, X: Any) -> np.ndarray:
        """Rows decoded from codes ``X`` of shape (n_samples, latent size): (n_samples, n_features)."""
        check_is_fitted(self)
        Z = check_array(X, dtype=_FLOATS)
        latent = self._n_features_out
        if Z.shape[1] != latent:
            raise ValueError(
                f"X has {Z.shape[1]} features, but {type(self).__name__}.inverse_transform is expecting "
                f"{latent} (the code size)."
            )
        codes = torch.tensor(np.asarray(Z, dtype=np.float32))
        device = self._device()
        with torch.no_grad(), _torch_threads(self.n_jobs):
            rows = [
                self.model_.decode(codes[i : i + EVAL_BATCH].to(device)).flatten(1).cpu()
                for i in range(0, len(Z), EVAL_BATCH)
            ]
        return torch.cat(rows).numpy().astype(Z.dtype, copy=False)


class AutoencoderOutlierDetector(_AutoencoderEstimator):
    """An aecore autoencoder as an outlier detector, with PyOD's conventions.

    The score of a row is its mean squared reconstruction error
    (``decision_function``: higher means more anomalous). ``fit`` trains on
    ``X`` and sets ``decision_scores_`` (the training rows' scores),
    ``threshold_`` (their ``1 - contamination`` quantile) and ``labels_``.
    ``predict`` gives 0 for inliers and 1 for outliers, as PyOD does; note that
    scikit-learn's own outlier detectors give +1 and -1 and score the other
    way round, so this class does not declare itself one to scikit-learn.
    ``predict_proba`` gives PyOD-style (n_samples, 2) probabilities, and
    ``score`` is minus the mean reconstruction error (higher is better).

    Every other parameter and fitted attribute is as for
    :class:`AutoencoderTransformer`.
    """

    def __init__(
        self,
        encoder: str = "mlp",
        *,
        contamination: float = 0.1,
        decoder: str | None = None,
        regularizers: Sequence[str] | str = (),
        latent_dim: int | Literal["auto"] = "auto",
        epochs: int = 20,
        batch_size: int = 128,
        lr: float = 1e-3,
        loss: str = "mse",
        params: Mapping[str, Mapping[str, Any]] | None = None,
        input_shape: Sequence[int] | None = None,
        val_fraction: float = 0.0,
        trainer: str = "default",
        backend: str = "auto",
        device: str = "cpu",
        random_state: int | np.random.RandomState | None = 0,
        n_jobs: int | None = None,
        runs_root: str | os.PathLike[str] | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(
            encoder,
            decoder=decoder,
            regularizers=regularizers,
            latent_dim=latent_dim,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            loss=loss,
            params=params,
            input_shape=input_shape,
            val_fraction=val_fraction,
            trainer=trainer,
            backend=backend,
            device=device,
            random_state=random_state,
            n_jobs=n_jobs,
            runs_root=runs_root,
            verbose=verbose,
        )
        self.contamination = contamination

    def fit(self, X: Any, y: Any = None) -> AutoencoderOutlierDetector:
        """Train on ``X`` (unlabelled; ``y`` is ignored), then score it and set the threshold."""
        contamination = self.contamination
        if not (_is_number(contamination) and 0.0 < contamination <= 0.5):
            raise ConfigError(f"contamination must be a share in (0, 0.5], got {contamination!r}.")
        X = validate_data(self, X, dtype=_FLOATS)
        self._fit(X)
        self.decision_scores_ = self._errors(X)
        self.threshold_ = float(np.quantile(self.decision_scores_, 1.0 - contamination))
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(int)
        return self

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """``fit(X)``, then the training rows' labels (``labels_``)."""
        return self.fit(X).labels_

    def decision_function(self, X: Any) -> np.ndarray:
        """The anomaly score of each row: its mean squared reconstruction error (float64)."""
        return self._errors(self._checked(X))

    def predict(self, X: Any) -> np.ndarray:
        """1 for rows scoring above ``threshold_`` (outliers), 0 for the others (PyOD's convention)."""
        return (self.decision_function(X) > self.threshold_).astype(int)

    def predict_proba(self, X: Any, method: Literal["linear", "unify"] = "linear") -> np.ndarray:
        """(n_samples, 2): the chance of being an inlier, then an outlier; rows sum to 1.

        ``linear`` scales scores by the training scores' range, clipped to
        [0, 1]; ``unify`` is the Gaussian scaling of Kriegel et al. (2011):
        ``erf((score - mean) / (std * sqrt(2)))`` over the training scores,
        clipped to [0, 1]. Both are PyOD's methods of the same names.
        """
        if method not in ("linear", "unify"):
            raise ConfigError(f"method must be 'linear' or 'unify', got {method!r}.")
        scores = self.decision_function(X)
        train = self.decision_scores_
        if method == "linear":
            low, high = float(train.min()), float(train.max())
            outlier = (scores - low) / (high - low) if high > low else (scores > high).astype(float)
        else:
            mean, std = float(train.mean()), float(train.std())
            outlier = erf((scores - mean) / (std * math.sqrt(2))) if std > 0 else (scores > mean) * 1.0
        outlier = np.clip(outlier, 0.0, 1.0)
        return np.column_stack([1.0 - outlier, outlier])

    def _stored_fitted(self) -> dict[str, Any]:
        return {
            **super()._stored_fitted(),
            "threshold_": self.threshold_,
            "decision_scores_": self.decision_scores_.tolist(),
        }

    def _restore(self, model: Autoencoder, fitted: Mapping[str, Any], path: Path) -> None:
        super()._restore(model, fitted, path)
        scores, threshold = fitted.get("decision_scores_"), fitted.get("threshold_")
        if (
            not isinstance(scores, list)
            or not scores
            or not all(_is_number(s) and math.isfinite(s) for s in scores)
            or not (_is_number(threshold) and math.isfinite(threshold))
        ):
            raise CheckpointError(
                f"{path} has a damaged scikit-learn record (the detector's threshold_ or decision_scores_ "
                "is missing or not finite numbers)."
            )
        self.decision_scores_ = np.asarray(scores, dtype=np.float64)
        self.threshold_ = float(threshold)
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(int)


# -- helpers ---------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_names(value: Any) -> tuple[str, ...]:
    """``regularizers`` as a tuple of names: one name may be given as a plain string."""
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, Sequence) else value


def _plain(value: Any) -> Any:
    """numpy scalars (from a parameter grid, say) as Python numbers, inside containers too."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_plain(v) for v in value)
    return value


def _json_value(value: Any, name: str) -> Any:
    """A parameter as JSON for the checkpoint, or a one-line ConfigError saying it cannot be stored."""
    value = _plain(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple | list):
        return [_json_value(v, name) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _json_value(v, f"{name}.{k}") for k, v in value.items()}
    raise ConfigError(
        f"parameter {name} = {value!r} cannot be stored in a checkpoint; give it as a number, string, "
        "tuple or dict of those."
    )


def _tuples(value: Any) -> Any:
    """JSON lists back as tuples (how the parameters are given in Python)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _decoder_params(estimator: _AutoencoderEstimator) -> set[str]:
    """The parameter names of the decoder the estimator will use; empty if it cannot be found yet."""
    try:
        name = estimator.decoder
        if name is None:
            info = registry.info("encoder", str(estimator.encoder))
            name = f"{info.dist}:{info.name}" if ":" in str(estimator.encoder) else info.name
        return {p.name for p in params_of(registry.get("decoder", str(name)).Config)}
    except (AecoreError, AttributeError, TypeError):
        return set()  # the run itself names the problem


def _check_record(record: Any, cls: type, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parameters and fitted state of an estimator record, each field checked."""

    def damaged(problem: str) -> CheckpointError:
        return CheckpointError(
            f"{path} has a damaged scikit-learn record ({problem}); save the estimator again."
        )

    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise damaged("it is not an aecore.sklearn description")
    version = record.get("format_version")
    if not _is_int(version):
        raise damaged(f"format_version {version!r} is not an integer")
    if version > RECORD_VERSION:
        raise CheckpointError(
            f"{path} holds an estimator record of format {version}, newer than this aecore reads "
            f"({RECORD_VERSION}); upgrade aecore."
        )
    kind = record.get("estimator")
    if kind != cls.__name__:
        known = {"AutoencoderTransformer", "AutoencoderOutlierDetector"}
        fix = f"load it with aecore.sklearn.{kind}.load()" if kind in known else "it cannot be loaded here"
        raise CheckpointError(f"{path} holds a {kind!r}, not a {cls.__name__}; {fix}.")
    params, fitted = record.get("params"), record.get("fitted")
    if not isinstance(params, dict) or not isinstance(fitted, dict):
        raise damaged("its params or fitted entry is not a table")
    unknown = sorted(set(params) - set(cls._get_param_names()))
    if unknown:
        raise damaged(f"{cls.__name__} has no parameter {unknown[0]!r}")
    n = fitted.get("n_features_in_")
    if not (_is_int(n) and n > 0):
        raise damaged(f"n_features_in_ {n!r} is not a positive integer")
    names = fitted.get("feature_names_in_")
    if names is not None and not (
        isinstance(names, list) and len(names) == n and all(isinstance(s, str) for s in names)
    ):
        raise damaged(f"feature_names_in_ is not a list of {n} names")
    if not _is_int(fitted.get("seed_")):
        raise damaged("seed_ is not an integer")
    history = fitted.get("history_")
    if not isinstance(history, list) or not all(
        isinstance(h, dict) and all(_is_number(v) for v in h.values()) for h in history
    ):
        raise damaged("history_ is not a list of tables of numbers")
    if fitted.get("run_dir_") is not None and not isinstance(fitted["run_dir_"], str):
        raise damaged("run_dir_ is not a path")
    return {k: _tuples(v) for k, v in params.items()}, fitted


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` for the block, then put back; None: untouched."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _own_random_state(device: Any) -> Iterator[None]:
    """The caller's torch random state is left as it was: training seeds its own."""
    cuda = str(device) != "cpu" and torch.cuda.is_available()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        yield


@contextlib.contextmanager
def _runs_root(root: str | os.PathLike[str] | None) -> Iterator[Path]:
    """``root``, or a temporary folder removed afterwards."""
    if root is not None:
        yield Path(root)
        return
    with tempfile.TemporaryDirectory(prefix="aecore-sklearn-") as folder:
        yield Path(folder)
