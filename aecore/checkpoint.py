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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from aecore import registry
from aecore.composition import compose
from aecore.entry_points import installed_version
from aecore.errors import AecoreError, CheckpointError
from aecore.io import atomic_write_bytes, read_header
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
    """The aecore metadata of a checkpoint, validated, without reading the weights."""
    path = resolve(path)
    header = read_header(path)
    raw = header.get("__metadata__", {}).get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(f"{path} has no aecore metadata; it was not written by aecore.")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} has metadata that is not valid JSON ({exc}).") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} metadata is not an aecore checkpoint description.")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path} metadata has an invalid format_version {version!r}.")
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
    return meta


def model_spec(meta: Mapping[str, Any], path: Path) -> ModelSpec:
    """The checked model description of a checkpoint's metadata."""
    model = meta["model"]
    try:
        spec = ModelSpec.from_dict(model)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} has a malformed model description ({exc}).") from None
    problem = None
    if not spec.input_shape or not all(_positive_int(s) for s in spec.input_shape):
        problem = f"input_shape {model.get('input_shape')!r} is not a list of positive integers"
    elif not _positive_int(spec.latent_dim):
        problem = f"latent_dim {model.get('latent_dim')!r} is not a positive integer"
    for comp in (spec.encoder, spec.decoder, *spec.regularizers):
        fields = ((comp.name, str), (comp.dist, str), (comp.version, str), (comp.params, dict))
        if problem is None and not all(isinstance(value, kind) for value, kind in fields):
            problem = f"component {comp.name!r} needs a name, a dist, a version and a params table"
    if problem is not None:
        raise CheckpointError(f"{path} has a malformed model description ({problem}).")
    return spec


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> Autoencoder:
    """Rebuild the model a checkpoint describes and load its weights (eval mode).

    Components are looked up by the distribution that wrote them
    (``aecore-mlp:mlp``), so another installed plugin of the same name does
    not get in the way.
    """
    path = resolve(path)
    meta = read_metadata(path)
    spec = model_spec(meta, path)
    _require_installed(spec, path)
    try:
        # The weights come from the file: building the model must not consume the caller's random state.
        with torch.random.fork_rng(devices=[]):
            model = _rebuild(spec)
    except AecoreError as exc:
        raise CheckpointError(f"{path} cannot be rebuilt: {exc}") from None
    try:
        state = st_load(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc}).") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{path} weights do not match its metadata: {detail}") from None
    model.metadata = meta
    return model.to(map_location).eval()


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
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


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
