"""The codes files 'ae decode' reads: hostile files in each on-disk format, and a fuzzer per format.

Whatever a codes file holds, reading it gives finite float32 codes (and
whole-number labels, one per row) or a one-line DataError naming the file.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from analysis_helpers import one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save, save_file

from aecore.cli import app
from aecore.errors import DataError
from aecore_analysis.codes import read_codes

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def run_dir(trained):
    """The small mlp (latent 8) trained on the 'small' data."""
    return trained("mlp")


HEADER = ",".join(f"z{i}" for i in range(8)) + ",label\n"
ROW = ",".join(["0.5"] * 8)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (HEADER.encode() + ROW.encode() + b",\xff\n", "cannot read"),  # not UTF-8
        (HEADER.encode(), "holds no codes"),  # a header and no rows
        ((HEADER + ROW + ",cat\n").encode(), "not a whole class number"),
        ((HEADER + ROW + ",1.5\n").encode(), "not a whole class number"),
        ((HEADER + ROW + ",nan\n").encode(), "not a whole class number"),
        ((HEADER + ROW + ",1e30\n").encode(), "not a whole class number"),
        ((HEADER + ROW + ",1\n" + ROW + ",\n").encode(), "label every row or none"),
        ((HEADER + "1e39," + ",".join(["0"] * 7) + ",1\n").encode(), "too large code in row 0"),
        ((HEADER.replace("z7", "z9") + ROW + ",1\n").encode(), "with no gap, each once"),
        (
            (HEADER + "1" * 200_000 + ",0,0,0,0,0,0,0,1\n").encode(),
            "cannot read",
        ),  # a field beyond csv's limit
        (b"", "is empty"),
    ],
)
def test_decode_refuses_a_damaged_csv_in_one_line(runner, run_dir, tmp_path, payload, fragment):
    path = tmp_path / "codes.csv"
    path.write_bytes(payload)
    line = one_line_error(runner.invoke(app, ["decode", str(run_dir), str(path), "--out", "x.npy"]), fragment)
    assert str(path) in line


def test_decode_reads_code_columns_by_name_not_by_position(runner, run_dir, tmp_path):
    path = tmp_path / "codes.csv"
    names = [f"z{i}" for i in range(8)]
    path.write_text(",".join([*names[::-1], "label"]) + "\n" + ",".join(map(str, range(8))) + ",3\n")
    codes, labels = read_codes(path)
    assert codes.tolist() == [[7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]] and labels.tolist() == [3]


def _can_write_complex() -> bool:
    """Older safetensors (0.4) cannot write complex tensors, so those files cannot be made to test with."""
    try:
        save({"x": torch.ones(1, dtype=torch.complex64)})
    except Exception:
        return False
    return True


CAN_WRITE_COMPLEX = _can_write_complex()
NEEDS_COMPLEX = pytest.mark.skipif(not CAN_WRITE_COMPLEX, reason="safetensors cannot write complex tensors")


@pytest.mark.parametrize(
    ("tensors", "fragment"),
    [
        ({"codes": torch.rand(3)}, "one row per sample"),
        ({"codes": torch.rand(0, 8)}, "holds no codes"),
        ({"codes": torch.rand(3, 8), "labels": torch.rand(3)}, "whole class numbers"),
        ({"codes": torch.rand(3, 8), "labels": torch.ones(5, dtype=torch.long)}, "one label per row"),
        ({"codes": torch.rand(3, 8), "labels": torch.ones(3, 2, dtype=torch.long)}, "one label per row"),
        ({"codes": torch.full((3, 8), 1e300, dtype=torch.float64)}, "too large code"),
        pytest.param(
            {"codes": torch.ones(3, 8, dtype=torch.complex64)}, "must be numbers", marks=[NEEDS_COMPLEX]
        ),
        ({"x": torch.rand(3, 8)}, "no tensor 'codes'"),
    ],
)
def test_decode_refuses_damaged_safetensors_codes(runner, run_dir, tmp_path, tensors, fragment):
    path = tmp_path / "codes.safetensors"
    save_file(tensors, str(path))
    one_line_error(runner.invoke(app, ["decode", str(run_dir), str(path), "--out", "x.npy"]), fragment)


def test_decode_refuses_npy_codes_that_would_need_more_memory_than_the_file_holds(runner, run_dir, tmp_path):
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (100000000000, 8), }".ljust(117) + b"\n"
    path = tmp_path / "codes.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(64))
    one_line_error(runner.invoke(app, ["decode", str(run_dir), str(path), "--out", "x.csv"]), "cannot read")


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        (np.array(["a", "b", "c"]), "must be numbers"),
        (np.array([1, "b", None], dtype=object), "cannot read"),  # never unpickled
        (np.array([1, 2]), "one label per row"),
        (np.array([1.0, np.nan, 2.0]), "whole class numbers"),
    ],
)
def test_decode_refuses_a_damaged_npy_labels_file(runner, run_dir, tmp_path, labels, fragment):
    np.save(tmp_path / "codes.npy", np.zeros((3, 8), dtype=np.float32))
    np.save(tmp_path / "codes.labels.npy", labels, allow_pickle=True)
    one_line_error(
        runner.invoke(app, ["decode", str(run_dir), str(tmp_path / "codes.npy"), "--out", "x.csv"]), fragment
    )


# -- fuzzers ----------------------------------------------------------------------------------


def _counted(record_property, name: str, fuzz) -> None:
    runs = {"n": 0}

    def count() -> None:
        runs["n"] += 1

    fuzz(count)
    record_property(f"{name}_examples", runs["n"])
    print(f"{name}: {runs['n']} examples")
    assert runs["n"] >= 20


def _check(path) -> None:
    """read_codes gives finite float32 (N, d) codes and int64 labels, one per row, or a DataError."""
    try:
        codes, labels = read_codes(path)
    except DataError:
        return
    assert codes.dtype == torch.float32 and codes.dim() == 2 and codes.numel() > 0
    assert torch.isfinite(codes).all()
    assert labels is None or (labels.dtype == torch.int64 and labels.shape == (len(codes),))


CELLS = [
    "0",
    "1",
    "-2.5",
    "1e39",
    "nan",
    "inf",
    "",
    " ",
    "cat",
    "1.5",
    "1e30",
    "3",
    "z0",
    "label",
    '"',
    "\x00",
]


@st.composite
def codes_csv(draw):
    names = draw(
        st.lists(st.sampled_from(["z0", "z1", "z2", "z3", "z10", "label", "x", "z", "z01", ""]), max_size=5)
    )
    cell = st.sampled_from(CELLS) | st.text(max_size=4)
    rows = draw(st.lists(st.lists(cell, max_size=len(names) + 1), max_size=5))
    text = "\n".join(",".join(row) for row in [names, *rows])
    return text.encode() if draw(st.integers(0, 4)) else text.encode() + b"\xff"


def test_csv_codes_reader_raises_only_data_errors(tmp_path, record_property):
    path = tmp_path / "codes.csv"

    @FUZZ
    @given(payload=codes_csv())
    def fuzz(count, payload):
        count()
        path.write_bytes(payload)
        _check(path)

    _counted(record_property, "csv codes", fuzz)


def _mutate(data, payload: bytes) -> bytes:
    out = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, max(len(out) - 1, 0)))
        if data.draw(st.booleans()) and out:
            out[position] = data.draw(st.integers(0, 255))
        else:
            del out[position:]
    return bytes(out)


DTYPES = ["<f4", "<f8", "<f2", "<i8", "|u1", "|b1", "<c8", "<U2"]


def test_npy_codes_reader_raises_only_data_errors(tmp_path, record_property):
    path, labels = tmp_path / "codes.npy", tmp_path / "codes.labels.npy"

    @FUZZ
    @given(data=st.data())
    def fuzz(count, data):
        count()
        labels.unlink(missing_ok=True)
        for target in [path] + ([labels] if data.draw(st.booleans()) else []):
            shape = tuple(data.draw(st.lists(st.integers(0, 3), max_size=3)))
            fill = data.draw(st.sampled_from([0.0, 1.5, 3.0, float("nan"), float("inf"), 1e39]))
            with np.errstate(all="ignore"), contextlib.suppress(ValueError, TypeError):
                array = np.full(shape, fill).astype(data.draw(st.sampled_from(DTYPES)))
                buffer = io.BytesIO()
                np.save(buffer, array)
                payload = buffer.getvalue()
                target.write_bytes(_mutate(data, payload) if data.draw(st.booleans()) else payload)
        if path.exists():
            _check(path)

    _counted(record_property, "npy codes", fuzz)


def test_safetensors_codes_reader_raises_only_data_errors(tmp_path, record_property):
    path = tmp_path / "codes.safetensors"
    dtypes = [
        torch.float32,
        torch.float64,
        torch.float16,
        torch.int64,
        torch.uint8,
        torch.bool,
        *([torch.complex64] if CAN_WRITE_COMPLEX else []),
    ]

    @FUZZ
    @given(data=st.data())
    def fuzz(count, data):
        count()
        tensors = {}
        for key in data.draw(
            st.lists(st.sampled_from(["codes", "labels", "other"]), unique=True, max_size=3)
        ):
            shape = tuple(data.draw(st.lists(st.integers(0, 3), max_size=3)))
            fill = data.draw(st.sampled_from([0.0, 2.0, 0.5, float("nan"), 1e39]))
            tensors[key] = torch.full(shape, fill, dtype=torch.float64).to(data.draw(st.sampled_from(dtypes)))
        payload = save(tensors)
        path.write_bytes(_mutate(data, payload) if data.draw(st.booleans()) else payload)
        _check(path)

    _counted(record_property, "safetensors codes", fuzz)
