"""The resume file: everything needed to continue a run exactly, without pickle.

``RUN/resume.safetensors`` holds, in one atomically written file:

- ``model.*``: the model's weights at the saved step;
- ``rng.torch`` (and ``rng.cuda.N``): the global random state at that step;
- ``trainer.*``: the trainer's own tensors (optimizer moments, shuffle state...);
- metadata ``aecore.resume`` (JSON): the resolved training request, the
  trainer's position and settings (epoch, step, scheduler, early stopping),
  and the metrics history so far.

One file means the parts can never disagree: a kill at any moment leaves
either the previous complete file or the new one.

Everything read back is checked before it is used: :func:`read_resume` the
record as a whole (its tables, history, random states and finite weights),
and the loaders here what a run hands them (:func:`load_model_state` the
weights against the model's names, shapes and dtypes;
:func:`load_optimizer_state` every moment against its parameter;
:func:`load_scheduler_state` a schedule's progress only), so a damaged or
crafted file is one :class:`CheckpointError` line, never a crash inside
torch's kernels. A trainer checks the fields of its own record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from aecore.errors import CheckpointError
from aecore.io import atomic_write_bytes, read_header
from aecore.protocols import ResumeState

__all__ = [
    "RESUME_FILE",
    "ResumeState",
    "capture_rng",
    "load_model_state",
    "load_optimizer_state",
    "load_scheduler_state",
    "optimizer_state",
    "read_resume",
    "restore_rng",
    "write_resume",
]

RESUME_FILE = "resume.safetensors"
_KEY = "aecore.resume"
_VERSION = 1
_DAMAGED = "the file is damaged; start the run again"
#: The largest optimizer step count accepted (float32 counts stop being exact far below it anyway).
_MAX_STEP = 2**53


def capture_rng() -> dict[str, Tensor]:
    """The global torch random states (CPU, and every CUDA device when present)."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda.{i}"] = state
    return states


def restore_rng(states: Mapping[str, Tensor]) -> None:
    """Put back what :func:`capture_rng` took (states for CUDA devices this machine lacks are skipped)."""
    try:
        torch.set_rng_state(states["torch"])
        cuda = [states[k] for k in sorted((k for k in states if k.startswith("cuda.")), key=_device_index)]
        if cuda and torch.cuda.is_available():
            for i, state in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state, i)
    except (KeyError, RuntimeError, TypeError, ValueError):
        raise CheckpointError(f"the resume file's random state cannot be restored; {_DAMAGED}.") from None


def write_resume(
    run_dir: Path,
    *,
    model: torch.nn.Module,
    request: Mapping[str, Any],
    trainer: Mapping[str, Any],
    trainer_tensors: Mapping[str, Tensor],
    history: list[dict[str, float]],
) -> Path:
    """Write the resume file atomically; returns its path."""
    tensors: dict[str, Tensor] = {}
    for prefix, group in (
        ("model.", model.state_dict()),
        ("rng.", capture_rng()),
        ("trainer.", trainer_tensors),
    ):
        for key, value in group.items():
            tensors[prefix + key] = value.detach().to("cpu").contiguous().clone()
    meta = {
        "format_version": _VERSION,
        "request": dict(request),
        "trainer": dict(trainer),
        "history": history,
    }
    path = run_dir / RESUME_FILE
    atomic_write_bytes(path, st_save(tensors, metadata={_KEY: json.dumps(meta)}))
    return path


