"""``ae plugins new``: scaffold a plugin distribution that installs, works and passes its tests.

Every kind of plugin has a scaffold (encoder, decoder, regularizer, trainer,
hook, preset, command, dataset, loss and backend), each a small working
example of its kind whose tests use the conformance kit
(:mod:`aecore.testing`). The files come from
``aecore/templates/plugin/*.tmpl`` (package data), filled in with
:class:`string.Template`: ``<kind>.py.tmpl`` and ``test_<kind>.py.tmpl``
for the code and its tests, ``readme_<kind>.md.tmpl`` (or
``readme_component.md.tmpl``) for the README's kind-specific part. Nothing
here imports torch: the generated code does, once it is installed and used.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from aecore.errors import AecoreError, suggest

__all__ = ["KINDS", "ScaffoldError", "check_kind", "check_name", "new_command", "render", "scaffold_plugin"]

TEMPLATE_PACKAGE = "aecore"
TEMPLATE_DIR = ("templates", "plugin")
MAX_NAME_LENGTH = 30
_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
_DIST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


class ScaffoldError(AecoreError):
    """A plugin name, kind or target folder that ``ae plugins new`` cannot use."""


@dataclass(frozen=True)
class _Kind:
    group: str
    suffix: str  # ends the class's name, or (starting with '_') the function's or object's name
    try_it: str  # 'ae' lines (one per line) that use the new plugin
    settings: str = ""  # how users set its Config's fields; empty for kinds without a Config
    readme: str = "component"  # readme_<readme>.md.tmpl: the README's kind-specific part
    dependencies: tuple[str, ...] = ("aecore>=0.1,<0.2", "torch>=2.2")

    @property
    def has_config(self) -> bool:
        return bool(self.settings)

    def target(self, name: str) -> str:
        """What the entry point names: ``TinyConvEncoder``, or ``tiny_sum_command`` for a function."""
        if self.suffix.startswith("_"):
            slug = name.replace("-", "_")
            return slug if slug.endswith(self.suffix) else slug + self.suffix  # never a keyword
        return _class_name(name, self.suffix)


_CORE = "aecore>=0.1,<0.2"
_TRY_RUN = "ae train --encoder mlp --epochs 1 --out runs/{name}-try"

KINDS: dict[str, _Kind] = {
    "encoder": _Kind(
        "aecore.encoders",
        "Encoder",
        "ae train --encoder {name} --decoder mlp --epochs 1",
        "--set encoder.NAME=VALUE",
    ),
    "decoder": _Kind(
        "aecore.decoders",
        "Decoder",
        "ae train --encoder mlp --decoder {name} --epochs 1",
        "--set decoder.NAME=VALUE",
    ),
    "regularizer": _Kind(
        "aecore.regularizers",
        "Regularizer",
        "ae train --encoder mlp --reg {name} --set {name}.weight=1e-2 --epochs 1",
        "--set {name}.NAME=VALUE",
    ),
    "trainer": _Kind(
        "aecore.trainers",
        "Trainer",
        "ae train --encoder mlp --trainer {name} --epochs 1",
        "--set trainer.NAME=VALUE",
    ),
    "hook": _Kind(
        "aecore.hooks",
        "Hook",
        f"{_TRY_RUN}\ncat runs/{{name}}-try/{{name}}.jsonl",
        readme="hook",
        dependencies=(_CORE,),
    ),
    "preset": _Kind(
        "aecore.presets",
        "_preset",
        "ae presets\nae train --preset {name} --epochs 1",
        readme="preset",
        dependencies=(_CORE, "aecore-mlp>=0.1,<0.2"),
    ),
    "command": _Kind(
        "aecore.commands",
        "_command",
        f"{_TRY_RUN}\nae {{name}} runs/{{name}}-try/model.safetensors",
        readme="command",
        dependencies=(_CORE,),
    ),
    "dataset": _Kind(
        "aecore.datasets",
        "Source",
        'ae train --encoder mlp --data "{name}?rows=500" --epochs 1',
        "--data '{name}?NAME=VALUE&NAME=VALUE'",
        readme="dataset",
    ),
    "loss": _Kind(
        "aecore.losses",
        "Loss",
        "ae train --encoder mlp --loss {name} --set loss.delta=0.5 --epochs 1",
        "--set loss.NAME=VALUE",
        readme="loss",
    ),
    "backend": _Kind(
        "aecore.backends",
        "Backend",
        "ae train --encoder mlp --backend {name} --epochs 1",
        "--set backend.NAME=VALUE",
        readme="backend",
    ),
}

_DESCRIPTIONS = {
    "encoder": "A minimal aecore encoder: flatten, then one linear layer to the code.",
    "decoder": "A minimal aecore decoder: one linear layer, a sigmoid, and the input's shape.",
    "regularizer": "A minimal aecore regularizer: a small L2 penalty on the code.",
    "trainer": "A minimal aecore trainer: Adam over shuffled mini-batches, with validation and hooks.",
    "hook": "A minimal aecore hook: each epoch's metrics as one JSON line in the run directory.",
    "preset": "A minimal aecore preset: a small fully connected model recipe over aecore-mlp.",
    "command": "A minimal aecore command: a checkpoint's summary, read from its header alone.",
    "dataset": "A minimal aecore data source: a seeded synthetic table with a few hidden factors.",
    "loss": "A minimal aecore loss: Huber (smooth L1), quadratic for small errors and linear for large.",
    "backend": "A minimal aecore backend: plain autograd on CPU and CUDA, with AdamW as its optimizer.",
}

#: The kinds a --kind help text names, in order.
_KIND_LIST = ", ".join(list(KINDS)[:-1]) + f" or {list(KINDS)[-1]}"


def check_name(name: str) -> str:
    """``name`` if it can name a component, a package suffix and a distribution; else a ScaffoldError."""
    lowered = name.lower()
    for prefix in ("aecore-", "aecore_"):
        if lowered.startswith(prefix) and len(name) > len(prefix):
            raise ScaffoldError(
                f"leave out the '{prefix}' prefix: 'ae plugins new {name[len(prefix) :]}' "
                f"creates the distribution aecore-{name[len(prefix) :]}."
            )
    if not _NAME.fullmatch(name):
        hint = f" (did you mean '{_slugify(name)}'?)" if _slugify(name) else ""
        raise ScaffoldError(
            f"plugin name '{name}' must be lowercase letters and digits, optionally joined by single "
            f"'-' or '_', starting with a letter, e.g. 'tinyconv'{hint}."
        )
    if len(name) > MAX_NAME_LENGTH:
        raise ScaffoldError(f"plugin name '{name}' is {len(name)} characters; use at most {MAX_NAME_LENGTH}.")
    return name


def check_kind(kind: str) -> _Kind:
    if kind not in KINDS:
        raise ScaffoldError(
            f"unknown plugin kind '{kind}'.{suggest(kind, KINDS)} Choose one of: {', '.join(KINDS)}."
        )
    return KINDS[kind]


def scaffold_plugin(
    name: str,
    kind: str,
    directory: str | Path = ".",
    *,
    dist: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, list[Path]]:
    """Write a plugin distribution into ``directory/<dist>``; return the folder and the files written.

    ``dist`` defaults to ``aecore-<name>``; the package is ``aecore_<name>``
    either way (``-`` becomes ``_``). An existing non-empty folder is refused
    unless ``overwrite``, which replaces the generated files and leaves any
    others alone.
    """
    check_name(name)
    spec = check_kind(kind)
    slug = name.replace("-", "_")
    dist = f"aecore-{slug.replace('_', '-')}" if dist is None else dist
    if not _DIST.fullmatch(dist):
        raise ScaffoldError(
            f"distribution name '{dist}' is not valid; use letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit."
        )
    target = Path(directory).expanduser() / dist
    _check_target(target, overwrite)
    _check_installed(kind, name, dist, target)

    values = {
        "name": name,
        "slug": slug,
        "package": f"aecore_{slug}",
        "dist": dist,
        "attr": spec.target(name),  # templates say cls for a class, obj for a function or object
        "kind": kind,
        "group": spec.group,
        "entry_key": name,
        "description": _DESCRIPTIONS[kind],
        "try_it": spec.try_it.format(name=name),
        "settings": spec.settings.format(name=name),
        "dependencies": ", ".join(f'"{d}"' for d in spec.dependencies),
    }
    values["cls"] = values["obj"] = values["attr"]
    values["usage"] = render(f"readme_{spec.readme}.md.tmpl", values)
    values["parameters"] = render("readme_parameters.md.tmpl", values) if spec.has_config else ""
    files = {
        "pyproject.toml": "pyproject.toml.tmpl",
        "README.md": "README.md.tmpl",
        f"{values['package']}/__init__.py": f"{kind}.py.tmpl",
        f"tests/test_{slug}.py": f"test_{kind}.py.tmpl",
    }
    written = []
    for relative, template in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(template, values), encoding="utf-8")
        written.append(path)
    return target, written


def render(template: str, values: dict[str, str]) -> str:
    """One template file filled in; a placeholder without a value is a bug, so it raises KeyError."""
    source = resources.files(TEMPLATE_PACKAGE).joinpath(*TEMPLATE_DIR, template)
    return string.Template(source.read_text(encoding="utf-8")).substitute(values)


def _class_name(name: str, suffix: str) -> str:
    """``tiny-conv`` and ``Encoder`` give ``TinyConvEncoder``; ``my-encoder`` gives ``MyEncoder``."""
    camel = "".join(part.capitalize() for part in re.split(r"[-_]", name))
    return camel if camel.endswith(suffix) else camel + suffix


def _slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")
    slug = re.sub(r"^(aecore-)+", "", re.sub(r"^[0-9-]+", "", slug))
    return slug[:MAX_NAME_LENGTH].strip("-")


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise ScaffoldError(f"{target} is a file; choose another --dir or --dist.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ScaffoldError(
            f"{target} already exists and is not empty; choose another --dir or pass --overwrite "
            "(which replaces the generated files only)."
        )


def _check_installed(kind: str, name: str, dist: str, target: Path) -> None:
    """Refuse a name that would clash with an installed plugin other than this one."""
    from aecore import registry  # reads entry-point metadata only; imports no plugin

    others = [c for c in registry.list_components(kind) if c.name == name and c.dist != dist]
    if others:
        raise ScaffoldError(
            f"an installed {kind} is already called '{name}' (from {others[0].dist}); "
            "choose another name, or every use of it would have to say which distribution."
        )
    try:
        import importlib.metadata

        installed = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return
    origin = json.loads(installed.read_text("direct_url.json") or "{}").get("url", "")
    if origin != target.resolve().as_uri():
        raise ScaffoldError(
            f"a distribution named {dist} is already installed; installing this one would replace it. "
            "Choose another name or --dist."
        )


def new_command(
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME", help="Component name, e.g. 'tinyconv': what 'ae train' and 'ae plugins' call it."
        ),
    ],
    kind: Annotated[str, typer.Option("--kind", "-k", help=f"{_KIND_LIST}.")],
    directory: Annotated[
        Path, typer.Option("--dir", help="Folder to create the distribution's folder in.")
    ] = Path("."),
    dist: Annotated[
        str | None,
        typer.Option(help="Distribution name, also the folder's name (default: aecore-NAME)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Write into an existing non-empty folder, replacing the generated files.")
    ] = False,
) -> None:
    """Create a ready-to-install plugin of any kind: pyproject.toml, working code, README and tests.

    The package is aecore_NAME; its tests use aecore's conformance kit (aecore.testing).
    """
    target, written = scaffold_plugin(name, kind, directory, dist=dist, overwrite=overwrite)
    lines = [f"created {kind} '{name}' in {target}:"]
    lines += [f"  {path.relative_to(target)}" for path in written]
    lines += ["next:", f"  pip install -e {target}", f"  pytest {target / 'tests'}"]
    lines += [f"  {line}" for line in KINDS[kind].try_it.format(name=name).splitlines()]
    typer.echo("\n".join(lines))  # plain text: paths stay whole for copying
