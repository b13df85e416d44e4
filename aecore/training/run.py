"""``train()``: the whole job behind ``ae train``, usable from Python as well.

It loads the data, composes the model, builds the trainer, prepares the run
directory, runs the fit, measures the test error and writes the final
checkpoint and metrics. Every step uses the registry, so the shipped plugins
get no special treatment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aecore import checkpoint, registry
from aecore.config import config_from_dict, config_to_dict, params_of
from aecore.data import Dataset, TensorData, load_dataset
from aecore.errors import ConfigError, RunDirectoryError
from aecore.evaluate import reconstruction_metrics
from aecore.hooks import hookimpl, plugin_manager
from aecore.losses import get_loss
from aecore.model import Autoencoder, compose
from aecore.paths import unique_dir
from aecore.training import distributed
from aecore.training.context import RunContext

__all__ = ["TrainResult", "keep_classes", "resolve_device", "resume", "split_validation", "train"]

METRICS_FILE = "metrics.json"


@dataclass
class TrainResult:
    """The trained model, where it was written, and its figures."""

    model: Autoencoder
    run_dir: Path
    checkpoint: Path
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def train(
    encoder: str | None = None,
    decoder: str | None = None,
    regularizers: Sequence[str] = (),
    *,
    preset: str | None = None,
    trainer: str = "default",
    params: Mapping[str, Mapping[str, Any]] | None = None,
    latent_dim: int | None = None,
    data: str | Dataset | None = None,
    data_dir: str | Path | None = None,
    loss: str = "mse",
    seed: int = 0,
    device: str = "auto",
    out: str | Path | None = None,
    runs_root: str | Path = "runs",
    val_fraction: float = 0.1,
    classes: Sequence[int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    hooks: Iterable[object] = (),
) -> TrainResult:
    """Train an autoencoder composed from plugin names and save it.

    ``params`` maps ``encoder``, ``decoder``, ``trainer`` and regularizer
    names to parameter dicts. A ``preset`` supplies all of these; explicit
    arguments override it. ``latent_dim`` defaults to the preset's, else 32.
    Returns once the final checkpoint is written. An interrupted run
    continues with :func:`resume`.
    """
    params = {k: dict(v) for k, v in (params or {}).items()}
    preset_trainer: dict[str, Any] = {}
    if preset is not None:
        from aecore.presets import get_preset, merge_preset

        chosen = get_preset(preset)
        preset_trainer = dict(chosen.params.get("trainer", {}))
        encoder, decoder, regularizers, latent_dim, params = merge_preset(
            chosen,
            encoder=encoder,
            decoder=decoder,
            regularizers=list(regularizers),
            latent_dim=latent_dim,
            params=params,
        )
    if encoder is None:
        names = ", ".join(sorted({c.name for c in registry.list_components("encoder")})) or "none installed"
        raise ConfigError(f"choose an encoder with --encoder or a --preset (installed encoders: {names}).")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}.")
    get_loss(loss)  # fail on a bad name before loading anything
    resolve_device(device)
    # A preset's trainer settings apply where the chosen trainer has them; explicit ones always do.
    trainer_cls = registry.get("trainer", trainer)
    accepted = {p.name for p in params_of(trainer_cls.Config)}
    trainer_params = {k: v for k, v in preset_trainer.items() if k in accepted}
    trainer_params.update(params.pop("trainer", {}))

    dataset = data if isinstance(data, Dataset) else load_dataset(data, data_dir)
    request: dict[str, Any] = {
        "encoder": encoder,
        "decoder": decoder,
        "regularizers": list(regularizers),
        "preset": preset,
        "trainer": trainer,
        "trainer_params": _jsonable(trainer_params),
        "params": _jsonable(params),
        "latent_dim": 32 if latent_dim is None else latent_dim,
        "data": None if isinstance(data, Dataset) else data,
        "data_dir": None if data_dir is None else str(Path(data_dir).resolve()),
        "loss": loss,
        "seed": seed,
        "device": device,
        "val_fraction": val_fraction,
        "classes": None if classes is None else sorted({int(c) for c in classes}),
    }
    return _execute(
        request,
        dataset,
        lambda model, create: _prepare_run_dir(
            out, runs_root, preset or _components_label(model), overwrite, create=create
        ),
        progress=progress,
        hooks=hooks,
    )


def resume(
    run_dir: str | Path,
    *,
    data: Dataset | None = None,
    progress: bool = True,
    hooks: Iterable[object] = (),
) -> TrainResult:
    """Continue an interrupted run from ``run_dir/resume.safetensors``, exactly where it stopped.

    Weights, optimizer, scheduler, epoch, position in the epoch's data order
    and random states are all restored, so on CPU the result is bit-identical
    to an uninterrupted run. Pass ``data`` only if the run was started from
    a :class:`Dataset` object rather than a dataset name.
    """
    from aecore.training.state import read_resume

    run_dir = Path(run_dir)
    state = read_resume(run_dir)
    request = state.request
    if data is None:
        if request.get("data") is None and request.get("data_name") not in (None, "embedded"):
            raise ConfigError(
                f"{run_dir} was trained on an in-memory dataset; "
                "resume it from Python with resume(..., data=...)."
            )
        data = load_dataset(request.get("data"), request.get("data_dir"))
    return _execute(request, data, lambda model, create: run_dir, progress=progress, hooks=hooks, state=state)


def _execute(
    request: Mapping[str, Any],
    dataset: Dataset,
    make_run_dir: Any,
    *,
    progress: bool,
    hooks: Iterable[object],
    state: Any = None,
) -> TrainResult:
    """Run a resolved request: compose, fit (fresh or resumed), evaluate, save.

    Under torchrun every rank runs this; only rank 0 writes files and runs hooks.
    """
    job, torch_device = distributed.setup(resolve_device(request["device"]))
    try:
        if job.active and state is not None:
            raise ConfigError("resuming a distributed run is not supported yet; resume it in one process.")
        result = _run_job(
            request,
            dataset,
            make_run_dir,
            progress=progress,
            hooks=hooks,
            state=state,
            job=job,
            device=torch_device,
        )
        # Leave together: a rank that tears down gloo while rank 0 still writes can abort at exit.
        distributed.barrier()
        return result
    finally:
        distributed.shutdown()


def _run_job(
    request: Mapping[str, Any],
    dataset: Dataset,
    make_run_dir: Any,
    *,
    progress: bool,
    hooks: Iterable[object],
    state: Any,
    job: distributed.Distributed,
    device: torch.device,
) -> TrainResult:
    from aecore.training.state import restore_rng, write_resume

    request = {**request, "data_name": dataset.name}
    torch_device = device
    loss_fn = get_loss(request["loss"])
    trainer_info = registry.info("trainer", request["trainer"])
    trainer_cls = trainer_info.load()
    trainer_obj = trainer_cls(
        config_from_dict(trainer_cls.Config, request["trainer_params"], owner="trainer")
    )
    if state is not None and not getattr(trainer_obj, "supports_resume", False):
        raise ConfigError(f"trainer '{trainer_info.name}' cannot resume a run; start it again instead.")

    classes = request.get("classes")
    train_data = dataset.train if classes is None else keep_classes(dataset.train, classes, dataset.name)
    seed = request["seed"]
    torch.manual_seed(seed)
    model = compose(
        request["encoder"],
        request["decoder"],
        request["regularizers"],
        input_shape=train_data.shape,
        latent_dim=request["latent_dim"],
        params=request["params"],
    )
    _check_output_range(model, train_data)
    check = getattr(trainer_obj, "check", None)
    if callable(check):  # a trainer may refuse a model before anything is written
        check(model)
    train_split, val_split = split_validation(train_data, request["val_fraction"], seed)
    run_dir = make_run_dir(model, False)  # every rank agrees on the path before rank 0 creates it
    distributed.barrier()
    if job.is_main:
        run_dir = make_run_dir(model, True)

    data_meta = {**dataset.spec, "normalisation": dataset.train.normalisation}
    if classes is not None:
        data_meta["classes"] = classes
    training_meta = {
        "trainer": {
            "name": trainer_info.name,
            "dist": trainer_info.dist,
            "version": trainer_info.version,
            "params": config_to_dict(trainer_obj.config),
        },
        "preset": request["preset"],
        "loss": request["loss"],
        "seed": seed,
        "val_fraction": request["val_fraction"],
        "device": str(torch_device),
    }
    pm = plugin_manager(hooks, exclude=() if progress else ("progress",), entry_points=job.is_main)
    history: list[dict[str, float]] = [] if state is None else list(state.history)
    pm.register(_HistoryRecorder(history))

    def save_checkpoint(m: Autoencoder, filename: str, metrics: Mapping[str, float]) -> Path:
        if not job.is_main:
            return run_dir / filename
        path = checkpoint.save(m, run_dir / filename, data=data_meta, training=training_meta, metrics=metrics)
        pm.hook.ae_checkpoint_saved(run=run, path=path, metrics=dict(metrics))
        return path

    def save_resume(
        m: Autoencoder, trainer_meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
    ) -> Path:
        if not job.is_main:
            return run_dir / "resume.safetensors"
        return write_resume(
            run_dir, model=m, request=request, trainer=trainer_meta, trainer_tensors=tensors, history=history
        )

    run = RunContext(
        out_dir=run_dir,
        device=torch_device,
        loss_fn=loss_fn,
        seed=seed,
        hooks=pm.hook,
        save_checkpoint=save_checkpoint,
        info={
            "encoder": model.spec.encoder.name,
            "decoder": model.spec.decoder.name,
            "regularizers": [r.name for r in model.spec.regularizers],
            "trainer": trainer_info.name,
            "data": dataset.name,
            "train_size": len(train_split),
            "val_size": len(val_split),
            "parameters": model.num_parameters(),
            "resumed": state is not None,
        },
        resume=state,
        save_resume=save_resume,
    )
    if state is not None:
        try:
            model.load_state_dict(state.model_state, strict=True)
        except RuntimeError as exc:
            raise RunDirectoryError(f"{run_dir} resume file does not match its model: {exc}") from None
        restore_rng(state.rng)

    try:
        final = dict(trainer_obj.fit(model, train_split, val_split, run))
    except BaseException:
        pm.hook.ae_train_end(run=run, metrics={})  # lets displays and loggers close cleanly
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # nothing was saved: leave no empty run directory behind
        raise
    model.eval()
    part = (job.rank, job.world_size) if job.active else None
    test = reconstruction_metrics(model, dataset.test, device=torch_device, part=part)
    final.update({f"test_{k}": v for k, v in test.items()})
    path = save_checkpoint(model, checkpoint.DEFAULT_NAME, final)
    if job.is_main:
        checkpoint.atomic_write_bytes(
            run_dir / METRICS_FILE,
            json.dumps({"final": final, "history": history}, indent=2).encode(),
        )
    pm.hook.ae_train_end(run=run, metrics=dict(final))
    return TrainResult(model, run_dir, path, final, history)


def _jsonable(value: Any) -> Any:
    """Parameters as JSON values (tuples become lists), as the resume file stores them."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA, then MPS, then CPU; a named device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in {"cpu", "cuda", "mps"} and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device '{name}'; choose auto, cpu, cuda or mps.")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA device is available; use --device cpu.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for, but MPS is not available; use --device cpu.")
    return torch.device(name)


