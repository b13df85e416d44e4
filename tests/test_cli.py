"""The ``ae`` command line, through Typer's CliRunner (stdout and stderr captured apart)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest
from helpers import one_line_error, table_rows
from typer.testing import CliRunner

from aecore.cli import app
from aecore.cli import output as cli_output


@pytest.fixture
def runner(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing a command writes lands in the repository
    monkeypatch.setattr(cli_output.rich_console(), "_width", 200)  # tables on one line per row
    return CliRunner()


# -- ae plugins --------------------------------------------------------------------------------


def test_plugins_list_shows_components_with_dist_and_version(runner, fresh_registry):
    result = runner.invoke(app, ["plugins", "list"])
    assert result.exit_code == 0, result.stderr
    rows = table_rows(result.stdout)
    assert rows[0] == ["kind", "name", "distribution", "version", "status"]
    for kind, name, dist in [
        ("encoder", "mlp", "aecore-mlp"),
        ("decoder", "mlp", "aecore-mlp"),
        ("encoder", "conv", "aecore-conv"),
        ("decoder", "conv", "aecore-conv"),
        ("regularizer", "sparse", "aecore-sparse"),
        ("trainer", "default", "aecore"),
        ("hook", "progress", "aecore"),
    ]:
        assert [kind, name, dist, importlib.metadata.version(dist), "ok"] in rows


def test_plugins_list_filters_by_kind_and_pattern(runner, fresh_registry):
    result = runner.invoke(app, ["plugins", "list", "--kind", "encoder", "c*"])
    assert result.exit_code == 0, result.stderr
    rows = table_rows(result.stdout)[1:]
    assert ["encoder", "conv", "aecore-conv"] in [r[:3] for r in rows]
    assert all(r[0] == "encoder" and r[1].startswith("c") for r in rows)  # no mlp, no decoders
    hooks = table_rows(runner.invoke(app, ["plugins", "list", "--kind", "hook"]).stdout)[1:]
    assert {r[0] for r in hooks} == {"hook"}


def test_plugins_list_bad_kind(runner, fresh_registry):
    one_line_error(runner.invoke(app, ["plugins", "list", "--kind", "encodr"]), "Did you mean: encoder")


def test_plugins_list_does_not_import_plugins(runner, make_dist):
    make_dist(
        "aefake-cli",
        {"aecore.encoders": {"fancy": "aefake_cli:Enc"}},
        version="4.2.0",
        modules={"aefake_cli": ""},
    )
    result = runner.invoke(app, ["plugins", "list"])
    assert ["encoder", "fancy", "aefake-cli", "4.2.0", "ok"] in table_rows(result.stdout)
    assert "aefake_cli" not in sys.modules


def test_plugins_show_lists_parameters(runner, fresh_registry):
    result = runner.invoke(app, ["plugins", "show", "conv"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "encoder conv · aecore-conv" in out and "decoder conv · aecore-conv" in out
    rows = table_rows(out)
    assert ["parameter", "type", "default", "help"] in rows
    channels = next(r for r in rows if r[0] == "channels")
    assert channels[1:3] == ["int list", "32,64"]
    from aecore import registry
    from aecore.config import params_of

    declared = {p.name: p.help for p in params_of(registry.get("encoder", "conv").Config)}
    assert channels[3] == declared["channels"]  # the help shown is the one declared in the config
    assert next(r for r in rows if r[0] == "kernel_size")[1:3] == ["int", "3"]
    assert next(r for r in rows if r[0] == "batch_norm")[1:3] == ["bool", "False"]
    output_act = next(r for r in rows if r[0] == "output_activation")
    assert output_act[1:3] == ["sigmoid|tanh|none", "sigmoid"]


def test_plugins_show_trainer_and_qualified_name(runner, fresh_registry):
    result = runner.invoke(app, ["plugins", "show", "aecore:default"])
    assert result.exit_code == 0, result.stderr
    rows = table_rows(result.stdout)
    assert next(r for r in rows if r[0] == "epochs")[1:] == ["int", "10", "Passes over the training data."]
    assert next(r for r in rows if r[0] == "lr")[1:3] == ["float", "0.001"]


def test_plugins_show_unknown_exits_2(runner, fresh_registry):
    one_line_error(
        runner.invoke(app, ["plugins", "show", "nope"]), "no plugin named 'nope'", "ae plugins list"
    )
    one_line_error(runner.invoke(app, ["plugins", "show", "cnov"]), "Did you mean: conv")


def test_plugins_show_broken_plugin_is_one_line(runner, make_dist):
    make_dist(
        "aefake-clibroken",
        {"aecore.encoders": {"shaky": "aefake_clibroken:Enc"}},
        modules={"aefake_clibroken": "raise ImportError('missing libfoo')\n"},
    )
    result = runner.invoke(app, ["plugins", "show", "shaky"])  # said once, by the error: no warning too
    one_line_error(result, "missing libfoo", "aefake-clibroken")


# -- ae train: errors --------------------------------------------------------------------------


def test_train_unknown_encoder(runner, fresh_registry):
    line = one_line_error(runner.invoke(app, ["train", "--encoder", "nope"]), "unknown encoder 'nope'")
    assert "conv" in line and "mlp" in line  # names the real ones
    one_line_error(runner.invoke(app, ["train", "--encoder", "cnov"]), "Did you mean: conv?")


def test_train_without_encoder(runner, fresh_registry):
    line = one_line_error(runner.invoke(app, ["train"]), "--encoder")
    assert "conv" in line and "mlp" in line


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--set", "encoder.hidden=wide"], ["bad value 'wide' for 'encoder.hidden'", "int list"]),
        (["--set", "encoder.hiden=8"], ["unknown parameter 'encoder.hiden'", "Did you mean: hidden?"]),
        (["--set", "encoder.activation=swish"], ["'encoder.activation'", "relu"]),
        (["--set", "encodr.hidden=8"], ["'encodr' is not part of this run", "Did you mean: encoder"]),
        (["--set", "sparse.weight=1"], ["'sparse' is not part of this run"]),
        (["--set", "hidden=8"], ["--set expects TARGET.PARAM=VALUE"]),
        (["--set", "encoder.hidden"], ["--set expects TARGET.PARAM=VALUE"]),
        (["--epochs", "0"], ["epochs must be at least 1"]),
        (["--lr", "-1"], ["lr must be positive"]),
        (["--epochs", "many"], ["--epochs", "many", "ae train --help"]),  # Click's words are its own
        (["--bogus"], ["--bogus", "ae train --help"]),
        (["--loss", "huber"], ["unknown loss 'huber'", "bce, l1, mse"]),
        (["--device", "tpu"], ["unknown device 'tpu'"]),
        (["--val-fraction", "1.5"], ["--val-fraction must be in [0, 1)"]),
        (["--latent-dim", "0"], ["--latent-dim must be at least 1"]),
        (["--data", "cifar"], ["unknown dataset 'cifar'"]),
        # sizes that cannot be allocated, seeds torch cannot take: refused naming the setting
        (["--latent-dim", "1000000000000"], ["latent size 1000000000000", "AECORE_MAX_MODEL_ELEMENTS"]),
        (["--set", "encoder.hidden=99999999999"], ["encoder.hidden=99999999999", "GB", "latent_dim=32"]),
        (["--seed", str(2**64)], ["'seed'", "2**63-1"]),
        (["--seed", "-1"], ["'seed'", "from 0"]),
        (["--data", "csv:none.csv?seed=99999999999999999999999"], ["'csv.seed'", "2**63-1"]),
        # wrong values: parsed wherever they come from, and one setting given once
        (["--set", "trainer.min_delta=nan"], ["'trainer.min_delta'", "finite"]),
        (["--set", "trainer.lr=inf"], ["'trainer.lr'", "finite"]),
        (["--epochs", "1", "--set", "trainer.epochs=garbage"], ["bad value 'garbage' for 'trainer.epochs'"]),
        (["--epochs", "1", "--set", "trainer.epochs=3"], ["--epochs 1", "trainer.epochs=3", "only one"]),
    ],
)
def test_train_bad_options_are_one_line(runner, fresh_registry, tmp_path, args, fragments):
    result = runner.invoke(app, ["train", "-e", "mlp", "-q", *args])
    one_line_error(result, *fragments)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("latent", ["0", "-1"])
def test_a_preset_does_not_replace_a_latent_size_below_one(runner, fresh_registry, tmp_path, latent):
    one_line_error(
        runner.invoke(app, ["train", "--preset", "conv-simple", "--latent-dim", latent, "-q"]), "latent-dim"
    )
    assert not (tmp_path / "runs").exists()


def test_train_sets_for_a_regularizer_via_reg_alias(runner, fresh_registry, tmp_path):
    result = runner.invoke(app, ["train", "-e", "mlp", "-r", "sparse", "--set", "reg.kind=l3", "-q"])
    one_line_error(result, "'sparse.kind'", "l1, kl")


def test_existing_run_dir_is_not_touched(runner, fresh_registry, tmp_path):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "model.safetensors").write_bytes(b"precious weights")
    (run_dir / "notes.txt").write_text("do not lose")
    result = runner.invoke(app, ["train", "-e", "mlp", "--out", str(run_dir), "--epochs", "1", "-q"])
    one_line_error(result, f"run directory {run_dir} already holds files", "--overwrite")
    assert sorted(p.name for p in run_dir.iterdir()) == ["model.safetensors", "notes.txt"]
    assert (run_dir / "model.safetensors").read_bytes() == b"precious weights"
    assert (run_dir / "notes.txt").read_text() == "do not lose"


def test_out_that_is_a_file(runner, fresh_registry, tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    one_line_error(runner.invoke(app, ["train", "-e", "mlp", "--out", str(target), "-q"]), "is a file")
    assert target.read_text() == "x"


# -- ae eval: errors ---------------------------------------------------------------------------


def test_eval_missing_checkpoint(runner, tmp_path):
    one_line_error(
        runner.invoke(app, ["eval", "missing.safetensors"]), "no checkpoint at missing.safetensors"
    )
    one_line_error(runner.invoke(app, ["eval", str(tmp_path)]), "model.safetensors")


def test_eval_corrupt_checkpoint(runner, tmp_path):
    (tmp_path / "bad.safetensors").write_text("not a model")
    one_line_error(runner.invoke(app, ["eval", "bad.safetensors"]), "not a safetensors file")


def test_interrupt_exits_130_without_traceback(runner, monkeypatch):
    from aecore import checkpoint

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "load", interrupted)
    result = runner.invoke(app, ["eval", "model.safetensors"])
    assert result.exit_code == 130
    assert isinstance(result.exception, SystemExit)
    assert result.stderr == "error: interrupted.\n"
    assert result.stdout == ""


def test_eval_needs_a_path(runner):
    one_line_error(runner.invoke(app, ["eval"]), "PATH", "ae eval --help")


# -- top level ---------------------------------------------------------------------------------


def test_version_and_help(runner):
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"aecore {importlib.metadata.version('aecore')}"
    helped = runner.invoke(app, ["--help"])
    assert helped.exit_code == 0
    for command in ("train", "eval", "plugins"):
        assert command in helped.stdout


def test_unknown_command(runner):
    one_line_error(runner.invoke(app, ["trian"]), "no command 'trian'. Did you mean: train?")


@pytest.mark.parametrize("args", [[], ["plugins"]])
def test_a_group_alone_prints_its_help(runner, args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == runner.invoke(app, [*args, "--help"]).stdout


def test_command_table_comes_from_entry_points_and_lists_without_importing(make_dist, tmp_path):
    """A third party's ``ae hello`` is listed with its help from metadata, and runs when called."""
    make_dist(
        "aefake-hello",
        {"aecore.commands": {"hello": "aefake_hello:hello"}},
        modules={
            "aefake_hello": """
                import typer

                def hello(name: str = "world") -> None:
                    \"\"\"Say hello to someone: a third-party command.

                    More text that the listing leaves out.
                    \"\"\"
                    typer.echo(f"hello {name}")
            """
        },
    )
    listing = CliRunner().invoke(app, ["--help"])
    assert listing.exit_code == 0
    row = next(line for line in listing.stdout.splitlines() if line.strip().startswith("hello "))
    assert "Say hello to someone: a third-party command." in row
    assert "aefake_hello" not in sys.modules  # listed from metadata and its source, never imported
    ran = CliRunner().invoke(app, ["hello", "--name", "aecore"])
    assert ran.exit_code == 0 and ran.stdout == "hello aecore\n"
    qualified = CliRunner().invoke(app, ["aefake-hello:hello"])
    assert qualified.exit_code == 0 and qualified.stdout == "hello world\n"


