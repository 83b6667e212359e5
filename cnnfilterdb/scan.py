"""Exact scans over the filter shards: coefficient range, and histograms per group of layers.

A selection is a set of layers, each mapped to a group (``LayerGroups``): every field a query can
filter or group on is an attribute of a layer or of its model. A scan reads only the row groups
whose layer_id statistics overlap the selection, in batches, and works on cache-sized float64
pieces, spread over threads (pyarrow and numpy release the GIL). Nothing is held but one batch
per thread and the result.

The coefficients are computed by one function for the range and for the histograms, so that the
extreme values fall exactly on the range's ends, as in numpy.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from .stats.basis import Basis, peak_scale_columns
from .stats.histogram import _numpy_index, bin_edges
from .stats.quality import column_peaks

WEIGHT_COLUMNS = [f"w{i}" for i in range(9)]
PIECE = 1 << 15  # filters per piece of float64 work: stays in the CPU caches
PIECE_COLUMNS = PIECE
_NEAR = 1e-9


@dataclass
class LayerGroups:
    """group_of_layer[layer_id] = group index (0..n_groups-1) or -1 for layers not selected."""
    group_of_layer: np.ndarray
    n_groups: int

    @classmethod
    def of(cls, layer_ids, group_idx, n_groups: int, max_layer_id: int) -> "LayerGroups":
        g = np.full(max_layer_id + 2, -1, dtype=np.int64)
        g[np.asarray(layer_ids, dtype=np.int64)] = np.asarray(group_idx, dtype=np.int64)
        return cls(g, n_groups)

    def selected(self, lo: int, hi: int) -> bool:
        """Whether any layer with lo <= layer_id <= hi is selected."""
        lo, hi = max(lo, 0), min(hi, len(self.group_of_layer) - 1)
        return lo <= hi and bool((self.group_of_layer[lo:hi + 1] >= 0).any())


def iter_pieces(columns) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Cache-sized float64 pieces of nine weight columns, with the filters' peaks.

    ``columns`` is a (9, n) array or nine (n,) arrays. Each piece is (10, m), m <= PIECE_COLUMNS:
    the filters in rows 0..8 (one per column) and a row of ones (see ``Moments.of_augmented``).
    The piece is a reused buffer, valid only until the next iteration.
    """
    n = len(columns[0])
    buf = np.ones((10, min(n, PIECE_COLUMNS)), dtype=np.float64)
    for s in range(0, n, PIECE_COLUMNS):
        m = min(PIECE_COLUMNS, n - s)
        z = buf[:, :m]
        for j in range(9):
            z[j] = columns[j][s:s + m]
        # Peaks from the float32 source when there is one: exact, and half the bytes to scan.
        src = columns[:, s:s + m] if isinstance(columns, np.ndarray) else None
        yield z, (column_peaks(src) if src is not None else column_peaks(z[:9])).astype(np.float64)


def coefficients_columns(s: np.ndarray, basis: Basis) -> np.ndarray:
    """Coefficients (9, m) of scaled filters given as columns s (9, m): C (s - mean)."""
    P = basis.components @ s
    P -= (basis.components @ basis.mean)[:, None]
    return P


def _units(paths: list[Path], groups: LayerGroups) -> list[tuple[Path, int, int, int]]:
    """(path, row group, first group, last group) of the row groups holding selected layers."""
    units = []
    n_layers = len(groups.group_of_layer)
    for path in paths:
        md = pq.ParquetFile(path).metadata
        li = md.schema.to_arrow_schema().get_field_index("layer_id")
        for i in range(md.num_row_groups):
            st = md.row_group(i).column(li).statistics
            lo, hi = (int(st.min), int(st.max)) if st is not None and st.has_min_max else (0, n_layers - 1)
            g = groups.group_of_layer[max(lo, 0):min(hi, n_layers - 1) + 1]
            g = g[g >= 0]
            if len(g):
                units.append((path, i, int(g.min()), int(g.max())))
    return units


def _pieces(path: Path, row_group: int, groups: LayerGroups):
    """(group index (m,), scaled filters (9, m), raw peaks (m,)) for the selected rows of a row group."""
    buf = np.empty((9, PIECE))  # reused: the consumer must be done with a piece before the next
    # A whole row group (128K rows, 5 MB) at once, memory-mapped: 40 M rows/s per thread here,
    # against 25 M rows/s for buffered reads in batches.
    table = pq.ParquetFile(path, memory_map=True).read_row_group(row_group, columns=["layer_id"] + WEIGHT_COLUMNS,
                                                                  use_threads=False)
    for batch in table.to_batches():
        g = groups.group_of_layer[batch.column(0).to_numpy()]
        keep = g >= 0
        all_kept = bool(keep.all())
        if not all_kept and not keep.any():
            continue
        cols = [batch.column(1 + j).to_numpy() for j in range(9)]
        if not all_kept:
            g = g[keep]
            cols = [c[keep] for c in cols]
        for s in range(0, len(g), PIECE):
            m = min(PIECE, len(g) - s)
            x = buf[:, :m]
            peaks = np.abs(cols[0][s:s + m])
            for j in range(9):
                x[j] = cols[j][s:s + m]
                if j:
                    np.maximum(peaks, np.abs(cols[j][s:s + m]), out=peaks)  # on float32: exact, half the bytes
            yield g[s:s + m], peak_scale_columns(x, peaks.astype(np.float64), out=x)


def _map_units(paths, groups, work: Callable, threads: int | None):
    units = _units(paths, groups)
    threads = threads or min(4, os.cpu_count() or 1)
    # Our threads run the BLAS calls; BLAS threads on top would only oversubscribe the cores.
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=threads) as pool:
        yield from pool.map(lambda u: work(*u), units)


