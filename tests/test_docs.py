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


# -- the plugin guide is complete on its own ---------------------------------------------------

GUIDE = ROOT / "docs" / "writing-plugins.md"


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    rest = text[start + 3 :]
    end = rest.find("\n## ")
    return rest if end < 0 else rest[:end]


def test_the_guide_has_a_tested_example_for_every_kind():
    """Each kind's section holds its code, its entry point and a test calling the kit's check for it."""
    from aecore import kinds

    text = GUIDE.read_text()
    sections = {
        "encoder": ("Encoders and decoders", "check_encoder"),
        "decoder": ("Encoders and decoders", "check_decoder"),
        "regularizer": ("Regularizers", "check_regularizer"),
        "trainer": ("Trainers", "check_trainer"),
        "hook": ("Hooks", "check_hook"),
        "preset": ("Presets", "check_preset"),
        "command": ("Commands", "check_command"),
        "dataset": ("Data sources", "check_dataset"),
        "loss": ("Losses", "check_loss"),
        "backend": ("Backends", "check_backend"),
    }
    assert set(sections) == set(kinds.KINDS)
    for kind, (title, check) in sections.items():
        body = _section(text, title)
        assert "```python\n# " in body, f"{title}: no plugin file"
        assert f'"{kinds.KINDS[kind].group}"' in body, f"{title}: no entry point for {kind}"
        assert re.search(rf"^def test_\w+\(.*?{check}\(", body, re.MULTILINE | re.DOTALL), f"{title}: {check}"


def test_the_guide_documents_the_whole_kit_and_needs_no_source_checkout():
    import aecore.testing

    text = GUIDE.read_text()
    for name in aecore.testing.__all__:
        assert f"`{name}" in text, f"aecore.testing.{name} is not in the guide"
    for fixture in ("ae_one_thread", "ae_tiny_dataset", "ae_run_dir", "ae_registry"):
        assert f"`{fixture}`" in text, fixture
    # A reader with a wheel has no repository: no paths into aecore's source or the plugins folder.
    assert not re.findall(r"plugins/\w|aecore/[\w/]+\.py|aecore\.layers", text)
    assert "[build-system]" in text  # the packaging example installs as it stands


def test_the_guide_documents_the_run_object_metrics_and_hook_order():
    from aecore.hooks import specs

    text = GUIDE.read_text()
    hooks = _section(text, "Hooks")
    for hook in [n for n in dir(specs) if n.startswith("ae_")]:
        assert f"`{hook}(" in hooks, hook
    for attribute in ("out_dir", "device", "info", "seed", "loss_fn", "resume"):
        assert f"`{attribute}`" in hooks, attribute
    for metric in ("epoch", "train_loss", "train_recon", "val_recon", "best_val_recon", "lr"):
        assert f"`{metric}`" in hooks, metric
    assert "Epochs count from 1" in hooks and "AECORE_STRICT_HOOKS" in hooks


def test_the_models_page_names_every_shipped_distribution():
    import tomllib

    text = (ROOT / "docs" / "models.md").read_text()
    for pyproject in (ROOT / "plugins").glob("*/pyproject.toml"):
        name = tomllib.loads(pyproject.read_text())["project"]["name"]
        assert name in text, name