def test_a_broken_command_plugin_breaks_only_itself(make_dist):
    make_dist(
        "aefake-badcmd",
        {"aecore.commands": {"explode": "aefake_badcmd:explode"}},
        modules={"aefake_badcmd": "raise RuntimeError('no such backend service')\ndef explode(): ..."},
    )
    listing = CliRunner().invoke(app, ["--help"])
    assert listing.exit_code == 0 and "explode" in listing.stdout
    result = CliRunner().invoke(app, ["explode"])
    message = one_line_error(result, "command 'explode' from aefake-badcmd 0.3.1 could not be loaded")
    assert "no such backend service" in message
    again = CliRunner().invoke(app, ["--help"])  # the listing now says why, without importing it
    row = next(line for line in again.stdout.splitlines() if line.strip().startswith("explode"))
    assert "broken" in row
    assert CliRunner().invoke(app, ["plugins", "list", "--kind", "command"]).exit_code == 0


def test_exit_code_through_the_console_script():
    proc = subprocess.run(
        [sys.executable, "-c", "from aecore.cli import main; main()", "plugins", "show", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no plugin named 'nope'")
    assert len(proc.stderr.splitlines()) == 1


# -- start-up cost -----------------------------------------------------------------------------

STARTUP = """
import json, sys
from aecore.cli import main
also_refused = json.loads(sys.argv[2])
sys.argv = ["ae", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
refused = ["torch", "torchvision", "numpy", "aecore_mlp", "aecore_conv", "aecore_sparse",
           "aecore_analysis", "aecore_fastcpu", "aecore_tables", "aecore_vision", *also_refused]
heavy = sorted(m for m in refused if m in sys.modules)
sys.stderr.write("RESULT " + json.dumps({"code": code, "heavy": heavy}) + "\\n")
"""


@pytest.mark.parametrize(
    ("args", "also_refused"),
    [
        (["--help"], ["rich", "pydantic"]),  # the listing is plain Click output from metadata
        (["plugins", "list"], []),
        (["train", "--help"], ["rich"]),
        (["eval", "--help"], ["rich"]),
    ],
)
def test_light_commands_do_not_import_torch(args, also_refused):
    """Nor any plugin module: start-up budget, see the startup benchmark."""
    typer_itself = subprocess.run(  # older Typers import Rich themselves; that is theirs, not ours
        [sys.executable, "-c", "import sys, typer.main; print('rich' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if typer_itself.stdout.strip() == "True":
        also_refused = [m for m in also_refused if m != "rich"]
    proc = subprocess.run(
        [sys.executable, "-c", STARTUP, json.dumps(args), json.dumps(also_refused)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = json.loads(proc.stderr.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["code"] in (0, None), proc.stderr
    assert proc.stdout.strip()  # it printed something useful
    assert result["heavy"] == [], f"'ae {' '.join(args)}' imported {result['heavy']}"