def scan_range(paths: list[Path], groups: LayerGroups, basis: Basis, threads: int | None = None) -> tuple[float, float, int]:
    """(min, max) of all 9 coefficients of the selected filters, and their count."""
    def work(path, rg, g_lo, g_hi):
        lo, hi, n = np.inf, -np.inf, 0
        for g, s in _pieces(path, rg, groups):
            P = coefficients_columns(s, basis)
            lo, hi, n = min(lo, float(P.min())), max(hi, float(P.max())), n + len(g)
        return lo, hi, n

    lo, hi, n = np.inf, -np.inf, 0
    for a, b, k in _map_units(paths, groups, work, threads):
        lo, hi, n = min(lo, a), max(hi, b), n + k
    return lo, hi, n


def _exact_bins(x: np.ndarray, lo: float, hi: float, bins: int, edges: np.ndarray) -> np.ndarray:
    """numpy's bins of exact coefficients x (1-D), -1 outside [lo, hi].

    Every coefficient lies within its basis range by construction (the range is their min and
    max); one computed a rounding error outside (a product of other columns may round apart by
    an ulp) is put in the end bin instead of being dropped.
    """
    tol = 1e-12 * max(abs(lo), abs(hi), hi - lo)
    x = np.where((x < lo) & (x >= lo - tol), lo, np.where((x > hi) & (x <= hi + tol), hi, x))
    out = np.full(x.shape, -1, dtype=np.intp)
    inside = (x >= lo) & (x <= hi)
    out[inside] = _numpy_index(x[inside], lo, hi, bins, edges)
    return out


def _binned(s: np.ndarray, basis: Basis, lo: float, hi: float, bins: int, edges: np.ndarray,
            offsets: np.ndarray, rows: list[int] | None = None) -> np.ndarray:
    """numpy's bin of each coefficient of the scaled filters s (9, m) (only components ``rows``,
    if given), plus ``offsets`` per component; -1 where a coefficient is outside [lo, hi].

    Fast path: f = (C s) k - (C mean + lo) k + offset: its integer part is the bin except within
    ~1e-13 of an edge, where the coefficient C s - C mean is binned by numpy's own rule.
    """
    C = basis.components if rows is None else basis.components[rows]
    k = bins / (hi - lo)
    shift = C @ basis.mean
    P = C @ s
    f = P * k
    f -= ((shift + lo) * k - offsets)[:, None]
    whole = np.trunc(f)
    idx = whole.astype(np.intp)
    f -= whole
    near = (f < _NEAR) | (f > 1 - _NEAR)
    if (idx.min(axis=1) < offsets).any() or (idx.max(axis=1) >= offsets + bins).any():
        rel = idx - offsets[:, None]
        near |= (rel < 0) | (rel >= bins)
    if near.any():
        r, c = np.nonzero(near)
        fixed = _exact_bins(P[r, c] - shift[r], lo, hi, bins, edges)
        idx[r, c] = np.where(fixed >= 0, fixed + offsets[r], -1)
    return idx


def scan_histograms(paths: list[Path], groups: LayerGroups, basis: Basis, lo: float, hi: float, bins: int,
                    threads: int | None = None) -> np.ndarray:
    """Counts (n_groups, 9, bins), int64: per group and component, np.histogram(c, bins, (lo, hi))."""
    edges = bin_edges(lo, hi, bins)
    offsets = np.arange(9) * bins

    def work(path, rg, g_lo, g_hi):
        span = g_hi - g_lo + 1
        counts = np.zeros(span * 9 * bins, dtype=np.int64)
        for g, s in _pieces(path, rg, groups):
            idx = _binned(s, basis, lo, hi, bins, edges, offsets)
            if g[0] != g[-1] or g.min() != g.max():  # several groups in this piece
                idx += ((g - g_lo) * (9 * bins))[None, :]
                base = 0
            else:
                base = (int(g[0]) - g_lo) * 9 * bins
            flat = idx[idx >= 0] if (idx < 0).any() else idx.ravel()
            c = np.bincount(flat, minlength=9 * bins if base else span * 9 * bins)
            counts[base:base + len(c)] += c
        return g_lo, counts.reshape(span, 9, bins)

    out = np.zeros((groups.n_groups, 9, bins), dtype=np.int64)
    for g_lo, counts in _map_units(paths, groups, work, threads):
        out[g_lo:g_lo + len(counts)] += counts
    return out


def scan_histogram2d(paths: list[Path], groups: LayerGroups, basis: Basis, lo: float, hi: float, bins: int,
                     components: tuple[int, int], threads: int | None = None) -> np.ndarray:
    """Counts (bins, bins), int64, of the selected filters' coefficients (components[0], components[1]):
    np.histogram2d(c_i, c_j, bins, range=[(lo, hi), (lo, hi)]), a value outside on either axis dropped."""
    edges = bin_edges(lo, hi, bins)
    i, j = components

    def work(path, rg, g_lo, g_hi):
        counts = np.zeros(bins * bins, dtype=np.int64)
        for _, s in _pieces(path, rg, groups):
            idx = _binned(s, basis, lo, hi, bins, edges, np.zeros(2, dtype=np.intp), rows=[i, j])
            keep = (idx[0] >= 0) & (idx[1] >= 0)
            counts += np.bincount((idx[0] * bins + idx[1])[keep], minlength=bins * bins)
        return counts

    out = np.zeros(bins * bins, dtype=np.int64)
    for counts in _map_units(paths, groups, work, threads):
        out += counts
    return out.reshape(bins, bins)
