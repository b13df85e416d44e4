"""Decoding image files into uint8 tensors with Pillow, on all cores, the same way on every machine.

One decoder serves both sources. Every file goes through the same steps:

1. Pillow opens it, allowing only PNG, JPEG, BMP, TIFF and WebP (whatever
   the extension says), so no other decoder ever sees a file. The first
   frame of a multi-frame file is used. A file above Pillow's
   decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is a bad file.
2. 16-bit pixels (modes ``I;16*``, and ``I`` clipped to 0..65535) keep their
   high byte, ``v >> 8``, which is also what Pillow does for 16-bit colour
   PNGs; 32-bit float images are refused.
3. Pillow's ``L`` or ``RGB`` conversion gives the channel count: alpha is
   dropped, not blended; colour becomes gray as ``L = R·299/1000 +
   G·587/1000 + B·114/1000``; gray becomes RGB by repeating it. With
   ``channels=auto`` the first readable file's mode sets the count: colour
   gives 3 at once; gray gives 1 until a colour file turns up, and then the
   gray tensors are thrown away and every file is decoded again as RGB. So
   no file is opened twice unless a colour one follows gray ones.
4. The geometry (:func:`fit`) with a bilinear filter for images and nearest
   neighbour for masks, ``reducing_gap=None``: no approximation.

Images are decoded on every core and written straight into the
preallocated output, chunk by chunk, so the whole dataset is never held
twice. Large images decode in a thread pool (Pillow releases the GIL while
it decodes and resamples). Small ones spend most of their time in Pillow's
Python code, under the GIL, so threads do not help them: on Linux, when the
output tensors are maps onto the cache's files (shared with any process),
forked worker processes decode them instead, each writing its rows into the
same files; elsewhere they decode in one thread. The workers run Pillow and
numpy only, never a torch kernel.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from aecore.data import UINT8_IMAGES, TensorData
from aecore.errors import DataError, Notice
from aecore_images.options import TensorStore, discard, empty, progress, workers

__all__ = [
    "FORMATS",
    "IMAGE_RESAMPLE",
    "MASK_RESAMPLE",
    "BadImage",
    "Decoded",
    "Item",
    "SkippedImagesWarning",
    "decode_image",
    "fit",
    "read_splits",
]

#: The Pillow formats allowed to open a file; no other plugin of Pillow's is ever tried.
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
IMAGE_RESAMPLE = "bilinear"
MASK_RESAMPLE = "nearest"
_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}
#: Pillow modes without colour; every other mode counts as colour for channels=auto (P too).
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
#: Images decoded per task given to a worker thread: enough to hide the pool's overhead.
_TASK = 16
#: Per task given to a worker process, whose tasks and results cross a pipe.
_PROCESS_TASK = 64


class BadImage(Exception):
    """A file that cannot be decoded as an image: damaged, truncated, not an image, too large."""


class ColourImage(Exception):
    """A colour file met while ``channels=auto`` decodes as gray (every file so far was gray)."""


class SizeMismatch(Exception):
    """An image whose size differs from the others' when no ``size=`` asks to resize them."""


class SkippedImagesWarning(Notice):
    """``skip_bad=true`` left out unreadable files (the CLI prints one ``warning:`` line)."""


@dataclass(frozen=True)
class Item:
    """One sample to read: the image, its name for messages and the spec, its label, maybe a mask."""

    path: Path
    name: str
    label: int | None = None
    mask: Path | None = None


@dataclass
class Decoded:
    """One split as tensors: images (N, C, H, W) uint8, labels or None, masks (N, 1, H, W) or None.

    ``holes`` are the rows of files found bad while decoding (``skip_bad``):
    they stay in the tensors, zeroed, and :meth:`data` leaves them out
    through a view, so a memory-mapped cache file is never copied or resized.
    """

    x: Tensor
    y: Tensor | None
    mask: Tensor | None
    holes: list[int] = field(default_factory=list)

    def drop(self, holes: list[int]) -> None:
        """Leave out these rows (zeroed, so the stored tensors are the same on every run)."""
        for row in holes:
            for tensor in (self.x, self.y, self.mask):
                if tensor is not None:
                    tensor[row] = 0
        self.holes = holes

    def __len__(self) -> int:
        return len(self.x) - len(self.holes)

    def data(self) -> TensorData:
        """The split as :class:`~aecore.data.TensorData`, with its mask as the ``mask`` extra."""
        extras = None if self.mask is None else {"mask": self.mask}
        data = TensorData(self.x, self.y, UINT8_IMAGES, extras=extras)
        if not self.holes:
            return data
        keep = torch.ones(len(self.x), dtype=torch.bool)
        keep[self.holes] = False
        return data.subset(keep.nonzero().flatten())


