"""Conformance checks for every kind of plugin, to call from a plugin's own tests (no pytest needed).

Each ``check_*`` builds a plugin the way aecore does, exercises what the
rest of aecore relies on, and raises ``AssertionError`` naming the problem,
e.g. ``check_encoder(MyEncoder, input_shape=(3, 32, 32), params={"width": 16})``.

* Components: :func:`check_encoder`, :func:`check_decoder`,
  :func:`check_regularizer`, :func:`check_roundtrip`,
  :func:`check_checkpoint_roundtrip`.
* What surrounds them: :func:`check_trainer`, :func:`check_hook` and
  :func:`check_backend` (each also trains for real, for a second or so),
  :func:`check_loss`, :func:`check_dataset`, :func:`check_command`,
  :func:`check_preset`.

The core ships no architecture, so the checks that train use the kit's own
:class:`LinearEncoder` and :class:`LinearDecoder` on :func:`tiny_dataset`,
registered in-process as ``aecore-testing:linear`` for the duration of the
check: they never depend on another plugin being installed. Those runs are
strict (a hook that raises fails the check) and use no backend unless the
backend is what is checked.

Checks run under a fixed seed inside :func:`torch.random.fork_rng`, so they
are reproducible and leave the caller's random state alone. They use ``assert``:
do not run them under ``python -O``. :mod:`aecore.pytest_plugin` offers the
same pieces as pytest fixtures.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import operator
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from aecore import kinds, protocols, registry
from aecore.components import ImageComponent
from aecore.config import config_from_dict, config_to_dict, param, params_of
from aecore.data import UINT8_IMAGES, Dataset, TensorData, TensorStore
from aecore.data.store import accepts_store
from aecore.hooks import hookimpl

if TYPE_CHECKING:
    from aecore.model import Autoencoder, LossFn
    from aecore.training import TrainResult

__all__ = [
    "InterruptAt",
    "LinearDecoder",
    "LinearEncoder",
    "check_backend",
    "check_checkpoint_roundtrip",
    "check_command",
    "check_dataset",
    "check_decoder",
    "check_encoder",
    "check_hook",
    "check_loss",
    "check_preset",
    "check_regularizer",
    "check_roundtrip",
    "check_trainer",
    "tiny_dataset",
]

_SEED = 1234
Params = Mapping[str, Any] | None
_PROTOCOLS: dict[str, type] = {
    "encoder": protocols.Encoder,
    "decoder": protocols.Decoder,
    "regularizer": protocols.Regularizer,
    "trainer": protocols.Trainer,
    "dataset": protocols.DataSource,
    "backend": protocols.Backend,
}

#: The distribution the kit registers its own plugins under, in-process.
KIT_DIST = "aecore-testing"
#: The kit's linear autoencoder and the data it trains on in the checks that train.
_TOY = f"{KIT_DIST}:linear"
_TOY_SHAPE = (1, 8, 8)
_TOY_LATENT = 4
#: Tolerances for a backend's step against autograd (float32, summed in another order).
_STEP_RTOL, _STEP_ATOL = 1e-3, 1e-6


# -- the kit's own components and data ----------------------------------------


@dataclass(frozen=True)
class LinearConfig:
    bias: bool = param(True, "Learn a bias.")


class LinearEncoder(ImageComponent):
    """One ``nn.Linear`` from the flattened input to the code: a real encoder with no plugin installed."""

    Config = LinearConfig

    def __init__(self, config: LinearConfig, *, input_shape: Sequence[int], latent_dim: int) -> None:
        super().__init__(config, input_shape=tuple(input_shape), latent_dim=latent_dim)
        size = math.prod(self.input_shape)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(size, self.latent_dim, bias=config.bias))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def layer_stack(self) -> list[tuple[nn.Linear, nn.Module]]:
        """Its one layer, for layer-wise trainers (the optional ``layer_stack`` protocol)."""
        return [(self.net[1], nn.Identity())]


class LinearDecoder(ImageComponent):
    """One ``nn.Linear`` from the code, a sigmoid and a reshape: outputs in (0, 1), like pixels."""

    Config = LinearConfig

    def __init__(self, config: LinearConfig, *, input_shape: Sequence[int], latent_dim: int) -> None:
        super().__init__(config, input_shape=tuple(input_shape), latent_dim=latent_dim)
        size = math.prod(self.input_shape)
        self.net = nn.Sequential(
            nn.Linear(self.latent_dim, size, bias=config.bias),
            nn.Sigmoid(),
            nn.Unflatten(1, self.input_shape),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)

    def layer_stack(self) -> list[tuple[nn.Linear, nn.Module]]:
        """Its one layer and the sigmoid after it (the optional ``layer_stack`` protocol)."""
        return [(self.net[0], self.net[1])]


def tiny_dataset(
    n_train: int = 64, n_test: int = 16, shape: Sequence[int] = _TOY_SHAPE, *, seed: int = 0
) -> Dataset:
    """A small synthetic image set: uint8 pixels of a low-rank pattern, two classes; it trains in moments.

    It draws from its own generator, so it is the same whatever the global random state.
    """
    shape = tuple(int(s) for s in shape)
    n = n_train + n_test
    g = torch.Generator().manual_seed(seed)
    codes = torch.randn(n, 3, generator=g)
    images = torch.sigmoid(2 * codes @ torch.randn(3, math.prod(shape), generator=g)).reshape(n, *shape)
    x = (images * 255).round().to(torch.uint8)
    y = (codes[:, 0] > 0).long()
    train = TensorData(x[:n_train].clone(), y[:n_train].clone(), UINT8_IMAGES)
    test = TensorData(x[n_train:].clone(), y[n_train:].clone(), UINT8_IMAGES)
    return Dataset(KIT_DIST, train, test, {"name": KIT_DIST})


class InterruptAt:
    """Hook plugin: Ctrl-C at a chosen point of a run, to test that it stops, saves and resumes.

    It sends this process SIGINT, as a terminal would, so the run takes the path a real
    interruption takes: after the step the hooks number ``step`` (counting from 0) of
    epoch ``epoch``, or at the end of that epoch when ``step`` is None. It fires once.
    """

    def __init__(self, epoch: int, step: int | None = None) -> None:
        self.at = (epoch, step)
        self.fired = False

    @hookimpl
    def ae_step_end(self, epoch: int, step: int) -> None:
        if (epoch, step) == self.at:
            self._interrupt()

    @hookimpl
    def ae_epoch_end(self, epoch: int) -> None:
        if (epoch, None) == self.at:
            self._interrupt()

    def _interrupt(self) -> None:
        if not self.fired:
            self.fired = True
            os.kill(os.getpid(), signal.SIGINT)


# -- components ----------------------------------------------------------------


def check_encoder(
    cls: type,
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    latent_dim: int = 8,
    params: Params = None,
    batch_sizes: Sequence[int] = (1, 2, 5),
) -> nn.Module:
    """Check that ``cls`` maps ``(N, *input_shape)`` to ``(N, latent_dim)``; returns the built encoder."""
    return _check_coder("encoder", cls, params, batch_sizes, input_shape=input_shape, latent_dim=latent_dim)


def check_decoder(
    cls: type,
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    latent_dim: int = 8,
    params: Params = None,
    batch_sizes: Sequence[int] = (1, 2, 5),
) -> nn.Module:
    """Check that ``cls`` maps ``(N, latent_dim)`` to ``(N, *input_shape)``; returns the built decoder."""
    return _check_coder("decoder", cls, params, batch_sizes, input_shape=input_shape, latent_dim=latent_dim)


def check_regularizer(
    cls: type,
    *,
    latent_dim: int = 8,
    params: Params = None,
    input_shape: Sequence[int] = (1, 28, 28),
    batch_size: int = 4,
) -> nn.Module:
    """Check penalty and transforms inside a small linear autoencoder; returns the regularizer.

    ``transform_code`` must give a code of the same shape (alone or as the
    first of ``(code, aux)``) in training and evaluation, and
    ``transform_input`` must leave its argument alone. The penalty, computed
    the way training computes it (:meth:`aecore.model.Autoencoder.loss_terms`),
    must be a finite 0-d tensor: zero when the config's ``weight`` is 0, and
    otherwise a gradient that reaches at least one of the model's parameters
    (encoder, decoder or the regularizer's own); a penalty that moves nothing
    trains nothing. A regularizer without a ``weight`` may instead return a
    constant zero (a pure transform such as TopK or denoising).

    Without ``params``, the class attribute ``conformance_params`` is used
    where the class has one: the settings under which a penalty that
    depends on training history (AuxK's, zero until a latent has been idle
    long enough) is active in a freshly built model.
    """
    from aecore.model import Autoencoder, ComponentSpec, ModelSpec, split_code

    input_shape, name = tuple(input_shape), cls.__name__
    if params is None:
        params = getattr(cls, "conformance_params", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        reg, config = _build("regularizer", cls, params, latent_dim=latent_dim)
        toy = ComponentSpec("linear", "aecore.testing", "0", {})
        spec = ModelSpec(input_shape, latent_dim, toy, toy, [ComponentSpec(name, "", "", {})])
        size = math.prod(input_shape)
        encoder = nn.Sequential(nn.Flatten(), nn.Linear(size, latent_dim))
        decoder = nn.Sequential(nn.Linear(latent_dim, size), nn.Sigmoid(), nn.Unflatten(1, input_shape))
        model = Autoencoder(encoder, decoder, {"reg": reg}, spec)
        x = torch.rand(batch_size, *input_shape)
        clean = x.clone()

        for training in (True, False):
            model.train(training)
            z = torch.randn(batch_size, latent_dim)
            what = f"{name}.transform_code ({_mode(training)})"
            try:
                code, _, _ = split_code(reg.transform_code(z))
            except TypeError as exc:
                raise AssertionError(f"{what}: {exc}") from exc
            _expect_shape(code, z.shape, what)
        model.train()
        _expect_shape(reg.transform_input(x), x.shape, f"{name}.transform_input")
        assert torch.equal(x, clean), f"{name}.transform_input changed its argument in place"

        targets: list[Tensor] = []  # what the reconstruction loss compares against
        terms = model.loss_terms(x, lambda r, t: targets.append(t.detach().clone()) or ((r - t) ** 2).mean())
        assert torch.equal(targets[0], clean), f"with {name}, the loss did not target the clean input"
        assert "reg" in terms, f"loss_terms has no term for {name}"

        penalty = terms["reg"]
        assert isinstance(penalty, Tensor) and penalty.dim() == 0, (
            f"{name}.penalty must return a 0-d tensor, got {penalty!r}"
        )
        assert torch.isfinite(penalty), f"{name}.penalty is not finite: {penalty.item()}"
        weight = getattr(config, "weight", None)
        if weight == 0 or (weight is None and not penalty.requires_grad):
            assert penalty.item() == 0, f"{name}.penalty is a constant {penalty.item()}, expected 0"
            return reg
        assert penalty.requires_grad, f"{name}.penalty (weight {weight}) carries no gradient"
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(penalty, [p for _, p in named], allow_unused=True)
        pairs = zip(named, grads, strict=True)
        bad = [n for (n, _), g in pairs if g is not None and not torch.isfinite(g).all()]
        assert not bad, f"{name}.penalty gives a non-finite gradient to {', '.join(bad)}"
        assert any(g is not None and g.abs().sum() > 0 for g in grads), (
            f"{name}.penalty (weight {weight}) gives a zero gradient to every parameter of the model it is "
            "composed into (encoder, decoder and its own), so it trains nothing. Its z is the code after "
            "every transform_code; if it needs the code from before its own transform (a straight-through "
            "estimator carries no gradient back through it), return (code, aux) from transform_code and "
            "read penalty's aux= argument."
        )
    return reg


def check_roundtrip(model: nn.Module, directory: str | Path | None = None) -> nn.Module:
    """Save and reload a composed model; check equal weights and eval outputs; return the copy.

    ``model`` first runs a training-mode batch (moving BatchNorm statistics) and is left in eval mode.
    """
    from aecore.checkpoint import load, save

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        with torch.no_grad():
            model.train()(torch.rand(4, *model.input_shape))
            x = torch.rand(3, *model.input_shape)
            expected = model.eval()(x)
        with tempfile.TemporaryDirectory() as tmp:
            loaded = load(save(model, Path(directory or tmp) / "model.safetensors"))
        assert not loaded.training, "a loaded model must be in eval mode"
        assert loaded.spec == model.spec, f"spec changed on reload: {loaded.spec} != {model.spec}"
        original, restored = model.state_dict(), loaded.state_dict()
        changed = [k for k, v in original.items() if k not in restored or not torch.equal(v, restored[k])]
        assert not changed and original.keys() == restored.keys(), f"weights differ after reload: {changed}"
        with torch.no_grad():
            assert torch.equal(loaded(x), expected), "the reloaded model's outputs differ from the original's"
    return loaded


def check_checkpoint_roundtrip(
    encoder: str,
    decoder: str | None = None,
    regularizers: Sequence[str] = (),
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    latent_dim: int = 8,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    tmp_path: str | Path | None = None,
) -> nn.Module:
    """Compose a model from registry names and run :func:`check_roundtrip` on it."""
    from aecore.composition import compose

    shape = {"input_shape": input_shape, "latent_dim": latent_dim}
    return check_roundtrip(compose(encoder, decoder, regularizers, params=params, **shape), tmp_path)


# -- what surrounds the components ---------------------------------------------


def check_trainer(cls: type, *, params: Params = None, directory: str | Path | None = None) -> TrainResult:
    """Check a trainer's ``Config`` (it builds and round-trips through JSON), then train with it for real.

    The class is registered in-process as ``aecore-testing:<class name>`` and
    fits the kit's linear autoencoder on :func:`tiny_dataset` (2 epochs of
    16 samples a batch where its ``Config`` has ``epochs`` and ``batch_size``
    and ``params`` leaves them unset). It must return finite metrics, fire
    ``ae_epoch_end`` with ``metrics["epoch"]`` counting 1, 2, ... (calls of
    another phase, such as pretraining, may leave ``epoch`` out), change the
    model's weights, and leave a model the final checkpoint holds exactly.
    (The core fires ``ae_train_start`` and ``ae_train_end``; a trainer need not.)
    Returns the run's result (the run goes into ``directory``, else a new temporary folder).
    """
    name = _name(cls)
    what = f"trainer {name}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        _build("trainer", cls, params)
        accepted = {p.name for p in params_of(cls.Config)}
        given = dict(params or {})
        short = {k: v for k, v in (("epochs", 2), ("batch_size", 16)) if k in accepted and k not in given}
        recorder = _Recorder()
        with _kit_components(), registry.registered("trainer", name, cls, dist=KIT_DIST):
            initial = _initial_state()
            run = _train_tiny(
                what,
                [recorder],
                directory,
                trainer=f"{KIT_DIST}:{name}",
                params={"trainer": {**short, **given}},
            )
            with run as result:
                _expect_finite_metrics(result.metrics, what)
                ends = recorder.calls.get("ae_epoch_end", [])
                assert ends, (
                    f"{what} never fired ae_epoch_end; call run.hooks.ae_epoch_end(...) after each epoch"
                )
                counted = [end["metrics"]["epoch"] for end in ends if "epoch" in end["metrics"]]
                assert counted and counted == list(range(1, len(counted) + 1)), (
                    f"{what} fired ae_epoch_end with metrics['epoch'] = {counted or 'never set'}; "
                    "expected 1, 2, ... (one per epoch, counted from 1)"
                )
                trained = result.model.state_dict()
                assert any(not torch.equal(v, trained[k].cpu()) for k, v in initial.items()), (
                    f"{what} did not change the model's weights"
                )
                _expect_checkpoint(result, what)
    return result


def check_hook(plugin: object, *, epochs: int = 2, directory: str | Path | None = None) -> TrainResult:
    """Check a hook plugin against the hook specification, then in a real run of ``epochs`` epochs.

    ``plugin`` is what an ``aecore.hooks`` entry point names: an object, a
    module, or a class (created with no arguments, as aecore does). It must
    implement at least one hook, with the specification's argument names;
    the run is strict, so a hook that raises fails the check, and every
    hook the plugin implements must have been called in it. Returns the
    run's result (the run goes into ``directory``, else a new temporary folder).
    """
    import pluggy

    from aecore.hooks.manager import check_plugin, hook_names

    name = _name(plugin)
    what = f"hook plugin {name}"
    try:
        obj = plugin() if isinstance(plugin, type) else plugin
    except Exception as exc:
        raise AssertionError(
            f"{what} cannot be created with no arguments ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        check_plugin(obj)
    except pluggy.PluginValidationError as exc:
        raise AssertionError(f"{what} does not match the hook specification: {exc}") from exc
    implemented = hook_names(obj)
    assert implemented, f"{what} implements no hook; mark its methods with @aecore.hooks.hookimpl"
    recorder = _Recorder()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        run = _train_tiny(
            what, [obj, recorder], directory, params={"trainer": {"epochs": epochs, "batch_size": 16}}
        )
        with run as result:
            failures = getattr(result, "hook_failures", [])
            assert not failures, f"{what} failed in a real training run: {failures}"
            observed = hook_names(recorder)
            silent = [h for h in implemented if h in observed and not recorder.calls.get(h)]
            assert not silent, (
                f"{what} implements {', '.join(silent)}, which a {epochs}-epoch run never called"
            )
    return result


def check_backend(
    cls: type, *, params: Params = None, device: str = "cpu", directory: str | Path | None = None
) -> protocols.Backend:
    """Check a backend on ``device``: probe, prepare, optimizer and step, then a real run with it.

    ``probe`` must return None or a reason (a str); when it gives a reason
    nothing more is checked. Otherwise ``prepare`` must return a working
    :class:`~aecore.model.Autoencoder`, ``optimizer`` None or an optimizer
    over exactly the parameters given, and ``step`` None or a function whose
    loss terms and gradients match plain autograd on the kit's linear
    autoencoder. Finally the class is registered in-process as
    ``aecore-testing:<class name>`` and trains that model on
    :func:`tiny_dataset` (in ``directory``, else a new temporary folder):
    the run must use it and give finite metrics. Returns the backend built
    for the checks.
    """
    from aecore.composition import compose
    from aecore.model import Autoencoder

    name = _name(cls)
    what = f"backend {name}"
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(_SEED)
        backend, _ = _build("backend", cls, params)
        reason = backend.probe(dev)
        assert reason is None or isinstance(reason, str), (
            f"{what}.probe must return None (it serves {dev}) or a reason (a str), got {reason!r}"
        )
        if reason is not None:
            return backend
        with _kit_components():
            model = compose(_TOY, input_shape=_TOY_SHAPE, latent_dim=_TOY_LATENT).to(dev)
            prepared = backend.prepare(model, dev)
            assert isinstance(prepared, Autoencoder), (
                f"{what}.prepare must return an aecore Autoencoder, got {type(prepared).__name__}"
            )
            x = torch.rand(5, *_TOY_SHAPE, device=dev)
            with torch.no_grad():
                out = prepared.eval()(x)
            _expect_shape(out, x.shape, f"a model prepared by {what}")
            assert torch.isfinite(out).all(), f"a model prepared by {what} gives non-finite outputs"
            prepared.train()
            trainable = [p for p in prepared.parameters() if p.requires_grad]
            optimizer = backend.optimizer(trainable, lr=1e-3, weight_decay=0.0)
            if optimizer is not None:
                assert isinstance(optimizer, torch.optim.Optimizer), (
                    f"{what}.optimizer must return None or a torch.optim.Optimizer, "
                    f"got {type(optimizer).__name__}"
                )
                held = [p for group in optimizer.param_groups for p in group["params"]]
                assert len(held) == len(trainable) and {id(p) for p in held} == {id(p) for p in trainable}, (
                    f"{what}.optimizer holds {len(held)} tensors, "
                    f"not exactly the {len(trainable)} parameters given"
                )
            loss_fn = torch.nn.functional.mse_loss
            step = backend.step(prepared, loss_fn)
            if step is not None:
                assert callable(step), (
                    f"{what}.step must return None or a function, got {type(step).__name__}"
                )
                _compare_step(step, prepared, loss_fn, x, what)

        recorder = _Recorder()
        with registry.registered("backend", name, cls, dist=KIT_DIST):
            backend_params = {"backend": dict(params)} if params else {}
            run = _train_tiny(
                what,
                [recorder],
                directory,
                backend=f"{KIT_DIST}:{name}",
                device=device,
                params=backend_params,
            )
            with run as result:
                _expect_finite_metrics(result.metrics, what)
                used = {start["backend"] for start in recorder.calls.get("ae_train_start", [])}
                assert used == {f"{KIT_DIST}:{name}"}, (
                    f"{what} stepped aside in a real run on {dev} although its probe passed"
                )
    return backend


def check_loss(loss: Any, *, params: Params = None) -> LossFn:
    """Check a reconstruction loss: a function, or a class with a ``Config`` built from ``params``.

    On float inputs in (0, 1) of shapes ``(N, 1, 8, 8)`` and ``(N, 5)`` it
    must return a finite 0-d tensor with a finite, non-zero gradient with
    respect to the reconstruction, leave its arguments alone, be a mean over
    the batch (the batch repeated twice costs what the batch does) and cost
    no more for a perfect reconstruction than for a perturbed one. Returns
    the loss function (the built instance, for a class).
    """
    name = _name(loss)
    problems = kinds.check("loss", loss)
    assert not problems, f"{name} is not a valid loss: {'; '.join(problems)}"
    if isinstance(loss, type):
        config = config_from_dict(loss.Config, dict(params or {}), owner=name)
        _check_config_roundtrip(config, name)
        fn = loss(config)
        assert callable(fn), f"an instance of {name} cannot be called"
    else:
        assert not params, f"{name} is a function, so it takes no parameters; give it a class with a Config"
        fn = loss
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        for shape in ((4, *_TOY_SHAPE), (4, 5)):
            what = f"{name} on inputs of shape {shape}"
            recon, target = (0.05 + 0.9 * torch.rand(shape) for _ in range(2))
            given, aim = recon.clone().requires_grad_(True), target.clone()
            try:
                value = fn(given, aim)
            except Exception as exc:
                raise AssertionError(f"{what} fails ({type(exc).__name__}: {exc})") from exc
            assert isinstance(value, Tensor) and value.dim() == 0, (
                f"{what} must return a 0-d tensor, got {_describe(value)}"
            )
            assert value.is_floating_point() and torch.isfinite(value), f"{what} gives {value.item()}"
            assert torch.equal(given.detach(), recon) and torch.equal(aim, target), (
                f"{what} changed its arguments in place"
            )
            assert value.requires_grad, f"{what} carries no gradient to the reconstruction"
            (grad,) = torch.autograd.grad(value, given)
            assert torch.isfinite(grad).all(), f"{what} gives a non-finite gradient"
            assert grad.abs().sum() > 0, f"{what} gives a zero gradient: it trains nothing"
            with torch.no_grad():
                twice = fn(torch.cat([recon, recon]), torch.cat([target, target]))
                assert torch.allclose(twice, value.detach(), rtol=1e-4, atol=1e-7), (
                    f"{name} is not a mean over the batch: the batch repeated twice costs "
                    f"{float(twice):.6g}, the batch alone {float(value):.6g}; average rather than sum, "
                    "so that the loss (and the learning rate that suits it) does not depend on the batch size"
                )
                perturbed = (target + 0.2 * torch.randn(shape)).clamp(0.01, 0.99)
                perfect, imperfect = float(fn(target, target)), float(fn(perturbed, target))
                assert perfect <= imperfect + 1e-6 * abs(imperfect), (
                    f"{name} costs a perfect reconstruction {perfect:.6g}, more than a perturbed one "
                    f"({imperfect:.6g})"
                )
    return fn


def check_dataset(
    cls: type,
    location: str | None = None,
    *,
    params: Params = None,
    data_dir: str | Path | None = None,
) -> Dataset:
    """Check a data source: it builds from its ``Config`` and loads a well-formed, deterministic dataset.

    ``load`` must return a :class:`~aecore.data.Dataset` whose train and test
    splits are non-empty :class:`~aecore.data.TensorData` of the same sample
    shape, with labels (if any) one per sample and a JSON-serialisable
    normalisation and spec (checkpoints record them). Loading twice gives the
    same tensors, and so does reloading with the training split's
    normalisation (as a trained model reloads its data). ``locate``, if
    defined, returns a str; ``files``, a list of paths. Returns the dataset.
    """
    name = _name(cls)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        source, _ = _build("dataset", cls, params)
        takes_location = bool(getattr(cls, "takes_location", False))
        assert takes_location or location is None, (
            f"{name} takes no location (set takes_location = True on it to take one), but one was given"
        )
        assert location is not None or not takes_location, f"{name} takes a location; pass one to the check"
        root = Path(data_dir).expanduser() if data_dir is not None else None
        locate = getattr(source, "locate", None)
        if location is not None and callable(locate):
            located = locate(location, root)
            assert isinstance(located, str), f"{name}.locate returned {type(located).__name__}, not a str"
            location = located
        files = getattr(source, "files", None)
        if callable(files):
            listed = files(location, data_dir=root)
            assert isinstance(listed, list) and all(isinstance(p, str | os.PathLike) for p in listed), (
                f"{name}.files must return a list of paths, got {listed!r}"
            )
        dataset = _load_data(source, name, location, root, None)
        _expect_dataset(dataset, name)
        assert _same_dataset(dataset, _load_data(source, name, location, root, None)), (
            f"{name} loads different data each time; loading must be deterministic (seed any random split)"
        )
        recorded = json.loads(json.dumps(dataset.train.normalisation))  # as a checkpoint holds it
        assert _same_dataset(dataset, _load_data(source, name, location, root, recorded)), (
            f"{name} loaded with normalisation={recorded} (its own, as a trained model records it) gives "
            "different data; a model must get back the data it was trained on"
        )
        if accepts_store(source.load):  # prepared into mapped files, as the cache does it
            with tempfile.TemporaryDirectory() as scratch:
                store = TensorStore(Path(scratch), show_progress=False)
                try:
                    streamed = _load_data(source, name, location, root, None, store=store)
                finally:
                    store.close()
                _expect_dataset(streamed, name)
                assert _same_dataset(dataset, streamed), (
                    f"{name} gives different data when it fills a TensorStore than without one"
                )
    return dataset


def check_command(command: Any, *, name: str = "cmd") -> Any:
    """Check an ``ae`` subcommand: a function or a ``typer.Typer`` that becomes a working command.

    It must convert as aecore converts it (:func:`aecore.cli.app.to_click`),
    ``NAME --help`` must exit 0 with some text, and a function defined in a
    source file must have a one-line help that ``ae --help`` can read from
    that file without importing it (its docstring). Returns the Click command.
    """
    from aecore.cli.app import to_click
    from aecore.cli.help import source_help

    what = f"command {_name(command)}"
    problems = kinds.check("command", command)
    assert not problems, f"{what} is not a valid command: {'; '.join(problems)}"
    try:
        click_command = to_click(command, name)
    except Exception as exc:
        raise AssertionError(f"{what} cannot be made a command ({type(exc).__name__}: {exc})") from exc
    code, output = _invoke(click_command, name, ["--help"])
    assert code == 0, f"{what}: '{name} --help' exits with {code}: {output.strip()}"
    assert output.strip(), f"{what}: '{name} --help' prints nothing"
    if inspect.isfunction(command) and "<locals>" not in command.__qualname__ and _source_file(command):
        assert source_help(f"{command.__module__}:{command.__qualname__}"), (
            f"{what} has no one-line help that 'ae --help' can read from its source without importing it; "
            "give the function a docstring"
        )
    return click_command


def check_preset(preset: Any, *, input_shape: Sequence[int] | None = None) -> Autoencoder:
    """Check a preset: its components are installed, its parameters fit their ``Config``, and it composes.

    The model is composed on ``input_shape`` (default: the preset's own);
    on the preset's own shape, a set ``reference_params`` must equal the
    model's parameter count. Returns the composed model.
    """
    from aecore.composition import compose_preset
    from aecore.errors import AecoreError

    problems = kinds.check("preset", preset)
    assert not problems, f"not a valid preset: {'; '.join(problems)}"
    what = f"preset {preset.encoder!r}" + (f" ({preset.description})" if preset.description else "")
    assert isinstance(preset.latent_dim, int) and preset.latent_dim > 0, (
        f"{what} has latent_dim {preset.latent_dim!r}; it must be a positive integer"
    )
    try:
        encoder = registry.info("encoder", preset.encoder)
        decoder_name = preset.decoder or (
            f"{encoder.dist}:{encoder.name}" if ":" in preset.encoder else encoder.name
        )
        parts = {"encoder": encoder, "decoder": registry.info("decoder", decoder_name)}
        parts.update({r.rpartition(":")[2]: registry.info("regularizer", r) for r in preset.regularizers})
    except AecoreError as exc:
        raise AssertionError(f"{what} names a component that cannot be found: {exc}") from exc
    for target, values in preset.params.items():
        assert isinstance(values, Mapping), (
            f"{what} gives {target} parameters that are not a table: {values!r}"
        )
        if target == "trainer":
            continue  # they apply where the chosen trainer has them
        assert target in parts, (
            f"{what} sets parameters for '{target}', which is not one of its components "
            f"({', '.join(['trainer', *parts])})"
        )
        try:
            config_from_dict(parts[target].load().Config, dict(values), owner=target)
        except AecoreError as exc:
            raise AssertionError(f"{what} has {target} parameters that do not fit: {exc}") from exc
    shape = tuple(input_shape) if input_shape is not None else tuple(preset.input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        try:
            model = compose_preset(replace(preset, input_shape=shape))
        except AecoreError as exc:
            raise AssertionError(f"{what} does not compose on input {shape}: {exc}") from exc
        if preset.reference_params is not None and shape == tuple(preset.input_shape):
            count = model.num_parameters()
            assert count == preset.reference_params, (
                f"{what} gives {count:,} parameters on {shape}, but its reference_params says "
                f"{preset.reference_params:,}"
            )
        with torch.no_grad():
            out = model.eval()(torch.rand(2, *shape))
        assert torch.isfinite(out).all(), f"{what} gives non-finite outputs"
    return model


# -- internals ---------------------------------------------------------------


def _check_coder(kind: str, cls: type, params: Params, sizes: Sequence[int], **context: Any) -> nn.Module:
    input_shape = context["input_shape"] = tuple(context["input_shape"])
    name, latent_dim = cls.__name__, context["latent_dim"]
    shape_in, shape_out = (input_shape, (latent_dim,)) if kind == "encoder" else ((latent_dim,), input_shape)

    def sample(n: int) -> Tensor:
        return torch.rand(n, *shape_in) if kind == "encoder" else torch.randn(n, *shape_in)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        module, _ = _build(kind, cls, params, **context)
        assert module.input_shape == input_shape, f"{name}.input_shape is {module.input_shape!r}"
        assert module.latent_dim == latent_dim, f"{name}.latent_dim is {module.latent_dim!r}"

        for n in sizes:  # batch norm cannot train on one sample, so N=1 runs in eval only
            x = sample(n)
            for training in (False,) if n == 1 else (True, False):
                what = f"{name} on input {tuple(x.shape)} ({_mode(training)})"
                try:
                    with torch.no_grad():
                        out = module.train(training)(x)
                except Exception as exc:
                    raise AssertionError(f"{what} fails: {exc}") from exc
                _expect_shape(out, (n, *shape_out), what)
                assert torch.isfinite(out).all(), f"{what} gives non-finite outputs"

        module.train().zero_grad(set_to_none=True)
        out = module(sample(4))
        (out * torch.randn_like(out)).sum().backward()  # random weights: BatchNorm cancels a plain sum
        for pname, p in module.named_parameters():
            if p.requires_grad:
                assert p.grad is not None, f"{name} parameter '{pname}' gets no gradient from the output"
                assert torch.isfinite(p.grad).all(), f"{name} parameter '{pname}' gets a non-finite gradient"
                assert p.grad.abs().sum() > 0, f"{name} parameter '{pname}' gets an all-zero gradient"

        x, builds = sample(3), []
        for _ in range(2):
            torch.manual_seed(_SEED + 1)
            built, _ = _build(kind, cls, params, **context)
            with torch.no_grad():
                builds.append((built.state_dict(), built.eval()(x)))
        (w1, y1), (w2, y2) = builds
        same = w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
        assert same, f"two {name} built under the same torch.manual_seed have different weights"
        assert torch.equal(y1, y2), f"two {name} built under the same seed give different outputs"
    return module


def _build(kind: str, cls: type, params: Params, **context: Any) -> tuple[Any, Any]:
    problems = kinds.check(kind, cls)
    assert not problems, f"{getattr(cls, '__name__', cls)} is not a valid {kind}: {'; '.join(problems)}"
    config = config_from_dict(cls.Config, dict(params or {}), owner=cls.__name__)
    _check_config_roundtrip(config, cls.__name__)
    component = cls(config, **context)
    protocol = _PROTOCOLS[kind]
    assert isinstance(component, protocol), f"{cls.__name__} does not satisfy the {kind} protocol"
    assert component.config == config, f"{cls.__name__} must keep its config as .config"
    return component, config


def _check_config_roundtrip(config: Any, owner: str) -> None:
    try:
        values = json.loads(json.dumps(config_to_dict(config)))  # as stored in checkpoint metadata
        again = config_from_dict(type(config), values, owner=owner)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{owner} config cannot be stored and rebuilt from JSON: {exc}") from exc
    assert again == config, f"{owner} config changes through config_to_dict/config_from_dict: {again}"


def _expect_shape(t: Any, shape: Sequence[int], what: str) -> None:
    assert isinstance(t, Tensor), f"{what} returned {type(t).__name__}, not a tensor"
    assert tuple(t.shape) == tuple(shape), f"{what} gives shape {tuple(t.shape)}, expected {tuple(shape)}"


def _mode(training: bool) -> str:
    return "train mode" if training else "eval mode"


class _Recorder:
    """A second hook plugin beside the one under check: notes which hooks fired, and with what."""

    def __init__(self) -> None:
        self.calls: dict[str, list[dict[str, Any]]] = {}

    def _note(self, hook: str, **values: Any) -> None:
        self.calls.setdefault(hook, []).append(values)

    @hookimpl
    def ae_train_start(self, run: Any, total_epochs: Any, steps_per_epoch: Any) -> None:
        self._note("ae_train_start", backend=run.info.get("backend"))

    @hookimpl
    def ae_after_step(self, run: Any, model: Any, epoch: int, step: int) -> None:
        self._note("ae_after_step", epoch=epoch, step=step)

    @hookimpl
    def ae_step_end(self, run: Any, epoch: int, step: int, batch_size: int, loss: Any) -> None:
        self._note("ae_step_end", epoch=epoch, step=step)

    @hookimpl
    def ae_epoch_end(self, run: Any, epoch: int, metrics: Mapping[str, float]) -> None:
        self._note("ae_epoch_end", epoch=epoch, metrics=dict(metrics))

    @hookimpl
    def ae_checkpoint_saved(self, run: Any, path: Any, metrics: Mapping[str, float]) -> None:
        self._note("ae_checkpoint_saved", path=Path(path))

    @hookimpl
    def ae_train_end(self, run: Any, metrics: Mapping[str, float]) -> None:
        self._note("ae_train_end", metrics=dict(metrics))


@contextlib.contextmanager
def _kit_components() -> Iterator[None]:
    """The kit's linear encoder and decoder, registered in-process unless they already are."""
    with contextlib.ExitStack() as stack:
        for kind, cls in (("encoder", LinearEncoder), ("decoder", LinearDecoder)):
            if not any(c.dist == KIT_DIST and c.name == "linear" for c in registry.every(kind)):
                stack.enter_context(registry.registered(kind, "linear", cls, dist=KIT_DIST))
        yield


def _initial_state() -> dict[str, Tensor]:
    """The weights a tiny run starts from: ``train`` composes under ``torch.manual_seed(seed)``, seed 0."""
    from aecore.composition import compose

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = compose(_TOY, input_shape=_TOY_SHAPE, latent_dim=_TOY_LATENT)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def _train_tiny(
    what: str, hooks: Sequence[object], directory: str | Path | None, **fields: Any
) -> Iterator[TrainResult]:
    """A strict two-epoch run of the kit's linear autoencoder on :func:`tiny_dataset`.

    ``fields`` override the request's. Without a ``directory`` the run goes
    into a new temporary folder, kept when the check passes (so that its
    files can be read from the result) and removed when it fails.
    """
    from aecore.training import train

    scratch = None if directory is not None else Path(tempfile.mkdtemp(prefix="aecore-check-"))
    out = Path(directory) if scratch is None else scratch / "run"
    request: dict[str, Any] = {
        "encoder": _TOY,
        "latent_dim": _TOY_LATENT,
        "trainer": "aecore:default",
        "loss": "aecore:mse",
        "backend": "none",
        "device": "cpu",
        "seed": 0,
        "strict_hooks": True,
        "params": {"trainer": {"epochs": 2, "batch_size": 16}},
        **fields,
    }
    try:
        with _kit_components():
            try:
                result = train(
                    data=tiny_dataset(), out=str(out), progress=False, hooks=list(hooks), **request
                )
            except Exception as exc:
                raise AssertionError(
                    f"{what} failed in a real training run ({type(exc).__name__}: {exc})"
                ) from exc
            yield result
    except BaseException:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise


def _expect_finite_metrics(metrics: Mapping[str, Any], what: str) -> None:
    bad = {
        k: v
        for k, v in metrics.items()
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
    }
    assert metrics, f"{what} returned no metrics"
    assert not bad, f"{what} returned metrics that are not finite numbers: {bad}"


def _expect_checkpoint(result: TrainResult, what: str) -> None:
    from aecore.checkpoint import load

    assert result.checkpoint.is_file(), f"{what}: no checkpoint was written at {result.checkpoint}"
    saved, trained = load(result.checkpoint).state_dict(), result.model.state_dict()
    same = saved.keys() == trained.keys() and all(torch.equal(saved[k], trained[k].cpu()) for k in saved)
    assert same, f"{what}: the final checkpoint does not hold the trained model's weights"


def _compare_step(step: Any, model: Autoencoder, loss_fn: LossFn, x: Tensor, what: str) -> None:
    """A backend's step against plain autograd on the same batch: loss terms and every ``.grad``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    before = [p.detach().clone() for _, p in named]
    model.zero_grad(set_to_none=True)
    try:
        terms = step(x)
    except Exception as exc:
        raise AssertionError(f"{what}.step's function fails ({type(exc).__name__}: {exc})") from exc
    if terms is None:
        return  # this batch is left to autograd
    assert isinstance(terms, Mapping), f"{what}.step's function must return loss terms by name or None"
    grads = [None if p.grad is None else p.grad.detach().clone() for _, p in named]
    assert all(torch.equal(b, p.detach()) for b, (_, p) in zip(before, named, strict=True)), (
        f"{what}.step's function changed the weights; it sets gradients, the optimizer steps"
    )
    model.zero_grad(set_to_none=True)
    reference = model(x, loss_fn=loss_fn)
    functools.reduce(operator.add, reference.values()).backward()
    assert set(terms) == set(reference), (
        f"{what}.step gives loss terms {sorted(terms)}, but the model's are {sorted(reference)}"
    )
    for key, value in reference.items():
        assert _close(terms[key], value), (
            f"{what}.step gives loss term '{key}' = {float(terms[key]):.6g}; "
            f"autograd gives {float(value):.6g}"
        )
    for (pname, p), grad in zip(named, grads, strict=True):
        assert grad is not None or p.grad is None, f"{what}.step leaves no gradient on '{pname}'"
        if p.grad is not None:
            assert _close(grad, p.grad), (
                f"{what}.step's gradient of '{pname}' differs from autograd's (largest difference "
                f"{(grad - p.grad).abs().max().item():.3g})"
            )
    model.zero_grad(set_to_none=True)


def _close(a: Any, b: Tensor) -> bool:
    if not isinstance(a, Tensor) or a.shape != b.shape:
        return False
    return torch.allclose(a.detach().float(), b.detach().float(), rtol=_STEP_RTOL, atol=_STEP_ATOL)


def _load_data(
    source: Any,
    name: str,
    location: str | None,
    root: Path | None,
    normalisation: Any,
    *,
    store: TensorStore | None = None,
) -> Dataset:
    extra = {} if store is None else {"store": store}
    try:
        return source.load(location, data_dir=root, normalisation=normalisation, **extra)
    except Exception as exc:
        raise AssertionError(f"{name}.load fails ({type(exc).__name__}: {exc})") from exc


def _expect_dataset(dataset: Any, name: str) -> None:
    assert isinstance(dataset, Dataset), (
        f"{name}.load returned {type(dataset).__name__}, not an aecore Dataset"
    )
    assert isinstance(dataset.name, str), f"{name}.load gave a dataset whose name is not a str"
    for split in ("train", "test"):
        data = getattr(dataset, split)
        what = f"{name}'s {split} split"
        assert isinstance(data, TensorData), f"{what} is a {type(data).__name__}, not a TensorData"
        assert len(data) > 0, f"{what} is empty"
        if data.y is not None:
            assert len(data.y) == len(data), f"{what} has {len(data)} samples but {len(data.y)} labels"
        try:
            json.dumps(data.normalisation)
        except (TypeError, ValueError) as exc:
            raise AssertionError(f"{what} has a normalisation a checkpoint cannot store: {exc}") from exc
        sample = data.batch(slice(0, min(4, len(data))))
        assert sample.is_floating_point() and torch.isfinite(sample).all(), (
            f"{what} gives batches that are not finite floats"
        )
    assert dataset.train.shape == dataset.test.shape, (
        f"{name}'s samples are shaped {dataset.train.shape} in train but {dataset.test.shape} in test"
    )
    try:
        json.dumps(dataset.spec)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{name}'s dataset spec cannot be stored in a checkpoint: {exc}") from exc


def _same_dataset(a: Dataset, b: Dataset) -> bool:
    return all(_same_split(getattr(a, s), getattr(b, s)) for s in ("train", "test"))


def _same_split(a: TensorData, b: TensorData) -> bool:
    if a.normalisation != b.normalisation or (a.y is None) != (b.y is None):
        return False
    mine, theirs = a.extras, b.extras
    if mine.keys() != theirs.keys() or not all(_same_tensor(mine[k], theirs[k]) for k in mine):
        return False
    return _same_tensor(a.x, b.x) and (a.y is None or _same_tensor(a.y, b.y))


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a, b) or (a.is_floating_point() and bool(torch.isclose(a, b, 0, 0, True).all()))


def _invoke(command: Any, name: str, args: Sequence[str]) -> tuple[int, str]:
    """Run a Click command as the ``ae`` group would, output captured: (exit code, stdout)."""
    from typer.testing import CliRunner

    with CliRunner().isolation() as streams:
        try:
            command.main(args=list(args), prog_name=name, standalone_mode=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        output = streams[0].getvalue().decode(errors="replace")
    return code, output


def _source_file(obj: Any) -> str | None:
    try:
        return inspect.getsourcefile(obj)
    except TypeError:
        return None


def _name(obj: Any) -> str:
    name = getattr(obj, "__name__", None)
    return name if isinstance(name, str) else type(obj).__name__


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"
