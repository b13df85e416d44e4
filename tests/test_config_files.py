"""Run files: ``ae train --config``, ``--print-config`` and ``ae inspect --config``, and the TOML writer."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from helpers import ok, one_line_error
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from aecore.cli import app
from aecore.config import params_of
from aecore.errors import CheckpointError, ConfigError
from aecore.request import RunRequest
from aecore.runfile import (
    WHERE_FIELDS,
    merge_values,
    read_run_file,
    reproducing_toml,
    request_toml,
    schema_table,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "config-files.md"
#: A tiny, fast run on the embedded data: one epoch of a small MLP on one class, on the CPU.
TINY = [
    "-e", "mlp", "--set", "encoder.hidden=8", "--set", "decoder.hidden=8", "--latent-dim", "2",
    "--epochs", "1", "--classes", "0", "--set", "trainer.batch_size=256", "--device", "cpu",
    "--backend", "none", "-q",
]  # fmt: skip


@pytest.fixture
def runner(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing a command writes lands in the repository
    return CliRunner()


def _printed(runner: CliRunner, *args: str) -> dict[str, Any]:
    """What ``ae train ARGS --print-config`` prints, read back by tomllib."""
    return tomllib.loads(ok(runner.invoke(app, ["train", *args, "--print-config"])))


# -- the schema is the run request -------------------------------------------------------------


def _sample(spec) -> tuple[str, Any]:
    """A TOML literal for ``spec`` other than its default, and the value the request should then hold."""
    tp = spec.type
    if get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is Literal:
        choice = next(c for c in get_args(tp) if c != spec.default)
        return json.dumps(choice), choice
    if get_origin(tp) is tuple:
        item = get_args(tp)[0]
        values = {int: [3, 5], str: ["one", "two"], float: [0.5, 2.0]}[item]
        return json.dumps(values), tuple(values)
    if get_origin(tp) is dict:
        return "{ encoder = { hidden = [8, 4] }, trainer = { lr = 0.5 } }", {
            "encoder": {"hidden": [8, 4]},
            "trainer": {"lr": 0.5},
        }
    if tp is bool:
        return json.dumps(not spec.default), not spec.default
    if tp is int:
        return "7", 7
    if tp is float:
        return "0.25", 0.25
    if tp is str:
        return f'"{spec.name}-value"', f"{spec.name}-value"
    pytest.fail(f"RunRequest.{spec.name} has a type this test cannot sample ({spec.type!r}); teach it")


@pytest.mark.parametrize("spec", params_of(RunRequest), ids=lambda s: s.name)
def test_every_request_field_can_be_set_from_a_file(tmp_path, spec):
    literal, expected = _sample(spec)
    assert expected != spec.default
    path = tmp_path / "run.toml"
    path.write_text(f"{spec.name} = {literal}\n")
    request = RunRequest.from_values(read_run_file(path))
    assert getattr(request, spec.name) == expected
    assert request == RunRequest(**{spec.name: expected})  # and nothing else changed


def test_params_is_a_table_of_tables(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'encoder = "mlp"\nregularizers = ["sparse"]\n\n'
        '[params.encoder]\nhidden = [64, 32]\nactivation = "elu"\n\n[params.sparse]\nweight = 0.01\n'
    )
    request = RunRequest.from_values(read_run_file(path))
    assert request.regularizers == ("sparse",)
    assert request.params == {
        "encoder": {"hidden": [64, 32], "activation": "elu"},
        "sparse": {"weight": 0.01},
    }


def test_the_docs_table_of_keys_is_generated_from_the_request():
    text = PAGE.read_text()
    start, end = "<!-- keys:start -->\n", "<!-- keys:end -->"
    assert start in text and end in text
    embedded = text.split(start, 1)[1].split(end, 1)[0]
    assert embedded == schema_table(), (
        "paste the output of: python -c 'import aecore.runfile as r; print(r.schema_table())'"
    )
    for spec in params_of(RunRequest):
        assert f"| `{spec.name}` |" in embedded


def test_the_docs_example_is_a_valid_run_file(tmp_path):
    blocks = re.findall(r"```toml\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert blocks
    for i, block in enumerate(blocks):
        path = tmp_path / f"example{i}.toml"
        path.write_text(block)
        RunRequest.from_values(read_run_file(path))


# -- ae train --config: errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("epoch = 3\n", ["unknown key 'epoch' in run.toml", "Did you mean: epochs?"]),
        ("reg = ['sparse']\n", ["unknown key 'reg'", "regularizers"]),  # the option's name, not the key
        ("batch-size = 3\n", ["unknown key 'batch-size'", "batch_size"]),
        ("epochs = 'x'\n", ["run.toml", "'epochs'"]),
        ("epochs = 1.5\n", ["run.toml", "'epochs'"]),
        ("epochs = 1979-05-27\n", ["run.toml", "'epochs'"]),
        ("latent_dim = 0\n", ["run.toml", "latent-dim"]),
        ("val_fraction = 2.0\n", ["run.toml", "val-fraction"]),
        ("seed = -1\n", ["run.toml", "'seed'"]),
        ("regularizers = [3]\n", ["run.toml", "'regularizers'"]),
        ("shuffle = 'random'\n", ["run.toml", "'shuffle'", "auto, full, block"]),
        ("overwrite = 'yes please'\n", ["run.toml", "'overwrite'"]),
        ("params = 3\n", ["run.toml", "'params'"]),
        ("[params]\nencoder = 3\n", ["run.toml", "'params.encoder'"]),
        ("data = ''\n", ["run.toml", "data is empty"]),
        ("epochs =\n", ["run.toml is not valid TOML"]),
        ("encoder = 'mlp'\nencoder = 'conv'\n", ["run.toml is not valid TOML"]),
        ("x = " + "[" * 100_000 + "\n", ["run.toml"]),
    ],
)
def test_a_bad_run_file_is_one_line_naming_the_file(runner, tmp_path, content, fragments):
    (tmp_path / "run.toml").write_text(content)
    one_line_error(runner.invoke(app, ["train", "--config", "run.toml"]), *fragments)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: None, "no config file run.toml"),
        (lambda p: p.mkdir(), "run.toml is a folder"),
        (lambda p: p.write_bytes(b"epochs = 1\n\xff\xfe\n"), "run.toml is not UTF-8 text"),
        (lambda p: p.write_bytes(b"#" * (2 << 20)), "far more than a run file"),
    ],
)
def test_an_unreadable_run_file_is_one_line(runner, tmp_path, make, fragment):
    make(tmp_path / "run.toml")
    one_line_error(runner.invoke(app, ["train", "--config", "run.toml"]), fragment)


def test_resume_takes_no_config(runner, tmp_path):
    (tmp_path / "run.toml").write_text("epochs = 1\n")
    result = runner.invoke(app, ["train", "--resume", "somewhere", "--config", "run.toml", "--epochs", "2"])
    one_line_error(result, "drop --epochs, --config")


# -- merging with the command line -------------------------------------------------------------


def test_only_the_options_given_override_the_file(runner, tmp_path):
    (tmp_path / "run.toml").write_text(
        'encoder = "mlp"\nregularizers = ["sparse"]\nepochs = 5\nseed = 3\nval_fraction = 0.2\n'
        'overwrite = true\nshuffle = "block"\ndata = "csv:t.csv"\n\n'
        '[params.encoder]\nhidden = [64, 32]\nactivation = "elu"\n\n[params.sparse]\nweight = 0.5\n'
    )
    printed = _printed(
        runner, "--config", "run.toml", "--epochs", "2", "--reg", "topk", "--set", "encoder.hidden=16"
    )
    assert printed["epochs"] == 2
    assert printed["regularizers"] == ["topk"]  # a repeatable option replaces the file's list
    assert printed["params"]["encoder"] == {"hidden": "16", "activation": "elu"}  # --set: per key
    assert printed["params"]["sparse"] == {"weight": 0.5}
    # not given on the command line, so the file's, not the options' defaults
    assert (printed["seed"], printed["val_fraction"], printed["overwrite"]) == (3, 0.2, True)
    assert (printed["shuffle"], printed["data"]) == ("block", "csv:t.csv")
    assert _printed(runner, "--config", "run.toml", "--no-overwrite")["overwrite"] is False


def test_a_trainer_setting_from_the_command_line_replaces_the_file_in_either_spelling():
    file_values = {"epochs": 5, "params": {"trainer": {"lr": 0.1, "batch_size": 32}}}
    merged = merge_values(file_values, {"batch_size": "64", "params": {"trainer": {"epochs": "2"}}})
    assert merged == {"batch_size": "64", "params": {"trainer": {"lr": 0.1, "epochs": "2"}}}
    assert merge_values(file_values, {}) == file_values


def test_print_config_reproduces_the_command_line_and_trains_nothing(runner, tmp_path):
    args = ["-e", "mlp", "-r", "sparse", "--set", "encoder.hidden=64,32", "--epochs", "2"]
    args += ["--lr", "0.003", "--classes", "3,5", "--out", "mine", "--overwrite"]
    text = ok(runner.invoke(app, ["train", *args, "--print-config"]))
    assert text.startswith("#")
    expected = RunRequest.from_values(
        {
            "encoder": "mlp",
            "regularizers": ["sparse"],
            "params": {"encoder": {"hidden": "64,32"}},
            "epochs": 2,
            "lr": 0.003,
            "classes": [3, 5],
            "out": "mine",
            "overwrite": True,
        }
    )
    assert RunRequest.from_values(tomllib.loads(text)) == expected
    assert set(tomllib.loads(text)) == {
        s.name for s in params_of(RunRequest) if getattr(expected, s.name) is not None
    }
    (tmp_path / "run.toml").write_text(text)
    again = ok(runner.invoke(app, ["train", "--config", "run.toml", "--print-config"]))
    assert again == text  # a printed config prints itself
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.toml"]  # no run directory


def test_print_config_imports_no_torch(tmp_path):
    (tmp_path / "run.toml").write_text('encoder = "mlp"\nepochs = 1\n')
    program = (
        "import sys\nfrom aecore.cli import main\n"
        f"sys.argv = ['ae', 'train', '--config', {str(tmp_path / 'run.toml')!r}, '--print-config']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "sys.stderr.write(f'RESULT {code} {\"torch\" in sys.modules}\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "RESULT 0 False", proc.stderr
    assert tomllib.loads(proc.stdout)["epochs"] == 1


# -- ae inspect --config ------------------------------------------------------------------------


def test_inspect_config_trains_the_same_weights_again(runner, tmp_path):
    from safetensors.torch import load_file

    ok(runner.invoke(app, ["train", *TINY, "--out", "first"]))
    text = ok(runner.invoke(app, ["inspect", "first", "--config"]))
    recorded = tomllib.loads(text)
    assert not set(WHERE_FIELDS) & set(recorded)  # commented out: the rerun gets its own directory
    assert '# out = "first"' in text
    (tmp_path / "run.toml").write_text(text)
    ok(runner.invoke(app, ["train", "--config", "run.toml", "--out", "second"]))
    first, second = load_file("first/model.safetensors"), load_file("second/model.safetensors")
    assert first.keys() == second.keys()
    for key, tensor in first.items():
        assert tensor.dtype == second[key].dtype and tensor.equal(second[key]), key  # bit for bit
    # once more without --out: a fresh directory under runs_root, never the recorded one
    ok(runner.invoke(app, ["train", "--config", "run.toml"]))
    assert len(list((tmp_path / "runs").iterdir())) == 1

    one_line_error(runner.invoke(app, ["inspect", "first", "--config", "--out", "run.toml"]), "--overwrite")
    written = runner.invoke(app, ["inspect", "first", "--config", "--out", "run.toml", "--overwrite"])
    assert ok(written).startswith("wrote run.toml")
    assert (tmp_path / "run.toml").read_text() == text


def test_inspect_config_of_a_run_on_data_in_memory_asks_for_a_source(runner, tmp_path):
    import torch

    from aecore import train

    samples = torch.rand(40, 1, 4, 4)
    train(
        encoder="mlp",
        latent_dim=2,
        epochs=1,
        data=samples,
        device="cpu",
        backend="none",
        out=tmp_path / "mem",
        progress=False,
    )
    result = runner.invoke(app, ["inspect", "mem", "--config"])
    text = ok(result)
    assert tomllib.loads(text)["data"] == ""
    assert "held in memory" in text and "samples of shape (1, 4, 4)" in text
    assert result.stderr.startswith("warning: ") and "fill in 'data'" in result.stderr
    (tmp_path / "run.toml").write_text(text)
    one_line_error(runner.invoke(app, ["train", "--config", "run.toml"]), "run.toml", "data is empty")


def test_a_checkpoint_without_a_readable_request_is_one_line(tmp_path):
    meta = {"training": {}, "data": {}}
    with pytest.raises(CheckpointError, match="records no run request"):
        reproducing_toml(tmp_path / "m.safetensors", meta)
    meta = {"training": {"request": {"encoder": "mlp", "warp_factor": 9}}}
    with pytest.raises(CheckpointError, match="cannot read") as info:
        reproducing_toml(tmp_path / "m.safetensors", meta)
    assert "warp_factor" in str(info.value) and "\n" not in str(info.value)


def test_a_recorded_data_name_replaces_the_one_given():
    """The checkpoint's data name reloads exactly that data from anywhere (an absolute path)."""
    meta = {
        "training": {"request": {"encoder": "mlp", "data": "csv:t.csv"}},
        "data": {"name": "csv:/abs/t.csv"},
    }
    text, notice = reproducing_toml("m.safetensors", meta)
    assert notice is None
    assert tomllib.loads(text)["data"] == "csv:/abs/t.csv"
    assert 'given as "csv:t.csv"' in text


