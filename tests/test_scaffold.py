"""``ae plugins new``: generated plugins pass their own tests, install, list and train."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import one_line_error, table_rows
from typer.testing import CliRunner

from aecore import kinds, registry
from aecore.cli import app
from aecore.cli import output as cli_output
from aecore.cli.scaffold import KINDS, scaffold_plugin

REPO_ROOT = Path(__file__).resolve().parents[1]

#: What each kind's entry point names, for a plugin called 'tiny-<first three letters of the kind>'.
ENTRY_TARGETS = {
    "encoder": "TinyEncEncoder",
    "decoder": "TinyDecDecoder",
    "regularizer": "TinyRegRegularizer",
    "trainer": "TinyTraTrainer",
    "hook": "TinyHooHook",
    "preset": "tiny_pre_preset",  # an object
    "command": "tiny_com_command",  # a function
    "dataset": "TinyDatSource",
    "loss": "TinyLosLoss",
    "backend": "TinyBacBackend",
}
ALL_KINDS = "encoder, decoder, regularizer, trainer, hook, preset, command, dataset, loss, backend"


@pytest.fixture
def runner(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_output.rich_console(), "_width", 200)
    return CliRunner()


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: one thread, our cache dir, ``extra`` on top."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def run(args: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


# -- what is generated -------------------------------------------------------------------------


def test_every_kind_has_a_scaffold():
    assert list(KINDS) == list(kinds.KINDS)
    assert {k: spec.group for k, spec in KINDS.items()} == {k: spec.group for k, spec in kinds.KINDS.items()}


@pytest.mark.parametrize("kind", list(KINDS))
def test_generated_plugin_passes_its_own_tests(tmp_path, kind):
    target, written = scaffold_plugin(f"tiny-{kind[:3]}", kind, tmp_path)
    slug = f"tiny_{kind[:3]}"
    assert target == tmp_path / f"aecore-tiny-{kind[:3]}"
    assert sorted(p.relative_to(target).as_posix() for p in written) == [
        "README.md",
        f"aecore_{slug}/__init__.py",
        "pyproject.toml",
        f"tests/test_{slug}.py",
    ]
    pyproject = (target / "pyproject.toml").read_text()
    assert f'name = "aecore-tiny-{kind[:3]}"' in pyproject
    assert f'[project.entry-points."{KINDS[kind].group}"]' in pyproject
    assert f'tiny-{kind[:3]} = "aecore_{slug}:{ENTRY_TARGETS[kind]}"' in pyproject
    assert 'usefixtures = ["ae_one_thread"]' in pyproject
    readme = (target / "README.md").read_text()
    for line in KINDS[kind].try_it.format(name=f"tiny-{kind[:3]}").splitlines():
        assert f"\n{line}\n" in readme  # in the README's code block, a line of its own
    assert ("## Parameters" in readme) == KINDS[kind].has_config

    # Its pyproject.toml asks for fixtures of aecore's pytest plugin, which installing aecore registers.
    proc = run(
        [sys.executable, "-m", "pytest", str(target / "tests"), "-q", "-p", "no:cacheprovider"],
        cwd=target,
        env=child_env(PYTHONPATH=str(target)),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "failed" not in proc.stdout


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed")
def test_generated_files_are_ruff_clean(tmp_path):
    for kind in KINDS:
        scaffold_plugin("x", kind, tmp_path / kind)
        scaffold_plugin("abcdefghij-klmnopqrst-uvwxyz12", kind, tmp_path / kind)  # the longest name
    configs = [[], ["--config", str(REPO_ROOT / "pyproject.toml")]]  # their own, and aecore's
    for config in configs:
        for command in (["check"], ["format", "--check"]):
            proc = run([sys.executable, "-m", "ruff", *command, *config, "."], cwd=tmp_path, timeout=120)
            assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_new_writes_the_plugin_and_says_what_next(runner, tmp_path):
    result = runner.invoke(app, ["plugins", "new", "codenorm", "--kind", "regularizer", "--dir", "out"])
    assert result.exit_code == 0, result.stderr
    target = tmp_path / "out" / "aecore-codenorm"
    assert (target / "aecore_codenorm" / "__init__.py").is_file()
    assert (
        "class CodenormRegularizer(RegularizerBase):" in (target / "aecore_codenorm/__init__.py").read_text()
    )
    assert f"pip install -e {Path('out') / 'aecore-codenorm'}" in result.stdout
    assert "ae train --encoder mlp --reg codenorm" in result.stdout


def test_cli_new_prints_every_line_that_tries_it(runner, tmp_path):
    result = runner.invoke(app, ["plugins", "new", "sumry", "--kind", "command"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "  ae train --encoder mlp --epochs 1 --out runs/sumry-try" in lines
    assert lines[-1] == "  ae sumry runs/sumry-try/model.safetensors"
    text = (tmp_path / "aecore-sumry" / "aecore_sumry" / "__init__.py").read_text()
    assert "def sumry_command(checkpoint: ModelArg) -> None:" in text


def test_generated_command_is_listed_from_its_source(runner, tmp_path, monkeypatch):
    """'ae --help' lists the generated command with its docstring's first line, read from its source."""
    target, _ = scaffold_plugin("sumry", "command", tmp_path)
    monkeypatch.syspath_prepend(str(target))
    try:
        from aecore_sumry import sumry_command

        with registry.registered("command", "sumry", sumry_command):
            result = runner.invoke(app, ["--help"])
    finally:
        sys.modules.pop("aecore_sumry", None)
    assert result.exit_code == 0, result.stderr
    listed = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("sumry ")]
    assert listed and " ".join(listed[0][1:4]) == "Summarise a checkpoint", result.stdout


