"""MLflow tracking of training runs, when asked for: an aecore hook plugin.

An MLflow store is usually shared, so an installed plugin logs nothing until
it is asked: it turns on when ``MLFLOW_TRACKING_URI`` is set, when
``aecore.train`` is called inside an active MLflow run, or with
``AECORE_MLFLOW=1`` (then MLflow's default store, ``./mlflow.db``).
``AECORE_MLFLOW=0`` keeps it off whatever else is set.

Each training is one MLflow run, named after the run directory, in the
experiment ``MLFLOW_EXPERIMENT_ID`` or ``MLFLOW_EXPERIMENT_NAME`` names, else
the active run's, else ``aecore``; inside an active run it is a child run
(``mlflow.parentRunId``), so a sweep gives one child per model. Logged:

* params: the run's configuration, flattened (``encoder.hidden=64,32``,
  ``trainer.lr=0.001``, ``loss=mse``, ...), with the first checkpoint;
* metrics: every figure of every epoch (step: the epoch's place in the
  run, which is ``epoch`` for the default trainer), and the final test
  figures at the last step;
* artifacts at the end: ``model.safetensors``, ``metrics.json`` and every
  PNG in the run directory;
* a pyfunc model (:mod:`aecore_mlflow.pyfunc`, logged from code: nothing is
  pickled) whose ``predict`` gives codes or anomaly scores; its URI is the
  run's tag ``aecore.model_uri``. ``AECORE_MLFLOW_MODEL=0`` skips it.

``RUN/mlflow.json`` records the store, run id and model URI; a resumed run
(``ae train --resume``) continues the same MLflow run. A failure (an
unreachable or unwritable store) raises: aecore reports it once, disables
this plugin for the run, training goes on and the checkpoint is kept; the
MLflow run, if it was made, is marked FAILED.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aecore.checkpoint import read_metadata
from aecore.errors import ConfigError
from aecore.hooks import hookimpl
from aecore.io import atomic_write_bytes

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from aecore.protocols import RunContext

__all__ = [
    "DEFAULT_EXPERIMENT",
    "ENABLE_ENV",
    "MODEL_ENV",
    "MODEL_TAG",
    "RUN_FILE",
    "MlflowLogger",
    "enabled",
    "flat_config",
    "log_model",
]

#: 1: log every run (to MLflow's default store if no URI is set); 0: never.
ENABLE_ENV = "AECORE_MLFLOW"
#: 0: log no pyfunc model at the end of a run.
MODEL_ENV = "AECORE_MLFLOW_MODEL"
#: The experiment runs go to when neither MLflow's variables nor an active run name one.
DEFAULT_EXPERIMENT = "aecore"
#: The run-directory file that records the MLflow run.
RUN_FILE = "mlflow.json"
#: The MLflow run tag holding the logged model's URI.
MODEL_TAG = "aecore.model_uri"
#: The artifacts logged from the run directory at the end (besides ``*.png``).
ARTIFACTS = ("model.safetensors", "metrics.json")

_YES = {"1", "true", "yes", "on"}
_NO = {"0", "false", "no", "off"}
_MAX_PARAMS = 100  # per log_batch call (MLflow's limit)
_MAX_VALUE = 6000  # characters in one param value (MLflow's limit)


def enabled() -> bool:
    """Whether this run should be tracked (see the module docstring); reads the environment now."""
    asked = _flag(ENABLE_ENV)
    if asked is not None:
        return asked
    return bool(os.environ.get("MLFLOW_TRACKING_URI", "").strip()) or _active_run() is not None


class MlflowLogger:
    """Logs one aecore run as one MLflow run through ``MlflowClient``: no global MLflow state is touched."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.client: MlflowClient | None = None
        self.tracking_uri: str | None = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.model_uri: str | None = None
        self.run_dir: Path | None = None
        self.offset = 0
        self.step = 0
        self.last: dict[str, float] = {}
        self.params_logged = False

    # -- hooks ---------------------------------------------------------------

    @hookimpl
    def ae_train_start(self, run: RunContext) -> None:
        self._reset()
        if not enabled():
            return
        import mlflow
        from mlflow import MlflowClient

        with self._failing():
            self.tracking_uri = mlflow.get_tracking_uri()
            self.client = MlflowClient(self.tracking_uri)
            self.run_dir = Path(run.out_dir)
            self.offset = self.step = len(run.resume.history) if run.resume is not None else 0
            if not (run.info.get("resumed") and self._continue()):
                self._create(run)
            self._write_record()

    @hookimpl
    def ae_epoch_end(self, metrics: Mapping[str, float]) -> None:
        if self.client is None:
            return
        with self._failing():
            self.step += 1
            self._log_metrics({k: v for k, v in metrics.items() if k != "epoch"})
            self.last = dict(metrics)

    @hookimpl
    def ae_checkpoint_saved(self, path: Path) -> None:
        if self.client is None or self.params_logged:
            return
        with self._failing():
            self._log_params(path)

    @hookimpl
    def ae_train_end(self, metrics: Mapping[str, float]) -> None:
        if self.client is None:
            return
        client, run_id, run_dir = self.client, self.run_id, self.run_dir
        assert run_id is not None and run_dir is not None
        with self._failing():
            if not metrics:  # training failed
                client.set_terminated(run_id, "FAILED")
                if self.step == self.offset == 0:  # before its first epoch: leave the run directory empty
                    (run_dir / RUN_FILE).unlink(missing_ok=True)
                self.client = None
                return
            final = {k: v for k, v in metrics.items() if k != "epoch" and self.last.get(k) != v}
            self._log_metrics(final)
            checkpoint = run_dir / "model.safetensors"
            if not self.params_logged:
                self._log_params(checkpoint)
            for name in ARTIFACTS:
                if (run_dir / name).is_file():
                    client.log_artifact(run_id, str(run_dir / name))
            for plot in sorted(run_dir.glob("*.png")):
                client.log_artifact(run_id, str(plot))
            if _flag(MODEL_ENV) is not False:
                self.model_uri = log_model(run_id, checkpoint)
                client.set_tag(run_id, MODEL_TAG, self.model_uri)
                self._write_record()
            client.set_terminated(run_id, "FINISHED")
            self.client = None

    # -- parts ---------------------------------------------------------------

    def _create(self, run: RunContext) -> None:
        assert self.client is not None and self.run_dir is not None
        parent = _active_run()
        self.experiment_id = self._experiment(parent)
        tags = {
            "aecore.run_dir": str(self.run_dir.resolve()),
            "aecore.encoder": str(run.info.get("encoder")),
            "aecore.data": str(run.info.get("data")),
        }
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.info.run_id
        created = self.client.create_run(self.experiment_id, run_name=self.run_dir.name, tags=tags)
        self.run_id = created.info.run_id

    def _continue(self) -> bool:
        """Take up the MLflow run of the interrupted run this one resumes, if it is in the same store."""
        from mlflow.exceptions import MlflowException

        assert self.client is not None and self.run_dir is not None
        try:
            record = json.loads((self.run_dir / RUN_FILE).read_text(encoding="utf-8"))
            if not isinstance(record, dict) or record.get("tracking_uri") != self.tracking_uri:
                return False
            found = self.client.get_run(str(record["run_id"]))
        except (OSError, ValueError, KeyError, MlflowException):
            return False  # no record, a damaged one, or a run the store no longer has: start afresh
        self.run_id, self.experiment_id = found.info.run_id, found.info.experiment_id
        self.client.update_run(self.run_id, status="RUNNING")
        return True

    def _experiment(self, parent: Run | None) -> str:
        assert self.client is not None
        given = os.environ.get("MLFLOW_EXPERIMENT_ID", "").strip()
        if given:
            return given
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip()
        if not name and parent is not None:
            return parent.info.experiment_id
        name = name or DEFAULT_EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(name)
        except MlflowException:  # another process made it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _log_metrics(self, figures: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        assert self.client is not None and self.run_id is not None
        stamp = int(time.time() * 1000)
        batch = [Metric(name, float(value), stamp, self.step) for name, value in figures.items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def _log_params(self, checkpoint: Path) -> None:
        from mlflow.entities import Param

        assert self.client is not None and self.run_id is not None
        params = [Param(k, _text(v)) for k, v in flat_config(read_metadata(checkpoint)).items()]
        for start in range(0, len(params), _MAX_PARAMS):
            self.client.log_batch(self.run_id, params=params[start : start + _MAX_PARAMS])
        self.params_logged = True

    def _write_record(self) -> None:
        assert self.run_dir is not None
        record = {
            "tracking_uri": self.tracking_uri,
            "experiment_id": self.experiment_id,
            "run_id": self.run_id,
            "model_uri": self.model_uri,
        }
        atomic_write_bytes(self.run_dir / RUN_FILE, (json.dumps(record, indent=2) + "\n").encode())

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        """On an error, mark the MLflow run FAILED (if there is one) before aecore disables this plugin."""
        try:
            yield
        except BaseException:
            if self.client is not None and self.run_id is not None:
                with contextlib.suppress(Exception):
                    self.client.set_terminated(self.run_id, "FAILED")
            self.client = None
            raise


def log_model(run_id: str, checkpoint: Path) -> str:
    """Log ``checkpoint`` as MLflow run ``run_id``'s pyfunc model (from code: nothing pickled); its URI."""
    import mlflow.pyfunc
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    # "" means: the model config's output (codes when logged, or what load_model(model_config=) says).
    signature = ModelSignature(params=ParamSchema([ParamSpec("output", "string", "")]))
    with warnings.catch_warnings():
        # MLflow advises an input example; its rows would be the checkpoint's own data.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\.|$)")
        info = Model.log(
            None,
            name="model",
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=str(Path(__file__).with_name("model_code.py")),
            artifacts={"checkpoint": str(checkpoint)},
            model_config={"output": "codes"},
            signature=signature,
            pip_requirements=requirements(read_metadata(checkpoint)),
            await_registration_for=None,
        )
    return info.model_uri


def requirements(meta: Mapping[str, Any]) -> list[str]:
    """Pinned pip requirements of the model: the installed distributions its checkpoint names, and this."""
    versions = {str(k): str(v) for k, v in (meta.get("versions") or {}).items()}
    versions["aecore-mlflow"] = importlib_metadata.version("aecore-mlflow")
    pins = []
    for dist, version in sorted(versions.items()):
        try:
            importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            continue  # a plugin registered in-process (tests, notebooks): nothing pip could install
        pins.append(f"{dist}=={version.split('+')[0]}")  # a local build tag (+cu130) is on no index
    return [*pins, "pandas"]


def flat_config(meta: Mapping[str, Any]) -> dict[str, bool | int | float | str | None]:
    """A checkpoint's configuration as flat ``name: scalar`` pairs (``encoder.hidden: "64,32"``).

    The effective parameters are taken (each component's and the trainer's
    full config, not just what the request overrode); a list of scalars is
    comma-joined, anything else nested is JSON, None stays None.
    """
    model = meta.get("model", {})
    training = meta.get("training", {})
    data = meta.get("data", {})
    request = training.get("request") or {}
    flat: dict[str, Any] = {}
    for part in ("encoder", "decoder"):
        spec = model.get(part) or {}
        flat[part] = spec.get("name")
        _nest(flat, part, spec.get("params") or {})
    regularizers = model.get("regularizers") or []
    flat["regularizers"] = [r.get("name") for r in regularizers]
    for reg in regularizers:
        _nest(flat, str(reg.get("name")), reg.get("params") or {})
    flat["latent_dim"] = model.get("latent_dim")
    flat["input_shape"] = model.get("input_shape")
    trainer = training.get("trainer") or {}
    flat["trainer"] = trainer.get("name")
    _nest(flat, "trainer", trainer.get("params") or {})
    for key in ("preset", "loss", "seed", "val_fraction", "shuffle", "device", "backend"):
        flat[key] = training.get(key)
    _nest(flat, "backend", training.get("backend_params") or {})
    flat["data"] = request.get("data") or data.get("name") or data.get("origin")
    for key in ("train_size", "test_size", "classes"):
        if key in data:
            flat[f"data.{key}"] = data[key]
    return {key: _scalar(value) for key, value in flat.items()}


def _nest(flat: dict[str, Any], prefix: str, params: Mapping[str, Any]) -> None:
    for key, value in params.items():
        if isinstance(value, Mapping) and value:
            _nest(flat, f"{prefix}.{key}", value)
        else:
            flat[f"{prefix}.{key}"] = value


def _scalar(value: Any) -> bool | int | float | str | None:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, bool | int | float | str) for v in value):
        return ",".join(str(v) for v in value)
    return json.dumps(value, sort_keys=True)


def _text(value: Any) -> str:
    """A param value as MLflow stores it (``str``), cut to MLflow's length limit."""
    text = str(value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"


def _active_run() -> Run | None:
    """The caller's active MLflow run; MLflow is not imported for it (a process that has none did not)."""
    mlflow = sys.modules.get("mlflow")
    return None if mlflow is None else mlflow.active_run()


def _flag(name: str) -> bool | None:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return None
    if raw in _YES:
        return True
    if raw in _NO:
        return False
    raise ConfigError(f"{name}={raw!r} is neither on nor off; set it to 1 or 0.")
