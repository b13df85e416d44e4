"""Shell completion: the scripts, their installation, and the names a <TAB> offers (from metadata only)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import one_line_error
from typer.testing import CliRunner

from aecore import registry
from aecore.cli import app
from aecore.cli import completion as cli_completion

SCRIPT_MARKS = {
    "bash": ("complete -o default -F _ae_completion ae", "_AE_COMPLETE=complete_bash"),
    "zsh": ("#compdef ae", "_AE_COMPLETE=complete_zsh"),
    "fish": ("complete --command ae", "_AE_COMPLETE=complete_fish"),
}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fake home folder, and no shell detected from the process tree: $SHELL decides."""
    fake = tmp_path / "home"
    fake.mkdir()
    monkeypatch.setenv("HOME", str(fake))
    monkeypatch.setattr(cli_completion, "_running_shell", lambda: None)
    return fake


# -- the scripts and their installation --------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_show_completion_prints_the_script_of_the_shell(home, monkeypatch, shell):
    monkeypatch.setenv("SHELL", f"/usr/bin/{shell}")
    result = CliRunner().invoke(app, ["--show-completion"])
    assert result.exit_code == 0, result.stderr
    for mark in SCRIPT_MARKS[shell]:
        assert mark in result.stdout
    others = [m for s, marks in SCRIPT_MARKS.items() if s != shell for m in marks]
    assert not any(m in result.stdout for m in others)
    assert list(home.iterdir()) == []  # showing installs nothing


def test_the_shell_ae_runs_in_comes_before_the_login_shell(home, monkeypatch):
    monkeypatch.setenv("SHELL", "/bin/bash")
    monkeypatch.setattr(cli_completion, "_running_shell", lambda: "fish")
    result = CliRunner().invoke(app, ["--show-completion"])
    assert result.exit_code == 0 and "complete --command ae" in result.stdout


@pytest.mark.parametrize("flag", ["--show-completion", "--install-completion"])
def test_a_shell_ae_cannot_complete_in_is_one_line(home, monkeypatch, flag):
    monkeypatch.setenv("SHELL", "/bin/tcsh")
    one_line_error(CliRunner().invoke(app, [flag]), "'tcsh'", "bash, zsh and fish")
    monkeypatch.delenv("SHELL")
    one_line_error(CliRunner().invoke(app, [flag]), "cannot tell which shell", "SHELL")
    assert list(home.iterdir()) == []


