"""Process-wide glibc malloc settings for the command line (never applied by the library on its own: they
belong to the process, which an API user owns). Skipped when the user set the matching MALLOC_*_ variable,
and off glibc (mallopt missing).

Tried and not kept (docs/benchmarks.md): M_MMAP_THRESHOLD 128 MiB with M_TRIM_THRESHOLD 256 MiB, so that
d x d float64 temporaries above glibc's 32 MiB dynamic limit are reused instead of mapped afresh: less system
time on wide layers, but peak RSS +18% on the MNIST sample and no clear wall-time gain on a noisy machine.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def _mallopt() -> "Callable[[int, int], int] | None":
    """glibc's mallopt, or None (not Linux, or a C library without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def limit_malloc_arenas(arenas: int = 1, mallopt: "Callable[[int, int], int] | None" = None) -> bool:
    """One malloc arena for the process (as MALLOC_ARENA_MAX=1 would). The image-folder prefetch threads
    otherwise grow arenas that keep freed decode buffers: peak RSS with 16x the calibration images was 1.21x
    that of 1x, 1.10x with one arena, no slower (docs/benchmarks.md). Returns whether it was applied.
    mallopt: the function to call (default glibc's)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = mallopt or _mallopt()
    return bool(mallopt and mallopt(M_ARENA_MAX, arenas))
