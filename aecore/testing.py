"""Conformance checks for plugin authors, to call from your own test suite.

Each ``check_*`` function builds a component the way aecore does, exercises
the behaviour the rest of aecore relies on, and raises ``AssertionError``
with a message naming the problem. No pytest needed::

    from aecore.testing import check_decoder, check_encoder

    def test_my_encoder():
        check_encoder(MyEncoder, input_shape=(3, 32, 32), params={"width": 16})

The checks run under a fixed seed inside :func:`torch.random.fork_rng`, so
they are reproducible and leave the caller's random state alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aecore.config import config_from_dict, config_to_dict
from aecore.protocols import check_component_class, protocol_for

__all__ = [
    "check_checkpoint_roundtrip",
    "check_decoder",
    "check_encoder",
    "check_regularizer",
    "check_roundtrip",
    "check_trainer",
]

_SEED = 1234


def check_encoder(
    cls: type,
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    latent_dim: int = 8,
    params: Mapping[str, Any] | None = None,
    batch_sizes: Sequence[int] = (1, 2, 5),
) -> nn.Module:
    """Check that ``cls`` maps ``(N, *input_shape)`` to ``(N, latent_dim)`` as an encoder should."""
    return _check_coder("encoder", cls, tuple(input_shape), latent_dim, params, batch_sizes)


def check_decoder(
    cls: type,
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    latent_dim: int = 8,
    params: Mapping[str, Any] | None = None,
    batch_sizes: Sequence[int] = (1, 2, 5),
) -> nn.Module:
    """Check that ``cls`` maps ``(N, latent_dim)`` to ``(N, *input_shape)`` as a decoder should."""
    return _check_coder("decoder", cls, tuple(input_shape), latent_dim, params, batch_sizes)


def check_regularizer(
    cls: type,
    *,
    latent_dim: int = 8,
    params: Mapping[str, Any] | None = None,
    input_shape: Sequence[int] = (1, 28, 28),
    batch_size: int = 4,
) -> nn.Module:
    """Check penalty, ``transform_input`` and ``transform_code`` inside a small linear autoencoder."""
    from aecore.model import Autoencoder, ComponentSpec, ModelSpec

    input_shape = tuple(input_shape)
    name = cls.__name__
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        reg, config = _build("regularizer", cls, params, latent_dim=latent_dim)
        toy = ComponentSpec("linear", "aecore.testing", "0", {})
        spec = ModelSpec(input_shape, latent_dim, toy, toy, [ComponentSpec(name, "", "", {})])
        size = math.prod(input_shape)
        encoder = nn.Sequential(nn.Flatten(), nn.Linear(size, latent_dim))
        decoder = nn.Sequential(nn.Linear(latent_dim, size), nn.Sigmoid(), nn.Unflatten(1, input_shape))
        model = Autoencoder(encoder, decoder, {"reg": reg}, spec).train()
        x = torch.rand(batch_size, *input_shape)
        clean = x.clone()

        x_in = reg.transform_input(x)
        assert torch.equal(x, clean), f"{name}.transform_input changed its argument in place"
        _expect_shape(x_in, x.shape, f"{name}.transform_input")
        for training in (True, False):
            reg.train(training)
            z = torch.randn(batch_size, latent_dim)
            _expect_shape(reg.transform_code(z), z.shape, f"{name}.transform_code ({_mode(training)})")

        model.train()
        targets: list[Tensor] = []

        def recording_loss(recon: Tensor, target: Tensor) -> Tensor:
            targets.append(target.detach().clone())
            return ((recon - target) ** 2).mean()

        terms = model.loss_terms(x, recording_loss)
        assert torch.equal(targets[0], clean), (
            f"with {name}, the reconstruction loss did not compare against the clean input batch"
        )
        assert "reg" in terms, f"loss_terms has no term for {name}"

        x_in = reg.transform_input(x)
        z = reg.transform_code(model.encoder(x_in))
        penalty = reg.penalty(x_in, z, model.decoder(z), model)
        assert isinstance(penalty, Tensor) and penalty.dim() == 0, (
            f"{name}.penalty must return a 0-d tensor, got {_describe(penalty)}"
        )
        assert torch.isfinite(penalty), f"{name}.penalty is not finite: {penalty.item()}"
        weight = getattr(config, "weight", None)
        if weight == 0:
            assert penalty.item() == 0, f"{name}.penalty is {penalty.item()} with weight 0"
        elif weight is not None or penalty.requires_grad:
            assert penalty.requires_grad, f"{name}.penalty (weight {weight}) carries no gradient"
            inputs = [z, *model.encoder.parameters()]
            grads = torch.autograd.grad(penalty, inputs, allow_unused=True)
            grads = [g for g in grads if g is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads), (
                f"{name}.penalty gives no finite gradient w.r.t. the code or the encoder"
            )
            assert any(g.abs().sum() > 0 for g in grads), (
                f"{name}.penalty has an all-zero gradient w.r.t. the code and the encoder"
            )
        else:
            assert penalty.item() == 0, (
                f"{name}.penalty is a constant {penalty.item()}; return a differentiable term or zero"
            )
    return reg


def check_trainer(cls: type, *, params: Mapping[str, Any] | None = None) -> Any:
    """Check that ``cls`` is a trainer class with a ``Config`` that builds and round-trips."""
    problems = check_component_class("trainer", cls)
    assert not problems, f"{cls.__name__} is not a valid trainer: {'; '.join(problems)}"
    config = config_from_dict(cls.Config, dict(params or {}), owner=cls.__name__)
    _check_config_roundtrip(config, cls.__name__)
    trainer = cls(config)
    assert isinstance(trainer, protocol_for("trainer")), f"{cls.__name__} does not satisfy Trainer"
    return trainer


def check_roundtrip(model: nn.Module, directory: str | Path | None = None) -> nn.Module:
    """Save a composed model, load it back, and check identical weights and eval outputs.

    The model first runs one training-mode batch (so BatchNorm statistics are
    not their defaults) and is left in eval mode. Returns the loaded model.
    """
    from aecore.checkpoint import load, save

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model.train()
        with torch.no_grad():
            model(torch.rand(4, *model.input_shape))
        model.eval()
        x = torch.rand(3, *model.input_shape)
        with torch.no_grad():
            expected = model(x)
        with tempfile.TemporaryDirectory() as tmp:
            path = save(model, Path(directory or tmp) / "model.safetensors")
            loaded = load(path)
        assert not loaded.training, "a loaded model must be in eval mode"
        assert loaded.spec == model.spec, f"spec changed on reload: {loaded.spec} != {model.spec}"
        original, restored = model.state_dict(), loaded.state_dict()
        assert original.keys() == restored.keys(), "state_dict keys differ after reload"
        for key, value in original.items():
            assert torch.equal(value, restored[key]), f"'{key}' differs after reload"
        with torch.no_grad():
            got = loaded(x)
        assert torch.equal(got, expected), "the reloaded model's outputs differ from the original's"
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
    """Compose a model by registry names and run :func:`check_roundtrip` on it."""
    from aecore.model import compose

    model = compose(
        encoder, decoder, regularizers, input_shape=input_shape, latent_dim=latent_dim, params=params
    )
    return check_roundtrip(model, tmp_path)


# -- internals ---------------------------------------------------------------


def _check_coder(
    kind: str,
    cls: type,
    input_shape: tuple[int, ...],
    latent_dim: int,
    params: Mapping[str, Any] | None,
    batch_sizes: Sequence[int],
) -> nn.Module:
    name = cls.__name__
    context = {"input_shape": input_shape, "latent_dim": latent_dim}
    shape_in, shape_out = (input_shape, (latent_dim,)) if kind == "encoder" else ((latent_dim,), input_shape)

    def sample(n: int) -> Tensor:
        return torch.rand(n, *shape_in) if kind == "encoder" else torch.randn(n, *shape_in)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        module, _ = _build(kind, cls, params, **context)
        assert module.input_shape == input_shape, f"{name}.input_shape is {module.input_shape!r}"
        assert module.latent_dim == latent_dim, f"{name}.latent_dim is {module.latent_dim!r}"

        for n in batch_sizes:  # batch norm cannot train on one sample, so N=1 runs in eval only
            x = sample(n)
            for training in (False,) if n == 1 else (True, False):
                module.train(training)
                try:
                    with torch.no_grad():
                        out = module(x)
                except Exception as exc:
                    raise AssertionError(
                        f"{name} fails on input {tuple(x.shape)} ({_mode(training)}): {exc}"
                    ) from exc
                _expect_shape(out, (n, *shape_out), f"{name} on input {tuple(x.shape)} ({_mode(training)})")
                assert torch.isfinite(out).all(), f"{name} gives non-finite outputs ({_mode(training)})"

        module.train().zero_grad(set_to_none=True)
        out = module(sample(4))
        (out * torch.randn_like(out)).sum().backward()
        for pname, p in module.named_parameters():
            if not p.requires_grad:
                continue
            assert p.grad is not None, f"{name} parameter '{pname}' gets no gradient from the output"
            assert torch.isfinite(p.grad).all(), f"{name} parameter '{pname}' gets a non-finite gradient"
            assert p.grad.abs().sum() > 0, f"{name} parameter '{pname}' gets an all-zero gradient"

        x = sample(3)
        builds = []
        for _ in range(2):
            torch.manual_seed(_SEED + 1)
            built, _ = _build(kind, cls, params, **context)
            with torch.no_grad():
                builds.append((built.state_dict(), built.eval()(x)))
        (w1, y1), (w2, y2) = builds
        assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1), (
            f"two {name} built under the same torch.manual_seed have different weights"
        )
        assert torch.equal(y1, y2), f"two {name} built under the same seed give different outputs"
    return module


def _build(kind: str, cls: type, params: Mapping[str, Any] | None, **context: Any) -> tuple[Any, Any]:
    problems = check_component_class(kind, cls)
    assert not problems, f"{getattr(cls, '__name__', cls)} is not a valid {kind}: {'; '.join(problems)}"
    config = config_from_dict(cls.Config, dict(params or {}), owner=cls.__name__)
    _check_config_roundtrip(config, cls.__name__)
    component = cls(config, **context)
    assert isinstance(component, nn.Module), f"{cls.__name__} instances must be torch.nn.Module"
    assert isinstance(component, protocol_for(kind)), f"{cls.__name__} does not satisfy the {kind} protocol"
    assert component.config == config, f"{cls.__name__} must keep its config as .config"
    return component, config


def _check_config_roundtrip(config: Any, owner: str) -> None:
    try:
        values = json.loads(json.dumps(config_to_dict(config)))  # as stored in checkpoint metadata
        again = config_from_dict(type(config), values, owner=owner)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{owner} config cannot be stored and rebuilt from JSON: {exc}") from exc
    assert again == config, (
        f"{owner} config does not survive config_to_dict/config_from_dict: "
        f"{dataclasses.asdict(config)} became {dataclasses.asdict(again)}"
    )


def _expect_shape(t: Any, shape: Sequence[int], what: str) -> None:
    assert isinstance(t, Tensor), f"{what} returned {_describe(t)}, not a tensor"
    assert tuple(t.shape) == tuple(shape), f"{what} gives shape {tuple(t.shape)}, expected {tuple(shape)}"


def _describe(value: Any) -> str:
    return f"a tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def _mode(training: bool) -> str:
    return "train mode" if training else "eval mode"