def read_resume(run_dir: str | Path) -> ResumeState:
    """Decode ``run_dir/resume.safetensors``; any damage is a one-line :class:`CheckpointError`.

    Checked here: the record's tables (request, trainer, history of numbers),
    that every tensor belongs to the model, the random states or the trainer,
    the random states themselves (size, dtype, a state torch accepts), and
    that the model's floating-point tensors are finite.
    """
    run_dir = Path(run_dir)
    path = run_dir / RESUME_FILE if run_dir.is_dir() else run_dir
    if not path.exists():
        raise CheckpointError(
            f"nothing to resume in {run_dir}: no {RESUME_FILE} (was it started by this aecore version?)."
        )
    header = read_header(path)  # the same hostile-header checks as checkpoints
    raw = (header.get("__metadata__") or {}).get(_KEY)
    try:
        meta = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError):  # JSONDecodeError, or a number too long to convert
        meta = None
    if not isinstance(meta, dict) or meta.get("format_version") != _VERSION:
        raise CheckpointError(f"{path} is not an aecore resume file (missing or unreadable metadata).")
    for key in ("request", "trainer"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"{path} has no '{key}' table in its record; {_DAMAGED}.")
    history = meta.get("history", [])
    if not isinstance(history, list) or not all(_metrics_table(h) for h in history):
        raise CheckpointError(
            f"{path} has a history that is not a list of metric tables (names to numbers); {_DAMAGED}."
        )
    try:
        tensors = st_load(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt ({' '.join(str(exc).split())}).") from None
    groups: dict[str, dict[str, Tensor]] = {"model.": {}, "rng.": {}, "trainer.": {}}
    for key, value in tensors.items():
        prefix = next((p for p in groups if key.startswith(p) and len(key) > len(p)), None)
        if prefix is None:
            raise CheckpointError(
                f"{path} holds a tensor {_short(key)} that is no part of a run; {_DAMAGED}."
            )
        groups[prefix][key[len(prefix) :]] = value
    _check_rng(groups["rng."], path)
    for key, value in groups["model."].items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path} has NaN or infinite weights in 'model.{key}'; {_DAMAGED}.")
    return ResumeState(
        request=meta["request"],
        trainer=meta["trainer"],
        trainer_tensors=groups["trainer."],
        model_state=groups["model."],
        rng=groups["rng."],
        history=list(history),
    )


def _check_rng(states: Mapping[str, Tensor], path: Path) -> None:
    if "torch" not in states:
        raise CheckpointError(f"{path} lacks the random state it needs to resume exactly.")
    for key, value in states.items():
        if key == "torch":
            _check_generator_state(value, torch.get_rng_state(), f"rng.{key}", path)
        elif _device_index(key) < 0:
            raise CheckpointError(
                f"{path} holds a random state {_short('rng.' + key)} of no device; {_DAMAGED}."
            )
        elif value.dtype != torch.uint8 or value.dim() != 1:
            raise CheckpointError(f"{path} has a malformed CUDA random state 'rng.{key}'; {_DAMAGED}.")
        elif torch.cuda.is_available() and _device_index(key) < torch.cuda.device_count():
            expected = torch.cuda.get_rng_state(_device_index(key))
            if value.numel() != expected.numel():
                raise CheckpointError(f"{path} has a malformed CUDA random state 'rng.{key}'; {_DAMAGED}.")


def _device_index(key: str) -> int:
    """``cuda.3`` -> 3; -1 for anything else."""
    head, _, index = key.partition(".")
    return int(index) if head == "cuda" and index.isascii() and index.isdigit() and len(index) < 6 else -1


def _check_generator_state(value: Any, like: Tensor, name: str, path: Path) -> None:
    """A CPU generator state: uint8, the size torch's are, and accepted by a scratch generator."""
    where = f"{path} has"
    if not torch.is_tensor(value):
        raise CheckpointError(f"{where} no random state '{name}'; {_DAMAGED}.")
    if value.dtype != torch.uint8 or value.dim() != 1 or value.numel() != like.numel():
        raise CheckpointError(
            f"{where} a random state '{name}' of {value.dtype} {tuple(value.shape)}, not "
            f"uint8 ({like.numel()},); {_DAMAGED}."
        )
    try:
        torch.Generator().set_state(value)
    except RuntimeError:
        raise CheckpointError(f"{where} a random state '{name}' that torch rejects; {_DAMAGED}.") from None


