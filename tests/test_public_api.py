"""The top-level API: every name ``aecore`` exports resolves to what it says, whatever was imported first."""

from __future__ import annotations

import json
import subprocess
import sys

import aecore

#: Exported name -> what it must be: a function or a class.
EXPECTED = {
    "compose": "function",
    "load": "function",
    "save": "function",
    "read_metadata": "function",
    "load_dataset": "function",
    "train": "function",
    "resume": "function",
    "Autoencoder": "class",
    "RunRequest": "class",
    "TrainResult": "class",
}

# Importing every core module first must not replace a lazy function with a module of the same name.
CODE = """
import importlib, inspect, json, pkgutil, sys, aecore
for m in pkgutil.walk_packages(aecore.__path__, "aecore."):
    if ".templates" not in m.name and not m.name.endswith("__main__"):
        importlib.import_module(m.name)
names = json.loads(sys.argv[1])
print(json.dumps({n: "class" if inspect.isclass(getattr(aecore, n)) else
                  "function" if inspect.isfunction(getattr(aecore, n)) else
                  type(getattr(aecore, n)).__name__ for n in names}))
"""


def test_exported_names_are_not_shadowed_by_submodules():
    argv = [sys.executable, "-c", CODE, json.dumps(sorted(EXPECTED))]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == EXPECTED


def test_every_exported_name_is_listed():
    assert set(EXPECTED) | {"AecoreError", "registry", "__version__"} == set(aecore.__all__)
    assert aecore.__version__ == "0.1.0"
