"""What pyproject.toml claims about versions is what is tested.

Each lower bound must be the version ``nox -s lowest`` installs (constraints-lowest.txt pins it
exactly), and the newest tested set (constraints.txt) must satisfy every bound, upper ones too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the 3.10 runs skip this check alone


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _version(text: str) -> tuple[int, ...]:
    """A release version as numbers, trailing zeros dropped (2.14 and 2.14.0 are one version)."""
    parts = [int(p) for p in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_normalise(name)] = version.strip()
    return pins


def _requirements() -> list[tuple[str, list[tuple[str, str]]]]:
    """(name, [(operator, version), ...]) for every dependency pyproject.toml declares, extras too."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        texts += extra
    found = []
    for text in texts:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*(.*?)\s*(?:;.*)?", text)
        assert match, text
        specifiers = [
            re.fullmatch(r"\s*(>=|<=|==|<|>|~=|!=)\s*(\S+)\s*", s) for s in match[2].split(",") if s
        ]
        assert all(specifiers), text
        found.append((_normalise(match[1]), [(s[1], s[2]) for s in specifiers]))  # type: ignore[index]
    return found


def test_every_lower_bound_is_the_version_nox_lowest_installs():
    lowest = _pins(ROOT / "constraints-lowest.txt")
    claims = [(name, version) for name, specs in _requirements() for op, version in specs if op == ">="]
    assert claims
    for name, version in claims:
        assert name in lowest, (
            f"{name}>={version}: constraints-lowest.txt does not pin {name}, so no run tests it"
        )
        assert _version(lowest[name]) == _version(version), (
            f"pyproject.toml claims {name}>={version}, but nox -s lowest installs {name}=={lowest[name]}"
        )


def test_every_requirement_has_a_lower_bound_and_admits_the_tested_set():
    newest, lowest = _pins(ROOT / "constraints.txt"), _pins(ROOT / "constraints-lowest.txt")
    compare = {
        ">=": lambda a, b: a >= b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
    }
    for name, specs in _requirements():
        assert any(op in (">=", "==") for op, _ in specs), f"{name} has no lower bound"
        for pins in (newest, lowest):
            assert name in pins, f"{name} is not pinned in every constraints file"
            for op, version in specs:
                assert compare[op](_version(pins[name]), _version(version)), (name, op, version, pins[name])


def test_every_plugin_package_is_under_the_import_contracts():
    """A new plugin left out of import-linter's lists would escape 'no plugin imports another'."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts = {c["name"]: c for c in config["contracts"]}
    packages = set()
    for pyproject in (ROOT / "plugins").glob("*/pyproject.toml"):
        include = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
        packages |= {pattern.rstrip("*") for pattern in include}
    assert packages <= set(config["root_packages"])
    assert packages <= set(contracts["The core imports no plugin"]["forbidden_modules"])
    assert packages <= set(contracts["No plugin imports another plugin"]["modules"])
