"""The entry-point registry, exercised with throwaway distributions on sys.path."""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
import warnings

import pytest

from aecore import registry
from aecore.entry_points import MetadataWarning
from aecore.errors import (
    AecoreError,
    AmbiguousComponentError,
    ConfigError,
    PluginLoadError,
    UnknownComponentError,
)
from aecore.registry import PluginWarning

ENC = "aecore.encoders"


def test_listing_reads_metadata_without_importing(make_dist, encoder_source):
    make_dist(
        "aefake-lazy",
        {ENC: {"lazyenc": "aefake_lazy:FakeEncoder"}, "aecore.decoders": {"lazydec": "aefake_lazy:Nope"}},
        version="2.5.0",
        modules={"aefake_lazy": encoder_source()},
    )
    encoders = registry.list_components("encoder")
    (entry,) = [c for c in encoders if c.name == "lazyenc"]
    assert (entry.kind, entry.dist, entry.version, entry.target) == (
        "encoder",
        "aefake-lazy",
        "2.5.0",
        "aefake_lazy:FakeEncoder",
    )
    assert entry.qualified_name == "aefake-lazy:lazyenc"
    assert [c.name for c in registry.list_components("decoder") if c.dist == "aefake-lazy"] == ["lazydec"]
    every = registry.list_components()
    assert {"lazyenc", "lazydec", "mlp", "conv", "sparse", "default"} <= {c.name for c in every}
    assert "aefake_lazy" not in sys.modules

    assert registry.get("encoder", "lazyenc").__name__ == "FakeEncoder"
    assert "aefake_lazy" in sys.modules


def test_wildcard_patterns(make_dist):
    make_dist(
        "aefake-pat",
        {ENC: {"conformer": "aefake_pat:A", "capsule": "aefake_pat:B", "linear": "aefake_pat:C"}},
    )

    def names(pattern):
        known = {"aefake-pat", "aecore-conv", "aecore-mlp"}  # ignore other installed plugins
        return [c.name for c in registry.list_components("encoder", pattern) if c.dist in known]

    assert names("c*") == ["capsule", "conformer", "conv"]  # sorted by name
    assert names("*ine*") == ["linear"]
    assert names("?lp") == ["mlp"]
    assert all(c.name.startswith("c") for c in registry.list_components("encoder", "c*"))
    # the qualified name matches too
    assert {c.name for c in registry.list_components("encoder", "aefake-pat:*")} == {
        "conformer",
        "capsule",
        "linear",
    }
    assert registry.list_components("encoder", "zzz*") == []
    # matching is case-sensitive and anchored
    assert registry.list_components("encoder", "CONV") == []
    assert registry.list_components("encoder", "onv") == []


def test_unknown_kind_is_rejected(fresh_registry):
    with pytest.raises(UnknownComponentError, match="Did you mean: encoder"):
        registry.list_components("encodr")


def test_unknown_name_lists_close_matches_and_installed(fresh_registry):
    with pytest.raises(UnknownComponentError) as excinfo:
        registry.get("encoder", "cnov")
    message = str(excinfo.value)
    assert "unknown encoder 'cnov'" in message
    assert "Did you mean: conv?" in message
    installed = message.split("Installed encoders: ")[1]
    assert "conv" in installed and "mlp" in installed
    assert isinstance(excinfo.value, AecoreError) and isinstance(excinfo.value, LookupError)


def test_unknown_qualified_name(fresh_registry):
    with pytest.raises(UnknownComponentError, match="unknown encoder 'aecore-mlp:conv'"):
        registry.info("encoder", "aecore-mlp:conv")
    assert registry.info("encoder", "aecore-conv:conv").dist == "aecore-conv"


