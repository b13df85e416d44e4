"""Every extension point works for a third party: data sources, losses and backends, working or broken.

Each plugin here is a throwaway distribution on ``sys.path`` (the ``make_dist``
fixture), discovered through its entry points exactly as an installed one.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import one_line_error, table_rows
from typer.testing import CliRunner

import aecore
from aecore import registry
from aecore.cli import app
from aecore.errors import ConfigError, DataError, PluginLoadError
from aecore.sources import load_dataset
from aecore.training.backends import BackendNotice, choose_backend

BLOBS = """
from dataclasses import dataclass

import torch

from aecore.config import param
from aecore.data import Dataset, TensorData

LOADS = []


@dataclass(frozen=True)
class BlobsConfig:
    n: int = param(64, "Rows in the training split.")
    scale: float = param(1.0, "Spread of the blobs.")

    def __post_init__(self):
        if self.n < 2:
            raise ValueError(f"n must be at least 2, got {self.n}")


class Blobs:
    \"\"\"Gaussian blobs in 8 dimensions: a third-party data source.\"\"\"

    Config = BlobsConfig

    def __init__(self, config):
        self.config = config

    def load(self, location, *, data_dir, normalisation):
        LOADS.append((location, self.config))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.config.n + 16, 8, generator=g) * self.config.scale
        y = (x[:, 0] > 0).long()
        full = TensorData(x, y, {"kind": "identity"})
        n = self.config.n
        train, test = full.subset(torch.arange(n)), full.subset(torch.arange(n, len(x)))
        return Dataset("blobs", train, test, {"rows": self.config.n})


class Points(Blobs):
    \"\"\"Rows read from a text file of numbers: a source that takes a location.\"\"\"

    takes_location = True

    def locate(self, location, data_dir):
        from pathlib import Path

        return str(Path(location).resolve())

    def files(self, location, *, data_dir):
        from pathlib import Path

        return [Path(location)]

    def load(self, location, *, data_dir, normalisation):
        rows = [[float(v) for v in line.split()] for line in open(location) if line.strip()]
        x = torch.tensor(rows)
        full = TensorData(x, None, {"kind": "identity"})
        half = len(x) // 2
        return Dataset("points", full.subset(torch.arange(half)), full.subset(torch.arange(half, len(x))))
"""

LOSSES = """
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aecore.config import param


def smooth_l1(recon, target):
    \"\"\"Huber-like loss without parameters: a function is a loss plugin.\"\"\"
    return F.smooth_l1_loss(recon, target)


@dataclass(frozen=True)
class HuberConfig:
    delta: float = param(1.0, "Where the loss turns from quadratic to linear.")


class Huber:
    \"\"\"Huber loss with a settable delta: a class with a Config is a loss plugin too.\"\"\"

    Config = HuberConfig
    BUILT = []

    def __init__(self, config):
        self.config = config
        Huber.BUILT.append(config.delta)

    def __call__(self, recon, target):
        return F.huber_loss(recon, target, delta=self.config.delta)
"""

BACKEND = """
from dataclasses import dataclass

import torch

CALLS = []


@dataclass(frozen=True)
class SGDConfig:
    pass


class SGDBackend:
    \"\"\"A backend that trains with plain SGD and lets autograd do the step.\"\"\"

    Config = SGDConfig
    devices = ("cpu",)

    def __init__(self, config):
        self.config = config

    def probe(self, device):
        CALLS.append(("probe", device.type))
        return None

    def prepare(self, model, device):
        CALLS.append(("prepare", type(model).__name__))
        return model

    def optimizer(self, params, *, lr, weight_decay):
        CALLS.append(("optimizer", lr))
        return torch.optim.SGD(params, lr=lr)

    def step(self, model, loss_fn):
        def step(x):
            CALLS.append(("step", x.shape[0]))
            return None  # autograd takes every batch

        return step


class Refuses(SGDBackend):
    \"\"\"A backend whose probe finds what it needs missing.\"\"\"

    def probe(self, device):
        return "torch.ops.imaginary is missing"
