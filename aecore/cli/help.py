"""A command's one-line help, read from its source file without importing it.

``ae --help`` must list every installed command without importing any
plugin (one that is slow, or broken, or needs torch must not cost the
listing anything). An entry point names ``module:attribute``; this finds
the module's file through the import system's finders (which locate a
module without running it), parses it with :mod:`ast`, and takes the first
line of the attribute's docstring, or the ``help=`` text of a
``typer.Typer(...)`` it is assigned from. Without either, the listing falls
back to the distribution's name.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import sys
from pathlib import Path

from aecore import registry

__all__ = ["command_help", "module_file"]


def command_help(entry: registry.PluginInfo) -> str:
    """The first line of the command's help, or where it comes from when that cannot be read."""
    broken = registry.known_broken().get(f"{entry.kind}:{entry.qualified_name}")
    if broken is not None:
        return f"(broken: {broken})"
    module, _, attr = entry.target.partition(":")
    path = module_file(module.strip())
    text = _help_in(str(path), attr.strip()) if path is not None else None
    return text or f"(from {entry.dist} {entry.version})"


def module_file(module: str) -> Path | None:
    """The source file of ``module``, found without importing it (or its packages)."""
    top, *rest = module.split(".")
    loaded = sys.modules.get(top)
    if loaded is not None:
        origin, locations = getattr(loaded, "__file__", None), list(getattr(loaded, "__path__", []))
    else:
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        origin, locations = spec.origin, list(spec.submodule_search_locations or [])
    if not rest:
        return Path(origin) if origin and origin.endswith(".py") else None
    for i, part in enumerate(rest):
        found = None
        for location in locations:
            candidate = Path(location) / part
            if i == len(rest) - 1:
                for file in (candidate.with_suffix(".py"), candidate / "__init__.py"):
                    if file.is_file():
                        return file
            elif candidate.is_dir():
                found = candidate
                break
        if found is None:
            return None
        locations = [str(found)]
    return None


@functools.cache
def _help_in(path: str, attr: str) -> str | None:
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, SyntaxError):
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == attr:
            return _first_line(ast.get_docstring(node))
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == attr for t in node.targets):
            value = node.value
            if isinstance(value, ast.Call):
                for keyword in value.keywords:
                    if keyword.arg == "help" and isinstance(keyword.value, ast.Constant):
                        return _first_line(str(keyword.value.value))
    return None


def _first_line(text: str | None) -> str | None:
    if not text:
        return None
    return text.strip().splitlines()[0].strip() or None