def load_model_state(model: torch.nn.Module, state: Mapping[str, Tensor]) -> None:
    """The resume file's weights into ``model``: the same names, shapes and dtypes, or a CheckpointError."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        which = f"lacks 'model.{missing[0]}'" if missing else f"has 'model.{unexpected[0]}', which it lacks"
        raise CheckpointError(f"the resume file does not match its model: the file {which}; {_DAMAGED}.")
    for key, value in own.items():
        saved = state[key]
        if saved.shape != value.shape or saved.dtype != value.dtype:
            raise CheckpointError(
                f"the resume file does not match its model: 'model.{key}' is {_dims(saved)} "
                f"{_dtype(saved)} in the file, {_dims(value)} {_dtype(value)} in the model; {_DAMAGED}."
            )
    model.load_state_dict(dict(state), strict=True)


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """An optimizer's state as (JSON, tensors): moments become tensors, settings JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entry in sd["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return {"param_groups": sd["param_groups"], "scalars": scalars}, tensors


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, meta: Mapping[str, Any], tensors: Mapping[str, Tensor]
) -> None:
    """Inverse of :func:`optimizer_state`, every part checked before the optimizer sees it.

    The groups must hold the same parameters as ``optimizer``'s; only their
    numeric hyperparameters (the learning rate a schedule lowered, say) come
    from the file, each finite and in range, while switches (fused, foreach,
    amsgrad...) stay this run's. Every moment must have its parameter's
    shape and dtype and be finite, every step count a whole number of at
    least 0, and an Adam parameter's state has exactly Adam's entries: a
    fused kernel never receives a tensor it did not make.
    """
    what = "the resume file's optimizer state"
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"{what} is missing; {_DAMAGED}.")
    current = optimizer.state_dict()["param_groups"]
    saved_groups = meta.get("param_groups")
    if not isinstance(saved_groups, list) or len(saved_groups) != len(current):
        raise CheckpointError(
            f"{what} has {_count(saved_groups)} parameter groups, this optimizer {len(current)}; {_DAMAGED}."
        )
    groups = [_merge_group(saved, own, what) for saved, own in zip(saved_groups, current, strict=True)]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}

    def entry(key: str) -> tuple[int, str]:
        index, _, name = key.partition(".")
        if not (
            index.isascii() and index.isdigit() and len(index) < 10 and int(index) < len(params) and name
        ):
            raise CheckpointError(f"{what} has an entry {_short(key)} for no parameter; {_DAMAGED}.")
        if name in state.get(int(index), {}):
            raise CheckpointError(f"{what} gives '{key}' twice; {_DAMAGED}.")
        return int(index), name

    for key, value in tensors.items():
        if key.startswith("optim."):
            index, name = entry(key[len("optim.") :])
            _check_moment(value, params[index], name, key, what)
            state.setdefault(index, {})[name] = value
    scalars = meta.get("scalars", {})
    if not isinstance(scalars, Mapping):
        raise CheckpointError(f"{what} has scalars that are not a table; {_DAMAGED}.")
    for key, value in scalars.items():
        index, name = entry(key)
        if not (_is_number(value) and math.isfinite(value)) or (name == "step" and not _valid_step(value)):
            raise CheckpointError(f"{what} has {_short(value)} for '{key}', not a valid number; {_DAMAGED}.")
        state.setdefault(index, {})[name] = value
    if isinstance(optimizer, torch.optim.Adam):
        amsgrad = {id(p): bool(g.get("amsgrad")) for g in optimizer.param_groups for p in g["params"]}
        for index, entries in state.items():
            expected = {"step", "exp_avg", "exp_avg_sq"} | (
                {"max_exp_avg_sq"} if amsgrad[id(params[index])] else set()
            )
            if set(entries) != expected:
                raise CheckpointError(
                    f"{what} for parameter {index} has {', '.join(sorted(entries))}, but Adam keeps "
                    f"{', '.join(sorted(expected))}; {_DAMAGED}."
                )
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(
            f"{what} cannot be loaded ({' '.join(str(exc).split())}); {_DAMAGED}."
        ) from None
    # What the optimizer now holds is what its kernels will read: the same check once more, in place.
    for p, held in optimizer.state.items():
        for name, value in held.items():
            moved = torch.is_tensor(value) and name != "step"
            if moved and (value.shape != p.shape or value.dtype != p.dtype or value.device != p.device):
                raise CheckpointError(
                    f"{what} '{name}' is {_dims(value)} {_dtype(value)} on {value.device}, but its parameter "
                    f"is {_dims(p)} {_dtype(p)} on {p.device}; {_DAMAGED}."
                )
            if moved and value.stride() != p.stride():
                # A fused kernel pairs moments with parameters element by element in memory, so a
                # channels-last parameter needs channels-last moments (the file holds contiguous ones).
                held[name] = torch.empty_like(p).copy_(value)


def _check_moment(value: Tensor, param: Tensor, name: str, key: str, what: str) -> None:
    if name == "step":
        ok = (
            value.dim() == 0
            and (value.is_floating_point() or _integer_dtype(value))
            and _valid_step(value.item())
        )
        if not ok:
            raise CheckpointError(
                f"{what} '{key}' is not a step count (a whole number of at least 0); {_DAMAGED}."
            )
        return
    if value.shape != param.shape:
        raise CheckpointError(
            f"{what} '{name}' has shape {tuple(value.shape)}, but its parameter has {tuple(param.shape)}; "
            f"{_DAMAGED}."
        )
    if value.dtype != param.dtype:
        raise CheckpointError(
            f"{what} '{key}' is {_dtype(value)}, but its parameter is {_dtype(param)}; {_DAMAGED}."
        )
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise CheckpointError(f"{what} '{key}' has NaN or infinite values; {_DAMAGED}.")
    if name.endswith("_sq") and value.is_floating_point() and bool((value < 0).any()):
        raise CheckpointError(f"{what} '{key}' has negative values (it is a mean of squares); {_DAMAGED}.")


