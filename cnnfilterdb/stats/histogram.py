"""Coefficients and their equal-width histograms, compiled: the inner loops of every scan.

For the filters x (9,) of a row group, given as nine float32 columns, and a basis (components C
(9, 9), one per row; mean mu (9,)), the coefficients are (docs/method.md#coefficients)

    c = C (x / p - mu) = (C x) / p - C mu,    p = max_j |x_j|  (p = 1 for an all-zero filter),

computed in float64 as ``(sum_j C[i, j] * x_j) * (1 / p) - shift[i]`` with shift = C mu: one
division per filter instead of nine. This differs from the textbook order by rounding only (a few
ulps); every scan, the range and the histograms alike, computes the coefficients with this one
function, so that the extreme coefficients fall exactly on the range's ends.

Histograms have numpy's exact semantics: ``np.histogram(c, bins, range=(lo, hi))`` uses the edges
``np.linspace(lo, hi, bins + 1)``, drops values outside [lo, hi], puts hi in the last bin, and
corrects its first guess of a bin against those edges. So does ``_bins``: any first guess within
one bin of the right one (here ``(c - lo) * bins / (hi - lo)``) ends on the same bin as numpy's, so
counts summed over layers or groups equal numpy's counts of the union, value for value.

The kernels work on runs of rows of one layer (a layer's filters are contiguous in the shards),
a block of ``BLOCK`` filters at a time, so that the inner loops are contiguous and vectorize.
They release the GIL: scans run them on several row groups at once.
"""
from __future__ import annotations

import numpy as np
from numba import njit

BLOCK = 512  # filters per block: x and c (9, BLOCK) float64 stay in the L1/L2 caches


def histogram_range(lo: float, hi: float) -> tuple[float, float]:
    """The range the bins span: numpy widens an empty range (lo == hi) to (lo - 0.5, hi + 0.5)."""
    return (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)


def bin_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    """The edges (bins + 1,) float64 of ``bins`` equal bins over [lo, hi]: np.histogram's."""
    return np.linspace(lo, hi, bins + 1, endpoint=True, dtype=np.float64)


@njit(nogil=True, cache=True)
def _block_buffers():
    """A block's scratch: filters x (9, BLOCK), coefficients c (9, BLOCK), 1 / peaks (BLOCK,), bins (BLOCK,)."""
    return np.empty((9, BLOCK)), np.empty((9, BLOCK)), np.empty(BLOCK), np.empty(BLOCK, dtype=np.int64)


@njit(nogil=True, cache=True, inline="always")
def _coefficients(cols, start, m, C, shift, x, c, inv):
    """c[:, :m] = the coefficients of the filters start..start+m-1 of ``cols`` (nine arrays)."""
    for k in range(m):
        inv[k] = 0.0
    for j in range(9):
        col = cols[j]
        xj = x[j]
        for k in range(m):
            v = np.float64(col[start + k])
            xj[k] = v
            a = abs(v)
            if a > inv[k]:
                inv[k] = a
    for k in range(m):
        inv[k] = 1.0 / inv[k] if inv[k] > 0.0 else 1.0
    for i in range(9):
        ci = c[i]
        w = C[i, 0]
        x0 = x[0]
        for k in range(m):
            ci[k] = w * x0[k]
        for j in range(1, 9):
            w = C[i, j]
            xj = x[j]
            for k in range(m):
                ci[k] += w * xj[k]
        s = shift[i]
        for k in range(m):
            ci[k] = ci[k] * inv[k] - s


@njit(nogil=True, cache=True)
def _bins(v, m, lo, hi, scale, bins, edges, out):
    """out[k] = numpy's bin of v[k] in [lo, hi] (-1 outside), k < m. A row at a time: a call per
    value (even inlined) measured 6x slower, for the reference counting of its array arguments."""
    for k in range(m):
        x = v[k]
        if not (lo <= x <= hi):
            out[k] = -1
            continue
        b = int((x - lo) * scale)
        if b >= bins:
            b = bins - 1
        if x < edges[b]:
            b -= 1
        elif b != bins - 1 and x >= edges[b + 1]:
            b += 1
        out[k] = b


@njit(nogil=True, cache=True, inline="always")
def _count(v, m, lo, hi, scale, edges, idx, counts, outside, g, i):
    """counts[g, i, b] += the values v[:m] in bin b of ``edges`` over [lo, hi]; outside[g, i] +=
    the others (a block at a time, as ``_bins``)."""
    _bins(v, m, lo, hi, scale, counts.shape[2], edges, idx)
    for k in range(m):
        if idx[k] >= 0:
            counts[g, i, idx[k]] += 1
        else:
            outside[g, i] += 1


