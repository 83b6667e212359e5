"""Gaussian kernel density estimates from exact fine histograms: the ridge plots (docs/method.md#kde).

The notebook draws each group's coefficient densities with KDEpy's
``FFTKDE(kernel="gaussian", bw="silverman")``, which needs every value in memory. FFTKDE itself
bins the values on an equidistant grid and convolves the bin weights with the sampled kernel;
here the grid is the bins of an exact histogram of the values, which any store can build by
summing per-layer counts, so the estimate takes memory of the grid's size whatever the number of
values. For counts c (bins,) of n values over [lo, hi] with bin width h and centres x_k,

    f(x_k) = sum_j (c_j / n) * phi((x_k - x_j) / bw) / bw,     phi the standard normal density,

evaluated by FFT convolution. Silverman's bandwidth, KDEpy's rule (``bw_selection.py``):

    sigma = min(std(ddof=1), IQR / 1.3489795),   bw = sigma * (3 n / 4) ** (-1 / 5);

if sigma is 0, the spread between the 1st and 99th percentiles / 4.6526957 takes its place, and
if that is 0 too, bw = 1. The standard deviation comes exact from the group's moments; the
percentiles from the fine histogram, each within one bin width of the sorted values' (the values
are taken as evenly spread inside their bin).

Differences to KDEpy on the raw values: its linear binning puts a value's weight on the two grid
points around it, this binning on its bin's centre (a shift of at most h / 2 per value); and the
percentiles above. Both vanish as h / bw -> 0: ``tests/test_figures.py`` states the agreement reached.
"""
from __future__ import annotations

import numpy as np

IQR_OF_NORMAL = 1.3489795003921634     # norm.ppf(.75) - norm.ppf(.25)
P1_P99_OF_NORMAL = 4.6526957480816815  # norm.ppf(.99) - norm.ppf(.01)


def histogram_quantiles(counts: np.ndarray, lo: float, hi: float, q: np.ndarray) -> np.ndarray:
    """Quantiles of the values a histogram counts, taking them as evenly spread inside each bin.

    Parameters
    ----------
    counts : (..., bins) integer array over equal bins spanning [lo, hi].
    q : (m,) quantile levels in [0, 1].

    Returns
    -------
    (..., m) float64: the value x where the share q of the values lies below (NaN for no values).
    """
    counts = np.asarray(counts, dtype=np.float64)
    bins = counts.shape[-1]
    width = (hi - lo) / bins
    cum = np.cumsum(counts, axis=-1)
    n = cum[..., -1:]
    target = np.asarray(q, dtype=np.float64) * n                              # (..., m)
    # the first bin whose cumulative count reaches the target (ties: the first non-empty one)
    j = np.minimum((cum[..., None, :] < target[..., :, None]).sum(axis=-1), bins - 1)
    before = np.take_along_axis(cum, j, axis=-1) - np.take_along_axis(counts, j, axis=-1)
    inside = np.take_along_axis(counts, j, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(inside > 0, (target - before) / inside, 0.0)
        out = lo + width * (j + np.clip(frac, 0.0, 1.0))
    return np.where(n > 0, out, np.nan)


def silverman_bandwidth(n: np.ndarray, std: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """KDEpy's Silverman rule, from summaries instead of the values.

    Parameters
    ----------
    n : (...) number of values.
    std : (...) their standard deviation (ddof=1).
    quantiles : (..., 4) their 1st, 25th, 75th and 99th percentiles.

    Returns
    -------
    (...) bandwidths; 1 where n < 2 or every value is the same (as KDEpy).
    """
    n = np.asarray(n, dtype=np.float64)
    p1, p25, p75, p99 = np.moveaxis(np.asarray(quantiles, dtype=np.float64), -1, 0)
    sigma = np.minimum(std, (p75 - p25) / IQR_OF_NORMAL)
    sigma = np.where(sigma > 0, sigma, (p99 - p1) / P1_P99_OF_NORMAL)
    with np.errstate(divide="ignore", invalid="ignore"):
        bw = sigma * (np.maximum(n, 1) * 3 / 4.0) ** (-1 / 5)
    return np.where((n >= 2) & (bw > 0), bw, 1.0)


def kde_from_histogram(counts: np.ndarray, lo: float, hi: float, bw: np.ndarray) -> np.ndarray:
    """Gaussian KDE at the bin centres of histograms, as the module docstring states.

    Parameters
    ----------
    counts : (k, bins) counts over equal bins spanning [lo, hi].
    bw : (k,) bandwidth of each row, > 0.

    Returns
    -------
    (k, bins) float64 densities (each integrates to about 1 when the kernel's mass stays inside
    the range); zeros for a row with no values.
    """
    counts = np.asarray(counts, dtype=np.float64)
    k, bins = counts.shape
    width = (hi - lo) / bins
    n = counts.sum(axis=1, keepdims=True)
    weights = np.divide(counts, n, out=np.zeros_like(counts), where=n > 0)
    # The kernel sampled at every offset a pair of bins can have, -(bins-1) .. bins-1; a linear
    # (zero-padded) convolution of that length is exact for the sum above.
    size = 1 << int(np.ceil(np.log2(3 * bins - 2)))
    offsets = np.arange(-(bins - 1), bins) * width
    z = offsets[None, :] / np.asarray(bw, dtype=np.float64)[:, None]
    kernel = np.exp(-0.5 * z * z) / (np.sqrt(2 * np.pi) * np.asarray(bw, dtype=np.float64)[:, None])
    full = np.fft.irfft(np.fft.rfft(weights, size, axis=1) * np.fft.rfft(kernel, size, axis=1), size, axis=1)
    out = full[:, bins - 1:2 * bins - 1]
    return np.maximum(out, 0.0)  # FFT round-off leaves tiny negatives far in the tails
