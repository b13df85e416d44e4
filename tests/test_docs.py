"""The docs stay in step with the code: the CLI reference, the command pages, the README's commands."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import typer.main

from aecore.cli import app

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "docs" / "cli_reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)
render = reference.render


def _command_paths() -> list[str]:
    return sorted(path for path, _ in reference._commands(typer.main.get_command(app), "ae"))


def test_cli_reference_is_generated_from_the_app_and_up_to_date():
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == render(), "regenerate with: python docs/cli_reference.py --write docs/cli.md"


def test_every_command_appears_in_the_reference():
    reference = render()
    for path in _command_paths():
        assert f"## `{path}`" in reference, path


def test_every_analysis_command_has_its_own_page():
    analysis = {"eval", "reconstruct", "encode", "decode", "interpolate", "sample", "anomaly", "denoise"}
    analysis |= {"probe", "pca", "cv", "sweep", "plot", "features", "inspect"}
    pages = {p.stem for p in (ROOT / "docs" / "commands").glob("*.md")}
    assert analysis <= pages, sorted(analysis - pages)
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in pages:
        assert f"commands/{page}.md" in nav, page


def test_images_referenced_by_the_docs_exist():
    for page in (ROOT / "docs").rglob("*.md"):
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (page.parent / target).resolve().exists(), f"{page.name}: {target}"


def test_readme_commands_are_the_ones_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(line for line in readme.splitlines() if line.endswith("&& pytest"))
    assert test_command in ci
    assert "ae train --encoder conv --reg sparse" in readme
