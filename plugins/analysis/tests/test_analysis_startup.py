"""The plugin's commands are entry points of ``aecore.commands``, listed without importing torch.

``ae --help`` reads each command's one-line help from its docstring without
importing the plugin, and ``ae COMMAND --help`` imports the command's module
but not torch, numpy, scikit-learn or matplotlib: those load inside the
commands only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from aecore import registry
from aecore.cli.help import command_help

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {c.name: c.target for c in registry.list_components("command") if c.dist == "aecore-analysis"}
HEAVY = ("torch", "numpy", "sklearn", "matplotlib", "PIL")
REPORT = """
print("HEAVY", sorted(m for m in {heavy!r} if m in sys.modules))
print("PLUGIN", sorted(m for m in sys.modules if m.startswith("aecore_analysis")))
"""
#: ``ae ARGS`` exactly as the console script runs it (``python -m aecore``), then what it imported.
AE = (
    """
import runpy, sys
sys.argv = ["ae", *sys.argv[1:]]
try:
    runpy.run_module("aecore", run_name="__main__")
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
"""
    + REPORT
)
#: ``ae COMMAND --help`` for every command named on the command line, in one process.
HELPS = (
    """
import sys
from aecore.cli import app
for command in sys.argv[1:]:
    try:
        app([command, "--help"], prog_name="ae")
    except SystemExit as exc:
        assert exc.code in (0, None), (command, exc.code)
"""
    + REPORT
)


def python(script: str, *args: str, tmp_path: Path) -> str:
    env = {**os.environ, "AECORE_CACHE_DIR": str(tmp_path / "cache")}
    code = script.replace("{heavy!r}", repr(HEAVY))
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_commands_are_entry_points_of_this_distribution():
    assert set(COMMANDS) == {
        "reconstruct",
        "interpolate",
        "arithmetic",
        "sample",
        "plot",
        "features",
        "pca",
        "encode",
        "decode",
        "anomaly",
        "denoise",
        "probe",
        "cv",
        "sweep",
    }
    for name, target in COMMANDS.items():
        info = registry.info("command", name)
        assert (info.dist, info.target) == ("aecore-analysis", target)


def test_ae_help_lists_the_commands_without_importing_the_plugin_or_torch(tmp_path):
    out = python(AE, "--help", tmp_path=tmp_path)
    assert "HEAVY []" in out and "PLUGIN []" in out, out[-400:]
    for name in COMMANDS:
        help_line = command_help(registry.info("command", name))
        assert not help_line.startswith("("), (name, help_line)  # read from the docstring, not a stand-in
        assert f"  {name} " in out and help_line[:30] in out, name


def test_every_command_help_imports_its_module_but_no_heavy_one(tmp_path):
    out = python(HELPS, *COMMANDS, tmp_path=tmp_path)
    assert "HEAVY []" in out, out[-400:]
    for module in {t.partition(":")[0] for t in COMMANDS.values()}:
        assert f"'{module}'" in out, out[-400:]
    for name in COMMANDS:
        assert f"Usage: ae {name} " in out, name


def test_the_plugin_holds_no_copy_of_core_or_plugin_code():
    root = ROOT / "aecore_analysis"
    sources = {p.name: p.read_text() for p in root.glob("*.py")}
    for text in sources.values():
        for old in ("aecore.analysis", "aecore.plots", "aecore.cli.train", "def register("):
            assert old not in text, old
        assert "math.log10" not in text  # PSNR comes from aecore.evaluate.psnr
    assert "summary.py" not in sources
    assert "randn" not in sources["denoise.py"]  # the corruption is a regularizer's, not a copy
