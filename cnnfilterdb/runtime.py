"""Process settings for the programs (CLI, service), applied once at start."""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def tune_allocator() -> bool:
    """Keep freed memory of up to 64 MiB blocks in the heap instead of returning it to the kernel.

    The numeric loops allocate many short-lived arrays of a few MiB (a (9, 16384) float64 piece is
    1.2 MiB). glibc serves each from a fresh mmap and unmaps it on free, so every use faults its
    pages in again: measured here, that tripled the cost of binning coefficients. With a higher
    mmap threshold the same blocks are reused. Returns False where glibc is not the allocator.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, 64 << 20) == 1
    ok &= mallopt(M_TRIM_THRESHOLD, 256 << 20) == 1
    return bool(ok)


def freeze_startup_objects() -> int:
    """Exclude every object alive now (modules, matplotlib's fonts and colour maps, the kernels)
    from the cyclic garbage collector's full collections, which otherwise walk all of them:
    measured here, a full collection during a figure took 150-190 ms, half a heatmap's time.
    Called once a service has loaded what it keeps for its lifetime; returns the objects frozen."""
    import gc

    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
