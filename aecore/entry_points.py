"""Read installed distributions' entry points straight from their metadata folders.

``importlib.metadata`` costs about 17 ms to import (it pulls in the ``email``
package) and as much again to walk every distribution, a third of the
budget ``ae plugins list`` has (a tenth of ``import torch``; see
docs/performance.md). aecore needs only a few groups, so this reads each
``*.dist-info`` / ``*.egg-info`` folder on ``sys.path`` directly, opening a
distribution's ``METADATA`` only when its ``entry_points.txt`` names one of
those groups. Path entries that are not folders (zip files) are left to
``importlib.metadata``. As with imports, the first distribution of a name
on ``sys.path`` wins.

Any installed distribution's metadata may be broken, and none may stop
aecore: each problem is reported as one :class:`MetadataWarning` line naming
the distribution and the file, and the rest is read. In an aecore group
every problem is reported (a ``[group]`` header without its ``]``, a line
without ``name = target``, an empty name or target, a METADATA without
``Name`` or ``Version``), and so is a ``.dist-info`` that is a file; elsewhere
only what breaks ``importlib.metadata`` itself (a file that is not UTF-8
text, a line without ``=`` inside a group), because that breaks every tool
that walks all entry points. torch and triton are two: importing them
walks the entry points for device and compiler backends, and fails on such a
file; so when one is found before they are imported, those walks are turned
off for this process (``TORCH_DEVICE_BACKEND_AUTOLOAD=0``,
``TRITON_BACKENDS_IN_TREE=1``, each unless it is set already): they could not
have loaded anything. That needs the scan first, which the ``ae`` command
does before any other work; a program that imports torch itself first meets
the failure in torch.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass

from aecore.errors import Notice

__all__ = ["EntryPointRecord", "MetadataWarning", "installed_version", "read_entry_points"]

_SUFFIXES = (".dist-info", ".egg-info")


class MetadataWarning(Notice):
    """An installed distribution's metadata is malformed; what can be read is used, the rest ignored."""


@dataclass(frozen=True)
class EntryPointRecord:
    """One entry point and the distribution that publishes it."""

    dist: str  # the distribution's name as its metadata spells it
    version: str
    group: str
    name: str
    value: str
    location: str  # the metadata folder (or zip) it was read from: tells copies apart


@dataclass(frozen=True)
class _Problem:
    line: int
    what: str
    breaks_importlib: bool


def _parse(text: str, ours: str) -> tuple[list[tuple[str, str, str]], list[_Problem]]:
    """(group, name, value) of the groups starting with ``ours`` in an entry_points.txt (INI sections
    of ``name = value`` lines), and what is wrong: in those groups anything, elsewhere what breaks
    ``importlib.metadata`` (a line inside a section that has no ``=``; only ``#`` starts a comment)."""
    entries: list[tuple[str, str, str]] = []
    problems: list[_Problem] = []
    group: str | None = None  # ours, as far as we can tell; None outside any group or after a bad header
    in_section = False  # importlib.metadata's view: every line after the first [...] line is an entry
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        if line.startswith("[") and line.endswith("]"):
            group, in_section = line[1:-1].strip() or None, True
            continue
        breaks = in_section and "=" not in line
        mine = group is not None and group.startswith(ours)
        if line.startswith("[") and (ours in line or mine or breaks):
            problems.append(_Problem(number, f"{_show(line)} is not a [group] header", breaks))
            group = None  # what follows belongs to no group we can name
        elif breaks:
            problems.append(_Problem(number, f"{_show(line)} is not 'name = target'", True))
        elif mine:
            name, _, value = (part.strip() for part in line.partition("="))
            if name and value:
                entries.append((group, name, value))  # type: ignore[arg-type]
            else:
                problems.append(
                    _Problem(number, f"{_show(line)} has an empty {'target' if name else 'name'}", False)
                )
    return entries, problems


def _show(line: str) -> str:
    return repr(line if len(line) <= 60 else line[:57] + "...")