@pytest.mark.parametrize(
    ("shell", "script", "rc", "rc_line"),
    [
        ("bash", ".bash_completions/ae.sh", ".bashrc", "source '{home}/.bash_completions/ae.sh'"),
        ("zsh", ".zfunc/_ae", ".zshrc", "fpath+=~/.zfunc; autoload -Uz compinit; compinit"),
        ("fish", ".config/fish/completions/ae.fish", None, None),
    ],
)
def test_install_completion_writes_the_script_under_home(home, monkeypatch, shell, script, rc, rc_line):
    monkeypatch.setenv("SHELL", f"/bin/{shell}")
    if rc is not None:
        (home / rc).write_text("# my own settings\nexport EDITOR=vi\n")
    for _ in range(2):  # a second install changes nothing
        result = CliRunner().invoke(app, ["--install-completion"])
        assert result.exit_code == 0, result.stderr
        assert f"{shell} completion for ae installed in {home / script}" in result.stdout
    installed = (home / script).read_text()
    for mark in SCRIPT_MARKS[shell]:
        assert mark in installed
    if rc is not None:
        text = (home / rc).read_text()
        assert text.startswith("# my own settings\nexport EDITOR=vi\n")  # the user's lines are kept
        assert text.count(rc_line.format(home=home)) == 1


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_through_the_installed_script(home, monkeypatch):
    """The real thing: bash sources the installed script and its function asks ``ae``."""
    script = Path(sys.executable).with_name("ae")
    if not script.is_file():
        pytest.skip("the ae console script is not installed next to this interpreter")
    monkeypatch.setenv("SHELL", "/bin/bash")
    assert CliRunner().invoke(app, ["--install-completion"]).exit_code == 0
    program = (
        f"source '{home}/.bash_completions/ae.sh'\n"
        'COMP_WORDS=(ae train --encoder ""); COMP_CWORD=3\n'
        "_ae_completion ae\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "PATH": f"{script.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == registry.names("encoder")


# -- the candidates ------------------------------------------------------------------------------

COMPLETE = """
import contextlib, io, json, os, sys
from aecore.cli.app import app

results = []
for shell, line in json.loads(sys.argv[1]):
    env = {"_AE_COMPLETE": f"complete_{shell}"}
    if shell == "bash":
        words = line.split()
        env.update(COMP_WORDS=line, COMP_CWORD=str(len(words) if line.endswith(" ") else len(words) - 1))
    else:
        env.update(_TYPER_COMPLETE_ARGS=line, _TYPER_COMPLETE_FISH_ACTION="get-args")
    os.environ.update(env)
    out = io.StringIO()
    code = None
    with contextlib.redirect_stdout(out):
        try:
            app(prog_name="ae")
        except SystemExit as exc:
            code = exc.code
    for key in env:
        del os.environ[key]
    results.append({"code": code, "stdout": out.getvalue()})
refused = ["torch", "numpy", "aefake_complete", *(m for m in sys.modules if m.startswith("aecore_"))]
print(json.dumps({"results": results, "imported": sorted(m for m in refused if m in sys.modules)}))
"""

FAKE_KINDS = {
    "aecore.encoders": {"zzenc": "aefake_complete:X", "mlp": "aefake_complete:X"},
    "aecore.decoders": {"zzdec": "aefake_complete:X"},
    "aecore.regularizers": {"zzreg": "aefake_complete:X"},
    "aecore.trainers": {"zztrain": "aefake_complete:X"},
    "aecore.presets": {"zzpreset": "aefake_complete:X"},
    "aecore.datasets": {"zzdata": "aefake_complete:X"},
    "aecore.losses": {"zzloss": "aefake_complete:X"},
    "aecore.backends": {"zzback": "aefake_complete:X"},
}


def _with_duplicates(kind: str) -> list[str]:
    """What a <TAB> offers for ``kind``: every name, and a name two distributions share qualified too."""
    out = []
    for name in registry.names(kind):
        dists = sorted({e.dist for e in registry.every(kind) if e.name == name})
        out += [name, *([f"{d}:{name}" for d in dists] if len(dists) > 1 else [])]
    return out


def test_completion_offers_names_from_metadata_without_importing_plugins_or_torch(make_dist, tmp_path):
    site = make_dist(
        "aefake-complete",
        FAKE_KINDS,
        modules={"aefake_complete": "raise RuntimeError('a completion must not import me')"},
    ).parent
    kinds_names = [n for kind in registry.KINDS for n in registry.names(kind)]
    cases = {
        ("bash", "ae tr"): ["train"],
        ("bash", "ae train --encoder "): _with_duplicates("encoder"),
        ("bash", "ae train -e z"): ["zzenc"],
        ("bash", "ae train --encoder aefake-complete:"): ["aefake-complete:mlp", "aefake-complete:zzenc"],
        ("bash", "ae train --decoder "): _with_duplicates("decoder"),
        ("bash", "ae train --reg sparse --reg "): _with_duplicates("regularizer"),
        ("bash", "ae train -r zz"): ["zzreg"],
        ("bash", "ae train --trainer "): _with_duplicates("trainer"),
        ("bash", "ae train --preset "): _with_duplicates("preset"),
        ("bash", "ae train --data "): _with_duplicates("dataset"),
        ("bash", "ae train --loss "): _with_duplicates("loss"),
        ("bash", "ae train --backend "): ["auto", "none", *_with_duplicates("backend")],
        ("bash", "ae train --shuffle "): ["auto", "full", "block"],
        ("bash", "ae train --device c"): ["cpu", "cuda"],
        ("bash", "ae plugins show zz"): sorted(n for n in set(kinds_names) if n.startswith("zz")),
        ("bash", "ae plugins list --kind "): list(registry.KINDS),
        ("fish", "ae train --preset zz"): ["zzpreset"],
    }
    assert "zzback" in cases["bash", "ae train --backend "]  # the fake distribution is seen
    zsh = ("zsh", "ae train --encoder z")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    proc = subprocess.run(
        [sys.executable, "-c", COMPLETE, json.dumps([*cases, zsh])],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for (case, expected), result in zip(cases.items(), report["results"], strict=False):
        assert result["code"] == 0, (case, result)
        assert result["stdout"].split() == expected, case
    zsh_result = report["results"][-1]
    assert zsh_result["code"] == 0 and zsh_result["stdout"].strip() == """_arguments '*: :(("zzenc"))'"""
    assert report["imported"] == []  # listed from entry-point metadata: no plugin, no torch
    assert "a completion must not import me" not in proc.stderr


def test_a_parameter_with_its_own_completion_keeps_it():
    """attach() only fills gaps: a command's own autocompletion wins."""
    import typer

    def mine(incomplete: str) -> list[str]:
        return ["own"]

    sub = typer.Typer()

    @sub.command("show")
    def show(name: str = typer.Argument(autocompletion=mine)) -> None: ...

    @sub.command("list")
    def listing(kind: str = typer.Option("x")) -> None: ...

    group = typer.main.get_command(sub)
    cli_completion.attach(group, ("plugins",))
    ctx = typer.Context(group)
    name = next(p for p in group.commands["show"].params if p.name == "name")
    kind = next(p for p in group.commands["list"].params if p.name == "kind")
    assert [c.value for c in name.shell_complete(ctx, "")] == ["own"]
    assert [c.value for c in kind.shell_complete(ctx, "enc")] == ["encoder"]
