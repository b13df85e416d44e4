"""Rich tables for the benchmarks: one per section, then the targets with PASS/FAIL.

The JSON record holds every figure; the tables show the medians and ratios
a reader needs to judge the issue at a glance.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_report"]

_MB = 1024 * 1024


def _num(value: Any, fmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def _f(value: Any) -> float:
    """A figure from the record as a float (null, written for NaN, becomes NaN again)."""
    return math.nan if value is None else float(value)


def _targets(console: Console, title: str, targets: Iterable[dict[str, Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("target", "value", "limit", "result"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for t in targets:
        verdict = "[green]PASS[/]" if t["passed"] else "[red]FAIL[/]"
        if t.get("note"):
            verdict += f" ({t['note']})"
        bound = "≥" if t.get("at_least") else "≤"
        table.add_row(t["name"], _num(t["value"]), f"{bound} {t['limit']:g}", verdict)
    console.print(table)


def _throughput(console: Console, r: dict[str, Any]) -> None:
    w = r["workload"]
    table = Table(
        title=(
            f"Training throughput: '{w['preset']}' on {w['train_samples']:,} images, "
            f"batch {w['batch_size']}, {w['epochs']} epoch(s), median of {w['repeats']}, "
            + (f"{w['threads']} thread(s)" if w.get("device", "cpu") == "cpu" else f"on {w['device']}")
        ),
        title_justify="left",
    )
    for column in ("loop", "s/epoch", "runs (s/epoch)", "÷ aecore", "test MSE", "efficiency"):
        table.add_column(column, justify="left" if column == "loop" else "right")
    aecore = _f(r["seconds_per_epoch"]["aecore"])
    from benchmarks.throughput import LABELS

    for name, seconds in r["seconds_per_epoch"].items():
        runs = ", ".join(_num(run["seconds_per_epoch"], ".2f") for run in r["runs"][name])
        share = _num(_f(seconds) / aecore if aecore else math.nan, ".2f")
        eff = _f(r["efficiency"][name])
        table.add_row(
            f"{LABELS.get(name, '')} {name}",
            _num(seconds, ".2f"),
            runs,
            share,
            _num(r["test_mse"][name], ".5f"),
            "-" if math.isnan(eff) else f"{eff:.1%}",
        )
    console.print(table)
    m, f = r["matmul"], r["flops"]
    console.print(
        f"ratios: aecore/plain {_num(r['ratios']['aecore/plain'], '.2f')} "
        f"(without a backend {_num(r['ratios'].get('aecore-autograd/plain', math.nan), '.2f')}), "
        f"aecore/classic {_num(r['ratios']['aecore/classic'], '.2f')}; test MSE aecore vs plain "
        f"{_num(100 * _f(r['test_mse_rel_diff_aecore_vs_plain']), '+.2f')}%; same initial weights: "
        f"{r['same_initial_weights']}\n"
        f"fp32 matmul {m['size']}×{m['size']}: "
        + ", ".join(
            f"{name} {_num(b['gflops'], '.0f')} GFLOP/s" for name, b in m.get("by_backend", {}).items()
        )
        + f" (medians of {len(m['gflops_samples'])}; efficiency uses {m.get('backend', 'torch')}); "
        f"(a)'s backend: {r['workload'].get('backend', '?')}, oneDNN products: "
        f"{r['workload'].get('onednn', '?')}\n"
        f"model: {f['per_sample'] / 1e6:.2f} MFLOP/sample, "
        f"{f['per_epoch'] / 1e9:.1f} GFLOP/epoch",
        highlight=False,
    )
    _targets(console, "Throughput targets", r["targets"])


def _startup(console: Console, r: dict[str, Any]) -> None:
    table = Table(
        title=f"Start-up: wall time of a fresh process, median of {r['repeats']}", title_justify="left"
    )
    for column in ("command", "seconds", "÷ import torch", "exit codes"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for name, seconds in r["seconds"].items():
        ratio = r["ratio_to_import_torch"].get(name, 1.0)
        codes = ",".join(str(c) for c in sorted(set(r["exit_codes"][name])))
        table.add_row(name, _num(seconds, ".3f"), _num(ratio, ".3f"), codes)
    console.print(table)
    _targets(console, "Start-up targets", r["targets"])


def _memory(console: Console, r: dict[str, Any]) -> None:
    table = Table(title="Memory: peak RSS (MiB) of fresh processes, training 1 epoch", title_justify="left")
    for column in ("workload", "data (uint8)", "bare", "baseline", "peak", "data share", "share ÷ data"):
        table.add_column(column, justify="left" if column == "workload" else "right")
    for name, w in r["workloads"].items():
        if "error" in w:
            table.add_row(name, f"[red]error[/]: {w['error']}", "", "", "", "", "")
            continue
        table.add_row(
            f"{name} ({w['data_samples']:,} images)",
            _num(w["data_bytes"] / _MB, ".1f"),
            _num(w["bare_rss"] / _MB, ".0f"),
            _num(w["baseline_rss"] / _MB, ".0f"),
            _num(w["peak_rss"] / _MB, ".0f"),
            _num(w["data_share"] / _MB, ".1f"),
            _num(w["share_over_uint8"], ".2f") + "×",
        )
    console.print(table)
    cache = r["cache"]
    if cache.get("status") == "measured":
        s = cache["seconds"]
        line = (
            f"dataset cache (MNIST load, fresh process, median): uncached {_num(s['uncached'], '.2f')} s, "
            f"first {_num(s['first'], '.2f')} s, second {_num(s['second'], '.2f')} s "
            f"(second ÷ uncached {_num(cache['second_over_uncached'], '.2f')})"
        )
    else:
        line = f"dataset cache: {cache.get('status')}"
    console.print(line, highlight=False)
    _targets(console, "Memory targets", r["targets"])


def _inference(console: Console, r: dict[str, Any]) -> None:
    w = r["workload"]
    table = Table(
        title=(
            f"Inference: encode {w['images']:,} MNIST images, batch {w['batch_size']}, "
            f"median of {w['repeats']}"
        ),
        title_justify="left",
    )
    for column in ("path", "images/s", "runs (s)"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for name, rate in r["images_per_second"].items():
        runs = ", ".join(_num(v, ".2f") for v in r["seconds"][name])
        table.add_row(
            {"aecore": "ae encode", "bare": "bare inference_mode forward"}[name], _num(rate, ",.0f"), runs
        )
    console.print(table)
    console.print(
        f"throughput ratio ae encode / bare: {_num(r['ratio'], '.3f')} (target ≥ 0.9)", highlight=False
    )
    _targets(console, "Inference targets", r["targets"])


def _data(console: Console, r: dict[str, Any]) -> None:
    table = Table(title="Bring your own data", title_justify="left")
    for column in ("workload", "figure", "value"):
        table.add_column(column, justify="left" if column != "value" else "right")
    targets: list[dict[str, Any]] = []
    for name, part in r.items():
        if "error" in part or "skipped" in part:
            table.add_row(name, "not measured", str(part.get("error") or part.get("skipped")))
            continue
        targets += part.get("targets", [])
        if name == "folder":
            for who in ("aecore", "imagefolder"):
                table.add_row(
                    name,
                    f"{who}: first epoch (s, with preparation)",
                    _num(part[who]["first_epoch_seconds"], ".1f"),
                )
                table.add_row(name, f"{who}: later epoch (s)", _num(part[who]["later_epoch_seconds"], ".2f"))
            table.add_row(
                name, "aecore: load from the cache (s)", _num(part["aecore"]["cached_load_seconds"], ".2f")
            )
            table.add_row(
                name,
                "test SSE/image: folder / IDX",
                " / ".join(
                    _num(v, ".2f")
                    for v in (part["aecore"]["test_sse_per_image"], part["idx_test_sse_per_image"])
                ),
            )
        elif name == "mapped":
            for size, run in part["runs"].items():
                mapped = run["mapped"]
                table.add_row(
                    name,
                    f"{size} GB: epoch (s) · peak RssAnon (MB)",
                    _num(mapped.get("epoch_seconds"), ".1f")
                    + " · "
                    + _num(_f(mapped.get("rss_anon_peak")) / _MB, ".0f"),
                )
            table.add_row(name, "in-memory ÷ mapped speed (1 GB)", _num(part["mapped_speed_vs_memory"]))
        elif name == "colour":
            for who, seconds in part["seconds_per_epoch"].items():
                table.add_row(name, f"{who}: s/epoch ({part['workload']['preset']})", _num(seconds, ".2f"))
        elif name == "order":
            for order, sse in part["test_sse_per_image"].items():
                table.add_row(name, f"test SSE/image, --shuffle {order}", _num(sse, ".2f"))
            table.add_row(name, "block ÷ full", _num(part["block_vs_full"]))
    console.print(table)
    _targets(console, "Data targets", targets)


def _sae(console: Console, r: dict[str, Any]) -> None:
    w = r["workload"]
    table = Table(
        title=f"Sparse autoencoder: {w['model']}, {w['data']}, median of {w['repeats']}", title_justify="left"
    )
    for column in ("loop", "s/epoch", "test FVU"):
        table.add_column(column, justify="left" if column == "loop" else "right")
    for name, seconds in r["seconds_per_epoch"].items():
        fvu = statistics.median(run["test_fvu"] for run in r["runs"][name])
        table.add_row(name, _num(seconds, ".2f"), _num(fvu, ".4f"))
    console.print(table)
    _targets(console, "Sparse autoencoder target", [r["target"]])


def _matrix(console: Console, r: dict[str, Any]) -> None:
    w = r["workload"]
    table = Table(
        title=f"Matrix: aecore ÷ plain loop, seconds per step ({w['data']}, {w['rows']} rows, batch "
        f"{w['batch_size']}, {w['threads']} thread(s), median of {w['repeats']})",
        title_justify="left",
    )
    table.add_column("encoder")
    for column in r["regularizers"]:
        table.add_column(column, justify="right")
    for row in r["encoders"]:
        cells = [r["cells"][f"{row} × {column}"] for column in r["regularizers"]]
        table.add_row(row, *(_ratio_cell(c) for c in cells))
    console.print(table)
    left = ", ".join(r["work_left"]) or "none"
    console.print(f"cells above 0.9 (work left): {left}", highlight=False)
    failed = [t for t in r["targets"] if not t["passed"]]
    console.print(f"cells above 1.0: {len(failed)} of {len(r['targets'])}", highlight=False)


def _ratio_cell(cell: dict[str, Any]) -> str:
    value = cell["ratio"]
    text = _num(value, ".2f")
    if not value <= 1.0:
        return f"[red]{text}[/]"
    return f"[yellow]{text}[/]" if value > 0.9 else f"[green]{text}[/]"


def _mainjob(console: Console, r: dict[str, Any]) -> None:
    w = r["workload"]
    table = Table(
        title=f"Main job, conv + sparse: fresh processes on {w['data']}, {w['epochs']} epoch(s), "
        f"{w['threads']} thread(s), median of {w['repeats']}",
        title_justify="left",
    )
    for column in ("loop", "whole process s", "s/epoch", "test MSE/pixel"):
        table.add_column(column, justify="left" if column == "loop" else "right")
    for name, m in r["medians"].items():
        table.add_row(
            name,
            _num(m["wall_seconds"], ".2f"),
            _num(m["seconds_per_epoch"], ".2f"),
            _num(m["test_mse"], ".6f"),
        )
    console.print(table)
    _targets(console, "Main job targets", r["targets"])


def _anomaly(console: Console, r: dict[str, Any]) -> None:
    w = r["workload"]
    names = list(r["mean_roc_auc"])
    table = Table(
        title=f"One-class anomaly detection on {w['data']}: ROC-AUC per normal digit and score "
        f"(recipe {w['recipe']}, {w['threads']} thread(s); the recipe's score is marked *)",
        title_justify="left",
    )
    table.add_column("digit", justify="right")
    for name in names:
        table.add_column(name + (" *" if name == w["score"] else ""), justify="right")
    table.add_column("train s", justify="right")
    for row in r["digits"]:
        table.add_row(
            str(row["digit"]),
            *(_num(row["roc_auc"][n], ".4f") for n in names),
            _num(row["train_seconds"], ".1f"),
        )
    table.add_row("mean", *(_num(r["mean_roc_auc"][n], ".4f") for n in names), "")
    console.print(table)
    _targets(console, "Anomaly detection targets", r["targets"])


def print_report(console: Console, record: dict[str, Any]) -> None:
    """Print every section present in ``record``."""
    machine = record["machine"]
    console.print(
        f"[bold]benchmarks[/] {record['started']} · {machine['cpu_model']} · {machine['cpus_usable']} usable "
        f"core(s) · torch {machine['torch']} · {machine['torch_threads']} thread(s) · load "
        f"{'/'.join(_num(v, '.2f') for v in machine['load_average_start'])} → "
        f"{'/'.join(_num(v, '.2f') for v in machine['load_average_end'])}",
        highlight=False,
    )
    sections = (
        ("throughput", _throughput),
        ("throughput_gpu", _throughput),
        ("inference", _inference),
        ("startup", _startup),
        ("completion", _startup),
        ("memory", _memory),
        ("data", _data),
        ("sae", _sae),
        ("matrix", _matrix),
        ("mainjob", _mainjob),
        ("anomaly", _anomaly),
    )
    for name, show in sections:
        if name in record:
            show(console, record[name])