def keep_classes(data: TensorData, classes: Sequence[int], name: str) -> TensorData:
    """Only the samples whose label is in ``classes`` (one-class training for anomaly detection)."""
    if data.y is None:
        raise ConfigError(f"--classes needs labels, but {name} has none.")
    wanted = torch.tensor(sorted({int(c) for c in classes}), dtype=data.y.dtype)
    kept = data.subset(torch.isin(data.y, wanted).nonzero().flatten())
    if len(kept) == 0:
        present = sorted(int(v) for v in data.y.unique()[:20])
        raise ConfigError(
            f"no training samples have a label in {sorted(wanted.tolist())}; labels present: {present}."
        )
    return kept


def split_validation(data: TensorData, fraction: float, seed: int) -> tuple[TensorData, TensorData]:
    """A seeded random split of ``data`` into (train, validation) views; no copy of the samples."""
    n_val = round(len(data) * fraction)
    if n_val == 0:
        return data, data.subset(torch.arange(0))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[n_val:]), data.subset(order[:n_val])


def _check_output_range(model: Autoencoder, data: TensorData) -> None:
    """Standardised data (tables) spans negative values and values above 1: a bounded output cannot fit it."""
    bounded = model.spec.decoder.params.get("output_activation")
    if data.normalisation.get("kind") == "standardise" and bounded in ("sigmoid", "tanh"):
        raise ConfigError(
            f"decoder '{model.spec.decoder.name}' ends in {bounded}, which cannot reproduce standardised "
            "data (zero mean, unit variance); pass --set decoder.output_activation=none."
        )


