"""A broken plugin breaks only itself: reported with its reason, everything else keeps working.

The three kinds of breakage are built as real (throwaway) distributions on sys.path:
a module that raises on import, a target attribute that does not exist, and an
object that does not satisfy its protocol.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import table_rows
from typer.testing import CliRunner

from aecore import registry
from aecore.cli import app

ENC = "aecore.encoders"

NOT_A_COMPONENT = """
class Thing:
    '''No Config, no forward.'''
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "250"})


@pytest.fixture
def broken_trio(make_dist, encoder_source):
    make_dist(
        "aefake-raises",
        {ENC: {"raises": "aefake_raises:FakeEncoder"}},
        modules={"aefake_raises": "raise ImportError('libfoo.so.3: cannot open shared object')\n"},
    )
    make_dist(
        "aefake-missing",
        {ENC: {"missing": "aefake_missing:NoSuchClass"}},
        modules={"aefake_missing": encoder_source("")},
    )
    make_dist(
        "aefake-invalid",
        {ENC: {"invalid": "aefake_invalid:Thing"}},
        modules={"aefake_invalid": NOT_A_COMPONENT},
    )


def test_doctor_reports_each_broken_plugin_with_reason_and_fix_and_fails(runner, broken_trio):
    result = runner.invoke(app, ["plugins", "doctor"])
    assert result.exit_code == 1
    rows = {r[0]: r for r in table_rows(result.stdout)}
    assert "libfoo.so.3" in rows["encoder raises"][2] and rows["encoder raises"][1] == "aefake-raises"
    assert "NoSuchClass" in rows["encoder missing"][2]
    assert "no 'Config' dataclass" in rows["encoder invalid"][2]
    for name in ("raises", "missing", "invalid"):
        assert "Reinstall or update" in rows[f"encoder {name}"][2]
    assert not any(r[0].startswith("encoder mlp") for r in table_rows(result.stdout))


def test_doctor_passes_on_the_shipped_plugins(runner, fresh_registry):
    result = runner.invoke(app, ["plugins", "doctor"])
    assert result.exit_code == 0, result.stdout
    assert "load and conform" in result.stdout


def test_a_failed_load_is_shown_as_broken_by_a_later_plugins_list(runner, broken_trio, tmp_path, monkeypatch):
    monkeypatch.setenv("AECORE_CACHE_DIR", str(tmp_path / "cache"))  # no record from earlier tests
    before = {r[1]: r[4] for r in table_rows(runner.invoke(app, ["plugins", "list"]).stdout)[1:]}
    assert before["raises"] == "ok"  # listing imports nothing, so it cannot know yet
    bad = runner.invoke(app, ["train", "--encoder", "raises", "--decoder", "mlp", "-q"])
    assert bad.exit_code == 2
    assert bad.stderr.count("\n") == 1 and "aefake-raises" in bad.stderr and "libfoo" in bad.stderr
    registry.refresh()  # as a new process would
    after = {r[1]: r[4] for r in table_rows(runner.invoke(app, ["plugins", "list"]).stdout)[1:]}
    assert after["raises"].startswith("broken") and "libfoo.so.3" in after["raises"]
    assert after["mlp"] == "ok" and after["missing"] == "ok"


