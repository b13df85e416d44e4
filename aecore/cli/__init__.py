"""The ``ae`` command line. Importing this package must not import torch."""

from aecore.cli import interrupts  # noqa: F401  (first: a Ctrl-C in the imports below is one line)
from aecore.cli.app import app, main

__all__ = ["app", "main"]
