"""The parameters of the analyses, checked once, at the boundary: for the Python API, the CLI
and the Client before it sends (the service's schemas declare the same bounds, from limits.py).
Each check returns the value as a plain Python number, or raises ``SelectionError`` naming the
parameter; inside, the engine trusts what passed.
"""
from __future__ import annotations

import operator

import numpy as np

from .limits import (
    MAX_BINS,
    MAX_DEGENERATE_LIMIT,
    MAX_DENSITY2D_BINS,
    MAX_ID,
    MAX_KDE_BINS,
    MAX_OFFSET,
    MAX_RANGE_ABS,
    MAX_SIMILAR_K,
    MIN_KDE_BINS,
)
from .selection import SelectionError, echo

BINS_RANGE = {"histogram": (1, MAX_BINS), "kde": (MIN_KDE_BINS, MAX_KDE_BINS), "density2d": (1, MAX_DENSITY2D_BINS)}


def integer(name: str, value, lo: int, hi: int) -> int:
    """``value`` as a Python int from ``lo`` to ``hi``: an int or a numpy integer, not a bool,
    a float, a string or None."""
    expected = f"{name} must be an integer from {lo:,} to {hi:,}"
    if isinstance(value, (bool, np.bool_)):
        raise SelectionError(f"{expected}, got {value!r} (a bool)")
    try:
        v = operator.index(value)
    except TypeError:
        raise SelectionError(f"{expected}, got {echo(value)}") from None
    if not lo <= v <= hi:
        raise SelectionError(f"{expected}, got {v:,}")
    return v


def real(name: str, value, lo: float | None = None, hi: float | None = None) -> float:
    """``value`` as a finite Python float (within ``lo``..``hi`` if given): an int, a float or
    a numpy number, not a bool, a string, None or nan."""
    within = f" from {lo:g} to {hi:g}" if lo is not None and hi is not None else ""
    expected = f"{name} must be a finite number{within}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SelectionError(f"{expected}, got {echo(value)}")
    try:
        v = float(value)
    except OverflowError:
        raise SelectionError(f"{expected}, got {echo(value)}") from None
    if not np.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise SelectionError(f"{expected}, got {v!r}")
    return v


def check_bins(bins, kind: str = "histogram") -> int:
    """The bins of a histogram (divergence, histograms), a KDE or a 2-D histogram (``kind``)."""
    lo, hi = BINS_RANGE[kind]
    return integer("bins", bins, lo, hi)


def _pair(name: str, value, what: str) -> list:
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__") or len(value) != 2:
        raise SelectionError(f"{name} must be a pair of {what}, got {echo(value)}")
    return list(value)


def check_density2d(components, value_range) -> tuple[tuple[int, int], tuple[float, float] | None]:
    """``components``: two component indices 0..8 (the same twice is the diagonal, as the service's
    schema allows); ``value_range``: None or two finite numbers within +-MAX_RANGE_ABS."""
    i, j = (integer(f"components[{n}]", c, 0, 8)
            for n, c in enumerate(_pair("components", components, "component indices from 0 to 8")))
    if value_range is None:
        return (i, j), None
    lo, hi = (real(f"range[{n}]", v, -MAX_RANGE_ABS, MAX_RANGE_ABS)
              for n, v in enumerate(_pair("range", value_range, f"finite numbers within +-{MAX_RANGE_ABS:g}")))
    return (i, j), (lo, hi)


def check_degenerate(sparsity_gt, entropy_norm_lt, entropy_norm_gt, limit, offset) -> tuple:
    """The thresholds (finite numbers; sparsity 0..1; entropy_norm_gt None: not checked) and the page."""
    return (real("sparsity_gt", sparsity_gt, 0.0, 1.0), real("entropy_norm_lt", entropy_norm_lt),
            None if entropy_norm_gt is None else real("entropy_norm_gt", entropy_norm_gt),
            integer("limit", limit, 1, MAX_DEGENERATE_LIMIT), integer("offset", offset, 0, MAX_OFFSET))


def check_similar(model_id, k) -> tuple[int, int]:
    """A model id (0..MAX_ID) and how many models (1..MAX_SIMILAR_K)."""
    return integer("model_id", model_id, 0, MAX_ID), integer("k", k, 1, MAX_SIMILAR_K)
