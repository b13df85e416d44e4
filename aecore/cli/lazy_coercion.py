"""Build Typer's per-option validators only for options that were given a value.

Typer 0.2x coerces each option through a pydantic ``TypeAdapter``, built the
first time the option is processed, even when its value is ``None`` and
nothing needs converting. That imports pydantic and builds validators on
every ``ae`` call, about 60 ms of an ``ae plugins list`` that should take a
tenth of ``import torch`` (docs/performance.md). Typer already answers
``None`` without its validator, so here the validator is built on first use
with a real value, and a ``str`` option's text (the only value that needs no
converting) is passed through; every other conversion is still Typer's own.

Typer versions without this internal layout are left untouched.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

__all__ = ["defer_typer_coercion"]


def defer_typer_coercion() -> bool:
    """Install the deferral once; False where this Typer has no such layer."""
    try:
        from typer import _coercion, core
    except ImportError:
        return False
    build = getattr(core, "build_runtime_param", None)
    base = getattr(_coercion, "RuntimeParam", None)
    if build is None or base is None:
        return False
    if getattr(build, "deferred_by_aecore", False):
        return True

    @dataclass(frozen=True)
    class DeferredRuntimeParam(base):  # type: ignore[misc, valid-type]
        """Typer's runtime parameter, built when the first non-None value arrives."""

        descriptor: Any = None

        @functools.cached_property
        def built(self) -> Any:
            return build(self.descriptor)

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if self.annotation is str and type(value) is str:
                return value  # a plain str option's text: Typer's validator would return it unchanged
            return self.built._coerce_value(value, param=param, ctx=ctx)

    def deferred(descriptor: Any) -> Any:
        return DeferredRuntimeParam(
            parameter_info=descriptor.parameter_info, annotation=descriptor.annotation, descriptor=descriptor
        )

    deferred.deferred_by_aecore = True  # type: ignore[attr-defined]
    core.build_runtime_param = deferred
    return True
