"""``ae inspect``: what a checkpoint holds, read from its metadata before (or without) its weights.

Sizes per component come from the safetensors header (tensor shapes, no
weights read), so a checkpoint whose plugins are not installed can still be
described; when it loads, they come from its parameters (buffers such as
BatchNorm's running statistics excluded), and the module tree is shown.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from aecore.cli.common import ModelArg, OverwriteOpt, output_file
from aecore.cli.output import console

__all__ = ["inspect_command"]


def inspect_command(
    model: ModelArg,
    out: Annotated[
        Path | None,
        typer.Option(help="Also write everything shown as JSON to this file (with --config: the TOML)."),
    ] = None,
    overwrite: OverwriteOpt = False,
    config: Annotated[
        bool,
        typer.Option(
            "--config",
            help="Print only the TOML that trains this run again with 'ae train --config FILE' "
            "(docs/config-files.md).",
        ),
    ] = False,
) -> None:
    """What a checkpoint holds: components, data, training, versions, metrics, module tree and sizes."""
    if config:
        _print_config(model, out, overwrite)
        return
    from rich.markup import escape
    from rich.table import Table
    from rich.tree import Tree

    from aecore import checkpoint
    from aecore.errors import AecoreError
    from aecore.io import read_header

    path = checkpoint.resolve(model)
    meta = checkpoint.read_metadata(path)
    spec = checkpoint.model_spec(meta, path)
    target = output_file(out, out, overwrite) if out is not None else None
    loaded, note = None, ""
    try:
        loaded = checkpoint.load(path)
    except AecoreError as exc:
        note = str(exc)
    counts = _parameter_counts(loaded) if loaded is not None else _stored_counts(read_header(path))
    input_size = math.prod(spec.input_shape)
    ratio = input_size / spec.latent_dim

    console.print(f"[bold]{escape(str(path))}[/bold]  format {meta.get('format_version')}")
    comps = Table(title="components")
    for col in ("role", "name", "dist", "version", "parameters", "settings"):
        comps.add_column(col, justify="right" if col == "parameters" else "left")
    roles = [("encoder", spec.encoder, "encoder"), ("decoder", spec.decoder, "decoder")]
    roles += [("regularizer", r, r.name) for r in spec.regularizers]
    for role, comp, key in roles:
        cells = (role, comp.name, comp.dist, comp.version, f"{counts.get(key, 0):,}", _settings(comp.params))
        comps.add_row(*map(escape, cells))
    console.print(comps)

    facts = Table(show_header=False, title="model")
    facts.add_column("")
    facts.add_column("")
    total = sum(counts.values())
    facts.add_row("input shape", "×".join(map(str, spec.input_shape)))
    facts.add_row("latent size", str(spec.latent_dim))
    facts.add_row("compression", f"{ratio:.1f}× ({input_size:,} → {spec.latent_dim})")
    facts.add_row("parameters" if loaded is not None else "stored values (weights not loaded)", f"{total:,}")
    data = meta.get("data", {})
    norm = data.get("normalisation") if isinstance(data.get("normalisation"), dict) else {}
    facts.add_row("data", escape(f"{data.get('name')} ({_normalisation(norm)})"))
    if isinstance(data.get("classes"), list):
        facts.add_row("trained on classes", ", ".join(map(str, data["classes"])))
    training = meta.get("training", {})
    trainer = training.get("trainer") if isinstance(training.get("trainer"), dict) else {}
    params = trainer.get("params") if isinstance(trainer.get("params"), dict) else {}
    facts.add_row("trainer", escape(f"{trainer.get('name')} {_settings(params)}"))
    for key in ("preset", "loss", "seed", "val_fraction", "device", "backend"):
        if training.get(key) is not None:
            facts.add_row(key, escape(str(training[key])))
    facts.add_row("versions", escape(", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())))
    console.print(facts)

    metrics = meta.get("metrics", {})
    if metrics:
        table = Table(title="metrics (at save time)")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in metrics.items():
            table.add_row(escape(str(key)), f"{value:.6g}" if isinstance(value, float) else str(value))
        console.print(table)

    tree = None
    if loaded is not None:
        tree = _module_tree(loaded, "model")

        def add(parent: Tree, node: dict[str, Any]) -> None:
            branch = parent.add(_label(node))
            for child in node["children"]:
                add(branch, child)

        shown = Tree(_label(tree))
        for child in tree["children"]:
            add(shown, child)
        console.print(shown)
    else:
        console.print(f"module tree unavailable: {escape(note)}")
    if target is not None:
        report = {
            "path": str(path),
            "metadata": meta,
            "parameters": counts,
            "total_parameters": total,
            "compression_ratio": ratio,
            "tree": tree,
        }
        target.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {target}")


def _print_config(model: Path, out: Path | None, overwrite: bool) -> None:
    """The run request a checkpoint records, as the TOML that reproduces the run (to stdout or ``out``)."""
    from aecore import checkpoint
    from aecore.cli.output import warning_line
    from aecore.runfile import reproducing_toml

    path = checkpoint.resolve(model)
    target = output_file(out, out, overwrite) if out is not None else None
    text, note = reproducing_toml(path, checkpoint.read_metadata(path))
    if target is not None:
        target.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {target}")
    else:
        typer.echo(text, nl=False)
    if note:
        warning_line(note)


def _component_of(key: str) -> str:
    """``encoder.net.0.weight`` -> ``encoder``; ``regularizers.sparse.x`` -> ``sparse``."""
    parts = key.split(".")
    return parts[1] if parts[0] == "regularizers" and len(parts) > 1 else parts[0]


def _stored_counts(header: dict[str, Any]) -> dict[str, int]:
    """Elements stored per component, from the file's header only (buffers included)."""
    counts: dict[str, int] = {}
    for key, entry in header.items():
        if key != "__metadata__" and isinstance(entry, dict) and isinstance(entry.get("shape"), list):
            n = math.prod(int(s) for s in entry["shape"])
            counts[_component_of(key)] = counts.get(_component_of(key), 0) + n
    return counts


