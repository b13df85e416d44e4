"""``--data``: find a data source by name through the ``aecore.datasets`` group and load it.

The text is ``NAME``, ``NAME:LOCATION`` or either followed by
``?option=value&...``::

    embedded
    mnist
    csv:table.csv?label=species&test_fraction=0.25

The options are the source's ``Config`` fields, parsed by their declared
types, so a source declares its options once. The dataset comes back named
by the text that reloads exactly it: the location as the source records it
(an absolute path, say) and the options that differ from their defaults.
That name goes into checkpoints. Sources that list their files are cached
as prepared tensors (:mod:`aecore.cache`) and memory-mapped from then on;
a source whose ``load`` takes a ``store`` keyword fills the cache files
directly as it decodes (:class:`aecore.data.TensorStore`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aecore import registry
from aecore.cache import cached_dataset
from aecore.config import config_from_dict, config_to_dict, params_of
from aecore.data import Dataset
from aecore.data.store import TensorStore, accepts_store
from aecore.data.tensors import check_normalisation
from aecore.errors import ConfigError, DataError, Notice

__all__ = ["DEFAULT_DATA", "load_dataset", "parse_data"]

DEFAULT_DATA = "embedded"


def parse_data(text: str) -> tuple[str, str | None, dict[str, str]]:
    """``NAME[:LOCATION][?k=v&...]`` as (name, location or None, options)."""
    head, _, query = text.strip().partition("?")
    name, colon, location = head.partition(":")
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in options:
            raise DataError(f"--data {text}: option '{key}' is given twice.")
        options[key] = value
    return name.strip(), (location.strip() or None) if colon else None, options


def load_dataset(
    text: str | None = None,
    data_dir: str | Path | None = None,
    *,
    normalisation: Mapping[str, Any] | None = None,
) -> Dataset:
    """Load the dataset ``text`` names (default: the embedded MNIST sample) into memory.

    ``normalisation`` is a trained model's record: a source that computes
    statistics (tables) reuses it instead; image sources ignore it.
    """
    text = text or DEFAULT_DATA
    name, location, options = parse_data(text)
    cls = registry.get("dataset", name)
    try:
        config = config_from_dict(cls.Config, options, owner=name)
    except ConfigError as exc:
        raise DataError(f"--data {text}: {exc}") from None
    source = cls(config)
    takes_location = bool(getattr(cls, "takes_location", False))
    if takes_location and location is None:
        raise DataError(f"data source '{name}' needs a location: --data {name}:PATH.")
    if not takes_location and location is not None:
        raise DataError(f"data source '{name}' takes no location; use --data {name}.")
    root = Path(data_dir).expanduser() if data_dir is not None else None
    if location is not None and callable(getattr(source, "locate", None)):
        location = source.locate(location, root)
    canonical = _canonical(name, location, source.config)
    norm = None if normalisation is None else check_normalisation(normalisation)  # a DataError if odd

    streams = accepts_store(source.load)

    built = []

    def build(store: TensorStore | None) -> Dataset:
        built.append(True)
        extra = {"store": store} if streams and store is not None else {}
        dataset = source.load(location, data_dir=root, normalisation=norm, **extra)
        if not isinstance(dataset, Dataset):
            raise DataError(
                f"data source '{name}' returned a {type(dataset).__name__}, not an aecore.data.Dataset; "
                "report it to the plugin's authors."
            )
        dataset.name = canonical
        dataset.spec = {**dataset.spec, "name": canonical}
        return dataset

    files = getattr(source, "files", None)
    if callable(files):
        key = {"data_dir": None if root is None else str(root.resolve()), "normalisation": norm}
        dataset = cached_dataset(canonical, key, lambda: files(location, data_dir=root), build)
    else:
        dataset = build(None)
    if len(dataset.train) == 0 or len(dataset.test) == 0:
        raise DataError(f"dataset '{canonical}' is empty; check the files it reads.")
    skipped = dataset.spec.get("skipped")
    if not built and isinstance(skipped, list) and skipped:  # the source said so when it prepared the data
        warnings.warn(
            f"{canonical} leaves out {len(skipped)} unreadable file(s) (skip_bad, from the prepared cache); "
            f"the first is {skipped[0]}, and a run lists them all in skipped-files.txt.",
            Notice,
            stacklevel=2,
        )
    return dataset


def _canonical(name: str, location: str | None, config: Any) -> str:
    specs = params_of(type(config))
    defaults = {s.name: s.default for s in specs}
    unrecorded = {s.name for s in specs if not s.recorded}  # how to load (download), not what
    values = config_to_dict(config)
    changed = {
        k: _text(v) for k, v in values.items() if k not in unrecorded and _text(v) != _text(defaults.get(k))
    }
    text = name if location is None else f"{name}:{location}"
    return f"{text}?{urlencode(changed, safe='/:,')}" if changed else text


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_text(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return str(value)
