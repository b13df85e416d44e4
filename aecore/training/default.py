"""The default trainer: Adam over shuffled index-slice batches of an in-memory dataset.

Registered as ``default`` in the ``aecore.trainers`` entry-point group, the
same way a third-party trainer would be. Options cover the reference
recipes: gradient clipping, ReduceLROnPlateau, early stopping, keeping the
best checkpoint by validation loss, and mixed precision. The step is plain
autograd with ``torch.optim.Adam``; a backend (``run.backend``) may supply
its own optimizer and step, and the loop does not know how either works.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aecore import distributed
from aecore.config import param
from aecore.data import TensorData
from aecore.errors import AecoreError, CheckpointError, ConfigError
from aecore.evaluate import EVAL_BATCH
from aecore.model import Autoencoder
from aecore.protocols import RunContext
from aecore.state import RESUME_FILE, load_optimizer_state, load_scheduler_state, optimizer_state
from aecore.training.backends import adam

__all__ = [
    "BEST_CHECKPOINT",
    "DefaultTrainer",
    "DefaultTrainerConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
]

BEST_CHECKPOINT = "best.safetensors"
LAST_CHECKPOINT = "model.safetensors"


def _loss_check_steps(device: torch.device, every: int) -> int:
    """1 on the CPU (every step, before the step is applied); ``every`` steps on an accelerator."""
    return 1 if device.type == "cpu" else every


class TrainingDiverged(AecoreError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(AecoreError):
    """Ctrl-C or SIGTERM stopped training after saving a resumable state."""

    exit_code = 130


@dataclass
class _Position:
    """Where training stands: what the resume file records for this trainer."""

    epoch: int = 1
    step: int = 0  # steps completed in ``epoch``
    best: float = math.inf
    stale: int = 0
    done: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    epoch_rng: torch.Tensor | None = None  # shuffle generator state at the start of ``epoch``
    sums: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class _PendingCheck:
    """Losses not yet looked at on an accelerator: a device flag, and where the window began."""

    flag: torch.Tensor | None = None
    first: int = 1  # the window's first step in its epoch


class _StopSignal:
    received: int = 0  # the signal's number; 0 while none came


@contextlib.contextmanager
def _graceful_stop() -> Iterator[_StopSignal]:
    """Turn the first Ctrl-C or SIGTERM into a flag checked after each step; a second one stops at once.

    A signal that comes after the trainer's last look at the flag is not lost:
    leaving the block raises KeyboardInterrupt for it.
    """
    flag = _StopSignal()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.received:
            raise KeyboardInterrupt
        flag.received = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
    if flag.received:
        raise KeyboardInterrupt


def _bad(key: str) -> Any:
    raise ValueError(f"its {key} is missing or of the wrong kind")


def _whole(meta: dict[str, Any], key: str, least: int = 0) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        _bad(key)
    return value


def _number(meta: dict[str, Any], key: str) -> float:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _bad(key)
    return float(value)


def _figures(value: Any) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
    ):
        _bad("metrics")
    return dict(value)


def _finite(model: torch.nn.Module) -> bool:
    """Whether every floating-point weight and buffer is finite (one device sync)."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return not tensors or bool(torch.stack([t.isfinite().all() for t in tensors]).all())


def _what_is_kept(run_dir: Path) -> str:
    """What a diverged run leaves behind, as it is on disk now."""
    saved = [name for name in (LAST_CHECKPOINT, BEST_CHECKPOINT, RESUME_FILE) if (run_dir / name).is_file()]
    if saved:
        return f"the last good state is kept in {run_dir} ({', '.join(saved)})."
    if not run_dir.is_dir():
        return f"nothing is kept: {run_dir} no longer exists."
    return f"nothing had been saved in {run_dir} yet."