"""


def _small_train(data, out, **fields):
    """One epoch of a small mlp on ``data``, written to ``out``, through the library."""
    params = {"encoder": {"hidden": (8,)}, "trainer": {"epochs": 1}}
    return aecore.train(encoder="mlp", params=params, data=data, out=out, progress=False, **fields)


def _run(tmp_path, *args: str):
    return CliRunner().invoke(app, ["train", "-e", "mlp", "--set", "encoder.hidden=8", "-q", *args])


@pytest.fixture
def blobs(make_dist):
    make_dist(
        "aefake-blobs",
        {"aecore.datasets": {"blobs": "aefake_blobs:Blobs", "points": "aefake_blobs:Points"}},
        modules={"aefake_blobs": BLOBS},
    )


def test_a_third_party_data_source_trains_and_reloads_by_its_recorded_name(blobs, tmp_path):
    result = _run(
        tmp_path,
        "--data",
        "blobs?n=48&scale=2",
        "--latent-dim",
        "3",
        "--epochs",
        "1",
        "--set",
        "decoder.output_activation=none",
        "--out",
        str(tmp_path / "run"),
    )
    assert result.exit_code == 0, result.stderr
    meta = aecore.read_metadata(tmp_path / "run")
    assert meta["data"]["name"] == "blobs?n=48&scale=2.0"  # options that differ from their defaults
    assert meta["data"]["rows"] == 48
    from aefake_blobs import LOADS

    assert LOADS[-1][1].n == 48 and LOADS[-1][1].scale == 2.0  # parsed by the declared types
    evaluated = CliRunner().invoke(app, ["eval", str(tmp_path / "run"), "--no-pca"])
    assert evaluated.exit_code == 0, evaluated.stderr
    assert "on blobs?n=48&scale=2.0 test (16 rows)" in evaluated.stdout


def test_a_data_source_with_a_location_records_it_in_the_form_it_chose(blobs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.txt").write_text("\n".join(" ".join(str(i + j) for j in range(4)) for i in range(10)))
    dataset = load_dataset("points:rows.txt")
    assert dataset.name == f"points:{tmp_path / 'rows.txt'}"
    assert dataset.train.shape == (4,) and len(dataset.train) == 5
    with pytest.raises(DataError, match="needs a location: --data points:PATH"):
        load_dataset("points")
    with pytest.raises(DataError, match="takes no location; use --data blobs"):
        load_dataset("blobs:somewhere")


def test_data_source_options_are_validated_by_their_config(blobs):
    with pytest.raises(DataError, match=r"unknown parameter 'blobs\.count'.*Known parameters: n, scale"):
        load_dataset("blobs?count=3")
    with pytest.raises(DataError, match=r"bad value 'many' for 'blobs\.n'"):
        load_dataset("blobs?n=many")
    with pytest.raises(DataError, match="n must be at least 2"):
        load_dataset("blobs?n=1")
    with pytest.raises(DataError, match="option 'n' is given twice"):
        load_dataset("blobs?n=3&n=4")


def test_a_third_party_loss_function_and_a_loss_class_with_parameters(make_dist, tiny_data, tmp_path):
    make_dist(
        "aefake-losses",
        {"aecore.losses": {"smoothl1": "aefake_losses:smooth_l1", "huber": "aefake_losses:Huber"}},
        modules={"aefake_losses": LOSSES},
    )
    common = {"encoder": "mlp", "params": {"encoder": {"hidden": (8,)}, "trainer": {"epochs": 1}}}
    first = aecore.train(**common, loss="smoothl1", data=tiny_data, out=tmp_path / "a", progress=False)
    assert first.metrics["train_recon"] > 0
    params = {**common["params"], "loss": {"delta": 0.25}}
    second = aecore.train(
        encoder="mlp", params=params, loss="huber", data=tiny_data, out=tmp_path / "b", progress=False
    )
    from aefake_losses import Huber

    assert 0.25 in Huber.BUILT
    assert aecore.read_metadata(second.checkpoint)["training"]["loss"] == "huber"
    with pytest.raises(ConfigError, match="loss 'smoothl1' takes no parameters"):
        aecore.train(
            encoder="mlp", params=params, loss="smoothl1", data=tiny_data, out=tmp_path / "c", progress=False
        )
    result = _run(tmp_path, "--loss", "huber", "--set", "loss.delta=x", "--out", str(tmp_path / "d"))
    one_line_error(result, "bad value 'x' for 'loss.delta'")


def test_a_third_party_backend_supplies_the_optimizer_and_is_recorded(make_dist, tiny_data, tmp_path):
    make_dist(
        "aefake-sgd",
        {"aecore.backends": {"sgd": "aefake_sgd:SGDBackend", "refuses": "aefake_sgd:Refuses"}},
        modules={"aefake_sgd": BACKEND},
    )
    result = aecore.train(
        encoder="mlp",
        params={"encoder": {"hidden": (8,)}, "trainer": {"epochs": 1, "lr": 0.05, "batch_size": 500}},
        data=tiny_data,
        backend="sgd",
        out=tmp_path / "run",
        progress=False,
    )
    from aefake_sgd import CALLS

    kinds = [c[0] for c in CALLS]
    assert kinds[:3] == ["probe", "prepare", "optimizer"] and ("optimizer", 0.05) in CALLS
    assert kinds.count("step") == 2  # asked once per batch (900 training samples, batches of 500)
    meta = aecore.read_metadata(result.checkpoint)
    assert meta["training"]["backend"] == "aefake-sgd:sgd"
    assert meta["training"]["request"]["backend"] == "sgd"
    assert result.metrics["test_mse_per_pixel"] > 0


def test_a_backend_whose_probe_fails_steps_aside_with_one_notice(make_dist, tiny_data, tmp_path):
    make_dist(
        "aefake-sgd", {"aecore.backends": {"refuses": "aefake_sgd:Refuses"}}, modules={"aefake_sgd": BACKEND}
    )
    with pytest.warns(BackendNotice, match="torch.ops.imaginary is missing") as record:
        result = _small_train(tiny_data, tmp_path / "run", backend="refuses")
    assert len([w for w in record if issubclass(w.category, BackendNotice)]) == 1
    assert aecore.read_metadata(result.checkpoint)["training"]["backend"] == "none"


def test_auto_skips_backends_that_cannot_serve_the_device(make_dist):
    make_dist(
        "aefake-sgd", {"aecore.backends": {"sgd": "aefake_sgd:SGDBackend"}}, modules={"aefake_sgd": BACKEND}
    )
    backend, name = choose_backend("auto", torch.device("meta"))  # it serves the CPU only: no notice
    assert (backend, name) == (None, "none")
    backend, name = choose_backend("none", torch.device("cpu"))
    assert (backend, name) == (None, "none")


BROKEN = "raise ImportError('libtorch_imaginary.so: cannot open shared object file')\n"


@pytest.fixture
def broken_kinds(make_dist, tmp_path, monkeypatch):
    """A broken data source, loss, backend and command, in one distribution each."""
    monkeypatch.setenv("AECORE_CACHE_DIR", str(tmp_path / "cache"))  # its own broken-plugin record
    for group, name in (
        ("aecore.datasets", "badsource"),
        ("aecore.losses", "badloss"),
        ("aecore.backends", "badbackend"),
        ("aecore.commands", "badcommand"),
    ):
        make_dist(
            f"aefake-{name}", {group: {name: f"aefake_{name}:Thing"}}, modules={f"aefake_{name}": BROKEN}
        )
    return tmp_path


def test_broken_plugins_of_every_kind_break_only_themselves(broken_kinds, tiny_data):
    tmp_path = broken_kinds
    for args, fragment in (
        (["--data", "badsource"], "dataset 'badsource' from aefake-badsource"),
        (["--loss", "badloss"], "loss 'badloss' from aefake-badloss"),
        (["--backend", "badbackend"], "backend 'badbackend' from aefake-badbackend"),
    ):
        line = one_line_error(_run(tmp_path, *args, "--out", str(tmp_path / "x")), fragment)
        assert "libtorch_imaginary.so" in line and "Reinstall or update" in line
    one_line_error(CliRunner().invoke(app, ["badcommand"]), "command 'badcommand' from aefake-badcommand")
    assert not (tmp_path / "x").exists()

    # auto skips the broken backend with one notice, and training goes on
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = _small_train(tiny_data, tmp_path / "ok")
    said = [str(w.message) for w in record if issubclass(w.category, registry.PluginWarning)]
    assert len([m for m in said if "badbackend" in m]) == 1
    assert result.checkpoint.exists()

    # every other source, loss and command still works
    assert load_dataset("embedded").name == "embedded"
    assert CliRunner().invoke(app, ["presets"]).exit_code == 0

    # each is shown as broken by a later listing (no import), and by doctor
    registry.refresh()
    listed = CliRunner().invoke(app, ["plugins", "list"], env={"COLUMNS": "400"})
    rows = {r[1]: r for r in table_rows(listed.stdout)[1:]}
    for name in ("badsource", "badloss", "badbackend", "badcommand"):
        assert rows[name][4].startswith("broken"), rows[name]
        assert "libtorch_imaginary" in rows[name][4]
    assert rows["mse"][4] == "ok" and rows["embedded"][4] == "ok"
    doctor = CliRunner().invoke(app, ["plugins", "doctor"], env={"COLUMNS": "300"})
    assert doctor.exit_code == 1
    for name in ("badsource", "badloss", "badbackend", "badcommand"):
        assert name in doctor.stdout


def test_a_checkpoint_still_loads_after_a_second_mlp_distribution_is_installed(
    make_dist, encoder_source, tiny_data, tmp_path
):
    trained = _small_train(tiny_data, tmp_path / "run")
    x = tiny_data.test.batch(slice(0, 4))
    expected = trained.model.eval()(x)
    make_dist(
        "aefake-mlp",
        {
            "aecore.encoders": {"mlp": "aefake_mlp:FakeEncoder"},
            "aecore.decoders": {"mlp": "aefake_mlp:FakeEncoder"},
        },
        modules={"aefake_mlp": encoder_source("second")},
    )
    with pytest.raises(aecore.AecoreError, match="provided by 2 distributions"):
        registry.info("encoder", "mlp")  # a plain name is now ambiguous ...
    reloaded = aecore.load(trained.checkpoint)  # ... but the checkpoint names aecore-mlp
    assert type(reloaded.encoder).__module__ == "aecore_mlp"
    assert torch.equal(reloaded(x), expected)
    evaluated = CliRunner().invoke(app, ["eval", str(tmp_path / "run"), "--data", "embedded", "--no-pca"])
    assert evaluated.exit_code == 0, evaluated.stderr
    # a preset means its own distribution's components, so shipped recipes keep working
    from aecore.request import RunRequest, resolve

    plan = resolve(RunRequest(preset="simple"))
    assert plan.encoder == "aecore-mlp:mlp" and plan.decoder == "aecore-mlp:mlp"
    # and the error for the plain name says how to choose
    one_line_error(_run(tmp_path, "--out", str(tmp_path / "y")), "'aecore-mlp:mlp' or 'aefake-mlp:mlp'")


def test_the_core_registers_its_own_built_ins_through_the_same_groups():
    own = {(c.kind, c.name) for c in registry.list_components() if c.dist == "aecore"}
    assert {
        ("trainer", "default"),
        ("hook", "progress"),
        ("dataset", "embedded"),
        ("loss", "mse"),
        ("loss", "bce"),
        ("loss", "l1"),
        ("command", "train"),
        ("command", "eval"),
        ("command", "inspect"),
        ("command", "presets"),
        ("command", "plugins"),
    } <= own
    assert registry.get("loss", "mse") is torch.nn.functional.mse_loss


def test_every_kind_is_listed_looked_up_and_shown(make_dist):
    for kind in registry.KINDS:
        entries = registry.list_components(kind)
        assert entries, kind
        assert all(e.kind == kind for e in entries)
        shown = CliRunner().invoke(app, ["plugins", "show", entries[0].qualified_name])
        assert shown.exit_code == 0, (kind, shown.stderr)
    make_dist("aefake-x", {"aecore.presets": {"notapreset": "json:dumps"}})  # importable, but no Preset
    with pytest.raises(
        PluginLoadError, match="is not a valid preset: it is a function, not an aecore Preset"
    ):
        registry.get("preset", "notapreset")


def test_backend_settings_come_from_set_and_are_recorded(tiny_data, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "train",
            "-e",
            "mlp",
            "--set",
            "encoder.hidden=8",
            "--epochs",
            "1",
            "--set",
            "backend.by_hand=false",
            "--out",
            str(tmp_path / "r"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.stderr
    training = aecore.read_metadata(tmp_path / "r")["training"]
    assert training["backend"] == "aecore-fastcpu:fastcpu"
    assert training["backend_params"]["by_hand"] is False
    one_line_error(_run(tmp_path, "--set", "backend.onedn=x"), "unknown parameter 'backend.onedn'", "onednn")
    one_line_error(_run(tmp_path, "--backend", "none", "--set", "backend.by_hand=false"), "--backend none")


HOOKS = """
from aecore.hooks import hookimpl