def _valid_step(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value) and value == int(value) and 0 <= value <= _MAX_STEP


def _integer_dtype(value: Tensor) -> bool:
    return value.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


#: Hyperparameters a saved group may carry, with the range each must lie in (others: any finite number).
_RANGES = {
    "lr": (0.0, math.inf),
    "initial_lr": (0.0, math.inf),
    "weight_decay": (0.0, math.inf),
    "eps": (0.0, math.inf),
    "betas": (0.0, 1.0),
}


def _merge_group(saved: Any, own: dict[str, Any], what: str) -> dict[str, Any]:
    """This run's group with the file's numeric hyperparameters, each checked; switches stay this run's."""
    if not isinstance(saved, dict) or saved.get("params") != own["params"]:
        raise CheckpointError(
            f"{what} has parameter groups that do not hold this model's parameters; {_DAMAGED}."
        )
    merged = dict(own)
    for key, value in saved.items():
        mine = own.get(key)
        if key == "params" or key not in own or isinstance(mine, bool | str | Tensor) or mine is None:
            continue
        low, high = _RANGES.get(key, (-math.inf, math.inf))
        numbers = value if isinstance(mine, list | tuple) else [value]
        width = len(mine) if isinstance(mine, list | tuple) else 1
        ok = (
            isinstance(numbers, list | tuple)
            and len(numbers) == width
            and all(
                _is_number(v) and math.isfinite(v) and low <= v and (v < high or high == math.inf)
                for v in numbers
            )
        )
        if not ok:
            raise CheckpointError(f"{what} has {_short(value)} for '{key}', not a valid setting; {_DAMAGED}.")
        merged[key] = type(mine)(numbers) if isinstance(mine, list | tuple) else value
    return merged


#: What a scheduler's state keeps of its progress; the rest of it is settings, which stay this run's.
_SCHEDULE_PROGRESS = {
    "last_epoch": (int, -1),
    "_step_count": (int, 0),
    "num_bad_epochs": (int, 0),
    "cooldown_counter": (int, 0),
    "best": (float, None),
    "_last_lr": (list, 0),
}


def load_scheduler_state(scheduler: Any, saved: Any) -> None:
    """A learning-rate scheduler's saved progress put back, checked; nothing when either is None.

    Only its progress (epoch and step counts, the best value so far, the
    last learning rates) comes from the file; its settings (factor,
    patience, T_max...) are this run's. A scheduler's ``load_state_dict``
    would otherwise set any attribute the file names.
    """
    if scheduler is None or saved is None:
        return
    what = f"the resume file's scheduler state ({type(scheduler).__name__})"
    if not isinstance(saved, dict):
        raise CheckpointError(f"{what} is not a table; {_DAMAGED}.")
    state = scheduler.state_dict()
    if "last_epoch" in state and "last_epoch" not in saved:  # every torch scheduler keeps it
        raise CheckpointError(f"{what} has no 'last_epoch'; {_DAMAGED}.")
    for key, (kind, minimum) in _SCHEDULE_PROGRESS.items():
        if key not in state or key not in saved:
            continue
        value = saved[key]
        if kind is int:
            ok = _is_int(value) and value >= minimum
        elif kind is float:
            ok = _is_number(value) and not math.isnan(value)
        else:
            ok = (
                isinstance(value, list)
                and len(value) == len(state[key])
                and all(_is_number(v) and math.isfinite(v) and v >= 0 for v in value)
            )
        if not ok:
            raise CheckpointError(f"{what} has {_short(value)} for '{key}', not a valid value; {_DAMAGED}.")
        state[key] = value
    scheduler.load_state_dict(state)


def _metrics_table(value: Any) -> bool:
    return isinstance(value, dict) and all(_is_number(v) for v in value.values())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: Any) -> str:
    return str(len(value)) if isinstance(value, list) else "no list of"


def _dims(t: Tensor) -> str:
    return "×".join(map(str, t.shape)) if t.dim() else "a scalar"


def _dtype(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: a crafted file can hold values of any size."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
