"""Property-based fuzzing: the --set parser and the checkpoint reader only ever raise aecore's errors."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

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
        )
    )
    return f"{target}.{name}={value}"


@FUZZ
@given(st.lists(set_items(), max_size=4))
def test_set_parser_and_config_validation_raise_only_aecore_errors(items):
    try:
        values = given_values(_FromCommandLine(), params_of(RunRequest), {"params": items})
        plan = resolve(RunRequest.from_values({"encoder": "mlp", "regularizers": ("sparse",), **values}))
        compose("mlp", regularizers=plan.regularizers, input_shape=(6,), latent_dim=3, params=plan.components)
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