class Mismatched:
    @hookimpl
    def ae_epoch_end(self, run, epoch, metrics, extra):
        raise AssertionError("never called: its arguments do not match the specification")


class Misspelt:
    @hookimpl
    def ae_epoch_ends(self, run, epoch, metrics):
        raise AssertionError("never called: no such hook")
"""


def test_hooks_that_do_not_match_the_specification_are_left_out_and_reported(make_dist, tiny_data, tmp_path):
    make_dist(
        "aefake-hooks",
        {"aecore.hooks": {"mismatched": "aefake_hooks:Mismatched", "misspelt": "aefake_hooks:Misspelt"}},
        modules={"aefake_hooks": HOOKS},
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = _small_train(tiny_data, tmp_path / "run")
    said = [str(w.message) for w in record if issubclass(w.category, registry.PluginWarning)]
    assert [m for m in said if "'mismatched'" in m and "does not match the hook specification" in m]
    assert [m for m in said if "'misspelt'" in m and "ae_epoch_ends" in m]  # not silently never called
    assert result.checkpoint.exists()  # training ran without them
    doctor = CliRunner().invoke(app, ["plugins", "doctor"], env={"COLUMNS": "300"})
    assert doctor.exit_code == 1
    named = {r[0] for r in table_rows(doctor.stdout)[1:]}
    assert {"hook mismatched", "hook misspelt"} <= named
    text = " ".join(doctor.stdout.split())
    assert "extra" in text and "ae_epoch_ends" in text
