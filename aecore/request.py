"""The run request: one typed declaration of what to train, on what, and where.

:class:`RunRequest` is the single declaration behind :func:`aecore.train`,
:func:`aecore.resume`, ``ae train``, ``ae cv`` and ``ae sweep``: the CLI's
options are generated from its fields (as ``--set`` is from a component's
``Config``), the resume file stores it, and checkpoints record it.
:func:`resolve` turns it into the concrete choices a run makes (preset
merged, shortcuts folded into the trainer's parameters, ``--set`` targets
checked).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aecore import registry
from aecore.config import config_from_dict, config_to_dict, convert_value, param, params_of
from aecore.errors import ConfigError, suggest

__all__ = ["FIXED_TARGETS", "ResolvedRun", "RunRequest", "resolve"]

#: ``--set`` targets besides the regularizers' names.
FIXED_TARGETS = ("encoder", "decoder", "trainer", "loss", "backend")
#: The trainer parameters that have an option of their own.
SHORTCUTS = ("epochs", "batch_size", "lr")


@dataclass(frozen=True)
class RunRequest:
    """What to train, on what, and where. Every field has a default; ``encoder`` or ``preset`` is needed."""

    encoder: str | None = param(
        None, "Encoder plugin name (see 'ae plugins list').", flags=("--encoder", "-e")
    )
    decoder: str | None = param(
        None, "Decoder plugin name (default: the encoder's counterpart).", flags=("--decoder", "-d")
    )
    regularizers: tuple[str, ...] = param(
        (), "Regularizer plugin name; repeat to stack several.", flags=("--reg", "-r"), repeat=True
    )
    preset: str | None = param(None, "Start from a named recipe (see 'ae presets'); options override it.")
    trainer: str = param("default", "Trainer plugin name.")
    latent_dim: int | None = param(None, "Size of the code (default: the preset's, or 32).")
    epochs: int | None = param(None, "Epochs (default: the trainer's).")
    batch_size: int | None = param(None, "Batch size (default: the trainer's).")
    lr: float | None = param(None, "Learning rate (default: the trainer's).")
    params: dict[str, dict[str, Any]] = param(
        {},
        "Set a parameter: TARGET.PARAM=VALUE, e.g. encoder.channels=32,64 (TARGET: encoder, decoder, "
        "trainer, loss, backend or a regularizer name).",
        flags=("--set", "-s"),
        repeat=True,
    )
    loss: str = param("mse", "Reconstruction loss: mse, bce, l1 or an installed loss plugin.")
    data: str | None = param(
        "embedded",
        "Data source: embedded (ships with aecore), mnist, csv:PATH, npy:PATH or an installed one.",
    )
    data_dir: str | None = param(None, "Local copy of the dataset; no download.")
    classes: tuple[int, ...] | None = param(
        None,
        "Train only on these labels, e.g. 0 or 3,5 (one-class training for anomaly detection).",
        flags=("--classes", "--normal-class"),
    )
    val_fraction: float = param(0.1, "Share of training data held out for validation.")
    shuffle: Literal["auto", "full", "block"] = param(
        "auto",
        "Order of the training samples each epoch: full (uniformly random), block (blocks of rows in a "
        "random order, rows shuffled within each: sequential reads for data larger than memory), or auto "
        "(block when the prepared data exceeds half of the free memory).",
    )
    seed: int = param(0, "Random seed for weights, split and shuffling.")
    device: str = param("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda or mps.")
    threads: int | None = param(
        None,
        "torch intra-op threads while the run trains (default: torch's, one per core). A shared or "
        "virtualised machine can be faster on 1: 'ae bench' measures it.",
        minimum=1,
    )
    backend: str = param(
        "auto", "Training backend: auto (the first installed one that serves the device), none, or a name."
    )
    out: str | None = param(None, "Run directory (default: RUNS_ROOT/<components>, never reused).")
    runs_root: str = param("runs", "Where run directories go when --out is not given.")
    overwrite: bool = param(False, "Allow writing into a run directory that holds files.")
    strict_hooks: bool = param(
        False,
        "End the run when a hook plugin raises, instead of disabling it (also AECORE_STRICT_HOOKS=1).",
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.latent_dim is not None and self.latent_dim < 1:
            raise ValueError(f"--latent-dim must be at least 1, got {self.latent_dim}")
        if self.data == "":
            raise ValueError("data cannot be empty; name a data source, e.g. embedded")

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> RunRequest:
        """A validated request from JSON values or command-line strings (one-line errors)."""
        return config_from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


@dataclass(frozen=True)
class ResolvedRun:
    """The concrete choices of a request: what :func:`aecore.train` builds and records."""

    encoder: str
    decoder: str | None
    regularizers: tuple[str, ...]
    latent_dim: int
    components: dict[str, dict[str, Any]]  # encoder, decoder and regularizer parameters
    trainer_params: dict[str, Any]
    loss_params: dict[str, Any] = field(default_factory=dict)
    backend_params: dict[str, Any] = field(default_factory=dict)


def resolve(request: RunRequest) -> ResolvedRun:
    """Merge the preset, fold the shortcuts into the trainer's parameters and check every target."""
    params = {str(k): dict(v) for k, v in request.params.items()}
    encoder, decoder, regs, latent = request.encoder, request.decoder, list(request.regularizers), None
    preset_trainer: dict[str, Any] = {}
    if request.preset is not None:
        entry = registry.info("preset", request.preset)
        preset = _own_components(entry.load(), entry.dist)
        for flag, value, chosen in (
            ("--encoder", encoder, preset.encoder),
            ("--decoder", decoder, preset.decoder),
        ):
            if value is not None and _short(value) != _short(chosen):
                raise ConfigError(
                    f"the preset already chooses {flag} {_short(chosen)}; drop {flag} {value} or the preset."
                )
        encoder, decoder, latent = preset.encoder, preset.decoder, preset.latent_dim
        chosen_regs = {_short(r) for r in preset.regularizers}
        regs = list(preset.regularizers) + [r for r in regs if _short(r) not in chosen_regs]
        preset_trainer = dict(preset.params.get("trainer", {}))
        for target, values in preset.component_params.items():
            params[target] = {**values, **params.get(target, {})}
    if encoder is None:
        names = ", ".join(registry.names("encoder")) or "none installed"
        raise ConfigError(f"choose an encoder with --encoder or a --preset (installed encoders: {names}).")
    params = _check_targets(params, regs)

    trainer_params = dict(params.pop("trainer", {}))
    loss_params = dict(params.pop("loss", {}))
    backend_params = dict(params.pop("backend", {}))
    if backend_params and request.backend == "none":
        raise ConfigError("--set backend.* configures a backend, but --backend none trains without one.")
    trainer_specs = {p.name: p for p in params_of(registry.get("trainer", request.trainer).Config)}
    for name in SHORTCUTS:
        value = getattr(request, name)
        if value is None:
            continue
        if name in trainer_params:
            given = trainer_params[name]
            if name in trainer_specs:  # parsed first: a bad value is named as such, and 1e-3 is 0.001
                given = convert_value(trainer_specs[name], given, name=f"trainer.{name}")
            if given != value:
                raise ConfigError(
                    f"--{name.replace('_', '-')} {value} and --set trainer.{name}={trainer_params[name]} "
                    f"both set the trainer's {name}; give only one of them."
                )
        trainer_params[name] = value
    # A preset's trainer settings apply where the chosen trainer has them; explicit ones always do.
    accepted = set(trainer_specs)
    trainer_params = {**{k: v for k, v in preset_trainer.items() if k in accepted}, **trainer_params}
    return ResolvedRun(
        encoder=encoder,
        decoder=decoder,
        regularizers=tuple(regs),
        latent_dim=request.latent_dim if request.latent_dim is not None else latent or 32,
        components=params,
        trainer_params=trainer_params,
        loss_params=loss_params,
        backend_params=backend_params,
    )


