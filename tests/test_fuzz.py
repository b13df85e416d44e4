"""Property-based fuzzing: the --set parser and every file reader only ever raise aecore's errors."""

from __future__ import annotations

import contextlib
import copy
import gzip
import json
import math
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save
from typer.testing import CliRunner

from aecore import checkpoint
from aecore.cli.options import given_values
from aecore.composition import compose
from aecore.config import params_of
from aecore.errors import AecoreError
from aecore.request import RunRequest, resolve

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TARGETS = ["encoder", "decoder", "trainer", "sparse", "reg", "x", ""]
PARAMS = ["hidden", "activation", "dropout", "batch_norm", "channels", "kind", "weight", "epochs", "", "nope"]


class _FromCommandLine:
    """A stand-in Click context in which only ``--set`` was given."""

    class _Source:
        def __init__(self, name: str) -> None:
            self.name = name

    def get_parameter_source(self, name: str) -> object:
        return self._Source("COMMANDLINE" if name == "params" else "DEFAULT")


@st.composite
def set_items(draw):
    """Mostly well-formed TARGET.PARAM=VALUE items with hostile values, and some malformed ones."""
    if draw(st.booleans()):
        return draw(st.text(max_size=40))
    target, name = draw(st.sampled_from(TARGETS)), draw(st.sampled_from(PARAMS))
    value = draw(
        st.one_of(
            st.text(max_size=30),
            st.sampled_from(
                ["1e309", "nan", "-1", "0", "relu", "32,64", ",,", "true", "none", "[1,2]", "1.5"]
            ),
            st.sampled_from(HUGE),
        )
    )
    return f"{target}.{name}={value}"


#: Sizes no machine allocates, and numbers beyond int64 and float: each must be a one-line error.
HUGE = ["99999999999", "4,99999999999", str(2**63), str(-(2**63) - 1), "9" * 30, "1e12", "inf", "-inf"]
#: Shortcut values drawn beside the --set items (latent sizes that are all above the model bound).
SHORTCUTS = {
    "epochs": st.sampled_from([None, 1, 3, 2**63 - 1, 2**63]),
    "lr": st.sampled_from([None, 0.001, float("nan"), float("inf")]),
    "seed": st.sampled_from([None, 0, -1, 2**63 - 1, 2**63, 2**64]),
    "latent_dim": st.sampled_from([None, 3, 0, 2**31, 10**12, 2**63, 10**30]),
}


@FUZZ
@given(st.lists(set_items(), max_size=4), st.fixed_dictionaries(SHORTCUTS))
def test_set_parser_and_config_validation_raise_only_aecore_errors(items, shortcuts):
    given = {k: v for k, v in shortcuts.items() if v is not None}
    try:
        values = given_values(_FromCommandLine(), params_of(RunRequest), {"params": items})
        request = RunRequest.from_values({"encoder": "mlp", "regularizers": ("sparse",), **values, **given})
        plan = resolve(request)
        compose(
            "mlp",
            regularizers=plan.regularizers,
            input_shape=(6,),
            latent_dim=plan.latent_dim if request.latent_dim is not None else 3,
            params=plan.components,
        )
    except AecoreError:
        pass


@pytest.fixture(scope="module")
def valid_checkpoint_bytes(tmp_path_factory) -> bytes:
    model = compose(
        "mlp", regularizers=["sparse"], input_shape=(6,), latent_dim=3, params={"encoder": {"hidden": (4,)}}
    )
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    checkpoint.save(model, path, data={"name": "embedded"}, metrics={"x": 1.0})
    return path.read_bytes()


def _load(tmp_path, payload: bytes) -> None:
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(payload)
    with contextlib.suppress(AecoreError):
        checkpoint.load(path)


@FUZZ
@given(data=st.data())
def test_checkpoint_reader_survives_mutations_of_a_real_file(tmp_path, valid_checkpoint_bytes, data):
    payload = bytearray(valid_checkpoint_bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        position = data.draw(st.integers(0, max(len(payload) - 1, 0)))
        if kind == "flip" and payload:
            payload[position] = data.draw(st.integers(0, 255))
        elif kind == "truncate":
            del payload[position:]
        else:
            payload[position:position] = data.draw(st.binary(max_size=16))
    _load(tmp_path, bytes(payload))


@FUZZ
@given(
    header=st.dictionaries(
        st.text(max_size=12),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
            ),
            max_leaves=10,
        ),
        max_size=5,
    ),
    tail=st.binary(max_size=64),
)
def test_checkpoint_reader_survives_hostile_headers(tmp_path, header, tail):
    raw = json.dumps(header).encode()
    _load(tmp_path, struct.pack("<Q", len(raw)) + raw + tail)


