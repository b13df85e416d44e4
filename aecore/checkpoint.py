"""Checkpoints: safetensors weights plus JSON metadata that rebuilds the model.

A checkpoint is one ``.safetensors`` file. Its header metadata holds, under
the key ``aecore``, a JSON document::

    {"format": "aecore.checkpoint", "format_version": 1,
     "model":    {input_shape, latent_dim, encoder, decoder, regularizers},
     "data":     {name, ..., normalisation},
     "training": {trainer, loss, seed, ...},
     "versions": {"aecore": ..., "torch": ..., "<plugin dist>": ...},
     "metrics":  {...}}

Nothing is ever unpickled. Writes go to a temporary file in the same folder
and are renamed into place, so a crash never leaves a half-written file
under the real name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from aecore import registry
from aecore.composition import compose
from aecore.data.tensors import check_normalisation
from aecore.entry_points import installed_version
from aecore.errors import AecoreError, CheckpointError, DataError
from aecore.io import atomic_write_bytes, read_header, tensor_entries
from aecore.model import Autoencoder, ComponentSpec, ModelSpec

__all__ = ["DEFAULT_NAME", "FORMAT", "FORMAT_VERSION", "load", "read_metadata", "resolve", "save"]

FORMAT = "aecore.checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "aecore"
DEFAULT_NAME = "model.safetensors"


def save(
    model: Autoencoder,
    path: str | Path,
    *,
    data: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` and its metadata to ``path`` atomically; returns the path."""
    path = Path(path)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.spec.to_dict(),
        "data": dict(data or {}),
        "training": dict(training or {}),
        "versions": _versions(model.spec),
        "metrics": dict(metrics or {}),
    }
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    payload = st_save(tensors, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    atomic_write_bytes(path, payload)
    return path


def resolve(path: str | Path) -> Path:
    """A checkpoint file from a file path or a run directory holding ``model.safetensors``."""
    path = Path(path)
    if path.is_dir():
        path = path / DEFAULT_NAME
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; pass a .safetensors file or a run directory.")
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The aecore metadata of a checkpoint, every field checked, without reading the weights."""
    path = resolve(path)
    return _metadata(path, read_header(path))


def _metadata(path: Path, header: Mapping[str, Any]) -> dict[str, Any]:
    raw = header.get("__metadata__", {}).get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(f"{path} has no aecore metadata; it was not written by aecore.")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or a number too long to convert
        raise CheckpointError(f"{path} has metadata that is not valid JSON ({_one_line(exc)}).") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} metadata is not an aecore checkpoint description.")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path} metadata has an invalid format_version {_short(version)}.")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format {version}, newer than this aecore reads ({FORMAT_VERSION}); "
            "upgrade aecore."
        )
    for key in ("model", "data", "training", "versions", "metrics"):
        if not isinstance(meta.get(key, {}), dict):
            raise CheckpointError(f"{path} metadata has a malformed '{key}' entry (expected a table).")
    if not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{path} metadata lacks the model description.")
    spec = model_spec(meta, path)
    problem = _data_problem(meta.get("data", {}), spec) or _training_problem(meta.get("training", {}))
    if problem is None:
        problem = _table_problem(
            meta.get("versions", {}), "versions", lambda v: isinstance(v, str), "a string"
        )
    if problem is None:
        problem = _table_problem(meta.get("metrics", {}), "metrics", _is_number, "a number")
    if problem is not None:
        raise CheckpointError(
            f"{path} metadata has {problem}; the file is damaged or was not written by aecore."
        )
    return meta


#: The most values one sample may have, and the largest code: beyond these a description is damaged.
MAX_SAMPLE_VALUES = 2**28


def model_spec(meta: Mapping[str, Any], path: Path) -> ModelSpec:
    """The checked model description of a checkpoint's metadata."""
    model = meta["model"]
    try:
        spec = ModelSpec.from_dict(model)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} has a malformed model description ({_one_line(exc)}).") from None
    problem = None
    if not spec.input_shape or not all(_positive_int(s) for s in spec.input_shape):
        problem = f"input_shape {_short(model.get('input_shape'))} is not a list of positive integers"
    elif not _positive_int(spec.latent_dim):
        problem = f"latent_dim {_short(model.get('latent_dim'))} is not a positive integer"
    elif math.prod(spec.input_shape) > MAX_SAMPLE_VALUES:
        problem = (
            f"input_shape {_short(list(spec.input_shape))} gives {math.prod(spec.input_shape):,} values "
            f"per sample, more than aecore reads ({MAX_SAMPLE_VALUES:,})"
        )
    elif spec.latent_dim > MAX_SAMPLE_VALUES:
        problem = f"latent_dim {spec.latent_dim:,} is more than aecore reads ({MAX_SAMPLE_VALUES:,})"
    for comp in (spec.encoder, spec.decoder, *spec.regularizers):
        fields = ((comp.name, str), (comp.dist, str), (comp.version, str), (comp.params, dict))
        if problem is None and not all(isinstance(value, kind) for value, kind in fields):
            problem = f"component {_short(comp.name)} needs a name, a dist, a version and a params table"
    if problem is not None:
        raise CheckpointError(f"{path} has a malformed model description ({problem}).")
    return spec


