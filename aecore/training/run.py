"""``train()`` and ``resume()``: the whole job behind ``ae train``, usable from Python as well.

A run loads the data, composes the model, builds the trainer, chooses a
backend, prepares the run directory, fits, measures the test error and
writes the final checkpoint and metrics. Every step goes through the
registry, so the shipped plugins get no special treatment.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from aecore import checkpoint, distributed, registry
from aecore.composition import compose
from aecore.config import config_from_dict, config_to_dict
from aecore.data import Dataset, TensorData
from aecore.data.convert import as_dataset
from aecore.data.store import available_memory
from aecore.errors import ConfigError, FileSystemError, RunDirectoryError
from aecore.evaluate import reconstruction_metrics
from aecore.hooks import hookimpl, plugin_manager
from aecore.hooks.manager import HookFailure, check_plugin, strict_from_env
from aecore.io import FILE_SYSTEM_ERRNOS, atomic_write_bytes, file_system_error
from aecore.losses import build_loss
from aecore.model import Autoencoder
from aecore.paths import make_unique_dir, unique_dir
from aecore.protocols import ResumeState, RunContext
from aecore.request import ResolvedRun, RunRequest, resolve
from aecore.sources import load_dataset
from aecore.state import RESUME_FILE, load_model_state, read_resume, restore_rng, write_resume
from aecore.training.backends import choose_backend
from aecore.training.lock import RunLock, holds_work, remove_temporaries

__all__ = [
    "TrainResult",
    "check_request",
    "keep_classes",
    "resolve_device",
    "resume",
    "split_validation",
    "train",
]

METRICS_FILE = "metrics.json"


@dataclass
class TrainResult:
    """The trained model, where it was written, and its figures."""

    model: Autoencoder
    run_dir: Path
    checkpoint: Path
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    #: Hook plugins that raised and were disabled: ``{"plugin", "hook", "error"}`` each.
    hook_failures: list[dict[str, str]] = field(default_factory=list)


def train(
    request: RunRequest | str | None = None,
    /,
    *,
    progress: bool = True,
    hooks: Iterable[object] = (),
    **fields: Any,
) -> TrainResult:
    """Train an autoencoder composed from plugin names and save it.

    Pass a :class:`RunRequest`, or its fields as keywords
    (``train(encoder="conv", regularizers=["sparse"], params={"trainer": {"epochs": 2}})``);
    a string first argument is the encoder. ``data`` may also be data held
    in Python: an :class:`~aecore.data.Dataset`, a tensor or numpy array of
    samples, a ``torch.utils.data.Dataset`` of samples or (sample, label)
    pairs, or a pair ``(train, test)`` of those (see :func:`aecore.data.as_dataset`). Returns once the final
    checkpoint is written; an interrupted run continues with :func:`resume`.
    """
    dataset = None
    if fields.get("data") is not None and not isinstance(fields["data"], str):
        dataset = as_dataset(fields.pop("data"))  # a Dataset, tensors, arrays or a torch Dataset
    if isinstance(request, str):
        fields["encoder"] = request
        request = None
    if request is None:
        request = RunRequest.from_values({**fields, **({"data": None} if dataset is not None else {})})
    elif fields:
        raise ConfigError("pass either a RunRequest or its fields as keywords, not both.")
    elif dataset is not None:
        request = replace(request, data=None)  # the resume file must not claim a named source
    plan = check_request(request)  # every name and parameter, before loading anything
    if dataset is None:
        dataset = load_dataset(request.data, request.data_dir)

    with contextlib.ExitStack() as claimed:

        def run_dir(model: Autoencoder, create: bool) -> Path:
            label = request.preset or _components_label(model)
            if not create:
                return _choose_run_dir(request, label)
            return claimed.enter_context(_claim_run_dir(request, label))  # locked until the run ends

        return _execute(request, plan, dataset, run_dir, progress=progress, hooks=hooks)


def resume(
    run_dir: str | Path,
    *,
    data: Any = None,
    progress: bool = True,
    hooks: Iterable[object] = (),
) -> TrainResult:
    """Continue an interrupted run from ``run_dir/resume.safetensors``, exactly where it stopped.

    Weights, optimizer, scheduler, epoch, position in the epoch's data order
    and random states are all restored, so on CPU the result is bit-identical
    to an uninterrupted run. Pass ``data`` only if the run was started from
    a :class:`~aecore.data.Dataset` object rather than a data source name.
    """
    source = Path(run_dir)
    run_dir = source.parent if source.is_file() else source  # a resume file may be named directly
    if not (source if source.is_file() else source / RESUME_FILE).is_file():
        read_resume(source)  # says there is nothing to resume
    if distributed.from_environment().active:
        raise ConfigError("resuming a distributed run is not supported yet; resume it in one process.")
    busy = "wait for it to finish, or stop it, before resuming"
    with _locked(run_dir, busy=busy, unwritable="copy the run to a writable place and resume the copy"):
        state = read_resume(source)
        try:
            request = RunRequest.from_values(state.request)
        except ConfigError as exc:
            raise RunDirectoryError(
                f"{run_dir} holds a resume file with a malformed request: {exc}"
            ) from None
        if data is None:
            if request.data is None:
                raise ConfigError(
                    f"{run_dir} was trained on an in-memory dataset; "
                    "resume it from Python with resume(..., data=...)."
                )
            data = load_dataset(request.data, request.data_dir)
        data = as_dataset(data)
        return _execute(
            request, resolve(request), data, lambda m, c: run_dir, progress=progress, hooks=hooks, state=state
        )


def check_request(request: RunRequest) -> ResolvedRun:
    """Resolve ``request`` and check that every part it names exists and takes the parameters given.

    This is what :func:`train` finds out before it loads any data; a sweep or
    a cross-validation asks it of every run before the first one trains.
    Shapes are checked later, by :func:`aecore.compose`, once the data is known.
    """
    plan = resolve(request)
    build_loss(request.loss, plan.loss_params)
    resolve_device(request.device)
    if request.backend not in ("auto", "none"):
        registry.info("backend", request.backend)
    trainer = registry.get("trainer", request.trainer)
    config_from_dict(trainer.Config, plan.trainer_params, owner="trainer")
    regularizers = {r.rpartition(":")[2]: r for r in plan.regularizers}
    for target, given in plan.components.items():
        kind, name = {
            "encoder": ("encoder", plan.encoder),
            "decoder": ("decoder", plan.decoder or plan.encoder),
        }.get(target, ("regularizer", regularizers.get(target, target)))
        config_from_dict(registry.get(kind, name).Config, given, owner=target)
    return plan


def initialise_components(model: Autoencoder, data: TensorData) -> None:
    """Call each component's optional ``initialise(data)`` before a fresh run trains.

    A component may set itself from the training data (a bias at the data's
    geometric median, a codebook from encoder outputs). Its random draws do
    not disturb the run's own random stream, so adding such a component to
    a model leaves the other components' initial weights as they were.
    """
    for _, part in model.parts():
        method = getattr(part, "initialise", None)
        if callable(method):
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                method(data)


#: The size of one block of rows in a block-shuffled order.
BLOCK_BYTES = 8 * 1024 * 1024


def choose_order(data: TensorData, mode: str) -> tuple[TensorData, str]:
    """``data`` set to be drawn in ``mode``'s order, and the order chosen (``full`` or ``block``).

    ``auto`` picks block shuffling when the stored data is larger than half
    of the memory the system has free: then reads of a memory-mapped file
    stay within one block of about 8 MiB at a time instead of faulting in
    pages all over the file. Data that fits keeps a uniformly random order.
    """
    if mode == "auto":
        free = available_memory()
        mode = "block" if free is not None and data.nbytes > free // 2 else "full"
    if mode == "full":
        return data.in_blocks(None), "full"
    stored = data.storage["x"]
    row = max(1, math.prod(stored.shape[1:]) * stored.element_size())
    return data.in_blocks(max(1, BLOCK_BYTES // row)), "block"


SKIPPED_FILE = "skipped-files.txt"


def _write_skipped(run_dir: Path, dataset: Dataset) -> None:
    """List the files a source skipped (``skip_bad``) in the run directory, one per line."""
    skipped = dataset.spec.get("skipped")
    if isinstance(skipped, list) and skipped:
        text = "".join(f"{name}\n" for name in map(str, skipped))
        atomic_write_bytes(run_dir / SKIPPED_FILE, text.encode())


def _execute(
    request: RunRequest,
    plan: ResolvedRun,
    dataset: Dataset,
    make_run_dir: Callable[[Autoencoder, bool], Path],
    *,
    progress: bool,
    hooks: Iterable[object],
    state: ResumeState | None = None,
) -> TrainResult:
    """Run a resolved request: compose, fit (fresh or resumed), evaluate, save.

    Under torchrun every rank runs this; only rank 0 writes files and runs hooks.
    """
    job, device = distributed.setup(resolve_device(request.device))
    threads_before = torch.get_num_threads()
    if request.threads is not None:
        torch.set_num_threads(request.threads)
    try:
        if job.active and state is not None:
            raise ConfigError("resuming a distributed run is not supported yet; resume it in one process.")
        result = _run_job(request, plan, dataset, make_run_dir, progress, hooks, state, job, device)
        # Leave together: a rank that tears down gloo while rank 0 still writes can abort at exit.
        distributed.barrier()
        return result
    finally:
        torch.set_num_threads(threads_before)  # a library call leaves the caller's setting as it was
        distributed.shutdown()


def _run_job(
    request: RunRequest,
    plan: ResolvedRun,
    dataset: Dataset,
    make_run_dir: Callable[[Autoencoder, bool], Path],
    progress: bool,
    hooks: Iterable[object],
    state: ResumeState | None,
    job: distributed.Distributed,
    device: torch.device,
) -> TrainResult:
    loss_fn = build_loss(request.loss, plan.loss_params)
    trainer_info = registry.info("trainer", request.trainer)
    trainer_cls = trainer_info.load()
    trainer = trainer_cls(config_from_dict(trainer_cls.Config, plan.trainer_params, owner="trainer"))
    if state is not None and not getattr(trainer, "supports_resume", False):
        raise ConfigError(f"trainer '{trainer_info.name}' cannot resume a run; start it again instead.")

    train_data = dataset.train
    if request.classes is not None:
        train_data = keep_classes(train_data, request.classes, dataset.name)
    backend, backend_name = choose_backend(request.backend, device, plan.backend_params)
    torch.manual_seed(request.seed)
    model = compose(
        plan.encoder,
        plan.decoder,
        plan.regularizers,
        input_shape=train_data.shape,
        latent_dim=plan.latent_dim,
        params=plan.components,
    )
    _check_output_range(model, train_data)
    _check_component_hooks(model)
    check = getattr(trainer, "check", None)
    if callable(check):  # a trainer may refuse a model before anything is written
        check(model)
    train_split, val_split = split_validation(train_data, request.val_fraction, request.seed)
    if state is None:
        initialise_components(model, train_split)
    train_split, order = choose_order(train_split, request.shuffle)
    run_dir = make_run_dir(model, False)  # every rank agrees on the path before rank 0 creates it
    distributed.barrier()
    if job.is_main:
        run_dir = make_run_dir(model, True)
        _write_skipped(run_dir, dataset)

    data_meta = {**dataset.spec, "normalisation": dataset.train.normalisation}
    if request.classes is not None:
        data_meta["classes"] = sorted(request.classes)
    training_meta = {
        "trainer": {
            "name": trainer_info.name,
            "dist": trainer_info.dist,
            "version": trainer_info.version,
            "params": config_to_dict(trainer.config),
        },
        "preset": request.preset,
        "loss": request.loss,
        "seed": request.seed,
        "val_fraction": request.val_fraction,
        "shuffle": order,
        "device": str(device),
        "backend": backend_name,
        "backend_params": {} if backend is None else config_to_dict(backend.config),
        "request": request.to_dict(),
    }
    failures: list[HookFailure] = []
    pm = plugin_manager(
        hooks,
        exclude=() if progress else ("progress",),
        entry_points=job.is_main,
        strict=request.strict_hooks or strict_from_env(),
        failures=failures,
    )
    history: list[dict[str, float]] = [] if state is None else list(state.history)
    pm.register(_HistoryRecorder(history))
    stored_request = {**request.to_dict(), "out": str(run_dir)}

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
            run_dir,
            model=m,
            request=stored_request,
            trainer=trainer_meta,
            trainer_tensors=tensors,
            history=history,
        )

    run = RunContext(
        out_dir=run_dir,
        device=device,
        loss_fn=loss_fn,
        seed=request.seed,
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
            "backend": backend_name,
            "shuffle": order,
        },
        resume=state,
        save_resume=save_resume,
        backend=backend,
    )
    if state is not None:
        load_model_state(model, state.model_state)  # names, shapes and dtypes checked: one CheckpointError
        restore_rng(state.rng)
    model.to(device)
    if backend is not None:
        model = backend.prepare(model, device)
    run.model, run.train_data, run.val_data = model, train_split, val_split
    _register_component_hooks(pm, model)

    schedule = getattr(trainer, "schedule", None)
    total_epochs, steps_per_epoch = schedule(model, train_split) if callable(schedule) else (None, None)
    with _keeps_saved_work(run_dir, job.is_main):
        try:
            pm.hook.ae_train_start(run=run, total_epochs=total_epochs, steps_per_epoch=steps_per_epoch)
            final = dict(trainer.fit(model, train_split, val_split, run))
        except BaseException:
            pm.hook.ae_train_end(run=run, metrics={})  # lets displays and loggers close cleanly
            raise
        model.eval()
        part = (job.rank, job.world_size) if job.active else None
        test = reconstruction_metrics(model, dataset.test, device=device, part=part)
        final.update({f"test_{k}": v for k, v in test.items()})
        path = save_checkpoint(model, checkpoint.DEFAULT_NAME, final)

        def write_metrics() -> None:
            if job.is_main:
                record = {
                    "final": final,
                    "history": history,
                    "hook_failures": [f.to_dict() for f in failures],
                }
                atomic_write_bytes(run_dir / METRICS_FILE, json.dumps(record, indent=2).encode())

        write_metrics()  # before ae_train_end, so a logger there can pick the file up
        seen = len(failures)
        pm.hook.ae_train_end(run=run, metrics=dict(final))
        if len(failures) != seen:
            write_metrics()  # a hook failed in ae_train_end itself
    return TrainResult(model, run_dir, path, final, history, [f.to_dict() for f in failures])


@contextlib.contextmanager
def _keeps_saved_work(run_dir: Path, writes: bool) -> Iterator[None]:
    """A file-system fault in a run (a full disk, say) ends it saying how to go on from what was saved."""
    try:
        yield
    except FileSystemError as exc:
        if not (writes and (run_dir / RESUME_FILE).is_file()):
            raise
        fix = (
            "the files saved before it are kept; once that is fixed, continue with: "
            f"ae train --resume {run_dir}"
        )
        raise file_system_error(exc, exc.filename, fix=fix) from exc


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA, then MPS, then CPU; a named device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in {"cpu", "cuda", "mps"} and not re.fullmatch(r"cuda:\d+", name):
        raise ConfigError(f"unknown device '{name}'; choose auto, cpu, cuda, cuda:N or mps.")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA device is available; use --device cpu.")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s).")
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


def _components(model: Autoencoder) -> dict[str, tuple[Any, Any]]:
    """Part name -> (module, its ComponentSpec), each module once."""
    parts = {"encoder": (model.encoder, model.spec.encoder)}
    if model.decoder is not model.encoder:
        parts["decoder"] = (model.decoder, model.spec.decoder)
    specs = {r.name: r for r in model.spec.regularizers}
    parts.update({name: (module, specs[name]) for name, module in model.regularizers.items()})
    return parts


def _check_component_hooks(model: Autoencoder) -> None:
    """A component's hook methods must match the specification: refused before anything is written."""
    import pluggy

    for part, (module, spec) in _components(model).items():
        try:
            check_plugin(module)
        except pluggy.PluginValidationError as exc:
            raise ConfigError(
                f"{part} '{spec.name}' from {spec.dist} has a hook method that does not match the hook "
                f"specification: {exc}. Fix or update {spec.dist}."
            ) from None