def test_duplicate_names_are_ambiguous_and_qualified_name_picks(make_dist, encoder_source):
    make_dist(
        "aefake-one", {ENC: {"twin": "aefake_one:FakeEncoder"}}, modules={"aefake_one": encoder_source("one")}
    )
    make_dist(
        "aefake-two",
        {ENC: {"twin": "aefake_two:FakeEncoder"}},
        version="1.0",
        modules={"aefake_two": encoder_source("two")},
    )
    with pytest.raises(AmbiguousComponentError) as excinfo:
        registry.get("encoder", "twin")
    message = str(excinfo.value)
    assert "provided by 2 distributions" in message
    assert "'aefake-one:twin'" in message and "'aefake-two:twin'" in message

    assert registry.get("encoder", "aefake-one:twin").TAG == "one"
    assert registry.get("encoder", "aefake-two:twin").TAG == "two"
    assert {c.dist for c in registry.find("twin")} == {"aefake-one", "aefake-two"}
    assert [c.dist for c in registry.find("aefake-two:twin")] == ["aefake-two"]


def test_module_that_fails_to_import(make_dist):
    make_dist(
        "aefake-broken",
        {ENC: {"broken": "aefake_broken:FakeEncoder"}},
        version="0.0.7",
        modules={"aefake_broken": "raise RuntimeError('needs a GPU driver from 1999')\n"},
    )
    # listing still works and shows it
    assert "broken" in [c.name for c in registry.list_components("encoder")]

    # the failure is said once, by the error: a raised load does not warn as well
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(PluginLoadError) as excinfo:
            registry.get("encoder", "broken")
    message = str(excinfo.value)
    assert "aefake-broken 0.0.7" in message
    assert "RuntimeError: needs a GPU driver from 1999" in message
    assert "Reinstall or update aefake-broken" in message
    assert isinstance(excinfo.value, ImportError)
    assert not [w for w in record if issubclass(w.category, PluginWarning)]
    with pytest.raises(PluginLoadError):  # the error every time
        registry.get("encoder", "broken")

    # whoever carries on without it reports it, once per process
    entry = registry.info("encoder", "broken")
    with pytest.warns(PluginWarning, match="needs a GPU driver"):
        registry.report_broken(entry, message)
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        registry.report_broken(entry, message)
    assert not again

    # everything else keeps working
    assert registry.get("encoder", "mlp").__name__ == "MLPEncoder"
    model = registry.build("encoder", "mlp", {"hidden": "8"}, input_shape=(1, 4, 4), latent_dim=2)
    assert model.config.hidden == (8,)


def test_target_attribute_that_does_not_exist(make_dist, encoder_source):
    make_dist(
        "aefake-typo",
        {ENC: {"typo": "aefake_typo:FakeEncodr"}},
        modules={"aefake_typo": encoder_source()},
    )
    with pytest.raises(PluginLoadError) as excinfo:
        registry.get("encoder", "typo")
    assert "AttributeError" in str(excinfo.value)
    assert "FakeEncodr" in str(excinfo.value)


def test_target_module_that_does_not_exist(make_dist):
    make_dist("aefake-ghost", {ENC: {"ghost": "aefake_ghost_missing:X"}})
    with pytest.raises(PluginLoadError, match="ModuleNotFoundError"):
        registry.get("encoder", "ghost")


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        (
            "import torch\nclass NoConfig(torch.nn.Module):\n    def forward(self, x):\n        return x\n",
            "no 'Config' dataclass",
        ),
        (
            "import torch\nclass NoConfig(torch.nn.Module):\n    Config = dict\n"
            "    def forward(self, x):\n        return x\n",
            "no 'Config' dataclass",
        ),
        (
            "from dataclasses import dataclass\n@dataclass\nclass C:\n    pass\n"
            "class NoConfig:\n    Config = C\n    def forward(self, x):\n        return x\n",
            "not a torch.nn.Module",
        ),
        (
            "from dataclasses import dataclass\nimport torch\n@dataclass\nclass C:\n    pass\n"
            "class NoConfig(torch.nn.Module):\n    Config = C\n",
            # nn.Module has forward, so an encoder without its own is not caught statically;
            # a regularizer needs penalty etc. — checked below
            None,
        ),
        ("NoConfig = 42\n", "must name a class, got int"),
    ],
)
def test_object_that_is_not_a_valid_component(make_dist, source, problem):
    make_dist(
        "aefake-invalid", {ENC: {"invalid": "aefake_invalid:NoConfig"}}, modules={"aefake_invalid": source}
    )
    if problem is None:
        assert registry.get("encoder", "invalid").__name__ == "NoConfig"
        return
    with pytest.raises(PluginLoadError) as excinfo:
        registry.get("encoder", "invalid")
    assert "is not a valid encoder" in str(excinfo.value)
    assert problem in str(excinfo.value)


