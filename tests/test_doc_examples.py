"""The Python examples in the README and docs/ run, so they cannot drift from the code.

Each page's ```python blocks run in order, in one namespace, in a fresh
directory. A block whose first line is a comment naming a file
(``# my_ae_plugin/__init__.py``) is written to that file instead, in a folder
put on ``sys.path``, so later blocks can import the plugin the page builds.
Functions named ``test_*`` that a page defines are called at the end, with
pytest fixtures for their arguments (``ae_tiny_dataset``, ``tmp_path``, ...),
as pytest would call them in a plugin's own tests.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
FILE_LINE = re.compile(r"#\s*([\w./-]+\.py)\s*$")


def _pages_with_examples() -> list[Path]:
    return [p for p in PAGES if BLOCK.search(p.read_text())]


@pytest.mark.parametrize("page", _pages_with_examples(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_run(page, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    files = tmp_path / "src"
    files.mkdir()
    monkeypatch.syspath_prepend(str(files))
    before = set(sys.modules)
    module = types.ModuleType(f"doc_example_{page.stem.replace('-', '_')}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    namespace = module.__dict__
    try:
        for number, match in enumerate(BLOCK.finditer(page.read_text()), 1):
            code = match.group(1)
            first = code.splitlines()[0] if code.strip() else ""
            target = FILE_LINE.fullmatch(first.strip())
            if target:
                path = files / target.group(1)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(code)
                continue
            exec(compile(code, f"{page.name} (block {number})", "exec"), namespace)
        for name, value in list(namespace.items()):
            if name.startswith("test_") and callable(value):
                fixtures = {arg: request.getfixturevalue(arg) for arg in inspect.signature(value).parameters}
                value(**fixtures)
    finally:
        written = {p.name for p in files.iterdir()} | {p.stem for p in files.iterdir()}
        for name in set(sys.modules) - before:  # the page's own plugin must not leak into other tests
            if name == module.__name__ or name.split(".")[0] in written:
                del sys.modules[name]


def test_every_example_block_is_seen():
    """The pages this test runs are the ones that have examples (a renamed fence would be missed)."""
    fences = [p for p in PAGES if "```py" in p.read_text() and not BLOCK.search(p.read_text())]
    assert not fences, f"python blocks this test cannot see: {fences}"
