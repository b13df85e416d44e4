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
"""

from __future__ import annotations

import json
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
    "load_optimizer_state",
    "optimizer_state",
    "read_resume",
    "restore_rng",
    "write_resume",
]

RESUME_FILE = "resume.safetensors"
_KEY = "aecore.resume"
_VERSION = 1


def capture_rng() -> dict[str, Tensor]:
    """The global torch random states (CPU, and every CUDA device when present)."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda.{i}"] = state
    return states


def restore_rng(states: Mapping[str, Tensor]) -> None:
    """Put back what :func:`capture_rng` took."""
    torch.set_rng_state(states["torch"])
    cuda = [states[k] for k in sorted(k for k in states if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


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
    """Decode ``run_dir/resume.safetensors``; any damage is a one-line :class:`CheckpointError`."""
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
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format_version") != _VERSION:
        raise CheckpointError(f"{path} is not an aecore resume file (missing or unreadable metadata).")
    try:
        tensors = st_load(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc}).") from None
    groups: dict[str, dict[str, Tensor]] = {"model.": {}, "rng.": {}, "trainer.": {}}
    for key, value in tensors.items():
        for prefix, group in groups.items():
            if key.startswith(prefix):
                group[key[len(prefix) :]] = value
    if "torch" not in groups["rng."]:
        raise CheckpointError(f"{path} lacks the random state it needs to resume exactly.")
    return ResumeState(
        request=meta["request"],
        trainer=meta["trainer"],
        trainer_tensors=groups["trainer."],
        model_state=groups["model."],
        rng=groups["rng."],
        history=list(meta.get("history", [])),
    )


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
    """Inverse of :func:`optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    # A moment of the wrong size would reach a fused kernel unchecked: refuse it here.
    for p, entry in optimizer.state.items():
        for name, value in entry.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                raise CheckpointError(
                    f"the resume file's optimizer state '{name}' has shape {tuple(value.shape)}, "
                    f"but its parameter has {tuple(p.shape)}; the file is damaged, start the run again."
                )