def test_regularizer_without_its_methods_is_invalid(make_dist):
    source = (
        "from dataclasses import dataclass\nimport torch\n@dataclass\nclass C:\n    pass\n"
        "class Reg(torch.nn.Module):\n    Config = C\n"
    )
    make_dist(
        "aefake-reg", {"aecore.regularizers": {"badreg": "aefake_reg:Reg"}}, modules={"aefake_reg": source}
    )
    with pytest.raises(PluginLoadError) as excinfo:
        registry.get("regularizer", "badreg")
    message = str(excinfo.value)
    for method in ("penalty", "transform_input", "transform_code"):
        assert f"no '{method}' method" in message


def test_build_validates_params_and_passes_context(make_dist, encoder_source):
    make_dist(
        "aefake-build",
        {ENC: {"fake": "aefake_build:FakeEncoder"}},
        modules={"aefake_build": encoder_source()},
    )
    enc = registry.build("encoder", "fake", {"scale": "2.5"}, input_shape=(1, 2, 3), latent_dim=5)
    assert enc.config.scale == 2.5
    assert enc.input_shape == (1, 2, 3) and enc.latent_dim == 5
    assert enc.lin.in_features == 6
    default = registry.build("encoder", "fake", input_shape=(4,), latent_dim=1)
    assert default.config.scale == 1.0

    with pytest.raises(ConfigError, match=re.escape("unknown parameter 'fake.scal'. Did you mean: scale?")):
        registry.build("encoder", "fake", {"scal": 1}, input_shape=(4,), latent_dim=1)
    with pytest.raises(ConfigError, match=re.escape("'fake.width'")):
        registry.build("encoder", "fake", {"width": "wide"}, input_shape=(4,), latent_dim=1)


def test_loaded_objects_are_cached(fresh_registry):
    first = registry.get("encoder", "mlp")
    assert registry.get("encoder", "aecore-mlp:mlp") is first


def test_scan_happens_once_per_process(fresh_registry, monkeypatch):
    import aecore.entry_points

    calls = []
    real = aecore.entry_points.read_entry_points

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "read_entry_points", counting)
    registry.refresh()
    registry.list_components()
    registry.list_components("encoder", "c*")
    registry.info("decoder", "conv")
    registry.get("encoder", "mlp")
    registry.find("sparse")
    list(registry.every("hook"))
    assert len(calls) == 1
    registry.refresh()
    registry.list_components()
    assert len(calls) == 2


def test_entry_points_are_read_as_importlib_metadata_reads_them():
    """The direct reader sees exactly the aecore entry points importlib.metadata sees here."""
    from aecore.entry_points import read_entry_points

    def key(dist, version, group, name, value):
        return (dist.lower().replace("_", "-"), version, group, name, value)

    ours = {key(r.dist, r.version, r.group, r.name, r.value) for r in read_entry_points("aecore.")}
    theirs = {
        key(d.metadata["Name"], d.version, ep.group, ep.name, ep.value)
        for d in importlib.metadata.distributions()
        for ep in d.entry_points
        if ep.group.startswith("aecore.")
    }
    assert ours == theirs and any(group == "aecore.encoders" for _, _, group, _, _ in ours)


def test_entry_point_files_parse_like_ini(tmp_path, no_walk_switches):
    from aecore.entry_points import read_entry_points

    folder = tmp_path / "Demo_Plugin-2.1.dist-info"
    folder.mkdir()
    headers = "Metadata-Version: 2.1\nName: demo.plugin\nVersion: 2.1.0\n"
    (folder / "METADATA").write_text(headers + "\nName: not a header, the body\n")
    (folder / "entry_points.txt").write_text(
        "# comment\n[console_scripts]\ndemo = demo:main\n\n[aecore.encoders]\n"
        "  wide = demo.enc:Wide [extra]\n; another comment\nnarrow=demo.enc:Narrow\n"
    )
    (tmp_path / "other-1.0.dist-info").mkdir()  # no entry_points.txt at all
    with pytest.warns(MetadataWarning) as said:
        records = read_entry_points("aecore.", path=[str(tmp_path)])
    assert [(r.dist, r.version, r.group, r.name, r.value) for r in records] == [
        ("demo.plugin", "2.1.0", "aecore.encoders", "wide", "demo.enc:Wide [extra]"),
        ("demo.plugin", "2.1.0", "aecore.encoders", "narrow", "demo.enc:Narrow"),
    ]
    # importlib.metadata takes only '#' for a comment (a ';' line in a group breaks it), so it is said
    (warning,) = said
    assert "demo.plugin 2.1.0" in str(warning.message) and "line 7" in str(warning.message)


