"""The compiled scan kernels (cnnfilterdb/stats/histogram.py) against numpy, value for value.

Bins must equal np.histogram's exactly, also for values on an edge or one ulp beside it; the
coefficients must equal the textbook (x / peak - mean) @ components.T to rounding.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnfilterdb.stats.histogram import (
    bin_edges,
    coefficient_range,
    coefficients_of,
    histogram2d_counts,
    histogram_counts,
    histogram_range,
)

IDENTITY = np.eye(9)
NO_SHIFT = np.zeros(9)


def _columns(X: np.ndarray) -> tuple[np.ndarray, ...]:
    """Nine float32 columns of filters X (n, 9), as a scan reads them."""
    return tuple(np.ascontiguousarray(X[:, j], dtype=np.float32) for j in range(9))


def _one_layer(n: int):
    return np.zeros(n, dtype=np.int32), np.zeros(2, dtype=np.int64)  # layer 0, in group 0


def _exact_values(v: np.ndarray) -> np.ndarray:
    """Filters whose coefficient 0 is exactly v (float32) under the identity basis: (v, 1, 0, ...),
    peak 1 since |v| <= 1; coefficient 1 is 1 and the others 0."""
    X = np.zeros((len(v), 9), dtype=np.float32)
    X[:, 0] = v
    X[:, 1] = 1.0
    return X


def _kernel_hist(X, lo, hi, bins, C=IDENTITY, shift=NO_SHIFT):
    layer, groups = _one_layer(len(X))
    lo, hi = histogram_range(lo, hi)
    counts, outside = np.zeros((1, 9, bins), dtype=np.int64), np.zeros((1, 9), dtype=np.int64)
    histogram_counts(layer, _columns(X), groups, 0, C, shift, lo, hi, bin_edges(lo, hi, bins), counts, outside)
    assert (counts[0].sum(axis=1) + outside[0] == len(X)).all()  # every value binned or counted outside
    return counts[0]


def _near_edges(lo, hi, bins) -> np.ndarray:
    """Every float32 value within two ulps of an edge, the ends and beyond them."""
    edges = bin_edges(lo, hi, bins).astype(np.float32)
    near, up, down = [edges], edges, edges
    for _ in range(2):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        near += [up, down]
    v = np.concatenate(near + [np.float32([lo - 0.1, hi + 0.1, lo, hi])])
    return v[np.abs(v) <= 1]


@pytest.mark.parametrize("lo,hi,bins", [(-1.0, 1.0, 8), (-1.0, 1.0, 70), (-0.7311, 0.9172, 70),
                                        (-0.25, 0.5, 3), (0.1, 0.1000001, 5), (-1.0, 1.0, 1)])
def test_bins_on_and_beside_edges_equal_numpy(lo, hi, bins):
    v = _near_edges(lo, hi, bins)
    got = _kernel_hist(_exact_values(v), lo, hi, bins)
    np.testing.assert_array_equal(got[0], np.histogram(v.astype(np.float64), bins, range=(lo, hi))[0])


def test_empty_range_is_widened_as_numpy_does():
    v = np.float32([0.5, 0.5, 0.25, 0.75, 0.0, 1.0, -0.5])
    got = _kernel_hist(_exact_values(v), 0.5, 0.5, 10)
    np.testing.assert_array_equal(got[0], np.histogram(v.astype(np.float64), 10, range=(0.5, 0.5))[0])


def _random_basis(rng):
    C = np.linalg.qr(rng.normal(size=(9, 9)))[0].T
    mean = rng.normal(size=9) * 0.05
    return C, mean


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 2000), bins=st.integers(1, 200),
       zeros=st.booleans())
def test_coefficients_and_histograms_equal_numpy(seed, n, bins, zeros):
    rng = np.random.default_rng(seed)
    X = (rng.standard_t(3, size=(n, 9)) * rng.uniform(1e-3, 10)).astype(np.float32)
    if zeros:
        X[rng.integers(0, n, size=max(1, n // 10))] = 0  # all-zero filters stay zero
    C, mean = _random_basis(rng)
    shift = C @ mean
    cols = _columns(X)
    got = coefficients_of(cols, C, shift)
    peaks = np.abs(X.astype(np.float64)).max(axis=1)
    textbook = ((X / np.where(peaks > 0, peaks, 1)[:, None]) - mean) @ C.T
    np.testing.assert_allclose(got.T, textbook, rtol=0, atol=1e-14)

    layer, groups = _one_layer(n)
    lo, hi, count = coefficient_range(layer, cols, groups, C, shift)
    assert (lo, hi, count) == (got.min(), got.max(), n)
    counts = _kernel_hist(X, lo, hi, bins, C, shift)
    want = np.array([np.histogram(got[i], bins, range=(lo, hi))[0] for i in range(9)])
    np.testing.assert_array_equal(counts, want)
    assert counts.sum() == 9 * n  # the extremes fall on the range's ends: nothing dropped

    ci, cj = rng.choice(9, size=2, replace=False)
    counts2 = np.zeros((bins, bins), dtype=np.int64)
    histogram2d_counts(layer, cols, groups, C, shift, lo, hi, bin_edges(lo, hi, bins), ci, cj, counts2)
    want2 = np.histogram2d(got[ci], got[cj], bins, range=[(lo, hi), (lo, hi)])[0]
    np.testing.assert_array_equal(counts2, want2)


def test_groups_layers_and_unselected_rows():
    """Rows are counted in their layer's group; layers mapped to -1 are skipped, in any order of runs."""
    rng = np.random.default_rng(3)
    layer = np.repeat(np.array([4, 1, 4, 2, 0, 3], dtype=np.int32), [700, 1, 513, 2000, 5, 300])
    X = rng.normal(size=(len(layer), 9)).astype(np.float32)
    group_of_layer = np.array([1, -1, 2, 1, 0, -1], dtype=np.int64)  # layers 0..4 (+1 spare)
    C, mean = _random_basis(rng)
    shift = C @ mean
    cols = _columns(X)
    coef = coefficients_of(cols, C, shift)
    g = group_of_layer[layer]
    lo, hi, n = coefficient_range(layer, cols, group_of_layer, C, shift)
    assert (lo, hi, n) == (coef[:, g >= 0].min(), coef[:, g >= 0].max(), int((g >= 0).sum()))
    counts = np.zeros((2, 9, 30), dtype=np.int64)  # groups 1..2 only: g_lo = 1
    outside = np.zeros((2, 9), dtype=np.int64)
    sub = group_of_layer.copy()
    sub[sub == 0] = -1
    mid = (lo + hi) / 2  # half the range: values outside it are counted apart
    histogram_counts(layer, cols, sub, 1, C, shift, lo, mid, bin_edges(lo, mid, 30), counts, outside)
    for k, grp in enumerate([1, 2]):
        want = np.array([np.histogram(coef[i, g == grp], 30, range=(lo, mid))[0] for i in range(9)])
        np.testing.assert_array_equal(counts[k], want)
        np.testing.assert_array_equal(outside[k], ((coef[:, g == grp] < lo) | (coef[:, g == grp] > mid)).sum(axis=1))
