"""``ae export`` end to end on a trained run directory, its refusals, and its start-up cost."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from export_helpers import ATOL, EigenEncoder, one_line_error, reference, run, session
from typer.testing import CliRunner

import aecore
from aecore import registry
from aecore.cli import app
from aecore.testing import check_command
from aecore_export import normalise, read_onnx_metadata
from aecore_export.cli import export_command


@pytest.fixture
def runner(monkeypatch, tmp_path) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_the_command_conforms():
    command = check_command(export_command, name="export")
    assert {"fmt", "part", "out", "opset", "overwrite"} <= {p.name for p in command.params}


@pytest.mark.parametrize(
    ("part", "default"),
    [("autoencoder", "model.onnx"), ("encoder", "encoder.onnx"), ("decoder", "decoder.onnx")],
)
def test_each_part_lands_next_to_the_checkpoint_and_runs(runner, trained_run, mnist, part, default):
    target = trained_run / default
    target.unlink(missing_ok=True)
    args = ["export", str(trained_run)] + ([] if part == "autoencoder" else ["--part", part])
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stdout.startswith(f"wrote {target}: {part}, ") and len(result.stdout.splitlines()) == 1
    net = aecore.load(trained_run)
    meta = read_onnx_metadata(target)
    assert meta["aecore.part"] == part
    # the caller's preprocessing, from the file's own record: raw uint8 digits in, as the model saw them
    raw = aecore.load_dataset("embedded").test.x[:16].numpy()
    x = torch.from_numpy(normalise(raw, meta["aecore.normalisation"]))
    assert torch.equal(x, mnist)
    if part == "decoder":
        x = torch.from_numpy(reference(net, "encoder", x))
    sess = session(target)
    np.testing.assert_allclose(run(sess, x), reference(net, part, x), rtol=0, atol=ATOL)
    for n in (1, 7, 64):  # one file, any batch
        batch = torch.rand(n, *((net.latent_dim,) if part == "decoder" else net.input_shape))
        np.testing.assert_allclose(run(sess, batch), reference(net, part, batch), rtol=0, atol=ATOL)


def test_an_existing_file_is_kept_unless_overwrite(runner, trained_run, tmp_path):
    target = tmp_path / "sub" / "enc.onnx"
    assert (
        runner.invoke(app, ["export", str(trained_run), "--part", "encoder", "--out", str(target)]).exit_code
        == 0
    )
    before = target.read_bytes()
    again = runner.invoke(app, ["export", str(trained_run), "--part", "decoder", "--out", str(target)])
    one_line_error(again, "already exists", "--overwrite")
    assert target.read_bytes() == before
    forced = runner.invoke(
        app, ["export", str(trained_run), "--part", "decoder", "--out", str(target), "--overwrite"]
    )
    assert forced.exit_code == 0, forced.stderr
    assert read_onnx_metadata(target)["aecore.part"] == "decoder"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--part", "middle"], ("unknown part 'middle'", "encoder, decoder, autoencoder")),
        (["--part", "encode"], ("Did you mean: encoder",)),
        (["--format", "tflite"], ("unknown format 'tflite'", "onnx")),
        (["--format", "pt2"], ("'pt2' is not offered", "unpickles")),
        (["--format", "torchscript"], ("'torchscript' is not offered",)),
        (["--opset", "5"], ("opset 5 is out of range",)),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(runner, trained_run, tmp_path, args, fragments):
    out = tmp_path / "x.onnx"
    one_line_error(runner.invoke(app, ["export", str(trained_run), "--out", str(out), *args]), *fragments)
    assert not out.exists()


def test_a_missing_checkpoint_is_one_line(runner, tmp_path):
    one_line_error(runner.invoke(app, ["export", str(tmp_path / "nowhere")]), "no checkpoint")


def test_an_unexportable_component_is_one_line_naming_it(runner, ae_registry, tmp_path):
    with registry.registered("encoder", "eigen", EigenEncoder, dist="aefake-eigen", version="0.3"):
        net = aecore.compose("eigen", "mlp", input_shape=(1, 5, 5), latent_dim=3)
        ckpt = aecore.save(net, tmp_path / "eigen.safetensors")
        result = runner.invoke(app, ["export", str(ckpt), "--part", "encoder"])
        line = one_line_error(result, "the encoder 'eigen' (aefake-eigen 0.3) cannot be exported to ONNX")
        assert "Traceback" not in line
        assert not (tmp_path / "encoder.onnx").exists()
        assert runner.invoke(app, ["export", str(ckpt), "--part", "decoder"]).exit_code == 0


STARTUP = """
import json, sys
from aecore.cli import main
sys.argv = ["ae", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit:
    pass
sys.stderr.write("HEAVY " + json.dumps(sorted({"torch", "onnx", "onnxruntime", "numpy"} & set(sys.modules))))
"""


@pytest.mark.parametrize("args", [["--help"], ["export", "--help"], ["export", "x", "--part", "nope"]])
def test_help_and_option_errors_import_no_torch(args):
    proc = subprocess.run(
        [sys.executable, "-c", STARTUP, json.dumps(args)], capture_output=True, text=True, timeout=120
    )
    heavy = json.loads(proc.stderr.rsplit("HEAVY ", 1)[1])
    assert heavy == [], heavy
    assert "export" in proc.stdout or "error: unknown part 'nope'" in proc.stderr, proc.stderr