# -- any distribution's metadata may be broken; discovery survives it ----------------------

#: The libraries whose own entry-point walks are turned off when a file would break them.
WALK_SWITCHES = ("TORCH_DEVICE_BACKEND_AUTOLOAD", "TRITON_BACKENDS_IN_TREE")


@pytest.fixture
def no_walk_switches(monkeypatch):
    """The walk switches unset now and restored after the test (reading broken metadata sets them)."""
    for var in WALK_SWITCHES:
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)


def _dist_info(site, folder: str, *, metadata: bytes | None, entry_points: bytes | None):
    path = site / folder
    path.mkdir()
    if metadata is not None:
        (path / "METADATA").write_bytes(metadata)
    if entry_points is not None:
        (path / "entry_points.txt").write_bytes(entry_points)
    return path


GOOD_METADATA = b"Metadata-Version: 2.1\nName: aefake-odd\nVersion: 1.2\n"
GOOD_LINE = b"[aecore.encoders]\ngood = aefake_odd:Good\n"

#: case -> (METADATA, entry_points.txt, the file the warning names, whether importlib.metadata fails on it,
#: whether the good entry is still read)
MALFORMED = {
    "entry points not UTF-8": (
        GOOD_METADATA,
        GOOD_LINE + b"bad = \xff\xfe:x\n",
        "entry_points.txt",
        True,
        False,
    ),
    "unrelated group not UTF-8": (
        GOOD_METADATA,
        b"[console_scripts]\nodd = \xe9t\xe9:main\n",
        "entry_points.txt",
        True,
        False,
    ),
    "line without '='": (GOOD_METADATA, GOOD_LINE + b"just words\n", "entry_points.txt", True, True),
    "unrelated line without '='": (
        GOOD_METADATA,
        GOOD_LINE + b"[console_scripts]\nno equals here\n",
        "entry_points.txt",
        True,
        True,
    ),
    "header without ]": (  # before any group: importlib.metadata ignores it, and its entries
        GOOD_METADATA,
        b"[aecore.decoders\nx = y:z\n" + GOOD_LINE,
        "entry_points.txt",
        False,
        True,
    ),
    "header without ] inside a group": (  # importlib.metadata takes it for an entry, and fails
        GOOD_METADATA,
        GOOD_LINE + b"[aecore.decoders\nx = y:z\n",
        "entry_points.txt",
        True,
        True,
    ),
    "empty name": (GOOD_METADATA, GOOD_LINE + b"= aefake_odd:X\n", "entry_points.txt", False, True),
    "empty target": (GOOD_METADATA, GOOD_LINE + b"odd =\n", "entry_points.txt", False, True),
    "METADATA without Name": (b"Metadata-Version: 2.1\nVersion: 1.2\n", GOOD_LINE, "METADATA", False, True),
    "METADATA without Version": (b"Name: aefake-odd\n", GOOD_LINE, "METADATA", False, True),
    "METADATA not UTF-8": (b"Name: aefake-\xff\n", GOOD_LINE, "METADATA", False, True),
    "no METADATA": (None, GOOD_LINE, "aefake_odd-1.2.dist-info", False, True),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_metadata_is_said_in_one_line_and_the_rest_still_read(
    tmp_path, monkeypatch, no_walk_switches, case
):
    from aecore.entry_points import read_entry_points

    metadata, entry_points, named, breaks_importlib, good_read = MALFORMED[case]
    folder = _dist_info(tmp_path, "aefake_odd-1.2.dist-info", metadata=metadata, entry_points=entry_points)
    _dist_info(
        tmp_path,
        "aefake_fine-1.0.dist-info",
        metadata=b"Name: aefake-fine\nVersion: 1.0\n",
        entry_points=b"[aecore.encoders]\nfine = aefake_fine:Fine\n",
    )
    for module in ("torch", "triton"):  # as in a fresh `ae` process, before either is imported
        monkeypatch.delitem(sys.modules, module, raising=False)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        records = read_entry_points("aecore.", path=[str(tmp_path)])
    switched = {var: os.environ.get(var) for var in WALK_SWITCHES}
    (warning,) = [w for w in said if issubclass(w.category, MetadataWarning)]
    message = str(warning.message)
    assert "aefake_odd" in message or "aefake-odd" in message
    assert str(folder) in message and named in message and "\n" not in message
    assert "Reinstall or uninstall" in message
    names = {r.name for r in records}
    assert "fine" in names  # the other distribution is untouched
    assert ("good" in names) == good_read
    assert not {"", "odd", "bad", "x"} & names
    # what breaks importlib.metadata (and so torch's and triton's own walks) is what turns those off
    try:
        for dist in importlib.metadata.distributions(path=[str(tmp_path)]):
            dist.entry_points  # noqa: B018 - reading them is the test
        importlib_fails = False
    except Exception:
        importlib_fails = True
    assert importlib_fails == breaks_importlib
    expected = {"TORCH_DEVICE_BACKEND_AUTOLOAD": "0", "TRITON_BACKENDS_IN_TREE": "1"}
    assert switched == (expected if breaks_importlib else dict.fromkeys(WALK_SWITCHES))


def test_walk_switches_the_user_set_or_of_imported_libraries_are_left_alone(
    tmp_path, monkeypatch, no_walk_switches
):
    from aecore.entry_points import read_entry_points

    _dist_info(tmp_path, "aefake_odd-1.2.dist-info", metadata=GOOD_METADATA, entry_points=b"[x]\nnope\n")
    assert "torch" in sys.modules
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    monkeypatch.setenv("TRITON_BACKENDS_IN_TREE", "0")  # the user's choice
    with pytest.warns(MetadataWarning):
        read_entry_points("aecore.", path=[str(tmp_path)])
    assert "TORCH_DEVICE_BACKEND_AUTOLOAD" not in os.environ  # torch is imported already
    assert os.environ["TRITON_BACKENDS_IN_TREE"] == "0"


def test_a_dist_info_that_is_a_file_is_said_and_skipped(tmp_path):
    from aecore.entry_points import read_entry_points

    (tmp_path / "aefake_flat-1.0.dist-info").write_text("not a folder")
    (tmp_path / "aefake_old-1.0.egg-info").write_text("Name: aefake-old\n")  # an old install's PKG-INFO
    with pytest.warns(MetadataWarning) as said:
        assert read_entry_points("aecore.", path=[str(tmp_path)]) == []
    (warning,) = said
    assert "aefake_flat-1.0.dist-info" in str(warning.message) and "a file" in str(warning.message)


def test_the_registry_lists_everything_else_beside_broken_metadata(make_dist, no_walk_switches):
    make_dist("aefake-ok", {ENC: {"okay": "aefake_ok:FakeEncoder"}})
    site = next(p for p in sys.path if p.endswith("site"))
    from pathlib import Path

    _dist_info(
        Path(site),
        "aefake_bytes-1.0.dist-info",
        metadata=GOOD_METADATA,
        entry_points=b"[aecore.encoders]\n\xff = x:y\n",
    )
    registry.refresh()
    with pytest.warns(MetadataWarning, match="aefake_bytes"):
        names = registry.names("encoder")
    assert {"okay", "mlp", "conv"} <= set(names)


def test_default_trainer_is_listed_as_aecore(fresh_registry):
    (trainer,) = registry.list_components("trainer", "default")
    assert trainer.dist == "aecore"
    assert trainer.version == importlib.metadata.version("aecore")
    assert trainer.target == "aecore.training.default:DefaultTrainer"
    from aecore.training.default import DefaultTrainer

    assert registry.get("trainer", "default") is DefaultTrainer


def test_shipped_plugins_are_listed_with_their_distributions(fresh_registry):
    rows = {(c.kind, c.name, c.dist) for c in registry.list_components()}
    assert {
        ("encoder", "mlp", "aecore-mlp"),
        ("decoder", "mlp", "aecore-mlp"),
        ("encoder", "conv", "aecore-conv"),
        ("decoder", "conv", "aecore-conv"),
        ("regularizer", "sparse", "aecore-sparse"),
        ("trainer", "default", "aecore"),
    } <= rows


# -- hook plugins -----------------------------------------------------------------------

HOOK_SOURCE = """
from aecore.hooks import hookimpl

CALLS = []


class Recorder:
    @hookimpl
    def ae_train_start(self, run, total_epochs, steps_per_epoch):
        CALLS.append(("start", total_epochs, steps_per_epoch, run.info["encoder"]))

    @hookimpl
    def ae_step_end(self, run, epoch, step, batch_size, loss):
        CALLS.append(("step", epoch, step, batch_size))

    @hookimpl
    def ae_epoch_end(self, run, epoch, metrics):
        CALLS.append(("epoch", epoch, sorted(metrics)))

    @hookimpl
    def ae_checkpoint_saved(self, run, path, metrics):
        CALLS.append(("saved", path.name, path.exists()))

    @hookimpl
    def ae_train_end(self, run, metrics):
        CALLS.append(("end", "test_mse_per_pixel" in metrics))
"""


@pytest.mark.slow
def test_hook_entry_point_is_called_by_a_real_training_run(make_dist, tiny_data, tmp_path):
    make_dist(
        "aefake-hooks",
        {"aecore.hooks": {"recorder": "aefake_hooks:Recorder", "brokenlog": "aefake_hooklog:Logger"}},
        modules={"aefake_hooks": HOOK_SOURCE, "aefake_hooklog": "raise ImportError('no wandb')\n"},
    )
    from aecore.training import train

    with pytest.warns(PluginWarning, match="no wandb"):  # a broken hook plugin is skipped, not fatal
        result = train(
            "mlp",
            params={"encoder": {"hidden": "16"}, "trainer": {"epochs": 2, "batch_size": 250}},
            latent_dim=4,
            data=tiny_data,
            out=tmp_path / "run",
            progress=False,
        )
    calls = sys.modules["aefake_hooks"].CALLS
    # 1,000 images minus 10% validation = 900 -> 4 steps of 250, 250, 250, 150
    assert calls[0] == ("start", 2, 4, "mlp")
    steps = [c for c in calls if c[0] == "step"]
    assert steps == [("step", e, s, 250 if s < 3 else 150) for e in (1, 2) for s in range(4)]
    epochs = [c for c in calls if c[0] == "epoch"]
    assert [c[1] for c in epochs] == [1, 2]
    assert "train_recon" in epochs[0][2] and "val_recon" in epochs[0][2]
    saved = [c for c in calls if c[0] == "saved"]
    assert all(exists for _, _, exists in saved)
    # model.safetensors after epoch 1 and the final one (a trainer may save others, e.g. best.safetensors)
    assert [name for _, name, _ in saved].count("model.safetensors") == 2
    assert saved[-1] == ("saved", "model.safetensors", True)
    assert calls[-1] == ("end", True)
    assert result.checkpoint.exists()


# -- in-process registration --------------------------------------------------------------


def test_a_registered_encoder_is_found_built_and_composed_like_an_installed_one(fresh_registry):
    import torch

    from aecore.composition import compose
    from aecore.testing import LinearDecoder, LinearEncoder

    with (
        registry.registered("encoder", "lin", LinearEncoder, dist="note_book", version="1.2") as enc,
        registry.registered("decoder", "lin", LinearDecoder, dist="note_book") as dec,
    ):
        assert (enc.kind, enc.name, enc.dist, enc.version) == ("encoder", "lin", "note-book", "1.2")
        assert enc.target == "aecore.testing:LinearEncoder"
        assert enc in registry.list_components("encoder") and enc in registry.list_components(pattern="l?n")
        assert list(registry.every("decoder")).count(dec) == 1
        assert registry.info("encoder", "note-book:lin") == enc
        assert registry.find("lin") == [enc, dec]
        assert registry.get("encoder", "lin") is LinearEncoder
        built = registry.build("encoder", "lin", {"bias": "false"}, input_shape=(1, 4, 4), latent_dim=3)
        assert built.net[1].bias is None and built.latent_dim == 3

        model = compose("lin", input_shape=(1, 4, 4), latent_dim=3)  # its decoder of the same name
        assert (model.spec.encoder.dist, model.spec.decoder.qualified_name) == ("note-book", "note-book:lin")
        assert model(torch.rand(2, 1, 4, 4)).shape == (2, 1, 4, 4)

        registry.refresh()  # a registration is not an entry point: it stays
        assert registry.get("decoder", "note-book:lin") is LinearDecoder
    assert "lin" not in registry.names("encoder") + registry.names("decoder")
    with pytest.raises(UnknownComponentError, match="unknown encoder 'lin'"):
        registry.info("encoder", "lin")


def test_register_and_unregister_a_loss(fresh_registry):
    from aecore.losses import build_loss

    def halved(recon, target):
        return ((recon - target) ** 2).mean() / 2

    info = registry.register("loss", "halved", halved)
    assert info.qualified_name == "local:halved"
    assert build_loss("halved") is halved
    registry.unregister(info)
    with pytest.raises(UnknownComponentError):
        build_loss("halved")
    with pytest.raises(UnknownComponentError, match="not registered in this process"):
        registry.unregister(info)
    with pytest.raises(UnknownComponentError, match="not registered in this process"):
        registry.unregister(registry.info("trainer", "default"))  # an installed plugin stays
    assert registry.get("trainer", "default").__name__ == "DefaultTrainer"


@pytest.mark.parametrize(
    ("kind", "name", "obj", "problem"),
    [
        ("encoder", "bad", dict, "it has no 'Config' dataclass"),
        ("loss", "bad", 42, "cannot be called"),
        ("preset", "bad", {"encoder": "mlp"}, "not an aecore Preset"),
        ("loss", "a:b", abs, "without ':'"),
        ("loss", " padded", abs, "without ':' or surrounding spaces"),
    ],
)
def test_an_invalid_registration_is_refused_in_one_line(fresh_registry, kind, name, obj, problem):
    before = registry.list_components()
    with pytest.raises(PluginLoadError, match=re.escape(problem)) as caught:
        registry.register(kind, name, obj)
    assert "\n" not in str(caught.value)
    assert registry.list_components() == before


def test_a_registration_cannot_take_a_name_already_present(fresh_registry):
    from aecore.testing import LinearEncoder

    with registry.registered("encoder", "lin", LinearEncoder):
        with pytest.raises(PluginLoadError, match="local already provides encoder 'lin'"):
            registry.register("encoder", "lin", LinearEncoder)
        with registry.registered("encoder", "lin", LinearEncoder, dist="other") as other:
            assert [c.dist for c in registry.duplicates()[("encoder", "lin")]] == ["local", "other"]
            with pytest.raises(AmbiguousComponentError, match="'local:lin' or 'other:lin'"):
                registry.info("encoder", "lin")
            assert registry.info("encoder", "other:lin") == other
    with pytest.raises(PluginLoadError, match="already provides"):  # nor an installed one's
        registry.register("trainer", "default", registry.get("trainer", "default"), dist="aecore")
    assert registry.info("trainer", "default").target == "aecore.training.default:DefaultTrainer"


def test_a_registered_hook_joins_every_run_until_it_is_unregistered(fresh_registry):
    from aecore.hooks import hookimpl, plugin_manager

    class Counter:
        calls = 0

        @hookimpl
        def ae_train_end(self, run, metrics):
            Counter.calls += 1

    with registry.registered("hook", "counter", Counter):
        plugin_manager(exclude=("progress",)).hook.ae_train_end(run=None, metrics={})
    plugin_manager(exclude=("progress",)).hook.ae_train_end(run=None, metrics={})
    assert Counter.calls == 1