def _short(name: str | None) -> str | None:
    return None if name is None else name.rpartition(":")[2]


def _own_components(preset: Any, dist: str) -> Any:
    """The preset with the components its own distribution provides named as ``dist:name``.

    A recipe means its own plugin's ``mlp``, even after another distribution
    installs an ``mlp`` too.
    """
    from dataclasses import replace

    def own(kind: str, name: str | None) -> str | None:
        if name is None or ":" in name:
            return name
        mine = any(c.name == name and c.dist == dist for c in registry.every(kind))
        return f"{dist}:{name}" if mine else name

    return replace(
        preset,
        encoder=own("encoder", preset.encoder),
        decoder=own("decoder", preset.decoder),
        regularizers=tuple(own("regularizer", r) or r for r in preset.regularizers),
    )


def _check_targets(params: dict[str, dict[str, Any]], regularizers: list[str]) -> dict[str, dict[str, Any]]:
    """``reg.X`` means the one regularizer's ``X``; every other target must be part of the run."""
    short = [r.rpartition(":")[2] for r in regularizers]
    if "reg" in params and len(short) == 1 and "reg" not in short:
        params.setdefault(short[0], {}).update(params.pop("reg"))
    targets = {*FIXED_TARGETS, *short}
    for target in params:
        if target not in targets:
            raise ConfigError(
                f"--set {target}.{next(iter(params[target]), 'PARAM')}: '{target}' is not part of this run."
                f"{suggest(target, targets)} "
                "Use encoder., decoder., trainer., loss., backend. or a --reg name."
            )
    return params