@njit(nogil=True, cache=True, inline="always")
def _run_end(layer, start, n):
    """End (exclusive) of the run of rows from ``start`` with layer[start]'s layer id."""
    lid = layer[start]
    end = start + 1
    while end < n and layer[end] == lid:
        end += 1
    return end


@njit(nogil=True, cache=True)
def coefficient_range(layer, cols, group_of_layer, C, shift):
    """(min, max, n) over all nine coefficients of the rows whose layer has a group >= 0.

    Parameters
    ----------
    layer : (n,) int layer id of each row, rows of one layer contiguous.
    cols : nine (n,) float32 weight columns w0..w8.
    group_of_layer : (max_layer_id + 2,) int64, the group of each layer id, -1: not selected.
    C : (9, 9) float64 components, one per row; shift : (9,) C @ mean.

    Returns
    -------
    (min, max, count): floats (inf, -inf when no row is selected) and the selected rows.
    """
    n = len(layer)
    x, c, inv, _ = _block_buffers()
    lo_k = np.full(BLOCK, np.inf)  # per-lane extremes: the loops stay vectorizable
    hi_k = np.full(BLOCK, -np.inf)
    count = 0
    r = 0
    while r < n:
        end = _run_end(layer, r, n)
        if group_of_layer[layer[r]] >= 0:
            count += end - r
            for start in range(r, end, BLOCK):
                m = min(BLOCK, end - start)
                _coefficients(cols, start, m, C, shift, x, c, inv)
                for i in range(9):
                    ci = c[i]
                    for k in range(m):
                        v = ci[k]
                        if v < lo_k[k]:
                            lo_k[k] = v
                        if v > hi_k[k]:
                            hi_k[k] = v
        r = end
    return lo_k.min(), hi_k.max(), count


@njit(nogil=True, cache=True)
def histogram_counts(layer, cols, group_of_layer, g_lo, C, shift, lo, hi, edges, counts, outside):
    """counts[g - g_lo, i, b] += the rows of group g whose coefficient i falls in bin b;
    outside[g - g_lo, i] += those whose coefficient i is outside [lo, hi].

    Parameters
    ----------
    layer, cols, group_of_layer, C, shift : as ``coefficient_range``.
    g_lo : the first group of ``counts``.
    lo, hi : the range, lo < hi (``histogram_range``); edges : (bins + 1,) ``bin_edges(lo, hi, bins)``.
    counts : (span, 9, bins) int64, added to in place; span covers the groups of the selected rows.
    outside : (span, 9) int64, added to in place.
    """
    n = len(layer)
    bins = counts.shape[2]
    scale = bins / (hi - lo)
    x, c, inv, idx = _block_buffers()
    r = 0
    while r < n:
        end = _run_end(layer, r, n)
        g = group_of_layer[layer[r]]
        if g >= 0:
            g -= g_lo
            for start in range(r, end, BLOCK):
                m = min(BLOCK, end - start)
                _coefficients(cols, start, m, C, shift, x, c, inv)
                for i in range(9):
                    _count(c[i], m, lo, hi, scale, edges, idx, counts, outside, g, i)
        r = end


@njit(nogil=True, cache=True)
def histogram2d_counts(layer, cols, group_of_layer, C, shift, lo, hi, edges, ci, cj, counts):
    """counts[a, b] += the selected rows whose coefficients (ci, cj) fall in bins (a, b);
    a row with either coefficient outside [lo, hi] is dropped (np.histogram2d).

    Parameters
    ----------
    layer, cols, group_of_layer, C, shift, lo, hi, edges : as ``histogram_counts``.
    ci, cj : the components (0..8) of the first and second axis.
    counts : (bins, bins) int64, added to in place.
    """
    n = len(layer)
    bins = counts.shape[0]
    scale = bins / (hi - lo)
    x, c, inv, idx = _block_buffers()
    idx2 = np.empty(BLOCK, dtype=np.int64)
    r = 0
    while r < n:
        end = _run_end(layer, r, n)
        if group_of_layer[layer[r]] >= 0:
            for start in range(r, end, BLOCK):
                m = min(BLOCK, end - start)
                _coefficients(cols, start, m, C, shift, x, c, inv)
                _bins(c[ci], m, lo, hi, scale, bins, edges, idx)
                _bins(c[cj], m, lo, hi, scale, bins, edges, idx2)
                for k in range(m):
                    if idx[k] >= 0 and idx2[k] >= 0:
                        counts[idx[k], idx2[k]] += 1
        r = end


