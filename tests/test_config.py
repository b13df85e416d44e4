"""Typed component parameters: parsing, validation and the JSON form."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

import pytest

from aecore.config import ParamSpec, config_from_dict, config_to_dict, param, params_of, parse_value
from aecore.errors import AecoreError, ConfigError


@dataclass(frozen=True)
class Sample:
    count: int = param(3, "How many.")
    rate: float = param(0.5, "How fast.")
    enabled: bool = param(False, "Whether.")
    mode: Literal["fast", "slow"] = param("fast", "Which mode.")
    sizes: tuple[int, ...] = param((32, 64), "Widths.")
    scales: tuple[float, ...] = param((1.0,), "Scales.")
    tags: tuple[str, ...] = param((), "Tags.")
    limit: int | None = param(None, "Optional cap.")
    label: str = param("x", "A label.")

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"count cannot be negative, got {self.count}")


@dataclass(frozen=True)
class Required:
    size: int
    name: str = param("a", "Name.")


# -- parsing command-line strings ------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("count", "7", 7),
        ("count", " 12 ", 12),
        ("rate", "1e-3", 1e-3),
        ("rate", "2", 2.0),
        ("enabled", "true", True),
        ("enabled", "YES", True),
        ("enabled", "on", True),
        ("enabled", "1", True),
        ("enabled", "false", False),
        ("enabled", "Off", False),
        ("enabled", "0", False),
        ("mode", "slow", "slow"),
        ("sizes", "32,64,128", (32, 64, 128)),
        ("sizes", "(8, 16)", (8, 16)),
        ("sizes", "[4]", (4,)),
        ("sizes", "5", (5,)),
        ("scales", "0.5,2", (0.5, 2.0)),
        ("tags", "a,b", ("a", "b")),
        ("limit", "none", None),
        ("limit", "null", None),
        ("limit", "12", 12),
        ("label", "  spaced  ", "  spaced  "),  # str values are kept exactly
    ],
)
def test_strings_are_parsed_to_the_declared_type(key, text, expected):
    config = config_from_dict(Sample, {key: text})
    value = getattr(config, key)
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(expected, tuple):
        assert all(type(v) is type(e) for v, e in zip(value, expected, strict=True))


def test_parse_value_uses_the_spec():
    specs = {s.name: s for s in params_of(Sample)}
    assert parse_value(specs["sizes"], " 1,2 ") == (1, 2)
    assert parse_value(specs["mode"], "slow") == "slow"
    assert parse_value(specs["limit"], "") is None


@pytest.mark.parametrize(
    ("key", "text", "fragments"),
    [
        ("count", "abc", ["'count'", "expected int"]),
        ("count", "1.5", ["'count'", "expected int"]),
        ("rate", "fast", ["'rate'", "expected float"]),
        ("enabled", "maybe", ["'enabled'", "true or false"]),
        ("mode", "medium", ["'mode'", "fast, slow"]),
        ("mode", "FAST", ["'mode'", "fast, slow"]),
        ("sizes", "32,abc", ["'sizes'", "int list", "comma-separated"]),
        ("limit", "lots", ["'limit'", "expected int"]),
    ],
)
def test_bad_strings_name_the_parameter_and_the_type(key, text, fragments):
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(Sample, {key: text}, owner="encoder")
    message = str(excinfo.value)
    assert repr(text) in message
    assert "encoder." + key in message
    for fragment in fragments[1:]:
        assert fragment in message
    assert "\n" not in message


# -- JSON-like values (from checkpoints) -----------------------------------------------


def test_json_values_are_coerced():
    config = config_from_dict(
        Sample,
        {
            "count": 4.0,
            "rate": 1,
            "enabled": True,
            "sizes": [1, 2],
            "scales": 3,
            "limit": None,
            "tags": ["t"],
        },
    )
    assert config.count == 4 and type(config.count) is int
    assert config.rate == 1.0 and type(config.rate) is float
    assert config.sizes == (1, 2)
    assert config.scales == (3.0,)
    assert config.tags == ("t",)
    assert config.limit is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("count", True),  # a bool is not an int here
        ("count", 2.5),
        ("count", None),
        ("rate", "x"),
        ("rate", False),
        ("enabled", 1),
        ("mode", "medium"),
        ("sizes", "not-a-list-object"),  # a str is parsed, and fails to parse
        ("sizes", {"a": 1}),
        ("label", 3),
    ],
)
def test_bad_json_values_raise_config_error(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config_from_dict(Sample, {key: value})


def test_defaults_apply_when_nothing_is_given():
    assert config_from_dict(Sample, {}) == Sample()


def test_missing_required_parameter():
    with pytest.raises(ConfigError, match=r"missing required parameter\(s\): dec\.size"):
        config_from_dict(Required, {}, owner="dec")
    assert config_from_dict(Required, {"size": "3"}).size == 3


# -- unknown keys, __post_init__ -------------------------------------------------------


def test_unknown_key_suggests_close_names_and_lists_known():
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(Sample, {"cont": 1}, owner="encoder")
    message = str(excinfo.value)
    assert "unknown parameter 'encoder.cont'" in message
    assert "Did you mean: count?" in message
    assert "Known parameters: count, rate, enabled, mode, sizes, scales, tags, limit, label." in message


def test_unknown_key_without_close_match_still_lists_known():
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(Sample, {"zzzzzz": 1})
    assert "Did you mean" not in str(excinfo.value)
    assert "Known parameters: count" in str(excinfo.value)


def test_post_init_value_error_becomes_config_error():
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(Sample, {"count": -1}, owner="encoder")
    assert isinstance(excinfo.value, AecoreError)
    assert "invalid encoder parameters" in str(excinfo.value)
    assert "count cannot be negative, got -1" in str(excinfo.value)
    assert excinfo.value.__cause__ is None  # no chained traceback for the user


def test_config_error_is_a_value_error_and_exits_2():
    assert issubclass(ConfigError, ValueError)
    assert ConfigError.exit_code == 2


# -- specs and round trip --------------------------------------------------------------


def test_params_of_describes_every_field_in_order():
    specs = params_of(Sample)
    assert [s.name for s in specs] == [f.name for f in dataclasses.fields(Sample)]
    by_name = {s.name: s for s in specs}
    assert by_name["sizes"] == ParamSpec("sizes", tuple[int, ...], (32, 64), "Widths.")
    assert by_name["sizes"].type_name == "int list"
    assert by_name["limit"].type_name == "int or none"
    assert by_name["mode"].type_name == "fast|slow"
    assert by_name["mode"].choices == ("fast", "slow")
    assert by_name["count"].choices is None
    assert by_name["enabled"].type_name == "bool"
    assert params_of(Required)[0].default is dataclasses.MISSING


def test_params_of_rejects_non_dataclass():
    with pytest.raises(TypeError):
        params_of(int)


def test_config_to_dict_round_trips_through_json():
    config = config_from_dict(
        Sample,
        {"count": "9", "sizes": "1,2,3", "scales": "0.25", "tags": "a,b", "limit": "4", "mode": "slow"},
    )
    as_dict = config_to_dict(config)
    assert as_dict["sizes"] == [1, 2, 3]  # tuples become lists
    again = config_from_dict(Sample, json.loads(json.dumps(as_dict)))
    assert again == config


def test_config_to_dict_skips_non_init_fields():
    @dataclass
    class WithDerived:
        a: int = param(1, "A.")
        b: int = dataclasses.field(init=False, default=0)

    assert config_to_dict(WithDerived()) == {"a": 1}


# -- numbers: finite, within int64, within declared bounds ---------------------------


@dataclass(frozen=True)
class Numbers:
    count: int = param(3, "Any whole number.")
    seed: int = param(0, "A seed: [0, 2**63) by its name.")
    split_seed: int | None = param(None, "Another seed, by its name.")
    width: int = param(8, "Declared bounds.", minimum=1, maximum=4096)
    sizes: tuple[int, ...] = param((4,), "Each item bounded.", minimum=1)
    rate: float = param(0.5, "A bounded float.", minimum=0.0, maximum=1.0)
    free: float = param(1.0, "Any finite float.")
    table: dict[str, int] = param({}, "Whole numbers by name.")


INT64_MAX = 2**63 - 1


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("count", INT64_MAX + 1),
        ("count", -(2**63) - 1),
        ("count", 10**40),
        ("seed", -1),
        ("seed", 2**63),
        ("seed", 2**64),  # beyond what torch.manual_seed takes
        ("split_seed", -5),
        ("width", 0),
        ("width", 4097),
        ("sizes", [4, 0]),
        ("sizes", [2**63]),
        ("rate", 1.5),
        ("rate", -0.1),
        ("free", float("nan")),
        ("free", float("inf")),
        ("free", -float("inf")),
        ("free", 10**400),  # an int beyond any float
    ],
)
@pytest.mark.parametrize("given_as", ["json", "text"])
def test_numbers_out_of_range_are_refused_however_they_are_given(key, value, given_as):
    if given_as == "text":
        value = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(Numbers, {key: value}, owner="trainer")
    message = str(excinfo.value)
    assert f"'trainer.{key}'" in message and "\n" not in message and len(message) < 200


def test_whole_numbers_in_a_table_fit_int64_too():
    with pytest.raises(ConfigError, match=r"'table\.a'"):
        config_from_dict(Numbers, {"table": {"a": 2**70}})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("count", INT64_MAX, INT64_MAX),
        ("count", -(2**63), -(2**63)),
        ("seed", 0, 0),
        ("seed", INT64_MAX, INT64_MAX),
        ("split_seed", None, None),
        ("width", 1, 1),
        ("width", 4096, 4096),
        ("sizes", [1, 4096], (1, 4096)),
        ("rate", 0.0, 0.0),
        ("rate", 1, 1.0),
        ("free", -1e300, -1e300),
        ("table", {"a": 3}, {"a": 3}),
    ],
)
def test_numbers_at_the_bounds_are_accepted(key, value, expected):
    assert getattr(config_from_dict(Numbers, {key: value}), key) == expected
    if not isinstance(value, dict | type(None)):
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        assert getattr(config_from_dict(Numbers, {key: text}), key) == expected


def test_bounds_are_part_of_the_spec():
    specs = {s.name: s for s in params_of(Numbers)}
    assert specs["width"].bounds == (1, 4096)
    assert specs["seed"].bounds == (0, INT64_MAX)
    assert specs["split_seed"].bounds == (0, INT64_MAX)
    assert specs["count"].bounds == (None, None)  # int64 still applies, as to every int
    with pytest.raises(ConfigError):
        parse_value(specs["width"], "0")
    assert parse_value(specs["width"], "7") == 7


def test_a_seed_out_of_range_fails_before_torch_sees_it():
    import torch

    from aecore.request import RunRequest

    for seed in (2**63, 2**64, -1):
        with pytest.raises(ConfigError, match="'seed'"):
            RunRequest.from_values({"encoder": "mlp", "seed": seed})
    torch.Generator().manual_seed(RunRequest.from_values({"seed": INT64_MAX}).seed)  # the top one works


def test_a_malformed_number_says_expected_and_a_non_finite_one_says_finite():
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(Numbers, {"free": "nan"}, owner="trainer")
    assert "finite" in str(excinfo.value)
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(Numbers, {"sizes": "4,0"})
    assert "at least 1" in str(excinfo.value) and "comma-separated" not in str(excinfo.value)
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(Numbers, {"count": "9" * 500})
    assert len(str(excinfo.value)) < 200  # a huge number is not repeated whole


# -- the run request: a shortcut and --set trainer.X are one setting -------------------


@pytest.mark.parametrize(
    ("shortcut", "given", "value"),
    [
        ("epochs", 1, "3"),
        ("epochs", 1, 3),
        ("batch_size", 64, "128"),
        ("lr", 0.001, "0.01"),
    ],
)
def test_a_shortcut_and_a_set_item_that_disagree_are_refused(fresh_registry, shortcut, given, value):
    from aecore.request import RunRequest, resolve

    request = RunRequest.from_values(
        {"encoder": "mlp", shortcut: given, "params": {"trainer": {shortcut: value}}}
    )
    with pytest.raises(ConfigError) as excinfo:
        resolve(request)
    message = str(excinfo.value)
    assert f"--{shortcut.replace('_', '-')}" in message and f"trainer.{shortcut}" in message
    assert "give only one" in message


@pytest.mark.parametrize(
    ("shortcut", "given", "value"), [("epochs", 1, "1"), ("epochs", 2, 2), ("lr", 0.001, "1e-3")]
)
def test_a_shortcut_and_a_set_item_that_agree_are_one_setting(fresh_registry, shortcut, given, value):
    from aecore.request import RunRequest, resolve

    request = RunRequest.from_values(
        {"encoder": "mlp", shortcut: given, "params": {"trainer": {shortcut: value}}}
    )
    assert resolve(request).trainer_params[shortcut] == given


@pytest.mark.parametrize("value", ["garbage", "nan", "1.5", str(2**63)])
def test_a_set_item_beside_its_shortcut_is_parsed_not_compared_as_text(fresh_registry, value):
    from aecore.request import RunRequest, resolve

    request = RunRequest.from_values(
        {"encoder": "mlp", "epochs": 1, "params": {"trainer": {"epochs": value}}}
    )
    with pytest.raises(ConfigError) as excinfo:
        resolve(request)
    assert "bad value" in str(excinfo.value) and "'trainer.epochs'" in str(excinfo.value)


@pytest.mark.parametrize("latent", [0, -3])
def test_a_latent_size_below_one_is_refused_even_with_a_preset(fresh_registry, latent):
    from aecore.request import RunRequest

    for extra in ({"encoder": "mlp"}, {"preset": "conv-simple"}):
        with pytest.raises(ConfigError, match="latent-dim"):
            RunRequest.from_values({**extra, "latent_dim": latent})