def _components_label(model: Autoencoder) -> str:
    """``conv-sparse``, ``conv-mlp``: a default run name from the components."""
    spec = model.spec
    parts = [spec.encoder.name]
    if spec.decoder.name != spec.encoder.name:
        parts.append(spec.decoder.name)
    parts += [r.name for r in spec.regularizers]
    return "-".join(parts)


def _prepare_run_dir(
    out: str | Path | None, runs_root: str | Path, label: str, overwrite: bool, *, create: bool = True
) -> Path:
    """A fresh run directory; an existing non-empty one is kept unless ``overwrite``.

    With ``create=False`` it only chooses the path.
    """
    if out is not None:
        run_dir = Path(out)
        if run_dir.exists() and not run_dir.is_dir():
            raise RunDirectoryError(f"--out {run_dir} is a file; choose a directory path.")
        if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
            raise RunDirectoryError(
                f"run directory {run_dir} already holds files; choose another --out or pass --overwrite."
            )
    else:
        run_dir = unique_dir(Path(runs_root), re.sub(r"[^A-Za-z0-9_.-]+", "-", label))
    if create:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


class _HistoryRecorder:
    """Keeps each epoch's metrics for metrics.json."""

    def __init__(self, history: list[dict[str, float]]) -> None:
        self.history = history

    @hookimpl
    def ae_epoch_end(self, run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        self.history.append(dict(metrics))