@dataclass(frozen=True)
class DefaultTrainerConfig:
    epochs: int = param(10, "Passes over the training data.")
    batch_size: int = param(128, "Samples per optimisation step.")
    lr: float = param(1e-3, "Adam learning rate.")
    weight_decay: float = param(0.0, "Adam weight decay (L2 on the weights).")
    grad_clip: float | None = param(None, "Clip the gradient norm to this value (none: no clipping).")
    plateau_patience: int | None = param(
        None, "Epochs without validation improvement before the LR is cut (none: constant LR)."
    )
    plateau_factor: float = param(0.5, "Factor the LR is multiplied by on a plateau.")
    cosine: bool = param(
        False, "Decay the LR from lr to 0 along a cosine over all steps (not with a plateau)."
    )
    time_limit: float | None = param(
        None, "Minutes: stop before an epoch that would end past this budget (none: no limit)."
    )
    early_stopping: int | None = param(
        None, "Stop after this many epochs without validation improvement (none: never)."
    )
    min_delta: float = param(0.0, "Smallest fall in validation loss that counts as an improvement.")
    keep_best: bool = param(True, "Also save best.safetensors, the epoch with the lowest validation loss.")
    checkpoint_every: int = param(1, "Save model.safetensors every N epochs (0: only at the end).")
    save_every_steps: int | None = param(
        None, "Also save the resume state every N steps (it is always saved at each epoch end)."
    )
    amp: bool = param(
        False, "Mixed precision: bfloat16 autocast on CUDA and CPU (fast where the CPU has bf16 units)."
    )
    loss_check_every: int = param(
        50,
        "On a GPU or other accelerator, steps between looks at the NaN check of the loss (each waits for "
        "the device); the CPU checks every step.",
    )

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0 or self.checkpoint_every < 0 or self.min_delta < 0:
            raise ValueError("weight_decay, min_delta and checkpoint_every cannot be negative")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip}")
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"plateau_factor must be in (0, 1), got {self.plateau_factor}")
        if self.cosine and self.plateau_patience is not None:
            raise ValueError("choose either cosine or plateau_patience for the learning rate, not both")
        if self.loss_check_every < 1:
            raise ValueError(f"loss_check_every must be at least 1, got {self.loss_check_every}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit must be positive, got {self.time_limit}")
        for name in ("plateau_patience", "early_stopping", "save_every_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} cannot be negative, got {value}")