@FUZZ
@given(
    meta=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=12),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "format",
                        "format_version",
                        "model",
                        "encoder",
                        "decoder",
                        "name",
                        "dist",
                        "params",
                        "input_shape",
                        "latent_dim",
                        "regularizers",
                        "version",
                    ]
                ),
                inner,
                max_size=6,
            )
        ),
        max_leaves=20,
    )
)
def test_checkpoint_reader_survives_hostile_metadata(tmp_path, meta):
    document = {"format": "aecore.checkpoint", "format_version": 1, "model": meta}
    payload = save({"w": torch.zeros(2)}, metadata={"aecore": json.dumps(document)})
    _load(tmp_path, payload)


# -- every reader, fuzzed: the resume file, IDX files, CSV and npy tables -------------------------
#
# Each fuzzer counts the examples it ran and records the count (``record_property``, and printed
# with ``-s``), so a run shows how much each reader was exercised.

READER_FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _run_counted(record_property, name: str, fuzz) -> None:
    """Run a @given function, then record and print how many examples it ran (and that it ran some)."""
    runs = {"n": 0}

    def count() -> None:
        runs["n"] += 1

    fuzz(count)
    record_property(f"{name}_examples", runs["n"])
    print(f"{name}: {runs['n']} examples")
    assert runs["n"] >= 20


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _mutate_bytes(data, payload: bytes) -> bytes:
    out = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        position = data.draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "flip" and out:
            out[position] = data.draw(st.integers(0, 255))
        elif kind == "truncate":
            del out[position:]
        else:
            out[position:position] = data.draw(st.binary(max_size=16))
    return bytes(out)