def _register_component_hooks(pm: Any, model: Autoencoder) -> None:
    """Let the model's own components take part in its run (``ae_after_step`` for constraints)."""
    for part, (module, _) in _components(model).items():
        pm.register(module, name=f"component:{part}")


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


def _choose_run_dir(request: RunRequest, label: str) -> Path:
    """Where the run will go, checked but not created: every rank agrees on it before rank 0 claims it."""
    if request.out is None:
        return unique_dir(Path(request.runs_root), _safe_name(label))
    run_dir = Path(request.out)
    _check_out(run_dir)
    if run_dir.is_dir() and holds_work(run_dir) and not request.overwrite:
        raise RunDirectoryError(
            f"run directory {run_dir} already holds files; choose another --out or pass --overwrite."
        )
    return run_dir


@contextlib.contextmanager
def _claim_run_dir(request: RunRequest, label: str) -> Iterator[Path]:
    """Create the run directory and hold its lock while the block runs.

    Whether an ``--out`` directory already holds work is decided under the
    lock, so two runs started at once cannot both take it. A directory made
    here that ends with nothing in it is removed again.
    """
    try:
        if request.out is None:
            run_dir, created = make_unique_dir(Path(request.runs_root), _safe_name(label)), True
        else:
            run_dir = Path(request.out)
            _check_out(run_dir)
            created = not run_dir.exists()
            run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if isinstance(exc, FileSystemError) or exc.errno not in FILE_SYSTEM_ERRNOS:
            raise
        where = Path(request.out) if request.out is not None else Path(request.runs_root)
        raise file_system_error(
            exc, where, action="create run directory", fix="choose another --out"
        ) from exc
    completed = False
    try:
        with _locked(run_dir, busy="wait for it to finish or choose another --out"):
            if holds_work(run_dir) and not request.overwrite:
                raise RunDirectoryError(
                    f"run directory {run_dir} already holds files; choose another --out or pass --overwrite."
                )
            yield run_dir
            completed = True
    finally:
        if created and not completed:
            with contextlib.suppress(OSError):
                if not holds_work(run_dir):
                    remove_temporaries(run_dir)
                    run_dir.rmdir()  # nothing was saved: leave no empty run directory behind


@contextlib.contextmanager
def _locked(run_dir: Path, *, busy: str, unwritable: str = "choose another --out") -> Iterator[RunLock]:
    """Hold ``run_dir``'s lock, first clearing the temporaries a killed run left there."""
    with RunLock.acquire(run_dir, busy=busy, unwritable=unwritable) as lock:
        try:
            remove_temporaries(run_dir)
        except OSError as exc:
            if exc.errno not in FILE_SYSTEM_ERRNOS:
                raise
            raise file_system_error(exc, run_dir, action="write to", fix=unwritable) from exc
        yield lock


def _check_out(run_dir: Path) -> None:
    """An ``--out`` that is a file, or lies under one, is refused before anything is made."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"--out {run_dir} is a file; choose a directory path.")
    parent = run_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise RunDirectoryError(
            f"--out {run_dir} lies under {parent}, which is a file; choose another --out."
        )


def _safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label)


class _HistoryRecorder:
    """Keeps each epoch's metrics for metrics.json."""

    def __init__(self, history: list[dict[str, float]]) -> None:
        self.history = history

    @hookimpl
    def ae_epoch_end(self, run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        self.history.append(dict(metrics))
