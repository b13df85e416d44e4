"""Hook plugins keep their failures to themselves; the core announces runs; components take part.

A hook that raises is reported once, in one line, disabled for the rest of
the run, and recorded in metrics.json; strict mode makes it fatal. The core
(not the trainer) fires ae_train_start and ae_train_end, and the model's own
components may implement ae_after_step (a constraint after each update).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass

import pytest
import torch
from helpers import one_line_error
from typer.testing import CliRunner

import aecore
from aecore.cli import app
from aecore.components import RegularizerBase
from aecore.config import param
from aecore.errors import ConfigError, HookError, HookWarning
from aecore.hooks import hookimpl

RAISING = """
from aecore.hooks import hookimpl


class Flaky:
    calls = 0

    @hookimpl
    def ae_epoch_end(self, run, epoch, metrics):
        type(self).calls += 1
        raise ValueError("disk full\\nsecond line")

    @hookimpl
    def ae_train_end(self, run, metrics):
        type(self).calls += 100  # never: the plugin was disabled after its first failure
"""


def _train(data, out, **fields):
    params = {"encoder": {"hidden": (8,)}, "trainer": {"epochs": 2}}
    return aecore.train(encoder="mlp", params=params, data=data, out=out, progress=False, **fields)


@pytest.fixture
def flaky(make_dist):
    make_dist(
        "aefake-flaky", {"aecore.hooks": {"flaky": "aefake_flaky:Flaky"}}, modules={"aefake_flaky": RAISING}
    )
    import aefake_flaky

    aefake_flaky.Flaky.calls = 0
    return aefake_flaky.Flaky


def test_a_raising_hook_is_reported_once_disabled_and_recorded(flaky, tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv("AECORE_STRICT_HOOKS", raising=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = _train(tiny_data, tmp_path / "run")
    said = [str(w.message) for w in record if issubclass(w.category, HookWarning)]
    assert len(said) == 1, said
    assert "'flaky' from aefake-flaky" in said[0] and "ae_epoch_end" in said[0] and "disk full" in said[0]
    assert "\n" not in said[0] and "second line" not in said[0]
    assert flaky.calls == 1  # not called again in epoch 2, nor at the end
    assert result.checkpoint.exists() and result.metrics["epoch"] == 2  # the run went on
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())["hook_failures"]
    assert recorded == result.hook_failures
    assert recorded == [
        {
            "plugin": "'flaky' from aefake-flaky 0.3.1",
            "hook": "ae_epoch_end",
            "error": "ValueError: disk full",
        }
    ]


def test_cli_run_with_a_raising_hook_prints_one_warning_line_and_succeeds(flaky, tmp_path, monkeypatch):
    monkeypatch.delenv("AECORE_STRICT_HOOKS", raising=False)
    out = tmp_path / "run"
    args = ["train", "-e", "mlp", "--set", "encoder.hidden=8", "--epochs", "1", "--classes", "1", "-q"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "flaky" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "ae_epoch_end" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("how", ["option", "env"])
def test_strict_mode_makes_a_hook_failure_fatal_in_one_line(flaky, tmp_path, monkeypatch, how):
    args = ["train", "-e", "mlp", "--set", "encoder.hidden=8", "--epochs", "1", "--classes", "1", "-q"]
    if how == "option":
        monkeypatch.delenv("AECORE_STRICT_HOOKS", raising=False)
        args.append("--strict-hooks")
    else:
        monkeypatch.setenv("AECORE_STRICT_HOOKS", "1")
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    one_line_error(result, "'flaky'", "ae_epoch_end", "disk full", "strict", code=1)


def test_strict_mode_from_python_raises_hook_error(tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv("AECORE_STRICT_HOOKS", raising=False)

    class Boom:
        @hookimpl
        def ae_train_start(self, run, total_epochs, steps_per_epoch):
            raise RuntimeError("no tracking server")

    with pytest.raises(HookError, match="hook Boom raised in ae_train_start"):
        _train(tiny_data, tmp_path / "strict", hooks=[Boom()], strict_hooks=True)
    # Nothing was saved. (Hook plugins called before Boom, such as csvlog, may have started their logs:
    # the order in which pluggy calls installed plugins is not part of the contract.)
    strict = tmp_path / "strict"
    assert not (strict / "model.safetensors").exists() and not (strict / "resume.safetensors").exists()
    with pytest.warns(HookWarning, match="no tracking server"):
        result = _train(tiny_data, tmp_path / "lenient", hooks=[Boom()])
    assert result.hook_failures == [
        {"plugin": "Boom", "hook": "ae_train_start", "error": "RuntimeError: no tracking server"}
    ]


def test_a_hook_object_that_does_not_match_the_specification_is_a_clear_error(tiny_data, tmp_path):
    class Misspelt:
        @hookimpl
        def ae_epoch_ends(self, run, epoch, metrics):
            pass

    class Wrapper:
        @hookimpl(wrapper=True)
        def ae_epoch_end(self, run, epoch, metrics):
            return (yield)

    with pytest.raises(ConfigError, match="hook Misspelt does not match the hook specification"):
        _train(tiny_data, tmp_path / "a", hooks=[Misspelt()])
    with pytest.raises(ConfigError, match="hook wrapper"):
        _train(tiny_data, tmp_path / "b", hooks=[Wrapper()])


def test_interrupts_are_not_swallowed_by_the_guard(tiny_data, tmp_path):
    class CtrlC:
        @hookimpl
        def ae_step_end(self, run, epoch, step, batch_size, loss):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tiny_data, tmp_path / "run", hooks=[CtrlC()])


class Recorder:
    """Every lifecycle call, in order, with the arguments worth checking."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    @hookimpl
    def ae_train_start(self, run, total_epochs, steps_per_epoch):
        self.calls.append(("start", total_epochs, steps_per_epoch))

    @hookimpl
    def ae_after_step(self, run, model, epoch, step):
        self.calls.append(("after_step", epoch, step, torch.is_grad_enabled()))

    @hookimpl
    def ae_step_end(self, run, epoch, step, batch_size, loss):
        self.calls.append(("step_end", epoch, step))

    @hookimpl
    def ae_epoch_end(self, run, epoch, metrics):
        self.calls.append(("epoch_end", epoch, metrics["epoch"]))

    @hookimpl
    def ae_checkpoint_saved(self, run, path, metrics):
        self.calls.append(("saved", path.name))

    @hookimpl
    def ae_train_end(self, run, metrics):
        self.calls.append(("end", bool(metrics)))


