"""Memory and data: how much RAM training takes beyond the dataset's own uint8 size.

aecore keeps images as uint8 and makes floats one batch at a time, so a
dataset should cost about its uint8 size in RAM (1×), not the 4× of a
float32 copy. Peak RSS is a property of a whole process, so each figure
comes from a FRESH subprocess (``python -m benchmarks.memory``) that
reports its own peak RSS (``VmHWM``; ``ru_maxrss`` where /proc is missing, see :func:`_peak_rss`):

``bare``      imports torch and aecore and builds the model; no data, no training.
``baseline``  the same ``train()`` call on 128 random training samples of the same
              shape and one evaluation batch (1,000) of test samples: everything
              training and the final evaluation cost except the data's size.
``train``     the same ``train()`` call for 1 epoch on the real dataset.

The data's share is ``train − baseline``, compared with the bytes the
loaded dataset holds. Two workloads: MNIST with the ``simple`` preset, and a
synthetic 50,000×3×32×32 uint8 set with the conv encoder and decoder.

Also the prepared-dataset cache (:mod:`aecore.cache`: decode once, then
map its safetensors files): MNIST load times uncached, first (cold cache) and
second (warm cache), each in a fresh process; "not implemented" where
aecore has no such cache.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.stats import median, ratio, target

#: The repository root: ``python -m benchmarks...`` runs from there.
REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = ["cache_support", "run_memory"]

SYNTHETIC_TRAIN = 50_000
SYNTHETIC_TEST = 1_000
SYNTHETIC_SHAPE = (3, 32, 32)
CONV_PARAMS = {"encoder": {"channels": (16, 32)}}
CONV_LATENT = 32
TINY = 128
TARGET_SHARE = 1.5  # "close to 1×": a float32 copy would make it 4× or more
_MB = 1024 * 1024


def _rss_now() -> int:
    """Current resident set size in bytes (Linux), or -1."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return -1


def _ru_maxrss() -> int:
    """``ru_maxrss`` in bytes (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _peak_rss() -> int:
    """Peak resident set size of this process in bytes.

    On Linux ``ru_maxrss`` survives ``exec``: a child forked from a big parent
    (this benchmark, after the throughput section) reports at least the
    parent's size. ``VmHWM`` belongs to the new address space, so it is used
    where /proc has it; ``ru_maxrss`` elsewhere.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return _ru_maxrss()


def _nbytes(data: Any) -> int:
    return sum(t.numel() * t.element_size() for t in (data.x, data.y) if t is not None)


def _synthetic(n_train: int, n_test: int) -> Any:
    import torch

    from aecore.data import Dataset, TensorData
    from aecore.data.tensors import UINT8_IMAGES

    gen = torch.Generator().manual_seed(0)
    splits = [
        TensorData(
            torch.randint(0, 256, (n, *SYNTHETIC_SHAPE), dtype=torch.uint8, generator=gen), None, UINT8_IMAGES
        )
        for n in (n_train, n_test)
    ]
    return Dataset("synthetic", splits[0], splits[1], {"name": "synthetic"})


def _tiny(shape: tuple[int, ...]) -> Any:
    """TINY training samples, and one full evaluation batch of test samples.

    The test split is one evaluation batch (not TINY) so that the baseline
    holds the same evaluation activations as the real run: for the conv
    model a batch of 1,000 32×32 maps is tens of MiB that are no part of the
    data's own size.
    """
    import torch

    from aecore.data import Dataset, TensorData
    from aecore.data.tensors import UINT8_IMAGES
    from aecore.evaluate import EVAL_BATCH

    gen = torch.Generator().manual_seed(0)
    x, test = (
        torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen) for n in (TINY, EVAL_BATCH)
    )
    return Dataset("tiny", TensorData(x, None, UINT8_IMAGES), TensorData(test, None, UINT8_IMAGES))