def test_cli_new_with_own_distribution_name(runner, tmp_path):
    result = runner.invoke(app, ["plugins", "new", "my_enc", "-k", "encoder", "--dist", "acme-ae-encoder"])
    assert result.exit_code == 0, result.stderr
    target = tmp_path / "acme-ae-encoder"
    pyproject = (target / "pyproject.toml").read_text()
    assert 'name = "acme-ae-encoder"' in pyproject
    assert 'my_enc = "aecore_my_enc:MyEncEncoder"' in pyproject
    assert (target / "tests" / "test_my_enc.py").is_file()


# -- mistakes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("Tiny", ["must be lowercase", "did you mean 'tiny'"]),
        ("1conv", ["starting with a letter"]),
        ("my conv", ["must be lowercase", "did you mean 'my-conv'"]),
        ("a--b", ["single '-' or '_'"]),
        ("aecore-tiny", ["leave out the 'aecore-' prefix", "ae plugins new tiny"]),
        ("x" * 31, ["at most 30"]),
    ],
)
def test_bad_names(runner, tmp_path, name, fragments):
    one_line_error(runner.invoke(app, ["plugins", "new", name, "--kind", "encoder"]), *fragments)
    assert list(tmp_path.iterdir()) == []


def test_unknown_or_missing_kind(runner, tmp_path):
    one_line_error(
        runner.invoke(app, ["plugins", "new", "tiny", "--kind", "encodr"]),
        "unknown plugin kind 'encodr'",
        "Did you mean: encoder",
        f"Choose one of: {ALL_KINDS}.",
    )
    one_line_error(runner.invoke(app, ["plugins", "new", "tiny"]), "--kind")
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_refused_unless_overwrite(runner, tmp_path):
    target = tmp_path / "aecore-tiny"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    one_line_error(
        runner.invoke(app, ["plugins", "new", "tiny", "--kind", "encoder"]),
        f"{Path('aecore-tiny')} already exists and is not empty",
        "--overwrite",
    )
    assert [p.name for p in target.iterdir()] == ["notes.txt"]

    result = runner.invoke(app, ["plugins", "new", "tiny", "--kind", "encoder", "--overwrite"])
    assert result.exit_code == 0, result.stderr
    assert (target / "notes.txt").read_text() == "keep me"  # only generated files are replaced
    assert (target / "aecore_tiny" / "__init__.py").is_file()

    (tmp_path / "aecore-file").write_text("")
    one_line_error(runner.invoke(app, ["plugins", "new", "file", "--kind", "encoder"]), "is a file")


def test_empty_existing_folder_is_used(runner, tmp_path):
    (tmp_path / "aecore-tiny").mkdir()
    result = runner.invoke(app, ["plugins", "new", "tiny", "--kind", "decoder"])
    assert result.exit_code == 0, result.stderr


def test_names_of_installed_plugins_are_refused(runner, tmp_path, fresh_registry):
    one_line_error(
        runner.invoke(app, ["plugins", "new", "mlp", "--kind", "encoder", "--dist", "acme-mlp"]),
        "an installed encoder is already called 'mlp' (from aecore-mlp)",
    )
    one_line_error(
        runner.invoke(app, ["plugins", "new", "mlp", "--kind", "regularizer"]),
        "a distribution named aecore-mlp is already installed",
    )
    assert list(tmp_path.iterdir()) == []


def test_new_help_does_not_import_torch():
    code = (
        "import sys\nfrom aecore.cli import main\nsys.argv = ['ae', 'plugins', 'new', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write('HEAVY ' + ','.join(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    proc = run([sys.executable, "-c", code], timeout=60)
    assert "--kind" in proc.stdout
    assert "trainer, hook, preset, command, dataset, loss or backend." in " ".join(proc.stdout.split())
    assert proc.stderr.strip().splitlines()[-1] == "HEAVY", proc.stderr


# -- the real install path ---------------------------------------------------------------------


def ae(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The ``ae`` console script's code, in a fresh process."""
    code = "from aecore.cli import main; main()"
    return run([sys.executable, "-c", code, *args], cwd=cwd, env=child_env(COLUMNS="200"))


@pytest.mark.slow
def test_installed_encoder_is_listed_and_trains(tmp_path):
    name = f"scaffoldtest{os.getpid()}"  # unique: other sessions may share this environment
    dist = f"aecore-{name}"
    target, _ = scaffold_plugin(name, "encoder", tmp_path)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    try:
        proc = run([*pip, "install", "--no-deps", "--no-build-isolation", "-e", str(target)], cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr

        listed = ae("plugins", "list", "--kind", "encoder", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        rows = [r[:5] for r in table_rows(listed.stdout)]
        assert ["encoder", name, dist, "0.1.0", "ok"] in rows, listed.stdout

        out = tmp_path / "run"
        trained = ae(
            "train", "--encoder", name, "--decoder", "mlp", "--epochs", "1", "--classes", "1", "-q",
            "--out", str(out), cwd=tmp_path,
        )  # fmt: skip
        assert trained.returncode == 0, trained.stdout + trained.stderr
        assert "test: MSE/pixel" in trained.stdout
        header = json.loads(_safetensors_header(out / "model.safetensors")["__metadata__"]["aecore"])
        assert header["model"]["encoder"] == {
            "name": name,
            "dist": dist,
            "version": "0.1.0",
            "params": {"bias": True},
        }
    finally:
        run([*pip, "uninstall", "-y", dist], cwd=tmp_path)
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution(dist)


def _safetensors_header(path: Path) -> dict:
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(size))
