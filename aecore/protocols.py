"""The contracts every kind of plugin meets, and the run object trainers and hooks receive.

These are structural (:class:`typing.Protocol`): a plugin conforms by shape,
not by inheriting from aecore. Every class-based plugin carries a ``Config``
dataclass (see :mod:`aecore.config`) and is constructed as::

    Encoder(config, *, input_shape=(1, 28, 28), latent_dim=32)
    Decoder(config, *, input_shape=(1, 28, 28), latent_dim=32)
    Regularizer(config, *, latent_dim=32)
    Trainer(config)
    DataSource(config)
    Backend(config)

Encoders, decoders and regularizers are ``torch.nn.Module`` subclasses so
their weights travel in the checkpoint. A loss is a function
``loss(recon, target) -> 0-d tensor`` (or a class with a ``Config`` whose
instances are such functions). A command is a function or a ``typer.Typer``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from aecore.data import Dataset, TensorData
    from aecore.model import Autoencoder, LossFn

__all__ = [
    "Backend",
    "DataSource",
    "Decoder",
    "Encoder",
    "Regularizer",
    "ResumeState",
    "RunContext",
    "StepFn",
    "Trainer",
]


@runtime_checkable
class Encoder(Protocol):
    """Maps a batch ``(N, *input_shape)`` to codes ``(N, latent_dim)``."""

    config: Any
    input_shape: tuple[int, ...]
    latent_dim: int

    def forward(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class Decoder(Protocol):
    """Maps codes ``(N, latent_dim)`` back to ``(N, *input_shape)``."""

    config: Any
    input_shape: tuple[int, ...]
    latent_dim: int

    def forward(self, z: Tensor) -> Tensor: ...


@runtime_checkable
class Regularizer(Protocol):
    """Adds a named penalty term to the loss, and may reshape the input or code.

    ``transform_input(x)`` runs before encoding, in training only: denoising
    lives here, and the clean batch stays the reconstruction target.

    ``transform_code(z)`` runs between encoder and decoder, in training and
    evaluation, in the order the regularizers were given: the first receives
    the encoder's output, each later one the code so far. It returns the new
    code, or a pair ``(code, aux)`` whose ``aux`` (anything: a tensor, a
    tuple, a dict) is handed to this regularizer's own ``penalty``. TopK,
    variational and quantised codes live here.

    ``penalty(x, z, recon, model)`` receives the encoder's input (after every
    ``transform_input``), ``z``: the code the decoder received, after every
    ``transform_code`` (not the encoder's raw output), the reconstruction and
    the whole model; when its ``transform_code`` returned ``(code, aux)``, it
    is called as ``penalty(x, z, recon, model, aux=aux)``. A penalty that
    needs the code before its own transform (a straight-through quantiser,
    whose transformed code carries no gradient to the codebook) returns it in
    ``aux``. It returns a 0-d tensor already multiplied by the regularizer's
    weight.
    """

    config: Any

    def penalty(self, x: Tensor, z: Tensor, recon: Tensor, model: nn.Module) -> Tensor: ...

    def transform_input(self, x: Tensor) -> Tensor: ...

    def transform_code(self, z: Tensor) -> Tensor | tuple[Tensor, Any]: ...


@runtime_checkable
class Trainer(Protocol):
    """Fits a composed model on training data, watching validation data.

    A trainer may also define ``check(model) -> None``, raising
    :class:`aecore.errors.ConfigError` for a model it cannot train (it is
    called before the run directory is created), and set
    ``supports_resume = True`` when it continues from ``run.resume``.
    """

    config: Any

    def fit(
        self, model: Autoencoder, train: TensorData, val: TensorData, run: RunContext
    ) -> Mapping[str, float]: ...


@runtime_checkable
class DataSource(Protocol):
    """Loads a dataset for ``--data NAME`` or ``--data NAME:LOCATION?option=value&...``.

    Options after ``?`` are the source's ``Config`` fields, parsed by their
    declared types. ``normalisation`` is a trained model's record when the
    data is reloaded for it (a table then reuses its training statistics).
    Optional methods: ``locate(location, data_dir) -> str`` gives the
    location in the form to record (an absolute path, say), and
    ``files(location, data_dir=...) -> list[Path]`` lists the files whose
    state decides whether a cached copy is still good.
    """

    config: Any

    def load(
        self, location: str | None, *, data_dir: Path | None, normalisation: Mapping[str, Any] | None
    ) -> Dataset: ...


#: A training step a backend supplies: loss terms (detached) for batch ``x``, with every
#: parameter's ``.grad`` set as ``backward()`` would; or None to let autograd take this batch.
StepFn = Callable[["Tensor"], "Mapping[str, Tensor] | None"]


@runtime_checkable
class Backend(Protocol):
    """Prepares a model for a device, and may supply the optimizer and the training step.

    ``probe(device)`` says why the backend cannot serve ``device`` (None: it
    can); it runs once per run, before anything else. ``optimizer`` and
    ``step`` may return None to leave that part to the trainer's default.
    Speed tricks live here, never in components.
    """

    config: Any

    def probe(self, device: torch.device) -> str | None: ...

    def prepare(self, model: Autoencoder, device: torch.device) -> Autoencoder: ...

    def optimizer(
        self, params: Sequence[Tensor], *, lr: float, weight_decay: float
    ) -> torch.optim.Optimizer | None: ...

    def step(self, model: Autoencoder, loss_fn: LossFn) -> StepFn | None: ...


@dataclass
class ResumeState:
    """A decoded resume file: what a trainer continues from (see :mod:`aecore.state`)."""

    request: dict[str, Any]
    trainer: dict[str, Any]
    trainer_tensors: dict[str, Tensor]
    model_state: dict[str, Tensor]
    rng: dict[str, Tensor]
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class RunContext:
    """The surroundings of one training run, handed to the trainer and to every hook.

    ``out_dir`` is the run directory; ``info`` describes the run (encoder,
    decoder, regularizers, trainer, data, train_size, val_size, parameters,
    resumed, backend). ``hooks`` is the pluggy hook relay
    (``run.hooks.ae_epoch_end(...)``). ``save_checkpoint(model, filename,
    metrics)`` writes atomically into ``out_dir`` with full metadata and
    fires ``ae_checkpoint_saved``. A trainer that supports resuming saves its
    state with ``save_resume(model, trainer_meta, trainer_tensors)`` and
    continues from ``resume`` when it is set. ``backend`` is the chosen
    backend, or None for plain autograd. ``model`` is the model being
    trained (as the backend prepared it), and ``train_data`` and
    ``val_data`` the splits it trains and validates on, so a hook can look
    at them (draw reconstructions, say) without touching the training
    computation; a hook must leave them as it found them (use
    ``torch.no_grad()`` and restore ``model.training``).
    """

    out_dir: Path
    device: torch.device
    loss_fn: LossFn
    seed: int
    hooks: Any
    save_checkpoint: Callable[[Autoencoder, str, Mapping[str, float]], Path]
    info: dict[str, Any] = field(default_factory=dict)
    resume: ResumeState | None = None
    save_resume: Callable[[Autoencoder, Mapping[str, Any], Mapping[str, Tensor]], Path] | None = None
    backend: Backend | None = None
    model: Autoencoder | None = None
    train_data: TensorData | None = None
    val_data: TensorData | None = None
