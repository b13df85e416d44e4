"""Keep freed memory in the C heap between training steps.

Each training step allocates and frees the same few megabytes of
activations and gradients. glibc's allocator returns the free top of its
heap to the system once more than ``M_TRIM_THRESHOLD`` (128 KiB at first) is
free there, and serves requests above ``M_MMAP_THRESHOLD`` with fresh
mappings; both thresholds adapt, but a step's mix of sizes can keep them
low, and then the next step faults every page of that memory in again:
thousands of page faults per step on a small convolutional model. Setting
both thresholds fixes them: blocks up to :data:`MMAP_THRESHOLD` come from the
heap, and up to :data:`TRIM_THRESHOLD` of free memory stays there for the
next step. The setting is per process and stays for its lifetime.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

#: glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap (glibc's largest allowed value on 64-bit systems).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory kept at the top of the heap before any is returned to the system.
TRIM_THRESHOLD = 256 * 1024 * 1024

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Fix glibc's trim and mmap thresholds once per process; False where there is no glibc to ask."""
    global _applied
    if _applied is None:
        _applied = _mallopt()
    return _applied


def _mallopt() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: their own allocators
            return False
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