def _parameter_counts(model: Any) -> dict[str, int]:
    """Trainable-parameter count per component of a loaded model."""
    counts = {
        "encoder": sum(p.numel() for p in model.encoder.parameters()),
        "decoder": sum(p.numel() for p in model.decoder.parameters()),
    }
    for name, reg in model.regularizers.items():
        counts[name] = sum(p.numel() for p in reg.parameters())
    return counts


def _module_tree(module: Any, name: str) -> dict[str, Any]:
    """The torch module tree with parameter counts (subtree totals)."""
    return {
        "name": name,
        "type": type(module).__name__,
        "repr": module.extra_repr(),
        "parameters": sum(p.numel() for p in module.parameters()),
        "children": [_module_tree(child, n) for n, child in module.named_children()],
    }


def _label(node: dict[str, Any]) -> str:
    from rich.markup import escape

    extra = f" ({node['repr']})" if node["repr"] and not node["children"] else ""
    return (
        f"[bold]{escape(node['name'])}[/bold]: {escape(node['type'] + extra)} · {node['parameters']:,} params"
    )


def _settings(params: dict[str, Any]) -> str:
    """``hidden=512,256 activation=relu``: compact, one line."""

    def fmt(v: Any) -> str:
        return ",".join(map(str, v)) if isinstance(v, list) else str(v)

    return " ".join(f"{k}={fmt(v)}" for k, v in params.items())


def _normalisation(norm: dict[str, Any]) -> str:
    kind = norm.get("kind", "identity")
    if kind == "scale":
        return f"scale ÷{norm.get('divisor', 1):g}"
    if kind == "standardise":
        return f"standardise, {len(norm.get('mean', []))} column statistics from the training split"
    return str(kind)
