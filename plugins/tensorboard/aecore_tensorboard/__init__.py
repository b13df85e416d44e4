"""TensorBoard event files for every training run: an aecore hook plugin.

Installed, it writes ``RUN/tensorboard/`` for every run, from ``ae train``
or ``aecore.train()``: the files are local, small and next to the model,
and ``tensorboard --logdir runs`` then shows every run side by side.
``AECORE_TENSORBOARD=0`` turns it off.

What is logged:

* a scalar per metric per epoch, tagged with the metric's own name
  (``train_loss``, ``val_recon``, ``lr``, ...: the numbers of ``history`` in
  ``metrics.json``), and the final figures (``test_mse_per_pixel``, ...) at the
  last epoch. The step is the epoch's place in the run, which is ``epoch``
  itself for the default trainer (aecore-greedy's pretraining epochs come
  first, so its steps never repeat);
* for image data (samples C×H×W with C 1 or 3), the image ``reconstruction``:
  up to 8 fixed validation samples in the top row and the model's
  reconstructions below them, at epoch 1, every N-th epoch and the last.
  N is ``AECORE_TENSORBOARD_IMAGES`` (0: no images), by default 1 for runs of
  at most 10 epochs, else 5;
* the run's configuration (components and their parameters, trainer,
  loss, seed, backend, data) as hparams, written with the first checkpoint,
  so the HPARAMS dashboard lists the run with its final metrics; unset
  parameters (None) are left out.

A resumed run appends to the same folder and tells TensorBoard to drop what
the interrupted run logged past its last saved epoch. A failure (a file
where the folder should be, a full disk) raises: aecore reports it once,
disables this plugin for the run, and training goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from aecore.checkpoint import read_metadata
from aecore.errors import ConfigError
from aecore.hooks import hookimpl

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.tensorboard import SummaryWriter

    from aecore.protocols import RunContext

__all__ = [
    "ENABLE_ENV",
    "IMAGES_ENV",
    "IMAGE_SAMPLES",
    "IMAGE_TAG",
    "LOG_DIR",
    "TensorBoardLogger",
    "flat_config",
    "images_every",
    "reconstruction_grid",
]

#: Set to 0 to leave TensorBoard out of every run.
ENABLE_ENV = "AECORE_TENSORBOARD"
#: A reconstruction grid every N epochs (0: none); unset, 1 for runs of at most 10 epochs, else 5.
IMAGES_ENV = "AECORE_TENSORBOARD_IMAGES"
#: The folder inside the run directory.
LOG_DIR = "tensorboard"
#: The tag of the reconstruction grid.
IMAGE_TAG = "reconstruction"
#: How many validation samples the grid shows.
IMAGE_SAMPLES = 8

_YES = {"1", "true", "yes", "on"}
_NO = {"0", "false", "no", "off"}


class TensorBoardLogger:
    """Writes each run's scalars, reconstruction grids and hparams to RUN/tensorboard/.

    The model and the samples for the reconstruction grid come from the run
    (``run.model``; the first validation samples, or the first training
    samples when there is no validation split), so nothing is attached to
    the model and a backend's fast step is left alone.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.enabled = False
        self.log_dir: Path | None = None
        self.writer: SummaryWriter | None = None
        self.every = 0
        self.total_epochs: int | None = None
        self.offset = 0
        self.step = 0
        self.image_step: int | None = None
        self.last: dict[str, float] = {}
        self.config_logged = False
        self.started = time.time()
        self.model: nn.Module | None = None
        self.samples: Tensor | None = None
        self.display = (0.0, 1.0)

    # -- hooks ---------------------------------------------------------------

    @hookimpl
    def ae_train_start(self, run: RunContext, total_epochs: int | None) -> None:
        self._close()
        self._reset()
        if not _flag(ENABLE_ENV, default=True):
            return
        self.every = images_every(total_epochs)
        self.enabled = True
        self.log_dir = Path(run.out_dir) / LOG_DIR
        self.total_epochs = total_epochs
        self.offset = self.step = len(run.resume.history) if run.resume is not None else 0
        self.model = getattr(run, "model", None)
        val, train = getattr(run, "val_data", None), getattr(run, "train_data", None)
        source = val if val is not None and len(val) else train
        if self.every and source is not None and len(source) and is_image_shape(source.shape):
            with self._failing():
                self.samples = source.batch(slice(0, min(IMAGE_SAMPLES, len(source)))).float().cpu()
                self.display = display_range(self.samples)

    @hookimpl
    def ae_epoch_end(self, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        with self._failing():
            self.step += 1
            writer = self._writer()
            for name, value in metrics.items():
                if name != "epoch":
                    writer.add_scalar(name, float(value), self.step)
            self.last = dict(metrics)
            if self._image_due(self.step):
                self._log_images()
            writer.flush()

    @hookimpl
    def ae_checkpoint_saved(self, path: Path) -> None:
        if not self.enabled or self.config_logged:
            return
        with self._failing():
            self._log_config(path)

    @hookimpl
    def ae_train_end(self, run: RunContext, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        try:
            if metrics:
                writer = self._writer()
                for name, value in metrics.items():  # the test figures, and anything else new
                    if name != "epoch" and self.last.get(name) != value:
                        writer.add_scalar(name, float(value), self.step)
                if self.every and self.image_step != self.step:
                    self._log_images()  # the final model, when its epoch had no image
                final = Path(run.out_dir) / "model.safetensors"
                if not self.config_logged and final.is_file():
                    self._log_config(final)
                writer.flush()
        finally:
            self._close()
            self._release()
            self.enabled = False

    # -- parts ---------------------------------------------------------------

    def _writer(self) -> SummaryWriter:
        """The run's writer, made on first use: a run that fails before its first epoch leaves no folder."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            assert self.log_dir is not None
            # purge_step: TensorBoard drops what an interrupted run logged from the replayed epoch on.
            purge = self.offset + 1 if self.offset else None
            self.writer = SummaryWriter(str(self.log_dir), purge_step=purge)
        return self.writer

    def _image_due(self, step: int) -> bool:
        if not self.every:
            return False
        return step == 1 or step % self.every == 0 or step == self.total_epochs

    def _log_images(self) -> None:
        if self.model is None or self.samples is None:
            return
        recon = reconstruct(self.model, self.samples)
        grid = reconstruction_grid(self.samples, recon, self.display)
        self._writer().add_image(IMAGE_TAG, grid, self.step, dataformats="CHW")
        self.image_step = self.step

    def _log_config(self, checkpoint: Path) -> None:
        from tensorboard.plugins.hparams import summary_v2

        assert self.log_dir is not None
        # An unset parameter (None) is left out, as TensorBoard has no value for it.
        config = {k: v for k, v in flat_config(read_metadata(checkpoint)).items() if v is not None}
        trial = self.log_dir.parent.name
        summary = summary_v2.hparams_pb(config, trial_id=trial, start_time_secs=self.started)
        writer = self._writer()
        writer.file_writer.add_summary(summary)
        writer.flush()
        self.config_logged = True

    def _release(self) -> None:
        self.model = None
        self.samples = None

    def _close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        """On an error, close the files and let go of the model before aecore disables this plugin."""
        try:
            yield
        except BaseException:
            self.enabled = False
            self._release()
            with contextlib.suppress(Exception):
                self._close()
            raise


# -- helpers -------------------------------------------------------------------


def images_every(total_epochs: int | None) -> int:
    """Epochs between reconstruction grids: ``AECORE_TENSORBOARD_IMAGES``, else 1 up to 10 epochs, else 5."""
    raw = os.environ.get(IMAGES_ENV, "").strip()
    if not raw:
        return 1 if total_epochs is not None and total_epochs <= 10 else 5
    try:
        every = int(raw)
    except ValueError:
        every = -1
    if every < 0:
        raise ConfigError(
            f"{IMAGES_ENV}={raw!r} is not a whole number of epochs; set it to N >= 1 (a reconstruction "
            "grid every N epochs) or 0 (none)."
        )
    return every


def is_image_shape(shape: Any) -> bool:
    """Samples TensorBoard can show as pictures: C×H×W with 1 or 3 channels."""
    return isinstance(shape, tuple | list) and len(shape) == 3 and shape[0] in (1, 3)


def display_range(samples: Tensor) -> tuple[float, float]:
    """The values shown black and white: [0, 1] for data in it, else the samples' own range."""
    lo, hi = float(samples.min()), float(samples.max())
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def reconstruct(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)`` in evaluation mode, without gradients; the mode and the random state stay as they were."""
    weight = next(model.parameters(), None)
    if weight is not None:
        x = x.to(weight.device)  # the samples are kept on the CPU
    devices = [x.get_device()] if x.is_cuda else []
    was_training = model.training
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        model.eval()
        try:
            return model(x).float()
        finally:
            model.train(was_training)


def reconstruction_grid(inputs: Tensor, recons: Tensor, display: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """One C×2H×kW picture in [0, 1]: the k inputs side by side on top, their reconstructions below."""
    lo, hi = display
    pair = torch.stack([inputs.float(), recons.float().reshape(inputs.shape)]).cpu()
    pair = torch.nan_to_num((pair - lo) / (hi - lo), nan=0.0).clamp_(0.0, 1.0)
    _, k, c, h, w = pair.shape
    return pair.permute(2, 0, 3, 1, 4).reshape(c, 2 * h, k * w)


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


def _flag(name: str, *, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _YES:
        return True
    if raw in _NO:
        return False
    raise ConfigError(f"{name}={raw!r} is neither on nor off; set it to 1 or 0.")
