"""Opt-in tuning of glibc's malloc for the large frames of a high-rate bus.

A batch frame above 128 KiB (glibc's initial ``M_MMAP_THRESHOLD``) gets a fresh ``mmap`` of its
own, and freed heap above ``M_TRIM_THRESHOLD`` goes back to the kernel: either way the next
frame faults its pages in again, one at a time. With 256 KiB frames at ~10 M msg/s that was
10-45 page faults per frame in the publisher, and the same in the subscriber's ZeroMQ I/O
thread; keeping frame-sized blocks on the heap and the freed heap mapped raised 64-B
throughput by 25-50 % on the 2-core machine of ``bench/README.md`` (measured).

It is opt-in because it is process-wide: every allocation of the process up to
``mmap_threshold`` comes from the heap, and each malloc arena may keep up to
``trim_threshold`` bytes of freed memory mapped (RSS that is not returned to the kernel).
"""

from __future__ import annotations

import ctypes
import sys

from .errors import ValidationError

__all__ = ["tune_allocator"]

# mallopt parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses an M_MMAP_THRESHOLD above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit)
_MAX_MMAP_THRESHOLD = 32 << 20


def tune_allocator(mmap_threshold: int = 4 << 20, trim_threshold: int = 32 << 20) -> bool:
    """Keep blocks up to ``mmap_threshold`` bytes on the malloc heap, and up to
    ``trim_threshold`` bytes of freed heap mapped, for the whole process.

    Call it once, early (before the threads that allocate frames start); processes forked
    afterwards inherit it. Setting either value turns off glibc's own adjustment of both.

    Returns
    -------
    bool
        True when applied; False when the C library is not glibc (nothing changed).

    Raises
    ------
    ValidationError
        A threshold that is not an int in the allowed range.
    """
    for name, value, high in (
        ("mmap_threshold", mmap_threshold, _MAX_MMAP_THRESHOLD),
        ("trim_threshold", trim_threshold, (1 << 31) - 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
            raise ValidationError(f"{name} must be an int from 0 to {high} bytes, got {value!r}")
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # musl and others: no mallopt knobs of this meaning
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if not mallopt(_M_MMAP_THRESHOLD, mmap_threshold):
        raise ValidationError(f"glibc refused mmap_threshold={mmap_threshold}")
    if not mallopt(_M_TRIM_THRESHOLD, trim_threshold):
        raise ValidationError(f"glibc refused trim_threshold={trim_threshold}")
    return True
