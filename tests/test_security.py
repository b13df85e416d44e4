"""Security promises: nothing is unpickled, metadata is data, sizes are bounded."""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from aecore import checkpoint
from aecore.errors import CheckpointError
from aecore.io import MAX_HEADER

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    p
    for folder in ("aecore", "plugins", "benchmarks")
    for p in (ROOT / folder).rglob("*.py")
    if "/tests/" not in str(p)
]
MODULES = "c?pickle|cloudpickle|dill|shelve|marshal"
UNPICKLING = re.compile(rf"^\s*(import ({MODULES})\b|from ({MODULES}) import)")


def test_the_source_never_unpickles():
    assert len(SOURCES) > 30  # the scan really covers the package and the plugins
    offences = []
    for path in SOURCES:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if UNPICKLING.search(line):
                offences.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
            if "torch.load(" in line and "weights_only=True" not in line:
                offences.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
            if re.search(r"\b(pickle|dill)\.loads?\(", line) or "allow_pickle=True" in line:
                offences.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offences, "\n".join(offences)


def _checkpoint_naming(tmp_path: Path, name: str, dist: str = "aecore-mlp") -> Path:
    component = {"name": name, "dist": dist, "version": "0.1.0", "params": {}}
    document = {
        "format": "aecore.checkpoint",
        "format_version": 1,
        "model": {"input_shape": [4], "latent_dim": 2, "encoder": component, "decoder": component},
    }
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(save({"w": torch.zeros(1)}, metadata={"aecore": json.dumps(document)}))
    return path


@pytest.mark.parametrize(
    "name",
    ["os:system", "aecore_mlp:MLPEncoder", "builtins.eval", "subprocess:Popen", "aefake_evil_module:X"],
)
def test_metadata_names_are_looked_up_in_the_registry_never_imported(tmp_path, name):
    before = set(sys.modules)
    with pytest.raises(CheckpointError):
        checkpoint.load(_checkpoint_naming(tmp_path, name))
    assert "aefake_evil_module" not in set(sys.modules) - before


def test_a_header_larger_than_the_limit_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.safetensors"
    huge = MAX_HEADER + 1
    path.write_bytes(struct.pack("<Q", huge) + b"{" + b" " * 64)
    with pytest.raises(CheckpointError, match="header claims"):
        checkpoint.read_metadata(path)


def test_metadata_that_is_not_an_aecore_document_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    path.write_bytes(save({"w": torch.zeros(1)}, metadata={"aecore": json.dumps(["not", "a", "table"])}))
    with pytest.raises(CheckpointError, match="not an aecore checkpoint"):
        checkpoint.load(path)


def test_deeply_nested_json_is_refused_not_a_recursion_error(tmp_path):
    nested = "[" * 200_000 + "]" * 200_000
    path = tmp_path / "nested.safetensors"
    path.write_bytes(save({"w": torch.zeros(1)}, metadata={"aecore": nested}))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoint.load(path)
    raw = ('{"a": ' + nested + "}").encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(CheckpointError, match="unreadable header"):
        checkpoint.load(path)


def test_a_checkpoint_is_compared_with_its_header_before_its_weights_are_read(tmp_path, monkeypatch):
    """A description whose tensors differ from the header's is refused without reading a weight."""
    from aecore.composition import compose

    model = compose("mlp", input_shape=(6,), latent_dim=3, params={"encoder": {"hidden": (4,)}})
    path = checkpoint.save(model, tmp_path / "model.safetensors")
    meta = json.loads(checkpoint.read_header(path)["__metadata__"]["aecore"])
    meta["model"]["latent_dim"] = 5
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path.write_bytes(save(state, metadata={"aecore": json.dumps(meta)}))
    monkeypatch.setattr(checkpoint, "st_load", lambda data: pytest.fail("the weights were read"))
    with pytest.raises(CheckpointError, match="check latent_dim 5"):
        checkpoint.load(path)