def test_other_components_and_training_keep_working(runner, broken_trio, tmp_path):
    for name in ("raises", "missing", "invalid"):
        result = runner.invoke(app, ["plugins", "show", name])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1
    help_result = runner.invoke(app, ["--help"])
    assert help_result.exit_code == 0
    result = runner.invoke(
        app,
        [
            "train",
            "-e",
            "mlp",
            "--set",
            "encoder.hidden=16",
            "--epochs",
            "1",
            "-q",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "r" / "model.safetensors").exists()


def test_duplicate_names_are_flagged_and_the_qualified_form_picks_one(runner, make_dist, encoder_source):
    make_dist(
        "aefake-dup", {ENC: {"mlp": "aefake_dup:FakeEncoder"}}, modules={"aefake_dup": encoder_source()}
    )
    rows = table_rows(runner.invoke(app, ["plugins", "list", "--kind", "encoder"]).stdout)[1:]
    statuses = {r[2]: r[4] for r in rows if r[1] == "mlp"}
    assert "duplicate name" in statuses["aefake-dup"] and "aecore-mlp:mlp" in statuses["aecore-mlp"]
    ambiguous = runner.invoke(app, ["train", "-e", "mlp", "-q"])
    assert ambiguous.exit_code == 2 and "aecore-mlp:mlp" in ambiguous.stderr
    doctor = runner.invoke(app, ["plugins", "doctor"])
    assert doctor.exit_code == 1 and "several distributions" in doctor.stdout


def test_environment_can_disable_or_restrict_discovery(monkeypatch, fresh_registry):
    monkeypatch.setenv("AECORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry.refresh()
    assert {c.dist for c in registry.list_components()} == {"aecore"}
    monkeypatch.delenv("AECORE_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("AECORE_PLUGINS", "aecore-mlp, aecore_sparse")
    registry.refresh()
    assert {c.dist for c in registry.list_components()} == {"aecore", "aecore-mlp", "aecore-sparse"}
    with pytest.raises(registry.UnknownComponentError, match="Installed encoders: mlp"):
        registry.info("encoder", "conv")


def test_help_always_works_even_with_broken_plugins(broken_trio, tmp_path):
    # A real process, with the broken distributions on its path.
    site = next(p for p in sys.path if p.endswith("site") and "aefake" not in p)
    code = "import sys; sys.argv = ['ae', '--help']; from aecore.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": site, "PATH": ""}
    )
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout


# -- a broken plugin is said once, in one line ---------------------------------------------


def _env(site) -> dict[str, str]:
    """This process's environment with ``site`` first on the path and no entry-point walk switched."""
    env = {k: v for k, v in os.environ.items() if k not in WALK_SWITCHES}
    return {**env, "PYTHONPATH": os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def _ae(site, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python -m aecore ARGS`` (the ``ae`` command itself) in a fresh process with ``site`` on its path."""
    return subprocess.run(
        [sys.executable, "-m", "aecore", *args],
        capture_output=True,
        text=True,
        env=_env(site),
        timeout=timeout,
    )


WALK_SWITCHES = ("TORCH_DEVICE_BACKEND_AUTOLOAD", "TRITON_BACKENDS_IN_TREE")


def test_a_broken_plugin_the_user_asked_for_is_one_line_in_all(runner, broken_trio, tmp_path):
    for args in (
        ["train", "--encoder", "raises", "--decoder", "mlp", "-q"],
        ["train", "--encoder", "mlp", "--decoder", "invalid", "-q"],
        ["plugins", "show", "missing"],
    ):
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "r")] if args[0] == "train" else args)
        assert result.exit_code == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    site = next(p for p in sys.path if p.endswith("site"))
    proc = _ae(site, "train", "--encoder", "raises", "--decoder", "mlp", "-q", "--out", str(tmp_path / "p"))
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "aefake-raises" in lines[0], proc.stderr
    assert not (tmp_path / "p").exists()


# -- any installed distribution's metadata may be broken -------------------------------------


def _broken_metadata(site) -> dict[str, str]:
    """Two unrelated distributions whose entry_points.txt breaks importlib.metadata; folder -> file."""
    files = {}
    for folder, text in (
        ("aefake_latin1-2.0.dist-info", b"[console_scripts]\nlatin = caf\xe9:main\n"),
        ("aefake_noequals-1.0.dist-info", b"[console_scripts]\nrun the thing\n"),
    ):
        path = site / folder
        path.mkdir()
        (path / "METADATA").write_bytes(b"Metadata-Version: 2.1\nName: x\nVersion: 1\n")
        (path / "entry_points.txt").write_bytes(text)
        files[folder] = str(path / "entry_points.txt")
    return files


def test_plugins_list_survives_any_distributions_metadata(runner, tmp_path, monkeypatch, fresh_registry):
    for var in WALK_SWITCHES:  # unset now, restored after (reading the broken files sets them)
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    site = tmp_path / "site"
    site.mkdir()
    files = _broken_metadata(site)
    (site / "aefake_flat-1.0.dist-info").write_text("a file, not a folder")
    monkeypatch.syspath_prepend(str(site))
    registry.refresh()
    result = runner.invoke(app, ["plugins", "list"])
    assert result.exit_code == 0, result.stderr
    assert {"mlp", "conv", "train"} <= {r[1] for r in table_rows(result.stdout)[1:]}
    lines = result.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith("warning: ") for line in lines), result.stderr
    for file in [*files.values(), str(site / "aefake_flat-1.0.dist-info")]:
        assert sum(file in line for line in lines) == 1, (file, lines)


@pytest.mark.slow
def test_training_survives_metadata_that_breaks_importlib_metadata(tmp_path):
    """In a real process: torch and triton walk every entry point, and would fail on these files."""
    site = tmp_path / "site"
    site.mkdir()
    files = _broken_metadata(site)
    broken = subprocess.run(
        [sys.executable, "-c", "import importlib.metadata as m; m.entry_points(group='x')"],
        capture_output=True,
        env=_env(site),
        timeout=60,
    )
    assert broken.returncode != 0  # what any tool walking entry points meets here
    out = tmp_path / "run"
    proc = _ae(
        site, "train", "-e", "mlp", "--set", "encoder.hidden=8", "--epochs", "1", "-q", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").exists()
    lines = proc.stderr.splitlines()
    assert all(line.startswith("warning: ") for line in lines), proc.stderr
    for file in files.values():
        assert sum(file in line for line in lines) == 1, (file, lines)
    plugins = _ae(site, "plugins", "list")
    assert plugins.returncode == 0 and "mlp" in plugins.stdout