def test_call_order_epoch_numbering_and_the_core_announcing_the_run(tiny_data, tmp_path):
    recorder = Recorder()
    params = {"encoder": {"hidden": (8,)}, "trainer": {"epochs": 2, "batch_size": 400}}
    aecore.train(
        encoder="mlp", params=params, data=tiny_data, out=tmp_path / "r", progress=False, hooks=[recorder]
    )
    steps = math.ceil((len(tiny_data.train) - round(0.1 * len(tiny_data.train))) / 400)
    expected = [("start", 2, steps)]
    for epoch in (1, 2):
        for step in range(steps):
            expected += [("after_step", epoch, step, False), ("step_end", epoch, step)]
        expected.append(("epoch_end", epoch, epoch))
        expected.append(("saved", "best.safetensors"))  # the first epochs improve
        if epoch == 1:
            expected.append(("saved", "model.safetensors"))  # checkpoint_every=1, not after the last epoch
    expected += [("saved", "model.safetensors"), ("end", True)]
    saved_best = [c for c in recorder.calls if c == ("saved", "best.safetensors")]
    if len(saved_best) == 1:  # the second epoch did not improve on the first
        expected.remove(("saved", "best.safetensors"))
    assert recorder.calls == expected


@dataclass(frozen=True)
class UnitNormConfig:
    weight: float = param(0.0, "No penalty: this regularizer only constrains the decoder.")


class UnitNormDecoderColumns(RegularizerBase):
    """After every update, rescale the decoder's first Linear columns to unit norm (an SAE constraint)."""

    Config = UnitNormConfig
    calls = 0

    @hookimpl
    def ae_after_step(self, run, model, epoch, step):
        type(self).calls += 1
        linear = next(m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear))
        linear.weight.div_(linear.weight.norm(dim=0, keepdim=True))


def test_a_component_takes_part_in_its_run_through_ae_after_step(make_dist, tiny_data, tmp_path):
    make_dist(
        "aefake-unitnorm",
        {"aecore.regularizers": {"unitnorm": "test_hooks:UnitNormDecoderColumns"}},
    )
    UnitNormDecoderColumns.calls = 0
    params = {"encoder": {"hidden": (8,)}, "decoder": {"hidden": (8,)}, "trainer": {"epochs": 1}}
    result = aecore.train(
        encoder="mlp",
        regularizers=["unitnorm"],
        params=params,
        data=tiny_data,
        out=tmp_path / "r",
        progress=False,
    )
    steps = math.ceil((len(tiny_data.train) - round(0.1 * len(tiny_data.train))) / 128)
    assert UnitNormDecoderColumns.calls == steps
    linear = next(m for m in result.model.decoder.modules() if isinstance(m, torch.nn.Linear))
    torch.testing.assert_close(linear.weight.norm(dim=0), torch.ones(linear.in_features))


def test_a_component_whose_hook_does_not_match_is_refused_before_training(make_dist, tiny_data, tmp_path):
    make_dist("aefake-badnorm", {"aecore.regularizers": {"badnorm": "test_hooks:BadHookRegularizer"}})
    with pytest.raises(ConfigError, match="'badnorm' from aefake-badnorm has a hook method"):
        aecore.train(
            encoder="mlp",
            regularizers=["badnorm"],
            params={"encoder": {"hidden": (8,)}, "trainer": {"epochs": 1}},
            data=tiny_data,
            out=tmp_path / "r",
            progress=False,
        )
    assert not (tmp_path / "r").exists()


class BadHookRegularizer(UnitNormDecoderColumns):
    @hookimpl
    def ae_after_step(self, run, model, epoch, step, optimizer):
        pass


def test_hooks_are_listed_looked_up_and_shown_like_any_plugin(fresh_registry):
    from aecore import registry

    assert "progress" in [c.name for c in registry.list_components("hook")]
    assert registry.info("hook", "progress").dist == "aecore"
    shown = CliRunner().invoke(app, ["plugins", "show", "progress"])
    assert shown.exit_code == 0, shown.stderr
    assert "ae_train_start" in shown.stdout and "ae_epoch_end" in shown.stdout