# -- the writer ---------------------------------------------------------------------------------

HOSTILE = [
    'quote " inside',
    "back\\slash and \\n not a newline",
    "new\nline\r\nand carriage",
    "tab\there",
    "\x00\x01\x1f\x7f controls",
    "☃ é 🎉 unicode \u2028 \x85 \ufeff",
    '"""triple"""',
    "'''single'''",
    "# not a comment",
    "[params.x] = not a table",
    "",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_round_trip(text):
    values = {"data": text or "x", "runs_root": text, "params": {text: {text: [text, {text: text}]}}}
    written = request_toml(values, header=f"header {text}", notes={"seed": text})
    read = tomllib.loads(written)
    assert read["data"] == (text or "x") and read["runs_root"] == text
    assert read["params"] == {text: {text: [text, {text: text}]}}


JSON_LEAF = (
    st.none().map(lambda _: True)
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(st.characters(blacklist_categories=("Cs",)))
)
VALUES = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), st.dictionaries(st.text(max_size=8), VALUES, max_size=4), max_size=3)
)
def test_any_params_round_trip_exactly(params):
    assert tomllib.loads(request_toml({"params": params})).get("params", {}) == params


@settings(max_examples=100, deadline=None)
@given(st.floats(allow_nan=False))
def test_floats_read_back_as_the_same_number(value):
    assert tomllib.loads(request_toml({"lr": value}))["lr"] == value


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"data": "bad \udcff surrogate"}, "not valid Unicode"),
        ({"params": {"encoder": {"x": None}}}, "params.encoder.x is none"),
        ({"params": {"encoder": {"x": 2**64}}}, "64-bit"),
        ({"params": {"encoder": {"x": b"bytes"}}}, "bytes, which has no TOML form"),
        ({"data": None}, "'data' is not set"),
    ],
)
def test_what_toml_cannot_hold_is_refused(values, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        request_toml(values)