# -- one file ----------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        return f"it has more pixels than Pillow's decompression-bomb limit ({Image.MAX_IMAGE_PIXELS:,})"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "it is not a PNG, JPEG, BMP, TIFF or WebP image"
    text = " ".join(str(exc).split())
    if len(text) > 100:
        text = text[:97] + "..."
    return f"it is damaged or truncated ({type(exc).__name__}: {text})" if text else type(exc).__name__


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _open(path: Path) -> Image.Image:
    """The file opened by one of :data:`FORMATS` (header only), or :class:`BadImage`."""
    try:
        image = Image.open(path, formats=FORMATS)
    except Exception as exc:  # a hostile file can make a decoder raise almost anything
        if _is_empty(path):  # asked only on failure: a stat per file is a tenth of a small PNG's cost
            raise BadImage("the file is empty") from None
        raise BadImage(_reason(exc)) from None
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit is not None and width * height > limit:
        image.close()
        raise BadImage(
            f"it has {width}×{height} pixels, more than Pillow's decompression-bomb limit ({limit:,})"
        )
    return image


def probe(path: Path) -> tuple[str, tuple[int, int]]:
    """The file's Pillow mode and (width, height), from its header; :class:`BadImage` if unreadable."""
    with _open(path) as image:
        return image.mode, image.size


def _eight_bit(image: Image.Image, channels: int) -> Image.Image:
    """The loaded first frame as an ``L`` (channels 1) or ``RGB`` (channels 3) image."""
    mode = image.mode
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image).astype(np.int64)
        image = Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), mode="L")
    elif mode == "F":
        raise BadImage("it holds 32-bit floating-point pixels; aecore reads 8- and 16-bit images")
    try:
        if channels == 3:
            return image if image.mode == "RGB" else image.convert("RGB")
        if image.mode not in ("L", "1", "LA", "La", "RGB"):
            image = image.convert("RGB")  # palettes, CMYK, ...: through RGB, so one rule makes the gray
        return image if image.mode == "L" else image.convert("L")
    except ValueError:
        raise BadImage(f"its pixel mode {mode} cannot be converted to RGB") from None