def _read(path: str) -> tuple[str | None, str | None]:
    """(text, None); (None, why) when it cannot be read; (None, None) when there is no such file."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read(), None
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except (OSError, ValueError) as exc:
        return None, f"cannot be read ({type(exc).__name__})"


def _from_folder_name(folder: str) -> tuple[str, str]:
    stem = os.path.basename(folder).rsplit(".", 1)[0]
    name, _, version = stem.partition("-")
    return name, version


def _name_and_version(folder: str) -> tuple[str, str]:
    """From the METADATA (or PKG-INFO) headers; what they lack, from the folder name (and said)."""
    name, version = _from_folder_name(folder)
    for file in ("METADATA", "PKG-INFO"):
        path = os.path.join(folder, file)
        text, why = _read(path)
        if why is not None:
            _warn(name, version, path, f"{why}; the folder name gives its name and version")
            return name, version
        if text is None:
            continue
        found: dict[str, str] = {}
        for line in text.splitlines():
            if not line.strip():
                break  # the headers end at the first blank line
            key, _, value = line.partition(":")
            if key in ("Name", "Version") and value.strip():
                found.setdefault(key, value.strip())
        missing = [k for k in ("Name", "Version") if k not in found]
        if missing:
            _warn(name, version, path, f"has no {' or '.join(missing)} header; the folder name gives it")
        return found.get("Name", name), found.get("Version", version)
    _warn(name, version, folder, "has no METADATA; the folder name gives its name and version")
    return name, version


def _folders(entry: str) -> list[tuple[str, bool]]:
    """The metadata folders of one ``sys.path`` entry, sorted, each with whether it is a folder."""
    try:
        found = sorted(
            (e.name, e.is_dir()) for e in os.scandir(entry or ".") if e.name.lower().endswith(_SUFFIXES)
        )
    except OSError:
        return []
    return [(os.path.join(entry or ".", name), is_dir) for name, is_dir in found]


def read_entry_points(group_prefix: str, path: list[str] | None = None) -> list[EntryPointRecord]:
    """Entry points whose group starts with ``group_prefix``, in ``sys.path`` order.

    Returns every distribution's records, duplicates included; the caller
    decides which copy wins (the first one, as imports do). Malformed
    metadata is read as far as it can be and reported, one
    :class:`MetadataWarning` line per problem (see the module docstring).
    """
    records: list[EntryPointRecord] = []
    for entry in sys.path if path is None else path:
        if entry and os.path.isfile(entry):  # a zip on sys.path: importlib.metadata reads those
            records += _from_importlib(group_prefix, entry)
            continue
        for folder, is_dir in _folders(entry):
            if not is_dir:  # an .egg-info may be a file (PKG-INFO of an old install); a .dist-info may not
                if folder.lower().endswith(".dist-info"):
                    _warn(
                        *_from_folder_name(folder), folder, "is a file, not a metadata folder; it is ignored"
                    )
                continue
            file = os.path.join(folder, "entry_points.txt")
            text, why = _read(file)
            if why is not None:
                breaks = why.startswith(
                    "is not UTF-8"
                )  # importlib.metadata raises on it; on OSError it skips
                _warn(*_from_folder_name(folder), file, f"{why}; its entry points are ignored", breaks)
                continue
            if not text:
                continue
            entries, problems = _parse(text, group_prefix)
            if not entries and not problems:  # most distributions: no aecore group, nothing wrong
                continue
            name, version = _name_and_version(folder) if entries else _from_folder_name(folder)
            for problem in problems:
                what = f"line {problem.line}: {problem.what}; that line is ignored"
                _warn(name, version, file, what, problem.breaks_importlib)
            if entries and not name:
                _warn(name, version, folder, "names no distribution; its entry points are ignored")
                continue
            records += [EntryPointRecord(name, version, g, n, v, folder) for g, n, v in entries]
    return records


def _warn(dist: str, version: str, where: str, problem: str, breaks_importlib: bool = False) -> None:
    """Say one problem with ``dist``'s metadata file ``where`` in one line; spare torch it (see above)."""
    if breaks_importlib:
        spared = [f"{var}={value}" for var, value in _spare_walkers()]
        if spared:
            problem += (
                ", and the entry-point walks of torch and triton, which would fail on it, are off for "
                f"this process ({', '.join(spared)})"
            )
    label = f"{dist} {version}".strip() or "without a name"
    warnings.warn(
        f"installed distribution {label}: {where} {problem}. Reinstall or uninstall {dist or 'it'}.",
        MetadataWarning,
        stacklevel=2,
    )


#: Libraries aecore imports that walk every distribution's entry points when imported, and the
#: setting of each that skips the walk: (module, environment variable, value).
_WALKERS = (("torch", "TORCH_DEVICE_BACKEND_AUTOLOAD", "0"), ("triton", "TRITON_BACKENDS_IN_TREE", "1"))


def _spare_walkers() -> list[tuple[str, str]]:
    """Turn off the walks of the libraries not imported yet (and not set by the user); what was set."""
    spared = []
    for module, var, value in _WALKERS:
        if module not in sys.modules and var not in os.environ:
            os.environ[var] = value
            spared.append((var, value))
    return spared


def _from_importlib(group_prefix: str, entry: str) -> list[EntryPointRecord]:
    import importlib.metadata as md

    records = []
    try:
        for index, dist in enumerate(md.distributions(path=[entry])):
            name, where = (
                dist.metadata["Name"] or "unknown",
                f"{entry}#{index}",
            )  # tells copies in one zip apart
            records += [
                EntryPointRecord(name, dist.version, ep.group, ep.name, ep.value, where)
                for ep in dist.entry_points
                if ep.group.startswith(group_prefix)
            ]
    except Exception as exc:  # whatever a zip holds, it must not stop discovery
        _warn("", "", entry, f"could not be read ({type(exc).__name__}); the rest of it is ignored")
    return records


def installed_version(dist: str) -> str:
    """The installed version of distribution ``dist``, or ``0.0.0+unknown`` when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:  # a source tree that is not installed
        return "0.0.0+unknown"
