"""A command's one-line help, read from its source file without importing it.

``ae --help`` must list every installed command without importing any
plugin (one that is slow, or broken, or needs torch must not cost the
listing anything). An entry point names ``module:attribute``; this finds
the module's file through the import system's finders (which locate a
module without running it), parses it with :mod:`ast`, and takes the first
line of the attribute's docstring, or the ``help=`` text of a
``typer.Typer(...)`` it is assigned from. Without either, the listing falls
back to the distribution's name. What a file gives is remembered in
``<cache dir>/command-help.json`` under its path, size and modification
time, so only a new or changed file is parsed.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from aecore import registry
from aecore.paths import cache_dir

__all__ = ["command_help", "module_file", "source_help"]


def command_help(entry: registry.PluginInfo, broken: dict[str, str] | None = None) -> str:
    """The first line of the command's help, or where it comes from when that cannot be read.

    ``broken`` is :func:`aecore.registry.known_broken`, when the caller already has it.
    """
    reason = (registry.known_broken() if broken is None else broken).get(
        f"{entry.kind}:{entry.qualified_name}"
    )
    if reason is not None:
        return f"(broken: {reason})"
    return source_help(entry.target) or f"(from {entry.dist} {entry.version})"


def source_help(target: str) -> str | None:
    """The one-line help of ``module:attribute`` as its source file gives it, or None if it gives none."""
    module, _, attr = target.partition(":")
    path = module_file(module.strip())
    return _helps(str(path)).get(attr.strip()) if path is not None else None


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
def _helps(path: str) -> dict[str, str]:
    """Every top-level name's help in the file at ``path``, from the disk cache when it is current."""
    try:
        stat = os.stat(path)
    except OSError:
        return {}
    key = f"{stat.st_size}:{stat.st_mtime_ns}"
    store = _cache_file()
    known = _known(store)
    entry = known.get(path)
    if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("helps"), dict):
        return entry["helps"]
    helps = _parse(path)
    known[path] = {"key": key, "helps": helps}
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f".{store.name}.{os.getpid()}")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, store)
    except OSError:
        pass  # a read-only cache only costs the next listing a parse
    return helps


@functools.cache
def _known(store: Path) -> dict[str, Any]:
    """The cache file's contents, read once per process (every command's file shares it)."""
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _cache_file() -> Path:
    return cache_dir() / "command-help.json"


def _parse(path: str) -> dict[str, str]:
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, SyntaxError):
        return {}
    helps: dict[str, str] = {}
    for node in tree.body:
        text = None
        names: list[str] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names, text = [node.name], _first_line(ast.get_docstring(node))
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            for keyword in node.value.keywords:
                if keyword.arg == "help" and isinstance(keyword.value, ast.Constant):
                    text = _first_line(str(keyword.value.value))
        for name in names:
            if text:
                helps[name] = text
    return helps


def _first_line(text: str | None) -> str | None:
    if not text:
        return None
    return text.strip().splitlines()[0].strip() or None