def fit(image: Image.Image, size: tuple[int, int], policy: str, resample: str) -> Image.Image:
    """``image`` brought to ``size`` = (height, width) by ``policy``; the same geometry for any filter.

    resize: stretch to the size. crop: scale by the larger of the two ratios
    so the image covers the size, and keep the centre (sampled straight from
    the original through a box, one resampling; a plain crop when no scaling
    is needed). pad: scale by the smaller ratio so the image fits, and centre
    it on zeros. An image already of the size is returned unchanged.
    """
    height, width = size
    w, h = image.size
    if (w, h) == (width, height):
        return image
    resampling = _FILTERS[resample]
    if policy == "resize":
        return image.resize((width, height), resampling, reducing_gap=None)
    if policy == "crop":
        scale = max(width / w, height / h)
        if scale == 1.0:
            left, top = (w - width) // 2, (h - height) // 2
            return image.crop((left, top, left + width, top + height))
        box_w, box_h = width / scale, height / scale
        left, top = max(0.0, (w - box_w) / 2), max(0.0, (h - box_h) / 2)
        box = (left, top, min(float(w), left + box_w), min(float(h), top + box_h))
        return image.resize((width, height), resampling, box=box, reducing_gap=None)
    scale = min(width / w, height / h)
    inner_w = max(1, min(width, round(w * scale)))
    inner_h = max(1, min(height, round(h * scale)))
    inner = image
    if (inner_w, inner_h) != (w, h):
        inner = image.resize((inner_w, inner_h), resampling, reducing_gap=None)
    canvas = Image.new(image.mode, (width, height), 0)
    canvas.paste(inner, ((width - inner_w) // 2, (height - inner_h) // 2))
    return canvas


def decode_image(
    path: Path, channels: int, size: tuple[int, int], policy: str, *, fixed: bool, gray_only: bool = False
) -> tuple[np.ndarray, tuple[int, int]]:
    """One image file as a (C, H, W) uint8 array, and its own (width, height) before resizing.

    ``fixed``: no resizing was asked for, so an image of another size is a
    :class:`SizeMismatch`. ``gray_only``: a colour file is a
    :class:`ColourImage` rather than converted. Raises :class:`BadImage` for
    a file that cannot be read.
    """
    with _open(path) as image:
        if gray_only and image.mode not in GRAY_MODES:
            raise ColourImage(image.mode)
        original = image.size
        if fixed and original != (size[1], size[0]):
            raise SizeMismatch(original)
        try:
            image.seek(0)
            image.load()
        except Exception as exc:  # truncated data, bad checksums, decoder errors of any kind
            raise BadImage(_reason(exc)) from None
        converted = _eight_bit(image, channels)
    return _channels_first(fit(converted, size, policy, IMAGE_RESAMPLE)), original


def _channels_first(image: Image.Image) -> np.ndarray:
    """An ``L`` or ``RGB`` image's pixels as (C, H, W), from its raw bytes.

    The bytes ``np.asarray`` would read, without its array-interface detour,
    which costs a small image a tenth of its decoding time.
    """
    width, height = image.size
    flat = np.frombuffer(image.tobytes(), dtype=np.uint8)
    if image.mode == "L":
        return flat.reshape(1, height, width)
    return flat.reshape(height, width, 3).transpose(2, 0, 1)


def _nonzero(image: Image.Image) -> np.ndarray:
    """Where a loaded mask has any nonzero value, (H, W) bool: before any reduction to 8 bits or gray."""
    if image.mode in _SIXTEEN_BIT or image.mode == "F":
        return np.asarray(image) != 0
    if image.mode in ("1", "L"):
        return np.asarray(image.convert("L")) != 0
    try:
        return np.asarray(image.convert("RGB")).any(axis=-1)
    except ValueError:
        raise BadImage(f"its pixel mode {image.mode} cannot be converted to RGB") from None


def decode_mask(path: Path, expected: tuple[int, int], size: tuple[int, int], policy: str) -> np.ndarray:
    """A mask file as a (1, H, W) array of 0 and 1 (any nonzero pixel is 1), resized like its image."""
    with _open(path) as image:
        if image.size != expected:
            w, h = image.size
            raise SizeMismatch((w, h))
        try:
            image.seek(0)
            image.load()
        except Exception as exc:
            raise BadImage(_reason(exc)) from None
        nonzero = _nonzero(image)
    binary = Image.fromarray(nonzero.astype(np.uint8), mode="L")
    return np.asarray(fit(binary, size, policy, MASK_RESAMPLE), dtype=np.uint8)[None]


# -- a whole dataset ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Failure:
    """A file that could not be used: ``index`` is its item's position in the reading order."""

    index: int
    path: Path
    kind: str  # "bad": unreadable; "size": another size; "mask-size": a mask unlike its image; "colour"
    detail: str
    size: tuple[int, int] = (0, 0)  # (width, height) of the file, for the size kinds


def _wh(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


#: Images with fewer pixels than this decode in one thread (see :meth:`_Reader.first_header`).
SMALL_IMAGE = 64 * 64


class _Reader:
    """The state of one dataset's decoding: the items in order, and the files left out so far."""

    def __init__(
        self, splits: dict[str, Sequence[Item]], root: Path, skip_bad: bool, store: TensorStore | None
    ) -> None:
        self.splits = splits
        self.order = [(split, item) for split, items in splits.items() for item in items]
        self.root = root
        self.skip_bad = skip_bad
        self.store = store
        self.workers = workers(store)
        self.small = False  # set by first_header: images too small for threads to pay
        self.skipped: dict[int, _Failure] = {}
        self.keys: list[str] = []  # what allocate asked the store for
        self.again = False  # decoding again after release

    def first_header(self) -> tuple[int, str, tuple[int, int]] | None:
        """The first readable image's position, Pillow mode and (width, height), from its header.

        Unreadable files before it are failures like any other. Its mode
        sets ``channels=auto``'s first guess, its size the output size when
        there is no ``size=``, and whether to decode in threads: an image
        under :data:`SMALL_IMAGE` pixels decodes in less time than the
        interpreter lock takes to change hands, so several threads are slower
        than one (on two cores, 1.5 times slower for MNIST's 28×28 PNGs);
        from about 64×64 up the threads win.
        """
        for i, (_, item) in enumerate(self.order):
            try:
                mode, size = probe(item.path)
            except BadImage as exc:
                self.fail(_Failure(i, item.path, "bad", str(exc)))
                continue
            self.small = size[0] * size[1] < SMALL_IMAGE
            return i, mode, size
        return None

    def fail(self, failure: _Failure) -> None:
        """Leave out a bad file under ``skip_bad``; anything else stops loading with one line."""
        item = self.order[failure.index][1]
        if failure.kind == "size":
            raise DataError(
                f"the image {failure.path} is {_wh(failure.size)} pixels (width×height), but "
                f"{failure.detail}; pass size=H or size=HxW to bring every image to one size."
            )
        if failure.kind == "mask-size":
            raise DataError(
                f"the mask {failure.path} is {_wh(failure.size)} pixels, but its image {item.path} is "
                f"{failure.detail}; a mask must have the size of its image."
            )
        if not self.skip_bad:
            what = "image" if failure.path == item.path else "mask"
            raise DataError(
                f"cannot read the {what} {failure.path}: {failure.detail}; fix or remove the file, or pass "
                "skip_bad=true to leave unreadable files out."
            )
        self.skipped.setdefault(failure.index, failure)

    def failures(self) -> list[_Failure]:
        """The files left out so far, sorted by their path."""
        return sorted(self.skipped.values(), key=lambda f: _relative(f.path, self.root))

    def allocate(self, channels: int, size: tuple[int, int], masks: Sequence[str]) -> dict[str, Decoded]:
        """Each split's output tensors (from the store when there is one), labels filled in."""
        out: dict[str, Decoded] = {}
        for split, items in self.splits.items():
            keep = [item for i, (s, item) in enumerate(self.order) if s == split and i not in self.skipped]
            n = len(keep)
            x = self._empty(f"{split}.x", (n, channels, *size), torch.uint8)
            y = None
            if items and items[0].label is not None:
                y = self._empty(f"{split}.y", (n,), torch.long)
                y.copy_(torch.tensor([item.label for item in keep], dtype=torch.long))
            mask = None
            if split in masks:
                mask = self._empty(f"{split}.extras.mask", (n, 1, *size), torch.uint8)
            out[split] = Decoded(x, y, mask)
        return out

    def _empty(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        self.keys.append(key)
        return empty(self.store, key, shape, dtype)

    def release(self) -> None:
        """Give back every tensor :meth:`allocate` took, to allocate again (their files are deleted)."""
        for key in self.keys:
            discard(self.store, key)
        self.keys.clear()
        self.again = True

    def decode_all(
        self,
        out: dict[str, Decoded],
        channels: int,
        size: tuple[int, int],
        policy: str,
        reference: Path | None,
        *,
        gray_only: bool = False,
    ) -> bool:
        """Decode every item left into its row, a chunk at a time; failures in order after each chunk.

        ``reference`` is the image whose size every other must have (no
        ``size=``), else None. With ``gray_only`` a colour file stops the
        decoding: False is returned, once the failures before it in order
        are judged, and the tensors must be allocated again with 3 channels.
        """
        rows: list[tuple[int, str, int]] = []  # (position in the order, split, row in its split)
        counters = dict.fromkeys(self.splits, 0)
        for i, (split, _) in enumerate(self.order):
            if i not in self.skipped:
                rows.append((i, split, counters[split]))
                counters[split] += 1
        what = "decoding images"
        if self.again:
            what += " again as RGB (a colour one follows gray ones)"
        advance = progress(self.store, len(rows), what)
        fixed = None if reference is None else f"{reference} is {_wh((size[1], size[0]))}"
        job = (self, out, channels, size, policy, fixed, gray_only)
        with self._pool(out, job) as (pool, count, task, run):
            chunk = task * 8 * count
            for start in range(0, len(rows), chunk):
                part = rows[start : start + chunk]
                results = pool.map(run, [part[i : i + task] for i in range(0, len(part), task)])
                for failure in sorted((f for found in results for f in found), key=lambda f: f.index):
                    if failure.kind == "colour":
                        return False
                    self.fail(failure)
                advance(len(part))
        for split in self.splits:
            holes = sorted(row for i, s, row in rows if s == split and i in self.skipped)
            out[split].drop(holes)
        return True

    @contextmanager
    def _pool(
        self, out: dict[str, Decoded], job: tuple[Any, ...]
    ) -> Iterator[tuple[Executor, int, int, Task]]:
        """One decoding pass's pool, worker count, task size and unit of work; shut down on leaving.

        Small images go to forked processes when they can write into the
        outputs (see the module's notes), else to one thread.
        """
        count = self.workers
        outputs = [t for d in out.values() for t in (d.x, d.mask) if t is not None]
        forked = count > 1 and self.small and _can_fork() and all(t.is_shared() for t in outputs)
        if not forked:
            threads = 1 if self.small else count
            pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="aecore-images")
            try:
                yield pool, threads, _TASK, lambda task: _decode_job(job, task)
            finally:  # an error or Ctrl-C: the queued work is dropped, not finished first
                pool.shutdown(wait=True, cancel_futures=True)
            return
        global _JOB
        with _FORKING:  # one forked pass at a time: its workers inherit _JOB when they are forked
            _JOB = job
            context = multiprocessing.get_context("fork")
            processes = ProcessPoolExecutor(count, mp_context=context, initializer=_ignore_interrupts)
            try:
                yield processes, count, _PROCESS_TASK, _run
            except BrokenProcessPool:
                raise DataError(
                    f"a process decoding the images under {self.root} died; a file there may crash "
                    "Pillow. Set AECORE_NO_DATA_CACHE=1 to decode in this process and find it."
                ) from None
            finally:
                processes.shutdown(wait=True, cancel_futures=True)
                _JOB = None

    def _decode(
        self,
        task: list[tuple[int, str, int]],
        out: dict[str, Decoded],
        channels: int,
        size: tuple[int, int],
        policy: str,
        fixed: str | None,
        gray_only: bool,
    ) -> list[_Failure]:
        """A worker thread's unit: a few images into their rows; what failed, for the caller to judge."""
        failures = []
        images = {split: decoded.x.numpy() for split, decoded in out.items()}  # rows without a torch view
        masks = {split: decoded.mask.numpy() for split, decoded in out.items() if decoded.mask is not None}
        for index, split, row in task:
            item = self.order[index][1]
            target = out[split]
            try:
                pixels, original = decode_image(
                    item.path, channels, size, policy, fixed=bool(fixed), gray_only=gray_only
                )
            except ColourImage:
                failures.append(_Failure(index, item.path, "colour", ""))
                break  # everything is decoded again as RGB: the rest of this task would be wasted
            except BadImage as exc:
                failures.append(_Failure(index, item.path, "bad", str(exc)))
                continue
            except SizeMismatch as exc:
                failures.append(_Failure(index, item.path, "size", fixed or "", exc.args[0]))
                continue
            images[split][row] = pixels
            if target.mask is None:
                continue
            if item.mask is None:
                masks[split][row] = 0
                continue
            try:
                masks[split][row] = decode_mask(item.mask, original, size, policy)
            except BadImage as exc:
                failures.append(_Failure(index, item.mask, "bad", str(exc)))
            except SizeMismatch as exc:
                failures.append(_Failure(index, item.mask, "mask-size", _wh(original), exc.args[0]))
        return failures


Task = Callable[[list[tuple[int, str, int]]], list[_Failure]]
#: The forked pass being decoded, for :func:`_run`: forked workers inherit it (under ``_FORKING``).
_JOB: tuple[Any, ...] | None = None
_FORKING = threading.Lock()


def _decode_job(job: tuple[Any, ...], task: list[tuple[int, str, int]]) -> list[_Failure]:
    reader, out, channels, size, policy, fixed, gray_only = job
    return reader._decode(task, out, channels, size, policy, fixed, gray_only)


def _run(task: list[tuple[int, str, int]]) -> list[_Failure]:
    """A worker process's unit of work: a module function, so the pool can hand it over by name."""
    assert _JOB is not None
    return _decode_job(_JOB, task)


def _can_fork() -> bool:
    """Whether worker processes may be forked: Linux only (macOS's system libraries forbid it)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def _ignore_interrupts() -> None:
    """A worker leaves Ctrl-C to the main process, which stops the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def read_splits(
    splits: dict[str, Sequence[Item]],
    *,
    root: Path,
    channels: int | str,
    size: tuple[int, int] | None,
    policy: str,
    skip_bad: bool,
    masks: Sequence[str] = (),
    store: TensorStore | None = None,
) -> tuple[dict[str, Decoded], dict[str, Any]]:
    """Decode every split's items into tensors; returns them and what the dataset's spec records.

    ``channels`` is 1, 3 or ``"auto"`` (1 when every image is grayscale,
    else 3; see the module's notes for how it is found without a pass over
    the headers). Without ``size`` (height, width) every image must have the
    size of the first readable one. The splits named in
    ``masks`` get their items' masks (all zero where an item has none). A
    bad file stops loading with one :class:`DataError` naming it, the first
    in order; with ``skip_bad`` it is left out, counted in one warning and
    listed in the spec's ``skipped`` (paths relative to ``root``).
    """
    reader = _Reader(splits, root, skip_bad, store)
    with warnings.catch_warnings():
        # Pillow's notices (odd EXIF data, palette transparency) change no pixel, and its
        # decompression-bomb warning becomes a bad file through the size check in _open.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
        # Python 3.12+ warns when a process with threads forks; the workers take no lock they hold.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"multiprocessing(\.|$)")
        first = reader.first_header()
        if first is None:
            _nothing_readable(reader)
        index, mode, (width, height) = first
        gray_only = channels == "auto" and mode in GRAY_MODES
        if channels == "auto":
            channels = 1 if gray_only else 3
        assert channels in (1, 3)
        channels = int(channels)
        target = size if size is not None else (height, width)
        reference = None if size is not None else reader.order[index][1].path
        out = reader.allocate(channels, target, masks)
        if not reader.decode_all(out, channels, target, policy, reference, gray_only=gray_only):
            reader.release()
            channels = 3
            out = reader.allocate(channels, target, masks)
            reader.decode_all(out, channels, target, policy, reference)
    if not any(len(d) for d in out.values()):
        _nothing_readable(reader)
    spec: dict[str, Any] = {
        "shape": [channels, *target],
        "resize": "none" if size is None else policy,
        "resample": IMAGE_RESAMPLE,
        "pillow": Image.__version__,
    }
    if masks:
        spec["mask_resample"] = MASK_RESAMPLE
    if reader.skipped:
        failures = reader.failures()
        spec["skipped"] = [_relative(f.path, root) for f in failures]
        warnings.warn(
            f"skipped {len(failures)} unreadable image file(s) under {root} (skip_bad=true), the first "
            f"{spec['skipped'][0]}: {failures[0].detail}; the dataset's spec lists them under 'skipped'.",
            SkippedImagesWarning,
            stacklevel=3,
        )
    return out, spec


def _nothing_readable(reader: _Reader) -> NoReturn:
    failures = reader.failures()
    if not failures:
        raise DataError(f"{reader.root} holds no image files.")
    raise DataError(
        f"none of the {len(failures)} image files under {reader.root} could be read (the first, "
        f"{_relative(failures[0].path, reader.root)}: {failures[0].detail})."
    )
