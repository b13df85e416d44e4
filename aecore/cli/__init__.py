"""The ``ae`` command line. Importing this package must not import torch."""

from aecore.cli.app import app, main

__all__ = ["app", "main"]
