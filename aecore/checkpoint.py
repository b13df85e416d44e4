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
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from aecore import registry
from aecore.errors import AecoreError, CheckpointError
from aecore.model import Autoencoder, ModelSpec, compose

__all__ = ["FORMAT", "FORMAT_VERSION", "load", "read_metadata", "resolve", "save"]

FORMAT = "aecore.checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "aecore"
DEFAULT_NAME = "model.safetensors"
_MAX_HEADER = 100 * 1024 * 1024


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


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary sibling, flush it to disk, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    if not isinstance(meta.get("format_version", 0), int):
        raise CheckpointError(f"{path} metadata has an invalid format_version {meta['format_version']!r}.")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format {meta['format_version']}, newer than this aecore "
            f"reads ({FORMAT_VERSION}); upgrade aecore."
        )
    if not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{path} metadata lacks the model description.")
    return meta


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> Autoencoder:
    """Rebuild the model described by a checkpoint and load its weights (eval mode)."""
    path = resolve(path)
    meta = read_metadata(path)
    try:
        spec = ModelSpec.from_dict(meta["model"])
        for comp in (spec.encoder, spec.decoder, *spec.regularizers):
            fields = ((comp.name, str), (comp.dist, str), (comp.params, dict))
            if not all(isinstance(value, kind) for value, kind in fields):
                raise TypeError(f"component entry {comp.name!r} needs a name, a dist and a params table")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} has a malformed model description ({exc}).") from None
    _require_installed(spec, path)
    try:
        model = compose(
            spec.encoder.name,
            spec.decoder.name,
            [r.name for r in spec.regularizers],
            input_shape=spec.input_shape,
            latent_dim=spec.latent_dim,
            params={
                "encoder": spec.encoder.params,
                "decoder": spec.decoder.params,
                **{r.name: r.params for r in spec.regularizers},
            },
        )
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


def read_header(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (only {size} bytes).")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise CheckpointError(
                f"{path} is not a safetensors file, or is truncated (header claims {n} bytes)."
            )
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path} is not a safetensors file (unreadable header).") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (header is not a table).")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path} is not a safetensors file (its metadata is not a table of strings).")
    try:
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError, ValueError):
        raise CheckpointError(f"{path} is not a safetensors file (malformed tensor entries).") from None
    if 8 + n + end > size:
        raise CheckpointError(f"{path} is truncated: {size} bytes, header needs {8 + n + end}.")
    return header


def _require_installed(spec: ModelSpec, path: Path) -> None:
    parts = [("encoder", spec.encoder), ("decoder", spec.decoder)]
    parts += [("regularizer", r) for r in spec.regularizers]
    for kind, comp in parts:
        if not any(c.dist == comp.dist for c in registry.find(comp.name) if c.kind == kind):
            installed = [c for c in registry.find(comp.name) if c.kind == kind]
            hint = f" ({installed[0].dist} provides one, which may differ)" if installed else ""
            raise CheckpointError(
                f"{path} needs {kind} '{comp.name}' from '{comp.dist}' (version {comp.version}), "
                f"which is not installed{hint}; run: pip install {comp.dist}"
            )


def _versions(spec: ModelSpec) -> dict[str, str]:
    from aecore import __version__

    versions = {"aecore": __version__, "torch": torch.__version__}
    for comp in [spec.encoder, spec.decoder, *spec.regularizers]:
        versions[comp.dist] = comp.version
    return versions
