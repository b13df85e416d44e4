"""What every image source shares: where the files are, what to say when they are not, downloads.

A source describes its files (:class:`Layout`) and how to fetch them
(:class:`Torchvision` or :class:`Archive`); :class:`ImageSource` does the
rest the same way for all of them: resolve the root, download only when
``?download=true`` asks and files are missing, refuse a missing file with
one line naming the folder, the files and both ways out, then read.

Readers put what they build in tensors from :func:`allocate` / :func:`keep`,
which come from the core's ``store`` when it passes one (a memory map onto
the cache file being prepared) and are plain tensors otherwise.
"""

from __future__ import annotations

import http.client
import os
import tarfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from aecore.config import config_to_dict, param, params_of
from aecore.data import Dataset, TensorData
from aecore.errors import DataError

__all__ = [
    "Archive",
    "ImageSource",
    "Layout",
    "Store",
    "Torchvision",
    "allocate",
    "changed",
    "check_labels",
    "default_data_root",
    "download",
    "download_param",
    "file_size",
    "keep",
    "progress",
    "read_file",
    "read_names",
]

#: Label-name files are a few lines; anything far larger is not one.
_MAX_NAMES_BYTES = 1 << 20


def default_data_root() -> Path:
    """The data root without ``--data-dir``: ``$AECORE_DATA_DIR``, else ``~/.cache/aecore/data``."""
    env = os.environ.get("AECORE_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aecore" / "data"


def download_param() -> Any:
    """The ``download`` option every source declares: off, so nothing is fetched unless asked for."""
    return param(
        False,
        "Fetch the files into the data root when they are missing (needs internet).",
        recorded=False,  # the same data whether it was fetched or found: not part of its name
    )


# -- the core's tensor store (optional) ---------------------------------------------------------


class Store(Protocol):
    """The part of ``aecore.data.TensorStore`` the readers use (the core passes one when it has it)."""

    def empty(self, key: str, shape: Sequence[int], dtype: torch.dtype) -> Tensor: ...


def allocate(store: Store | None, key: str, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """A writable tensor for ``key`` (``"train.x"``...): from the store when there is one."""
    if store is None:
        return torch.empty(tuple(shape), dtype=dtype)
    return store.empty(key, tuple(shape), dtype)


def keep(store: Store | None, key: str, tensor: Tensor) -> Tensor:
    """``tensor`` as the stored ``key``: copied into the store when there is one, else made contiguous."""
    if store is None:
        return tensor.contiguous()
    out = store.empty(key, tuple(tensor.shape), tensor.dtype)
    out.copy_(tensor)
    return out


def progress(store: Store | None, total: int, description: str) -> Callable[[int], None]:
    """``advance(n)`` for a progress bar the store draws; does nothing without one."""
    make = getattr(store, "progress", None)
    return make(total, description) if callable(make) else (lambda n: None)


# -- reading ---------------------------------------------------------------------------------


def changed(path: Path) -> DataError:
    """The error for a file that is not what it was when it was checked a moment before."""
    return DataError(f"{path} changed while it was read; read it again when nothing is writing it.")


def file_size(path: Path) -> int:
    """The size of ``path`` in bytes; a file that cannot be looked at is one line."""
    try:
        return path.stat().st_size
    except OSError as exc:
        raise DataError(f"cannot read {path}: {' '.join(str(exc).split())}.") from None


def read_file(path: Path, size: int | None = None) -> Tensor:
    """The whole file as a flat uint8 tensor, read once into its final buffer.

    ``size`` is the length the caller checked; a file that changed since is an error.
    """
    try:
        expected = path.stat().st_size if size is None else size
        out = torch.empty(expected, dtype=torch.uint8)
        with path.open("rb") as f:
            got = f.readinto(out.numpy())
            extra = f.read(1)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {' '.join(str(exc).split())}.") from None
    if got != expected or extra:
        raise changed(path)
    return out


def read_names(path: Path, count: int, title: str) -> list[str]:
    """The class names in a text file, one a line (blank lines skipped); exactly ``count`` of them."""
    try:
        size = path.stat().st_size
        if size > _MAX_NAMES_BYTES:
            raise DataError(
                f"{path} is {size:,} bytes, not a list of {count} class names (download it again)."
            )
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {' '.join(str(exc).split())}.") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not text; it should list {title}'s {count} class names.") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != count:
        raise DataError(
            f"{path} names {len(names)} classes, but {title} has {count}; the file is damaged "
            "(download it again)."
        )
    return names


def check_labels(labels: Tensor, low: int, high: int, path: Path, title: str) -> None:
    """Every label in ``low..high``, or one line naming the first value outside and the file."""
    if labels.numel() == 0:
        return
    bad = (labels < low) | (labels > high)
    if bool(bad.any()):
        value = int(labels[bad.nonzero()[0]].item())
        raise DataError(
            f"{path} holds the label {value}; {title} labels are {low} to {high} (download it again)."
        )


# -- fetching ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Torchvision:
    """Fetch with torchvision's own dataset class: ``datasets.NAME(root, download=True, **call)`` per call."""

    name: str
    calls: tuple[Mapping[str, Any], ...] = ({},)


@dataclass(frozen=True)
class Archive:
    """Fetch an archive and unpack it into the root (for formats torchvision does not download)."""

    url: str
    md5: str


#: What a failed download raises: the network (URLError is an OSError), torchvision (RuntimeError on a
#: checksum or HTTP failure), or a broken archive.
_DOWNLOAD_ERRORS = (
    OSError,
    RuntimeError,
    http.client.HTTPException,
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
)


def download(title: str, root: Path, how: Torchvision | Archive) -> None:
    """Fetch ``title``'s files into ``root``; any failure (offline, say) is one line.

    Called only for ``?download=true`` with files missing: tests replace it to
    check exactly that.
    """
    try:
        from torchvision import datasets
        from torchvision.datasets import utils
    except Exception as exc:  # a CPU/CUDA mismatch raises RuntimeError, not ImportError
        raise DataError(
            f"downloading {title} needs torchvision, which failed to import ({type(exc).__name__}: "
            f"{_one_line(exc)}); install torch and torchvision together, or pass --data-dir with a local "
            "copy."
        ) from None
    try:
        root.mkdir(parents=True, exist_ok=True)
        if isinstance(how, Archive):
            utils.download_and_extract_archive(how.url, str(root), md5=how.md5, remove_finished=True)
        else:
            for call in how.calls:
                getattr(datasets, how.name)(str(root), download=True, **call)
    except _DOWNLOAD_ERRORS as exc:
        raise DataError(
            f"could not download {title} to {root} ({_one_line(exc)}); go online, or pass --data-dir "
            "with a local copy."
        ) from None


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the shared source -------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where a dataset's files live under the data root, as messages name them.

    ``folder`` is relative to the root ("" for files right in it) and
    ``listing`` the files a user should see there, in words.
    """

    title: str
    folder: str
    listing: str
    #: The published archive that unpacks into ``folder`` ("" when torchvision fetches loose files).
    archive: str = ""
    #: Folders of the dataset's pickled version, which aecore never reads, and what each one is.
    pickled: Mapping[str, str] = field(default_factory=dict)
    #: Whose layout that is, for the message.
    origin: str = "torchvision's layout"

    def where(self) -> str:
        return f"{self.folder}/ holding {self.listing}" if self.folder else self.listing


class ImageSource:
    """The template every source here follows; subclasses say where their files are and how to read them."""

    #: Set by each subclass.
    Config: ClassVar[type]
    name: ClassVar[str]

    def __init__(self, config: Any) -> None:
        self.config = config

    # What a subclass provides.

    def layout(self) -> Layout:
        raise NotImplementedError

    def paths(self, root: Path) -> list[Path]:
        """Every file ``read`` uses, with these options."""
        raise NotImplementedError

    def fetch(self) -> Torchvision | Archive:
        raise NotImplementedError

    def check_download(self, root: Path) -> None:
        """Refuse a download that would make its fetcher unpickle something already in ``root``."""

    def read(self, root: Path, store: Store | None) -> tuple[TensorData, TensorData, dict[str, Any]]:
        """(train, test, spec entries) from files that all exist; every check before any tensor is filled."""
        raise NotImplementedError

    # The data-source contract.

    def files(self, location: str | None, *, data_dir: Path | None) -> list[Path]:
        return self.paths(default_data_root() if data_dir is None else data_dir)

    def load(
        self,
        location: str | None,
        *,
        data_dir: Path | None,
        normalisation: dict[str, Any] | None,
        store: Store | None = None,
    ) -> Dataset:
        layout = self.layout()
        asked = bool(getattr(self.config, "download", False))
        root = default_data_root() if data_dir is None else data_dir
        if data_dir is not None and not asked and not data_dir.is_dir():
            problem = "is a file, not a folder" if data_dir.exists() else "does not exist"
            holding = f"{layout.folder}/" if layout.folder else layout.listing
            raise DataError(f"--data-dir {data_dir} {problem}; point it at a folder holding {holding}.")
        needed = self.paths(root)
        if asked and not all(p.is_file() for p in needed):
            self.check_download(root)
            download(layout.title, root, self.fetch())  # looked up here at call time: tests replace it
        for path in needed:
            if not path.is_file():
                raise self._missing(layout, root, path)
        train, test, spec = self.read(root, store)
        return Dataset(self.name, train, test, {"data_dir": str(root.resolve()), **spec})

    def download_text(self) -> str:
        """The ``--data`` text that asks for these same options plus ``download=true``."""
        values = config_to_dict(self.config)
        options = [
            f"{s.name}={_text(values[s.name])}"
            for s in params_of(type(self.config))
            if s.name != "download" and values[s.name] != s.default
        ]
        return f"{self.name}?{'&'.join([*options, 'download=true'])}"

    def _missing(self, layout: Layout, root: Path, path: Path) -> DataError:
        absent = bool(layout.folder) and not (root / layout.folder).exists()
        for folder, why in layout.pickled.items() if absent else ():
            if (root / folder).exists():
                return DataError(
                    f"{root} holds {folder}/, {why}, which aecore never reads (unpickling can run code); "
                    f"get the binary distribution, {layout.archive}, which unpacks to {layout.where()} "
                    f"(or ask for a download: --data '{self.download_text()}')."
                )
        return DataError(
            f"{layout.title} file {path.name} not found in {path.parent}; pass --data-dir pointing at a "
            f"folder with {layout.where()} ({layout.origin}), or ask for a download: "
            f"--data '{self.download_text()}'."
        )
