"""Developer sessions: ``nox -s tests``, ``lint``, ``lowest``, ``demo``, ``docs``, ``bench`` and ``record``.

Each session installs the repository (core and shipped plugins) from
requirements.txt into its own virtual environment, exactly as the README's
first command does, so a session that passes here passes on a fresh machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (core, plugins and end-to-end)."""
    session.install("-r", "requirements.txt")
    session.run("pytest", *session.posargs)


#: The distributions of this repository (for sessions that only need their code, not torch).
PACKAGES = [".", *sorted(str(p.parent) for p in Path("plugins").glob("*/pyproject.toml"))]


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and the import contracts (layers, cycles, plugin isolation)."""
    session.install("-c", "constraints.txt", "ruff", "import-linter")
    # import-linter reads the source; it needs the packages importable, not their dependencies.
    session.install("--no-deps", *(arg for path in PACKAGES for arg in ("-e", path)))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session
def lowest(session: nox.Session) -> None:
    """The suite against the oldest versions pyproject.toml allows (constraints-lowest.txt).

    The CLI reference test is left out: docs/cli.md is generated with the pinned Typer, and older
    Typers format option types differently.
    """
    session.install("-c", "constraints-lowest.txt", "pytest", "hypothesis", "pyod", "pandas")
    editable = ["-e", ".[sklearn]", *(arg for path in PACKAGES[1:] for arg in ("-e", path))]
    session.install("-c", "constraints-lowest.txt", *editable)
    session.run(
        "pytest",
        "--deselect",
        "tests/test_docs.py::test_cli_reference_is_generated_from_the_app_and_up_to_date",
        *session.posargs,
    )


@nox.session
def demo(session: nox.Session) -> None:
    """Install everything and run the main job on the embedded MNIST sample."""
    session.install("-r", "requirements.txt")
    run_dir = session.create_tmp() + "/demo-run"
    session.run("ae", "plugins", "list")
    session.run("ae", "train", "--encoder", "conv", "--reg", "sparse", "--out", run_dir, "--overwrite")
    session.run("ae", "eval", run_dir)


@nox.session
def docs(session: nox.Session) -> None:
    """Regenerate the CLI reference from the app, then build the mkdocs site with --strict."""
    session.install("-r", "requirements.txt", "mkdocs>=1.6", "mkdocs-material>=9.5")
    session.run("python", "docs/cli_reference.py", "--write", "docs/cli.md")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (docs/performance.md); extra arguments go to them, e.g. ``-- --only startup``.

    MNIST comes from :func:`_mnist_dir`.
    """
    session.install("-r", "requirements.txt")
    session.run("python", "-m", "benchmarks", "--data-dir", _mnist_dir(), *session.posargs)


def _mnist_dir() -> str:
    """$AECORE_MNIST_DIR, else ../shared/data/mnist next to the repository (as in the tests)."""
    default = Path(__file__).resolve().parent.parent / "shared" / "data" / "mnist"
    return os.environ.get("AECORE_MNIST_DIR") or str(default)


@nox.session
def record(session: nox.Session) -> None:
    """The 30-d MNIST record: train the record-30 preset for 30 minutes and write the SSE curve."""
    session.install("-r", "requirements.txt")
    session.run("python", "-m", "benchmarks.record", "--data-dir", _mnist_dir(), *session.posargs)
