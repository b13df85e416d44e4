"""``python -m aecore``: the ``ae`` command (torchrun launches it this way)."""

from aecore.cli import main

main()