@njit(nogil=True, cache=True)
def segment_counts(layer, cols, slot_of_layer, unit_of_layer, model_of_layer, s_lo, u_lo, m_lo, C, shift,
                   lo, hi, edges, fine_edges, d_lo, d_hi, d_edges,
                   layer_counts, outside, unit_counts, model_counts):
    """The stored histograms of a basis (docs/method.md#stored-histograms), in one pass over the rows:

    - layer_counts[s - s_lo, i, b] += the rows of layer slot s whose coefficient i falls in bin b of
      ``edges`` over [lo, hi]; outside[s - s_lo, i] += those whose coefficient i is outside [lo, hi];
    - unit_counts[u - u_lo, i, b] += the same on the finer ``fine_edges`` over [lo, hi], per unit u
      (a model's layers of one depth bin);
    - model_counts[m - m_lo, a, b] += the rows of model m whose coefficients (c0, c1) fall in bins
      (a, b) of ``d_edges`` over [d_lo, d_hi] (np.histogram2d: dropped if either is outside).

    Every bin is ``_bins``'s, numpy's, as in ``histogram_counts`` and ``histogram2d_counts``: each
    count equals theirs for the same rows. The slot, unit and model of a layer id: the three maps
    (-1: not counted); rows of layers without a slot are skipped, and those of a unit or model not
    stored (-1) are counted per layer only.
    """
    n = len(layer)
    bins = layer_counts.shape[2]
    fine_bins = unit_counts.shape[2]
    d_bins = model_counts.shape[1]
    scale = bins / (hi - lo)
    fine_scale = fine_bins / (hi - lo)
    d_scale = d_bins / (d_hi - d_lo)
    x, c, inv, idx = _block_buffers()
    idx2 = np.empty(BLOCK, dtype=np.int64)
    unit_outside = np.zeros((unit_counts.shape[0], 9), dtype=np.int64)
    r = 0
    while r < n:
        end = _run_end(layer, r, n)
        lid = layer[r]
        s = slot_of_layer[lid]
        if s >= 0:
            s -= s_lo
            u = unit_of_layer[lid]      # -1: its unit is not stored
            md = model_of_layer[lid]    # -1: its model is not stored
            for start in range(r, end, BLOCK):
                m = min(BLOCK, end - start)
                _coefficients(cols, start, m, C, shift, x, c, inv)
                for i in range(9):
                    _count(c[i], m, lo, hi, scale, edges, idx, layer_counts, outside, s, i)
                    if u >= 0:  # the same values outside: counted once, in ``outside`` (unit_outside is scratch)
                        _count(c[i], m, lo, hi, fine_scale, fine_edges, idx, unit_counts, unit_outside, u - u_lo, i)
                if md >= 0:
                    _bins(c[0], m, d_lo, d_hi, d_scale, d_bins, d_edges, idx)
                    _bins(c[1], m, d_lo, d_hi, d_scale, d_bins, d_edges, idx2)
                    for k in range(m):
                        if idx[k] >= 0 and idx2[k] >= 0:
                            model_counts[md - m_lo, idx[k], idx2[k]] += 1
        r = end


@njit(nogil=True, cache=True)
def coefficients_of(cols, C, shift):
    """The coefficients of all rows, exactly as the kernels compute them (for checks).

    Parameters
    ----------
    cols : nine (n,) float32 weight columns; C : (9, 9) components; shift : (9,) C @ mean.

    Returns
    -------
    (9, n) float64, one column per row.
    """
    n = len(cols[0])
    out = np.empty((9, n))
    x, c, inv, _ = _block_buffers()
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        _coefficients(cols, start, m, C, shift, x, c, inv)
        out[:, start:start + m] = c[:, :m]
    return out


def warm_up() -> None:
    """Load the compiled kernels (from numba's cache, compiling them on the first run after an
    install): about 0.3 s per process, paid at start rather than by the first query. The inputs
    have the types of a scan's (read-only arrays, as pyarrow hands them over)."""
    def frozen(a):
        a.setflags(write=False)
        return a

    cols = tuple(frozen(np.ones(4, dtype=np.float32)) for _ in range(9))
    layer = frozen(np.zeros(4, dtype=np.int32))
    groups = np.zeros(2, dtype=np.int64)
    C, shift = np.eye(9), np.zeros(9)
    edges = bin_edges(0.0, 1.0, 2)
    coefficient_range(layer, cols, groups, C, shift)
    histogram_counts(layer, cols, groups, 0, C, shift, 0.0, 1.0, edges, np.zeros((1, 9, 2), dtype=np.int64),
                     np.zeros((1, 9), dtype=np.int64))
    histogram2d_counts(layer, cols, groups, C, shift, 0.0, 1.0, edges, 0, 1, np.zeros((2, 2), dtype=np.int64))
    segment_counts(layer, cols, groups, groups, groups, 0, 0, 0, C, shift, 0.0, 1.0, edges, edges, 0.0, 1.0, edges,
                   np.zeros((1, 9, 2), dtype=np.int64), np.zeros((1, 9), dtype=np.int64),
                   np.zeros((1, 9, 2), dtype=np.int64), np.zeros((1, 2, 2), dtype=np.int64))