def _data_problem(data: Mapping[str, Any], spec: ModelSpec) -> str | None:
    """What is wrong with the ``data`` entry, or None: the fields commands read, by type."""
    for key in ("name", "data_dir", "format", "path", "label"):
        if data.get(key) is not None and not isinstance(data[key], str):
            return f"data.{key} {_short(data[key])} that is not a string"
    for key in ("columns", "label_names"):
        value = data.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return f"data.{key} {_short(value)} that is not a list of names"
    classes = data.get("classes")
    if classes is not None and not (
        isinstance(classes, list) and classes and all(_is_int(c) for c in classes)
    ):
        return f"data.classes {_short(classes)} that is not a list of integer labels"
    norm = data.get("normalisation")
    if norm is not None:
        try:
            check_normalisation(norm, spec.input_shape)
        except DataError as exc:
            return f"a malformed data.normalisation ({str(exc).rstrip('.')})"
    return None


def _training_problem(training: Mapping[str, Any]) -> str | None:
    """What is wrong with the ``training`` entry, or None."""
    for key in ("preset", "loss", "device", "backend"):
        if training.get(key) is not None and not isinstance(training[key], str):
            return f"training.{key} {_short(training[key])} that is not a string"
    if training.get("seed") is not None and not _is_int(training["seed"]):
        return f"training.seed {_short(training['seed'])} that is not an integer"
    if training.get("val_fraction") is not None and not _is_number(training["val_fraction"]):
        return f"training.val_fraction {_short(training['val_fraction'])} that is not a number"
    for key in ("backend_params", "request"):
        if training.get(key) is not None and not isinstance(training[key], dict):
            return f"training.{key} {_short(training[key])} that is not a table"
    trainer = training.get("trainer")
    if trainer is None:
        return None
    if not isinstance(trainer, dict):
        return f"training.trainer {_short(trainer)} that is not a table"
    for key in ("name", "dist", "version"):
        if trainer.get(key) is not None and not isinstance(trainer[key], str):
            return f"training.trainer.{key} {_short(trainer[key])} that is not a string"
    if trainer.get("params") is not None and not isinstance(trainer["params"], dict):
        return f"training.trainer.params {_short(trainer['params'])} that is not a table"
    return None


def _table_problem(
    table: Mapping[str, Any], name: str, valid: Callable[[Any], bool], expected: str
) -> str | None:
    for key, value in table.items():
        if not valid(value):
            return f"{name}.{_short(key, 30)[1:-1]} = {_short(value)}, which is not {expected}"
    return None


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> Autoencoder:
    """Rebuild the model a checkpoint describes and load its weights (eval mode).

    Components are looked up by the distribution that wrote them
    (``aecore-mlp:mlp``), so another installed plugin of the same name does
    not get in the way. Before anything is allocated, the described model is
    built on the meta device and its tensors (names, shapes, dtypes) are
    compared with those the file's header declares.
    """
    path = resolve(path)
    header = read_header(path)
    meta = _metadata(path, header)
    spec = model_spec(meta, path)
    _require_installed(spec, path)
    _check_against_header(spec, tensor_entries(header), path)
    try:
        # The weights come from the file: building the model must not consume the caller's random state.
        with torch.random.fork_rng(devices=[]):
            model = _rebuild(spec)
    except AecoreError as exc:
        raise CheckpointError(f"{path} cannot be rebuilt: {exc}") from None
    except (RuntimeError, MemoryError, OverflowError, ValueError) as exc:  # sizes beyond this machine
        raise CheckpointError(
            f"{path} describes a model that cannot be built here ({type(exc).__name__}: {_one_line(exc)})."
        ) from None
    try:
        state = st_load(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt ({_one_line(exc)}).") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} weights do not match its metadata: {_one_line(exc)}") from None
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{path} has NaN or infinite values in '{key}'; the file is damaged, train the model again."
            )
    model.metadata = meta
    return model.to(map_location).eval()


