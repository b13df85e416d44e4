"""``--set TARGET.PARAM=VALUE``: route command-line strings to component configs.

Values stay strings here; each component's typed config parses them, so
types and validation are declared in one place only.
"""

from __future__ import annotations

from collections.abc import Sequence

from aecore.errors import ConfigError, suggest

FIXED_TARGETS = ("encoder", "decoder", "trainer")


def parse_sets(items: Sequence[str], regularizers: Sequence[str]) -> dict[str, dict[str, str]]:
    """Group ``--set`` items by target: ``{"encoder": {"channels": "32,64"}, "sparse": {...}}``.

    ``reg.PARAM`` is accepted when exactly one regularizer is in use.
    """
    targets = {*FIXED_TARGETS, *regularizers}
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        target, dot, name = key.strip().partition(".")
        if not sep or not dot or not target or not name:
            raise ConfigError(
                f"--set expects TARGET.PARAM=VALUE (for example encoder.channels=32,64), got '{item}'."
            )
        if target == "reg" and len(regularizers) == 1:
            target = regularizers[0]
        if target not in targets:
            raise ConfigError(
                f"--set {key}: '{target}' is not part of this run.{suggest(target, targets)} "
                f"Use encoder., decoder., trainer. or a --reg name."
            )
        out.setdefault(target, {})[name] = value
    return out