class DefaultTrainer:
    """Adam with seeded shuffling; per-term metrics and validation every epoch."""

    Config = DefaultTrainerConfig

    def __init__(self, config: DefaultTrainerConfig) -> None:
        self.config = config

    #: This trainer continues interrupted runs (see aecore.training.state).
    supports_resume = True

    def schedule(self, model: Autoencoder, train: TensorData) -> tuple[int, int]:
        """(epochs, steps per epoch): what ``ae_train_start`` announces."""
        return self.config.epochs, math.ceil(len(train) / self.config.batch_size)

    def fit(
        self, model: Autoencoder, train: TensorData, val: TensorData, run: RunContext
    ) -> Mapping[str, float]:
        cfg = self.config
        if len(train) == 0:
            raise ConfigError("the training split is empty; use more data or a smaller --val-fraction.")
        device = run.device
        train, val = train.to(device), val.to(device)
        model.to(device)
        job = distributed.current()
        part = (job.rank, job.world_size) if job.active else None
        engine: torch.nn.Module = model
        if job.active:  # gradients are averaged across ranks during backward
            from torch.nn.parallel import DistributedDataParallel

            engine = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        params = [p for p in model.parameters() if p.requires_grad]
        backend = run.backend
        optimizer = backend.optimizer(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if backend else None
        if optimizer is None:
            optimizer = adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = None
        if cfg.plateau_patience is not None and len(val):
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=cfg.plateau_factor, patience=cfg.plateau_patience
            )
        steps = math.ceil(len(train) / cfg.batch_size)
        cosine = None
        if cfg.cosine:
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps)
        autocast = self._autocast(device)
        # A backend's own step (gradients without autograd, say) where nothing needs autograd's
        # machinery: DDP needs its hooks, autocast its casts.
        fast_step = None if job.active or cfg.amp or backend is None else backend.step(model, run.loss_fn)
        generator = torch.Generator().manual_seed(run.seed)
        pos = _Position()
        if run.resume is not None:
            pos = self._restore(run.resume, optimizer, scheduler, cosine, generator)
            pos.sums = {k: v.to(device) for k, v in pos.sums.items()}  # read on the CPU, added to on device
            if pos.done:
                return dict(pos.metrics)
        started = time.perf_counter()
        first_epoch = pos.epoch
        check_steps = _loss_check_steps(device, cfg.loss_check_every)
        pending = _PendingCheck()

        def hint() -> str:
            return f"{_what_is_kept(run.out_dir)} Try a lower --lr or --set trainer.grad_clip=1.0."

        def check_pending() -> None:
            """On an accelerator: whether a loss since the last look was NaN or infinite (one sync).

            It runs every ``check_steps`` steps, at each epoch's end and before anything is saved,
            so a window never spans two epochs and nothing diverged is ever written.
            """
            if pending.flag is None:
                return
            bad, pending.flag = bool(pending.flag), None
            if bad:
                raise TrainingDiverged(
                    f"the loss became NaN or infinite in epoch {pos.epoch}, steps {pending.first} to "
                    f"{pos.step} ({device.type} checks it every {check_steps} steps rather than wait for "
                    f"the device each step); {hint()}"
                )

        def check_finite() -> None:
            """Nothing diverged is ever saved, so every file a run leaves is a good one."""
            if not _finite(model):
                when = f"in epoch {pos.epoch}, step {pos.step}" if pos.step else f"in epoch {pos.epoch - 1}"
                raise TrainingDiverged(f"the weights became NaN or infinite {when}; {hint()}")

        def save_checkpoint(name: str, figures: dict[str, float]) -> None:
            check_pending()
            check_finite()
            run.save_checkpoint(model, name, figures)

        def save_state(done: bool = False) -> None:
            check_pending()
            check_finite()
            if run.save_resume is not None:
                meta, tensors = self._state(pos, optimizer, scheduler, cosine, done)
                run.save_resume(model, meta, tensors)

        metrics: dict[str, float] = dict(pos.metrics)

        def stop_requested() -> str | None:
            """The signal that asked to stop, if any; under torchrun every rank gets the same answer."""
            # The launcher signals the ranks one after another, so they may see it at different steps:
            # the largest signal number seen decides, and every rank names that signal.
            number = distributed.max_over_ranks(stop_signal.received) if job.active else stop_signal.received
            return signal.Signals(number).name if number else None

        with _graceful_stop() as stop_signal:
            for epoch in range(pos.epoch, cfg.epochs + 1):
                model.train()
                if pos.step == 0:
                    pos.epoch_rng = generator.get_state()
                    pos.sums = {}
                else:
                    generator.set_state(pos.epoch_rng)  # the same order as before the interruption
                order = train.batches(
                    cfg.batch_size, generator=generator, shuffle=True, skip=pos.step, part=part
                )
                for step, xb in enumerate(order, start=pos.step):
                    optimizer.zero_grad(set_to_none=True)
                    terms = fast_step(xb) if fast_step is not None else None
                    backward = terms is None  # else the backend's step has already filled the gradients
                    if backward:
                        with autocast:
                            terms = engine(xb, loss_fn=run.loss_fn)
                    loss = functools.reduce(operator.add, terms.values())  # sum() would add a 0 first
                    if check_steps == 1:  # the CPU: before the step is applied
                        if not math.isfinite(loss.item()):
                            raise TrainingDiverged(
                                f"the loss became {float(loss.detach())} in epoch {epoch}, step {step + 1}; "
                                f"{hint()}"
                            )
                    else:  # an accelerator: a flag on the device, read every check_steps steps
                        bad = ~torch.isfinite(loss.detach())
                        if pending.flag is None:
                            pending.flag, pending.first = bad, step + 1
                        else:
                            pending.flag = pending.flag | bad
                    if backward:
                        loss.backward()
                    if cfg.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    if cosine is not None:
                        cosine.step()
                    with torch.no_grad():
                        run.hooks.ae_after_step(run=run, model=model, epoch=epoch, step=step)
                    n = xb.shape[0]
                    for name, value in terms.items():  # running sums of each term, one in-place op each
                        if name in pos.sums:
                            pos.sums[name].add_(value.detach(), alpha=n)
                        else:
                            pos.sums[name] = value.detach().float() * n
                    pos.epoch, pos.step = epoch, step + 1
                    if check_steps > 1 and pos.step % check_steps == 0:
                        check_pending()
                    run.hooks.ae_step_end(
                        run=run, epoch=epoch, step=step, batch_size=n * job.world_size, loss=loss.detach()
                    )
                    stopped_by = stop_requested()
                    if stopped_by:
                        save_state()
                        raise TrainingInterrupted(
                            f"training stopped by {stopped_by} at epoch {epoch}, step {step + 1}; "
                            f"its state is saved. Resume with: ae train --resume {run.out_dir}"
                        )
                    if cfg.save_every_steps and pos.step % cfg.save_every_steps == 0:
                        save_state()

                check_pending()
                metrics = self._epoch_metrics(epoch, pos.sums, len(train), optimizer)
                metrics.update(model.epoch_metrics())  # the components' own figures (codebook use...)
                improved = False
                if len(val):
                    metrics["val_recon"] = self._validate(model, val, run, part)
                    improved = metrics["val_recon"] < pos.best - cfg.min_delta
                    if improved:
                        pos.best, pos.stale = metrics["val_recon"], 0
                    else:
                        pos.stale += 1
                    if scheduler is not None:
                        scheduler.step(metrics["val_recon"])
                run.hooks.ae_epoch_end(run=run, epoch=epoch, metrics=dict(metrics))
                if cfg.keep_best and improved:
                    save_checkpoint(BEST_CHECKPOINT, metrics)
                stop = cfg.early_stopping is not None and pos.stale > cfg.early_stopping
                if cfg.time_limit is not None and epoch < cfg.epochs:
                    elapsed = time.perf_counter() - started
                    per_epoch = elapsed / (epoch - first_epoch + 1)
                    # the next epoch would overrun (on any rank: ranks keep their own clocks)
                    if distributed.any_rank(elapsed + per_epoch > cfg.time_limit * 60):
                        stop = True
                        metrics["stopped_by_time_limit"] = 1.0
                last = epoch == cfg.epochs or stop
                if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0 and not last:
                    save_checkpoint(LAST_CHECKPOINT, metrics)
                if stop and "stopped_by_time_limit" not in metrics:
                    metrics["stopped_early"] = 1.0
                if math.isfinite(pos.best):
                    metrics["best_val_recon"] = pos.best
                pos.epoch, pos.step, pos.metrics = epoch + 1, 0, dict(metrics)
                pos.epoch_rng = generator.get_state()
                save_state(done=last)
                stopped_by = stop_requested()
                if stopped_by:  # during validation or a checkpoint: the epoch is complete and saved
                    raise TrainingInterrupted(
                        f"training stopped by {stopped_by} at the end of epoch {epoch}; its state is saved. "
                        f"Resume with: ae train --resume {run.out_dir}"
                    )
                if stop:
                    break
        return metrics

    def _state(
        self,
        pos: _Position,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        cosine: Any,
        done: bool,
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """This trainer's part of the resume file."""
        optim_meta, tensors = optimizer_state(optimizer)
        tensors = {**tensors, "shuffle_rng": pos.epoch_rng}
        tensors.update({f"sums.{k}": v.reshape(()) for k, v in pos.sums.items()})
        meta = {
            "epoch": pos.epoch,
            "step": pos.step,
            "best": pos.best,
            "stale": pos.stale,
            "done": done,
            "metrics": pos.metrics,
            "optimizer": optim_meta,
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "cosine": None if cosine is None else cosine.state_dict(),
        }
        return meta, tensors

    @staticmethod
    def _restore(
        state: Any, optimizer: torch.optim.Optimizer, scheduler: Any, cosine: Any, generator: torch.Generator
    ) -> _Position:
        """This trainer's part of a resume file, every field checked: damage is one CheckpointError."""
        meta, tensors = state.trainer, state.trainer_tensors
        try:
            if not isinstance(meta, dict):
                raise ValueError("the trainer record is not a table")
            if "shuffle_rng" not in tensors:
                raise ValueError("'trainer.shuffle_rng', the order of the epoch's data, is missing")
            pos = _Position(
                epoch=_whole(meta, "epoch", least=1),
                step=_whole(meta, "step"),
                best=_number(meta, "best"),
                stale=_whole(meta, "stale"),
                done=meta["done"] if isinstance(meta.get("done"), bool) else _bad("done"),
                metrics=_figures(meta.get("metrics")),
                epoch_rng=tensors["shuffle_rng"],
                sums={k[len("sums.") :]: v for k, v in tensors.items() if k.startswith("sums.")},
            )
            if not all(v.is_floating_point() and v.numel() == 1 for v in pos.sums.values()):
                raise ValueError("a running sum is not one number")
            if not isinstance(meta.get("optimizer"), dict):
                _bad("optimizer")
            try:
                generator.set_state(tensors["shuffle_rng"])
            except (RuntimeError, TypeError):
                raise ValueError("'trainer.shuffle_rng' is not a random state torch accepts") from None
        except ValueError as exc:
            raise CheckpointError(
                f"the resume file's trainer state is damaged: {exc}; start the run again."
            ) from None
        load_scheduler_state(scheduler, meta.get("scheduler"))  # each checked, or one CheckpointError
        load_scheduler_state(cosine, meta.get("cosine"))
        load_optimizer_state(optimizer, meta["optimizer"], tensors)
        return pos

    @staticmethod
    def _epoch_metrics(
        epoch: int, sums: dict[str, torch.Tensor], n: int, optimizer: torch.optim.Optimizer
    ) -> dict[str, float]:
        metrics = {"epoch": epoch, "train_loss": 0.0}
        totals: dict[str, float] = {}
        if sums:  # one all-reduce for every term (a no-op in a single process)
            summed = distributed.all_reduce_sum(torch.stack(list(sums.values()))).tolist()
            totals = dict(zip(sums, summed, strict=True))
        for name, total in totals.items():
            value = total / n
            metrics[f"train_{name}"] = value
            metrics["train_loss"] += value
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        return metrics

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bfloat16 autocast when ``amp`` is on: matmuls in bf16, weights and the loss in float32."""
        if not self.config.amp:
            return contextlib.nullcontext()
        if device.type not in ("cuda", "cpu"):
            warnings.warn(f"amp is not used on {device.type}; training in float32.", stacklevel=3)
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    @torch.no_grad()
    def _validate(
        self, model: Autoencoder, val: TensorData, run: RunContext, part: tuple[int, int] | None
    ) -> float:
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=run.device)
        for xb in val.batches(EVAL_BATCH, part=part, reuse=True):
            if len(xb):
                total += run.loss_fn(model(xb), xb).double() * xb.shape[0]
        model.train()
        return distributed.all_reduce_sum(total).item() / len(val)