def probe(args: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: one ``mode`` of one ``kind`` of workload, then report RSS."""
    out: dict[str, Any] = {"rss_start": _rss_now()}
    import torch

    import aecore.training
    from aecore import registry
    from aecore.composition import compose_preset

    out["rss_after_import"] = _rss_now()
    torch.set_num_threads(args["threads"])
    kind, mode = args["kind"], args["mode"]
    mnist = kind == "mnist"
    if mode == "bare":
        torch.manual_seed(0)
        if mnist:
            model = compose_preset(registry.get("preset", "simple"))
        else:
            model = aecore.compose(
                "conv", input_shape=SYNTHETIC_SHAPE, latent_dim=CONV_LATENT, params=CONV_PARAMS
            )
        out["parameters"] = model.num_parameters()
    else:
        start = time.perf_counter()
        if mode == "baseline":
            dataset = _tiny((1, 28, 28) if mnist else SYNTHETIC_SHAPE)
        elif mnist:
            from aecore.sources import load_dataset

            dataset = load_dataset("mnist", args["data_dir"])  # always in full: see run_memory
        else:
            dataset = _synthetic(args.get("limit") or SYNTHETIC_TRAIN, SYNTHETIC_TEST)
        out["load_seconds"] = time.perf_counter() - start
        out["data_bytes"] = _nbytes(dataset.train) + _nbytes(dataset.test)
        out["data_samples"] = len(dataset.train) + len(dataset.test)
        out["rss_after_data"] = _rss_now()
        common = {
            "data": dataset,
            "val_fraction": 0.0,
            "params": {"trainer": {"epochs": 1, "batch_size": 128}},
            "out": Path(args["out"]),
            "progress": False,
        }
        if mnist:
            result = aecore.train(preset="simple", **common)
        else:
            common["params"] = {**CONV_PARAMS, **common["params"]}
            result = aecore.train("conv", latent_dim=CONV_LATENT, **common)
        out["parameters"] = result.model.num_parameters()
    out["rss_end"] = _rss_now()
    out["peak_rss"] = _peak_rss()
    out["ru_maxrss"] = _ru_maxrss()
    return out


def _run_probe(args: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aecore-bench-mem-") as tmp:
        args = {**args, "out": str(Path(tmp) / "run")}
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", json.dumps(args)],
            cwd=REPO_ROOT,  # where the benchmarks package is importable
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _workload(
    kind: str, data_dir: Path | None, limit: int | None, threads: int, repeats: int = 1
) -> dict[str, Any]:
    """Each probe ``repeats`` times in fresh processes, alternating; the peaks are medians.

    The allocator's high-water mark moves by tens of MiB from one process to
    the next, so a single baseline and a single training run can put the
    data's share anywhere within that.
    """
    args = {"kind": kind, "data_dir": None if data_dir is None else str(data_dir), "limit": limit}
    args["threads"] = threads
    modes = ("bare", "baseline", "train")
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode in modes:
            runs[mode].append(_run_probe({**args, "mode": mode}))
    probes = {mode: runs[mode][-1] for mode in modes}
    record: dict[str, Any] = {"probes": probes}
    failed = {m: p["error"] for m in modes for p in runs[m] if "error" in p}
    if failed:
        record["error"] = "; ".join(f"{m}: {e}" for m, e in failed.items())
        return record
    peaks = {mode: [p["peak_rss"] for p in runs[mode]] for mode in modes}
    peak = {mode: median(values) for mode, values in peaks.items()}
    share = peak["train"] - peak["baseline"]
    record.update(
        {
            "peak_rss_samples": peaks,
            "data_bytes": probes["train"]["data_bytes"],
            "data_samples": probes["train"]["data_samples"],
            "bare_rss": peak["bare"],
            "baseline_rss": peak["baseline"],
            "peak_rss": peak["train"],
            "data_share": share,
            "share_over_uint8": ratio(share, probes["train"]["data_bytes"]),
        }
    )
    return record


def cache_support() -> dict[str, Any]:
    """Whether aecore has the prepared-dataset cache (:mod:`aecore.cache`)."""
    import importlib.util

    if importlib.util.find_spec("aecore.cache") is None:
        return {"implemented": False}
    return {
        "implemented": True,
        "disable": "AECORE_NO_DATA_CACHE=1",
        "location": "$AECORE_CACHE_DIR/datasets",
    }


def _time_load(data_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    code = (
        "import json, sys, time\n"
        "t = time.perf_counter()\n"
        "from aecore.sources import load_dataset\n"
        "load_dataset('mnist', sys.argv[1])\n"
        "print(json.dumps({'seconds': time.perf_counter() - t}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(data_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cache(data_dir: Path, repeats: int = 3) -> dict[str, Any]:
    """MNIST load time (aecore.data's import included) in fresh processes, alternating; medians.

    ``uncached``: AECORE_NO_DATA_CACHE=1, decoding the raw files every time;
    ``first``: an empty cache directory (decode, then write the cache);
    ``second``: the same directory again (read the safetensors cache).
    """
    if not cache_support()["implemented"]:
        return {"status": "not implemented", "note": "aecore.data has no dataset cache"}
    samples: dict[str, list[float]] = {"uncached": [], "first": [], "second": []}
    errors: list[str] = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="aecore-bench-cache-") as cache_dir:
            runs = (
                ("uncached", {"AECORE_CACHE_DIR": cache_dir, "AECORE_NO_DATA_CACHE": "1"}),
                ("first", {"AECORE_CACHE_DIR": cache_dir, "AECORE_NO_DATA_CACHE": ""}),
                ("second", {"AECORE_CACHE_DIR": cache_dir, "AECORE_NO_DATA_CACHE": ""}),
            )
            for name, env in runs:
                result = _time_load(data_dir, env)
                if "error" in result:
                    errors.append(f"{name}: {result['error']}")
                else:
                    samples[name].append(result["seconds"])
    seconds = {name: median(values) for name, values in samples.items()}
    return {
        "status": "measured" if not errors else "error",
        "errors": errors,
        "api": cache_support(),
        "samples": samples,
        "seconds": seconds,
        "second_over_first": ratio(seconds["second"], seconds["first"]),
        "second_over_uncached": ratio(seconds["second"], seconds["uncached"]),
    }


def run_memory(
    data_dir: Path | None, *, limit: int | None = None, threads: int = 1, repeats: int = 3
) -> dict[str, Any]:
    """Both workloads (MNIST + ``simple``, synthetic + conv) and the dataset-cache timings."""
    workloads = {
        "mnist": _workload("mnist", data_dir, None, threads, repeats)
        if data_dir is not None
        else {"error": "no --data-dir"},
        "synthetic": _workload("synthetic", None, limit, threads, repeats),
    }
    targets = [
        target(f"{name}: data share / uint8 size", w.get("share_over_uint8", float("nan")), TARGET_SHARE)
        for name, w in workloads.items()
    ]
    return {
        "method": "peak RSS (VmHWM, else ru_maxrss) of fresh processes, median of `repeats` each; "
        "share = train − baseline",
        "synthetic": {
            "train": limit or SYNTHETIC_TRAIN,
            "test": SYNTHETIC_TEST,
            "shape": list(SYNTHETIC_SHAPE),
            "model": f"conv encoder/decoder, {CONV_PARAMS['encoder']}, latent {CONV_LATENT}",
        },
        "mnist_note": "MNIST: always loaded and trained on in full; --limit applies to the synthetic set",
        "workloads": workloads,
        "cache": run_cache(data_dir, repeats)
        if data_dir is not None
        else {"status": "skipped (no --data-dir)"},
        "targets": targets,
    }


if __name__ == "__main__":
    print(json.dumps(probe(json.loads(sys.argv[1]))))