def _check_against_header(
    spec: ModelSpec, stored: Mapping[str, tuple[str, tuple[int, ...]]], path: Path
) -> None:
    """Refuse a description whose model's tensors differ from the file's, naming the likely field.

    The model is built on the meta device (no memory for its tensors); a
    component that cannot be built there is built for real later, as before.
    """
    try:
        with torch.device("meta"), torch.random.fork_rng(devices=[]):
            expected = {k: (v.dtype, tuple(v.shape)) for k, v in _rebuild(spec).state_dict().items()}
    except AecoreError as exc:
        raise CheckpointError(f"{path} cannot be rebuilt: {exc}") from None
    except Exception:  # a component that cannot be built on the meta device: build it for real, later
        return
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"the described model has {_names(missing)} which the file lacks")
        if unexpected:
            parts.append(f"the file has {_names(unexpected)} which the described model lacks")
        raise CheckpointError(
            f"{path} weights do not match its metadata: {'; '.join(parts)}. The metadata is damaged "
            "or the weights come from another model."
        )
    for key, (dtype, shape) in expected.items():
        stored_dtype, stored_shape = stored[key]
        if stored_shape != shape:
            fields = _suspects(spec, shape, stored_shape)
            hint = f" (check {fields})" if fields else ""
            raise CheckpointError(
                f"{path} weights do not match its metadata: '{key}' is {_dims(shape)} in the described "
                f"model but {_dims(stored_shape)} in the file{hint}. The metadata is damaged or the "
                "weights come from another model."
            )
        if _TORCH_DTYPES.get(stored_dtype) != dtype:
            raise CheckpointError(
                f"{path} weights do not match its metadata: '{key}' is stored as {stored_dtype}, but the "
                f"model holds {str(dtype).removeprefix('torch.')}; the file is damaged."
            )


#: safetensors dtype names as torch dtypes.
_TORCH_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64, "C64": torch.complex64,
}  # fmt: skip


def _suspects(spec: ModelSpec, expected: tuple[int, ...], stored: tuple[int, ...]) -> str:
    """The description's fields whose value is a size the described tensor has and the stored one lacks."""
    sizes = {d for d in expected if d not in stored} if len(expected) == len(stored) else set(expected)
    found: list[str] = []
    if spec.latent_dim in sizes:
        found.append(f"latent_dim {spec.latent_dim}")
    if sizes & {*spec.input_shape, math.prod(spec.input_shape)}:
        found.append(f"input_shape {_dims(spec.input_shape)}")
    roles = [("encoder", spec.encoder), ("decoder", spec.decoder)] + [(r.name, r) for r in spec.regularizers]
    for role, comp in roles:
        for name, value in comp.params.items():
            values = value if isinstance(value, list) else [value]
            if any(_is_int(v) and v in sizes for v in values):
                found.append(f"{role}.{name} {_short(value)}")
    return ", ".join(found[:4])


def _names(keys: list[str]) -> str:
    shown = ", ".join(f"'{k}'" for k in keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _dims(shape: tuple[int, ...] | list[int]) -> str:
    return "×".join(map(str, shape)) if shape else "a scalar"


def _rebuild(spec: ModelSpec) -> Autoencoder:
    return compose(
        spec.encoder.qualified_name,
        spec.decoder.qualified_name,
        [r.qualified_name for r in spec.regularizers],
        input_shape=spec.input_shape,
        latent_dim=spec.latent_dim,
        params={
            "encoder": spec.encoder.params,
            "decoder": spec.decoder.params,
            **{r.name: r.params for r in spec.regularizers},
        },
    )


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: hostile metadata can hold values of any size."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _require_installed(spec: ModelSpec, path: Path) -> None:
    parts: list[tuple[str, ComponentSpec]] = [("encoder", spec.encoder), ("decoder", spec.decoder)]
    parts += [("regularizer", r) for r in spec.regularizers]
    for kind, comp in parts:
        same_name = [c for c in registry.every(kind) if c.name == comp.name]
        if not any(c.dist == comp.dist for c in same_name):
            hint = f" ({same_name[0].dist} provides one, which may differ)" if same_name else ""
            raise CheckpointError(
                f"{path} needs {kind} '{comp.name}' from '{comp.dist}' (version {comp.version}), "
                f"which is not installed{hint}; run: pip install {comp.dist}"
            )


def _versions(spec: ModelSpec) -> dict[str, str]:
    versions = {"aecore": installed_version("aecore"), "torch": torch.__version__}
    for comp in [spec.encoder, spec.decoder, *spec.regularizers]:
        versions[comp.dist] = comp.version
    return versions