@pytest.fixture(scope="module")
def resume_run(tmp_path_factory):
    """A real, unfinished resume file (its bytes, tensors and record), from a run of a tiny model."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from aecore.testing import tiny_dataset
    from aecore.training import train

    out = tmp_path_factory.mktemp("resume") / "run"
    params = {"encoder": {"hidden": (4,)}, "trainer": {"epochs": 1, "batch_size": 16, "plateau_patience": 0}}
    train("mlp", params=params, latent_dim=2, data=tiny_dataset(), out=out, progress=False)
    path = out / "resume.safetensors"
    with safe_open(str(path), "pt") as f:
        record = json.loads(f.metadata()["aecore.resume"])
    record["trainer"]["done"] = False  # so that restoring goes all the way, as for an interrupted run
    return load_file(str(path)), record


def _restore_and_step(path) -> None:
    """What resuming does with a resume file, then one fused optimizer step on what was restored."""
    from aecore.state import load_model_state, read_resume, restore_rng
    from aecore.training.backends import adam
    from aecore.training.default import DefaultTrainer

    state = read_resume(path)
    model = compose("mlp", input_shape=(1, 8, 8), latent_dim=2, params={"encoder": {"hidden": (4,)}})
    optimizer = adam(list(model.parameters()), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0)
    load_model_state(model, state.model_state)
    with torch.random.fork_rng(devices=[]):
        restore_rng(state.rng)
        DefaultTrainer._restore(state, optimizer, scheduler, None, torch.Generator())
    model(torch.rand(2, 1, 8, 8)).sum().backward()
    optimizer.step()  # a moment of the wrong size or kind would reach the fused kernel here


def _tensor_like(data, original: torch.Tensor) -> torch.Tensor:
    shape = data.draw(
        st.sampled_from(
            [tuple(original.shape), (), (1,), (2,), (*original.shape, 1), tuple(original.shape[::-1])]
        )
    )
    dtype = data.draw(
        st.sampled_from([original.dtype, torch.float64, torch.float16, torch.int64, torch.uint8, torch.bool])
    )
    fill = data.draw(st.sampled_from([0.0, 1.0, -1.0, float("nan"), float("inf"), 1.5, 255.0]))
    return torch.full(shape, fill).to(dtype) if dtype != torch.bool else torch.ones(shape, dtype=dtype)


def test_resume_reader_survives_edits_of_a_real_file(tmp_path, resume_run, record_property):
    tensors, record = resume_run
    path = tmp_path / "resume.safetensors"

    @READER_FUZZ
    @given(data=st.data())
    def fuzz(count, data):
        count()
        t, meta = dict(tensors), copy.deepcopy(record)
        for _ in range(data.draw(st.integers(1, 3))):
            if data.draw(st.booleans()):  # a tensor replaced, dropped or added
                key = data.draw(
                    st.sampled_from([*sorted(t), "trainer.optim.99.exp_avg", "junk", "rng.cuda.0"])
                )
                if key in t and data.draw(st.booleans()):
                    del t[key]
                else:
                    t[key] = _tensor_like(data, t.get(key, torch.zeros(3)))
            else:  # a field of the record set to any JSON value, or removed
                tables = [meta]
                for route in (["request"], ["trainer"], ["trainer", "optimizer"], ["trainer", "scheduler"],
                              ["trainer", "optimizer", "param_groups", 0]):  # fmt: skip
                    table = meta
                    for step in route:
                        ok = (isinstance(table, dict) and step in table) or (
                            isinstance(table, list) and table and step == 0
                        )
                        table = table[step] if ok else None
                    if isinstance(table, dict):
                        tables.append(table)
                table = data.draw(st.sampled_from(tables))
                key = data.draw(st.sampled_from([*sorted(table), "extra"]))
                if data.draw(st.booleans()):
                    table.pop(key, None)
                else:
                    table[key] = data.draw(JSON)
        path.write_bytes(save(t, metadata={"aecore.resume": json.dumps(meta)}))
        with contextlib.suppress(AecoreError):
            _restore_and_step(path)

    _run_counted(record_property, "resume edits", fuzz)


def test_resume_reader_survives_byte_mutations(tmp_path, resume_run, record_property):
    tensors, record = resume_run
    payload = save(tensors, metadata={"aecore.resume": json.dumps(record)})
    path = tmp_path / "resume.safetensors"

    @READER_FUZZ
    @given(data=st.data())
    def fuzz(count, data):
        count()
        path.write_bytes(_mutate_bytes(data, payload))
        with contextlib.suppress(AecoreError):
            _restore_and_step(path)

    _run_counted(record_property, "resume bytes", fuzz)


def _idx_bytes(shape: tuple[int, ...], fill: int = 7) -> bytes:
    return (
        bytes([0, 0, 8, len(shape)])
        + struct.pack(f">{len(shape)}I", *shape)
        + bytes([fill]) * math.prod(shape)
    )


def test_idx_reader_and_mnist_loader_survive_hostile_files(tmp_path, monkeypatch, record_property):
    from aecore.data import read_idx
    from aecore.sources import load_dataset

    monkeypatch.setenv("AECORE_NO_DATA_CACHE", "1")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    files = {
        "train-images-idx3-ubyte": _idx_bytes((3, 28, 28)),
        "train-labels-idx1-ubyte": _idx_bytes((3,), 1),
        "t10k-images-idx3-ubyte": _idx_bytes((2, 28, 28)),
        "t10k-labels-idx1-ubyte": _idx_bytes((2,), 2),
    }

    @READER_FUZZ
    @given(data=st.data())
    def fuzz(count, data):
        count()
        for p in raw.iterdir():
            p.unlink()
        for name, payload in files.items():
            (raw / name).write_bytes(payload)
        name = data.draw(st.sampled_from(sorted(files)))
        payload = files[name]
        if data.draw(st.booleans()):  # a header declaring any shape, with some data after it
            dims = data.draw(st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 30), max_size=4))
            payload = bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
            payload += data.draw(st.binary(max_size=64))
        payload = _mutate_bytes(data, payload) if data.draw(st.booleans()) else payload
        target = raw / name
        if data.draw(st.booleans()):
            target = raw / f"{name}.gz"
            (raw / name).unlink()
            blob = gzip.compress(payload)
            payload = _mutate_bytes(data, blob) if data.draw(st.booleans()) else blob
        target.write_bytes(payload)
        with contextlib.suppress(AecoreError):
            read_idx(target)
        with contextlib.suppress(AecoreError):
            load_dataset("mnist", tmp_path)

    _run_counted(record_property, "idx files", fuzz)


CELLS = ["1", "-2.5", "0", "1e39", "-1e308", "3e38", "nan", "inf", "-inf", "", " ", "abc", "1e-400", "0x10",
         "1_000", "٣", '"', "\x00", "\ufeff", "label", "a,b", "9" * 30]  # fmt: skip


@st.composite
def csv_tables(draw):
    width = draw(st.integers(1, 4))
    cell = st.sampled_from(CELLS) | st.text(max_size=5)
    rows = draw(
        st.lists(
            st.lists(cell, min_size=width, max_size=width + (1 if draw(st.booleans()) else 0)), max_size=8
        )
    )
    text = "\n".join(",".join(row) for row in rows)
    return text.encode("utf-8") if draw(st.integers(0, 5)) else text.encode("utf-8", "ignore") + b"\xff\xfe"


TABLE_QUERIES = st.lists(
    st.sampled_from(
        ["label=0", "label=1", "label=-1", "label=9", "label=x", "header=yes", "header=no", "norm=none",
         "test_fraction=0.5", "test_fraction=0.99", "seed=3", f"seed={2**70}", "seed=-1", "test=other.csv"]
    ),
    max_size=3,
    unique=True,
)  # fmt: skip


def test_csv_table_reader_raises_only_aecore_errors(tmp_path, monkeypatch, record_property):
    from aecore.sources import load_dataset

    monkeypatch.setenv("AECORE_NO_DATA_CACHE", "1")
    path, other = tmp_path / "table.csv", tmp_path / "other.csv"

    @READER_FUZZ
    @given(table=csv_tables(), second=csv_tables(), query=TABLE_QUERIES)
    def fuzz(count, table, second, query):
        count()
        path.write_bytes(table)
        other.write_bytes(second)
        with contextlib.suppress(AecoreError):
            dataset = load_dataset(f"csv:{path}?{'&'.join(query)}")
            assert torch.isfinite(dataset.train.batch(slice(None))).all()  # what trains is finite

    _run_counted(record_property, "csv tables", fuzz)


NPY_VALUES = st.sampled_from([0.0, 1.0, -3.0, 0.5, 1e39, -1e308, 3e38, float("nan"), float("inf"), 2.0**63])


def test_npy_table_reader_raises_only_aecore_errors(tmp_path, monkeypatch, record_property):
    import io

    import numpy as np

    from aecore.sources import load_dataset

    monkeypatch.setenv("AECORE_NO_DATA_CACHE", "1")
    path = tmp_path / "table.npy"

    @READER_FUZZ
    @given(data=st.data(), query=TABLE_QUERIES)
    def fuzz(count, data, query):
        count()
        shape = tuple(data.draw(st.lists(st.integers(0, 4), min_size=1, max_size=3)))
        dtype = data.draw(st.sampled_from(["<f8", "<f4", "<f2", "<i8", "|u1", "|b1", "<c8", "<U3", "V4"]))
        values = data.draw(st.lists(NPY_VALUES, min_size=math.prod(shape), max_size=math.prod(shape)))
        with np.errstate(all="ignore"):
            try:
                array = np.array(values, dtype=np.float64).reshape(shape).astype(dtype)
            except (ValueError, TypeError):
                array = np.zeros(shape, dtype=dtype)
        buffer = io.BytesIO()
        np.save(buffer, array)
        payload = buffer.getvalue()
        if data.draw(st.booleans()):
            payload = _mutate_bytes(data, payload)
        path.write_bytes(payload)
        with contextlib.suppress(AecoreError):
            dataset = load_dataset(
                f"npy:{path}?{'&'.join(q for q in query if not q.startswith(('test=', 'header=')))}"
            )
            assert torch.isfinite(dataset.train.batch(slice(None))).all()

    _run_counted(record_property, "npy tables", fuzz)


MARKUP = st.sampled_from(
    ["[/x]", "[bold]", "[link=file:///etc/passwd]x[/link]", "\x1b[31m", "a\nb", "%s", "{}"]
)


def test_inspect_survives_hostile_descriptions(tmp_path, valid_checkpoint_bytes, record_property):
    """``ae inspect`` describes what it can and says what it cannot, in one line, whatever the metadata."""
    from safetensors.torch import load

    from aecore.cli import app
    from aecore.io import read_header

    source = tmp_path / "source.safetensors"
    source.write_bytes(valid_checkpoint_bytes)
    original = json.loads(read_header(source)["__metadata__"]["aecore"])
    tensors = load(valid_checkpoint_bytes)
    path = tmp_path / "hostile.safetensors"
    runner = CliRunner()

    @settings(READER_FUZZ, max_examples=60)  # each example runs the whole command
    @given(data=st.data())
    def fuzz(count, data):
        count()
        meta = copy.deepcopy(original)
        for _ in range(data.draw(st.integers(1, 3))):
            tables = [meta, *(v for v in meta.values() if isinstance(v, dict))]
            tables += [v for t in list(tables) for v in t.values() if isinstance(v, dict)]
            table = data.draw(st.sampled_from(tables))
            key = data.draw(st.sampled_from([*sorted(table), "extra"]))
            table[key] = data.draw(JSON | MARKUP)
        path.write_bytes(save(tensors, metadata={"aecore": json.dumps(meta)}))
        result = runner.invoke(app, ["inspect", str(path)])
        assert result.exit_code in (0, 2), result.exception
        if result.exit_code == 2:
            assert isinstance(result.exception, SystemExit)
            assert len(result.stderr.splitlines()) == 1

    _run_counted(record_property, "inspect", fuzz)
