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
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["EntryPointRecord", "installed_version", "read_entry_points"]

_SUFFIXES = (".dist-info", ".egg-info")


@dataclass(frozen=True)
class EntryPointRecord:
    """One entry point and the distribution that publishes it."""

    dist: str  # the distribution's name as its metadata spells it
    version: str
    group: str
    name: str
    value: str
    location: str  # the metadata folder (or zip) it was read from: tells copies apart


def _parse(text: str) -> Iterator[tuple[str, str, str]]:
    """(group, name, value) from an entry_points.txt (INI sections of ``name = value`` lines)."""
    group = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1].strip()
        elif group is not None and "=" in line:
            name, _, value = line.partition("=")
            yield group, name.strip(), value.strip()


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, ValueError):  # unreadable, or not UTF-8: that distribution only is skipped
        return None


def _name_and_version(folder: str) -> tuple[str, str]:
    """From the METADATA (or PKG-INFO) headers, else from the folder name."""
    stem = os.path.basename(folder).rsplit(".", 1)[0]
    name, _, version = stem.partition("-")
    headers = _read(os.path.join(folder, "METADATA")) or _read(os.path.join(folder, "PKG-INFO")) or ""
    for line in headers.splitlines():
        if not line.strip():
            break  # the headers end at the first blank line
        key, _, value = line.partition(":")
        if key == "Name":
            name = value.strip()
        elif key == "Version":
            version = value.strip()
    return name, version


def _folders(entry: str) -> list[str]:
    try:
        names = sorted(e.name for e in os.scandir(entry or ".") if e.name.lower().endswith(_SUFFIXES))
    except OSError:
        return []
    return [os.path.join(entry or ".", n) for n in names]


def read_entry_points(group_prefix: str, path: list[str] | None = None) -> list[EntryPointRecord]:
    """Entry points whose group starts with ``group_prefix``, in ``sys.path`` order.

    Returns every distribution's records, duplicates included; the caller
    decides which copy wins (the first one, as imports do).
    """
    records: list[EntryPointRecord] = []
    marker = "[" + group_prefix
    for entry in sys.path if path is None else path:
        if entry and os.path.isfile(entry):  # a zip on sys.path: importlib.metadata reads those
            records += _from_importlib(group_prefix, entry)
            continue
        for folder in _folders(entry):
            text = _read(os.path.join(folder, "entry_points.txt"))
            if not text or marker not in text:  # most distributions: no aecore group, nothing to parse
                continue
            name, version = _name_and_version(folder)
            records += [
                EntryPointRecord(name, version, group, ep_name, value, folder)
                for group, ep_name, value in _parse(text)
                if group.startswith(group_prefix)
            ]
    return records


def _from_importlib(group_prefix: str, entry: str) -> list[EntryPointRecord]:
    import importlib.metadata as md

    records = []
    for index, dist in enumerate(md.distributions(path=[entry])):
        name, where = dist.metadata["Name"] or "unknown", f"{entry}#{index}"  # tells copies in one zip apart
        records += [
            EntryPointRecord(name, dist.version, ep.group, ep.name, ep.value, where)
            for ep in dist.entry_points
            if ep.group.startswith(group_prefix)
        ]
    return records


def installed_version(dist: str) -> str:
    """The installed version of distribution ``dist``, or ``0.0.0+unknown`` when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:  # a source tree that is not installed
        return "0.0.0+unknown"
