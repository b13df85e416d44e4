"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s demo``.

Each session installs the repository (core and shipped plugins) from
requirements.txt into its own virtual environment, exactly as the README's
first command does, so a session that passes here passes on a fresh machine.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (core, plugins and end-to-end)."""
    session.install("-r", "requirements.txt")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def demo(session: nox.Session) -> None:
    """Install everything and run the main job on the embedded MNIST sample."""
    session.install("-r", "requirements.txt")
    run_dir = session.create_tmp() + "/demo-run"
    session.run("ae", "plugins", "list")
    session.run("ae", "train", "--encoder", "conv", "--reg", "sparse", "--out", run_dir, "--overwrite")
    session.run("ae", "eval", run_dir)
