"""The benchmarks on a tiny workload: the record's structure, and that every ratio comes from its figures.

No assertion here depends on how fast anything ran: benchmarks report, and
a shared test machine is no place to time things. The data is the embedded
MNIST sample laid out as torchvision expects (MNIST/raw/), so no download.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import shutil
import statistics
from importlib import resources
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from aecore.cli import output as cli_output
from benchmarks.__main__ import app, main

LIMIT = 2000
SECTIONS_HERE = ("throughput", "inference", "startup", "completion", "memory")
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded sample (10,000 train, 2,000 test) as an uncompressed torchvision MNIST folder."""
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    sample = resources.files("aecore.data.mnist_sample")
    for name in RAW_FILES:
        with (
            resources.as_file(sample / f"{name}.gz") as src,
            gzip.open(src) as fin,
            open(raw / name, "wb") as fout,
        ):
            shutil.copyfileobj(fin, fout)
    return root


@pytest.fixture(scope="module")
def bench_run(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """One tiny run of every section through the CLI: 2,000 images, 1 epoch, 1 repetition."""
    out = tmp_path_factory.mktemp("bench") / "record.json"
    mp = pytest.MonkeyPatch()
    mp.setattr(cli_output.rich_console(), "_width", 200)
    try:
        args = ["--data-dir", str(mnist_dir), "--epochs", "1", "--limit", str(LIMIT)]
        args += [arg for section in SECTIONS_HERE for arg in ("--only", section)]  # data: its own test
        result = CliRunner().invoke(app, [*args, "--repeats", "1", "--json-out", str(out)])
    finally:
        mp.undo()
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(out.read_text()), result.stdout


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_record_has_machine_settings_and_every_section(bench_run):
    record, stdout = bench_run
    assert record["schema"] == "aecore.bench/1"
    machine = record["machine"]
    for key in ("cpu_model", "cpus", "cpus_usable", "torch", "torch_threads", "python"):
        assert machine[key] not in (None, ""), key
    assert len(machine["load_average_start"]) == len(machine["load_average_end"]) == 3
    assert record["settings"] == {
        "data_dir": record["settings"]["data_dir"],
        "epochs": 1,
        "limit": LIMIT,
        "repeats": 1,
        "only": list(SECTIONS_HERE),
        "threads": None,
    }
    assert set(SECTIONS_HERE) <= set(record)
    for title in ("Training throughput", "Inference", "Start-up", "Memory"):
        assert title in stdout
    assert "PASS" in stdout or "FAIL" in stdout


def test_throughput_loops_do_the_same_work(bench_run):
    r = bench_run[0]["throughput"]
    w = r["workload"]
    assert (w["train_samples"], w["epochs"], w["repeats"], w["batch_size"]) == (LIMIT, 1, 1, 128)
    assert w["steps_per_epoch"] == math.ceil(LIMIT / 128)
    assert r["same_initial_weights"] is True
    assert w["backend"] == "aecore-fastcpu:fastcpu"  # (a) is what `ae train` runs: backend auto
    for name in ("aecore", "aecore-autograd", "plain", "classic"):
        (run,) = r["runs"][name]
        assert run["samples_per_epoch"] == LIMIT
        assert len(run["epoch_seconds"]) == 1
        assert 0 < run["test_mse"] < 1
    assert r["runs"]["aecore"][0]["reported_test_mse"] == r["runs"]["aecore"][0]["test_mse"]


def test_throughput_ratios_come_from_the_measured_figures(bench_run):
    r = bench_run[0]["throughput"]
    seconds, mse = r["seconds_per_epoch"], r["test_mse"]
    for name, runs in r["runs"].items():
        assert close(seconds[name], statistics.median(x["seconds_per_epoch"] for x in runs))
        assert close(runs[0]["seconds_per_epoch"], sum(runs[0]["epoch_seconds"]) / 1)
        assert close(mse[name], statistics.median(x["test_mse"] for x in runs))
    assert close(r["ratios"]["aecore/plain"], seconds["aecore"] / seconds["plain"])
    assert close(r["ratios"]["aecore-autograd/plain"], seconds["aecore-autograd"] / seconds["plain"])
    assert close(r["ratios"]["aecore/classic"], seconds["aecore"] / seconds["classic"])
    assert close(r["test_mse_rel_diff_aecore_vs_plain"], (mse["aecore"] - mse["plain"]) / mse["plain"])

    flops = r["flops"]
    assert flops["per_sample"] == flops["per_sample_forward"] + flops["per_sample_backward"] == 2_498_560
    assert flops["per_epoch"] == flops["per_sample"] * LIMIT
    m = r["matmul"]
    expected = {"torch", "onednn"} if torch.backends.mkldnn.is_available() else {"torch"}
    assert set(m["by_backend"]) == expected and m["backend"] in m["by_backend"]
    for backend in m["by_backend"].values():
        assert len(backend["gflops_samples"]) == 5
        assert close(backend["gflops"], statistics.median(backend["gflops_samples"]))
    assert m["gflops"] == max(b["gflops"] for b in m["by_backend"].values())  # the faster kernel counts
    assert close(m["gflops"], statistics.median(m["gflops_samples"]))
    for name, eff in r["efficiency"].items():
        assert close(eff, flops["per_epoch"] / (seconds[name] * r["matmul"]["gflops"] * 1e9))

    targets = {t["name"]: t for t in r["targets"]}
    assert close(targets["aecore/plain"]["value"], r["ratios"]["aecore/plain"])
    assert close(targets["aecore/classic"]["value"], r["ratios"]["aecore/classic"])
    for t in targets.values():
        assert t["passed"] == (t["value"] <= t["limit"])


def test_startup_ratios_come_from_the_measured_figures(bench_run):
    r = bench_run[0]["startup"]
    assert set(r["seconds"]) == {"ae --help", "ae plugins list", "ae train --help", "import torch"}
    for name, samples in r["samples"].items():
        assert len(samples) == 1
        assert r["exit_codes"][name] == [0]
        assert close(r["seconds"][name], statistics.median(samples))
    for name, value in r["ratio_to_import_torch"].items():
        assert close(value, r["seconds"][name] / r["seconds"]["import torch"])


def test_memory_share_comes_from_the_probes(bench_run):
    r = bench_run[0]["memory"]
    sizes = {
        "mnist": (10_000 + 2_000) * (28 * 28 + 8),  # uint8 images + int64 labels of the sample
        "synthetic": (LIMIT + 1_000) * 3 * 32 * 32,  # uint8 images, no labels
    }
    for name, w in r["workloads"].items():
        assert "error" not in w, w
        assert w["data_bytes"] == sizes[name]
        assert w["data_share"] == w["peak_rss"] - w["baseline_rss"]
        assert close(w["share_over_uint8"], w["data_share"] / w["data_bytes"])
        assert w["bare_rss"] > 0 and w["baseline_rss"] > 0
    cache = r["cache"]
    assert cache["status"] in ("not implemented", "measured"), cache
    if cache["status"] == "measured":
        for name in ("uncached", "first", "second"):
            assert close(cache["seconds"][name], statistics.median(cache["samples"][name]))
        assert close(cache["second_over_uncached"], cache["seconds"]["second"] / cache["seconds"]["uncached"])


def test_bench_option_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("AECORE_MNIST_DIR", raising=False)
    for args, fragment in (
        (["--only", "speed"], "unknown section 'speed'"),
        (["--only", "throughput"], "pass --data-dir"),
        (["--data-dir", str(tmp_path)], "no MNIST/raw/"),
        (["--only", "startup", "--repeats", "0"], "--repeats must be at least 1"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2, args
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


def test_inference_ratio_comes_from_the_measured_figures(bench_run):
    r = bench_run[0]["inference"]
    assert r["workload"]["images"] > 0
    rate = {name: r["workload"]["images"] / statistics.median(v) for name, v in r["seconds"].items()}
    for name in ("aecore", "bare"):
        assert close(r["images_per_second"][name], rate[name])
    assert close(r["ratio"], rate["aecore"] / rate["bare"])
    (target,) = r["targets"]
    assert target["passed"] == (target["value"] <= target["limit"])


def test_a_gpu_table_is_printed_beside_the_cpu_one(bench_run):
    """Where a GPU exists the record gains ``throughput_gpu``; the report prints it like the CPU table."""
    import io

    from rich.console import Console

    from benchmarks.report import print_report

    record = dict(bench_run[0])
    cpu = record["throughput"]
    assert cpu["workload"]["device"] == "cpu"
    assert ("throughput_gpu" in record) == torch.cuda.is_available()
    record["throughput_gpu"] = {**cpu, "workload": {**cpu["workload"], "device": "cuda"}}
    buffer = io.StringIO()
    print_report(Console(file=buffer, width=200), record)
    text = buffer.getvalue()
    assert text.count("Training throughput:") == 2
    assert "thread(s)" in text  # the CPU table keeps its thread count in the title
    assert re.search(r"\bon\s+cuda\b", text)  # the title may wrap between the two words


@pytest.fixture(scope="module")
def data_run(mnist_dir: Path) -> dict:
    """The data section on a tiny workload: 600 images, caches of a few MB, one repetition."""
    from benchmarks.data import run_data

    return run_data(mnist_dir, limit=600, threads=1, repeats=1)


def test_data_section_measures_every_workload_and_derives_its_ratios(data_run):
    assert set(data_run) == {"folder", "mapped", "colour", "order"}
    for name, part in data_run.items():
        assert "error" not in part, (name, part)
    folder = data_run["folder"]
    assert folder["workload"]["files"] == 600 + 100
    for who in ("aecore", "imagefolder"):
        assert len(folder[who]["epoch_seconds"]) == 2
    assert close(
        folder["first_epoch_ratio"],
        folder["aecore"]["first_epoch_seconds"] / folder["imagefolder"]["first_epoch_seconds"],
    )
    assert close(
        folder["aecore"]["first_epoch_seconds"],
        folder["aecore"]["prepare_seconds"] + folder["aecore"]["epoch_seconds"][0],
    )
    assert folder["aecore"]["cached_load_seconds"] < folder["aecore"]["prepare_seconds"]
    mapped = data_run["mapped"]
    sizes = mapped["workload"]["sizes_gb"]
    assert len(sizes) == 3 and sizes[0] < sizes[1] < sizes[2]
    runs = list(mapped["runs"].values())
    assert [r["mapped"]["bytes"] for r in runs] == sorted(r["mapped"]["bytes"] for r in runs)
    assert all(r["mapped"]["rss_anon_peak"] > 0 for r in runs)
    times = runs[0]["alternating_epoch_seconds"]
    assert close(
        mapped["mapped_speed_vs_memory"],
        statistics.median(times["memory"]) / statistics.median(times["mapped"]),
    )
    colour = data_run["colour"]
    seconds = colour["seconds_per_epoch"]
    assert close(colour["ratio"], seconds["aecore"] / seconds["plain"])
    order = data_run["order"]["test_sse_per_image"]
    assert close(data_run["order"]["block_vs_full"], order["block"] / order["full"])
    names = [t["name"] for part in data_run.values() for t in part.get("targets", [])]
    assert len(names) == 6 and all(isinstance(t, str) for t in names)


def test_completion_ratios_come_from_the_measured_figures(bench_run):
    r = bench_run[0]["completion"]
    reference = r["seconds"][r["reference"]]
    for name, ratio in r["ratio_to_import_torch"].items():
        assert close(ratio, r["seconds"][name] / reference)
        assert set(r["exit_codes"][name]) == {0} and r["candidates"][name]


def test_sae_section_times_both_loops_and_derives_its_ratio(tmp_path):
    """The sae section on 4,096 rows, 1 epoch, 1 repetition: both loops learn, the ratio is theirs."""
    out = tmp_path / "record.json"
    args = ["--only", "sae", "--epochs", "1", "--limit", "4096", "--repeats", "1", "--json-out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.stdout, result.exception)
    sae = json.loads(out.read_text())["sae"]
    seconds = sae["seconds_per_epoch"]
    assert set(seconds) == {"aecore", "plain"} and all(v > 0 for v in seconds.values())
    assert close(sae["ratio"], seconds["aecore"] / seconds["plain"])
    assert sae["target"]["limit"] == 1.0 and sae["target"]["value"] == sae["ratio"]
    for runs in sae["runs"].values():
        assert len(runs) == 1 and 0 < runs[0]["test_fvu"] < 1  # both learned something
    assert "Sparse autoencoder" in result.stdout


def test_the_record_chooses_its_epoch_on_validation_not_test(tmp_path):
    from benchmarks.record import TestCurve, choose_on_validation

    curve = TestCurve(tmp_path / "epochs")
    saved = tmp_path / "run" / "model.safetensors"
    saved.parent.mkdir()
    for epoch, val, sse in [(1, 0.03, 4.0), (2, 0.02, 3.1), (3, 0.025, 2.9)]:
        saved.write_text(str(sse))  # stands in for the epoch's weights, which training overwrites
        curve.ae_checkpoint_saved(run=None, path=saved, metrics={"epoch": epoch, "val_recon": val})
    curve.ae_checkpoint_saved(run=None, path=saved.with_name("best.safetensors"), metrics={"epoch": 3})
    saved.write_text("never read")  # the final save of epoch 3 carries its test figure and replaces its point
    curve.ae_checkpoint_saved(
        run=None, path=saved, metrics={"epoch": 3, "val_recon": 0.025, "test_sse_per_image": 2.9}
    )
    assert [p["epoch"] for p in curve.points] == [1, 2, 3]
    scored: list[Path] = []

    def score(checkpoint: Path) -> float:
        scored.append(checkpoint)
        return float(checkpoint.read_text())

    points = curve.measure(score)
    assert [p["sse"] for p in points] == [4.0, 3.1, 2.9]  # each epoch's own copy, not the last weights
    assert [c.name for c in scored] == ["epoch-0001.safetensors", "epoch-0002.safetensors"]
    chosen = choose_on_validation(points)
    assert (chosen["epoch"], chosen["sse"]) == (2, 3.1)  # lowest validation loss, not lowest test SSE
    no_val = [{**p, "val": math.nan} for p in points]
    assert choose_on_validation(no_val)["epoch"] == 3  # without a validation split: the last epoch


def test_matrix_section_fills_every_cell_and_derives_its_ratios(monkeypatch):
    """The matrix on 2 steps per epoch, 1 repetition, the embedded sample: structure and ratios only."""
    from benchmarks import matrix

    record = matrix.run_matrix(None, steps=2, batch=16, repeats=1)
    assert record["encoders"] == list(matrix.ENCODERS) and record["regularizers"] == list(matrix.REGULARIZERS)
    assert len(record["cells"]) == len(matrix.ENCODERS) * len(matrix.REGULARIZERS)
    for cell in record["cells"].values():
        seconds = cell["seconds_per_step"]
        assert seconds["aecore"] > 0 and seconds["plain"] > 0
        assert close(cell["ratio"], seconds["aecore"] / seconds["plain"])
    assert record["work_left"] == [n for n, c in record["cells"].items() if not c["ratio"] <= 0.9]
    assert [t["value"] for t in record["targets"]] == [c["ratio"] for c in record["cells"].values()]
    from rich.console import Console

    from benchmarks.report import _matrix

    console = Console(record=True, width=200)
    _matrix(console, record)
    text = console.export_text()
    for name in (*matrix.ENCODERS, *matrix.REGULARIZERS, "work left"):
        assert name in text


def test_mainjob_section_runs_both_processes_and_derives_its_ratios(tmp_path):
    """Fresh processes of both loops on 256 embedded images, 1 repetition: structure and ratios only."""
    out = tmp_path / "record.json"
    args = ["--only", "mainjob", "--limit", "256", "--repeats", "1", "--threads", "1", "--json-out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.stdout, result.exception)
    job = json.loads(out.read_text())["mainjob"]
    med = job["medians"]
    for key in ("wall_seconds", "seconds_per_epoch"):
        assert close(job["ratios"][key], med["aecore"][key] / med["plain"][key])
    assert all(0 < med[n]["test_mse"] < 1 for n in ("aecore", "plain"))
    assert close(job["test_mse_gap"], abs(med["aecore"]["test_mse"] / med["plain"]["test_mse"] - 1))
    assert [t["limit"] for t in job["targets"]] == [0.8, 0.8, 0.02]
    assert "Main job" in result.stdout


def test_anomaly_section_scores_every_digit_and_checks_its_targets(tmp_path):
    """Two digits of the embedded sample, 1 epoch each: structure, means and targets only."""
    out = tmp_path / "record.json"
    from benchmarks import anomaly

    record = anomaly.run_anomaly(None, digits=(0, 7), epochs=1)
    assert [row["digit"] for row in record["digits"]] == [0, 7]
    names = list(record["mean_roc_auc"])
    assert names[:1] == ["mse"] and {"ssim", "knn", "code", *anomaly.SCORES} <= set(names)
    for name in names:
        values = [row["roc_auc"][name] for row in record["digits"]]
        assert all(0.0 <= v <= 1.0 for v in values), (name, values)  # one epoch: figures, not quality
        assert close(record["mean_roc_auc"][name], sum(values) / 2)
    auc_target, time_target = record["targets"]
    assert auc_target["limit"] == 0.98 and auc_target["value"] == record["mean_roc_auc"][anomaly.RECIPE_SCORE]
    assert auc_target["passed"] == (auc_target["value"] >= 0.98)
    assert time_target["value"] == max(row["train_seconds"] for row in record["digits"]) > 0
    from rich.console import Console

    from benchmarks.report import _anomaly

    console = Console(record=True, width=250)
    _anomaly(console, record)
    text = console.export_text()
    assert f"{anomaly.RECIPE_SCORE} *" in text and "≥ 0.98" in text and "mean" in text
    out.write_text(json.dumps(record))  # the record is plain JSON
