"""The correlation of two model-level variables, with a deterministic bootstrap interval (SPEC 14).

For paired values x, y (n,) of the models of one group (models lacking either value left out by
the caller):

- ``statistic``, ``p_value``: scipy.stats.spearmanr, pearsonr or kendalltau (tau-b), two-sided;
- ``ci_low``, ``ci_high``: the 2.5 and 97.5 percentiles (numpy's linear interpolation) of the
  statistic over B = 2000 bootstrap resamples, resample b being the models
  ``idx[b] = rng.integers(0, n, size=(B, n))[b]`` drawn with ``rng = numpy.random.default_rng(0)``,
  a generator of its own for each group (so a group's interval does not depend on the others);
  resamples where the statistic is undefined (x or y constant in it) are dropped. The interval
  repeats exactly, call after call.

The resamples' statistics are computed for all B at once: Spearman's as Pearson's r of the rows'
ranks (scipy.stats.rankdata per row), Pearson's per row, Kendall's tau-b from the exact integer
counts of concordant, discordant and tied pairs (scipy's formula); equal to scipy's per resample
up to rounding (tests/test_studies.py checks 1e-12).
Fewer than 3 models: every value null (a correlation of 2 points is +-1 by construction).
"""
from __future__ import annotations

import warnings

import numpy as np

RESAMPLES = 2000
SEED = 0
MIN_MODELS = 3


def correlate(x: np.ndarray, y: np.ndarray, method: str) -> tuple[float, float]:
    """(statistic, p_value) of x and y (n,) float64 by ``method``; NaN where undefined."""
    from scipy import stats  # here, not at the top: 1.4 s of every command's start otherwise

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant input: NaN, said as null
        if method == "spearman":
            r = stats.spearmanr(x, y)
        elif method == "pearson":
            r = stats.pearsonr(x, y)
        else:
            r = stats.kendalltau(x, y)
    return float(r.statistic), float(r.pvalue)


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson's r of each row of a and b (B, n); NaN for a row where either is constant."""
    am = a - a.mean(axis=1, keepdims=True)
    bm = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((am * am).sum(axis=1) * (bm * bm).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (am * bm).sum(axis=1) / den
    r[den == 0] = np.nan
    return np.clip(r, -1.0, 1.0)


def bootstrap_statistics(x: np.ndarray, y: np.ndarray, method: str, resamples: int = RESAMPLES,
                         seed: int = SEED) -> np.ndarray:
    """The statistic of each bootstrap resample (resamples,), NaN where undefined."""
    n = len(x)
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    if method == "pearson":  # r is invariant to shift and scale: centred and scaled, no sum of squares overflows
        x, y = (v - v.mean() for v in (x, y))
        x, y = (v / np.abs(v).max() if np.abs(v).max() > 0 else v for v in (x, y))
    xs, ys = x[idx], y[idx]
    if method == "spearman":
        from scipy.stats import rankdata

        return _rowwise_pearson(rankdata(xs, axis=1), rankdata(ys, axis=1))
    if method == "pearson":
        return _rowwise_pearson(xs, ys)
    return _rowwise_kendall(xs, ys)


def _rowwise_kendall(xs: np.ndarray, ys: np.ndarray, chunk_cells: int = 1 << 22) -> np.ndarray:
    """Kendall's tau-b of each row of xs and ys (B, n) as scipy.stats.kendalltau computes it:
    (concordant - discordant pairs) / sqrt(pairs - pairs tied in x) / sqrt(pairs - pairs tied in
    y), from exact integer counts over every pair i < j; NaN where x or y is constant. Rows in
    chunks of about ``chunk_cells`` pairs (memory stays bounded whatever n)."""
    B, n = xs.shape
    tot = n * (n - 1) // 2
    out = np.empty(B)
    iu = np.triu_indices(n, 1)
    step = max(1, chunk_cells // max(tot, 1))
    for lo in range(0, B, step):
        x, y = xs[lo:lo + step], ys[lo:lo + step]
        sx = np.sign(x[:, iu[0]] - x[:, iu[1]]).astype(np.int8)
        sy = np.sign(y[:, iu[0]] - y[:, iu[1]]).astype(np.int8)
        con_minus_dis = (sx.astype(np.int64) * sy).sum(axis=1)
        xtie, ytie = (sx == 0).sum(axis=1), (sy == 0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            tau = con_minus_dis / np.sqrt(tot - xtie) / np.sqrt(tot - ytie)
        tau[(xtie == tot) | (ytie == tot)] = np.nan
        out[lo:lo + step] = np.clip(tau, -1.0, 1.0)
    return out


def correlation(x: np.ndarray, y: np.ndarray, method: str, resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """n, statistic, p_value, ci_low, ci_high and n_resamples (the resamples whose statistic is
    defined: the interval's) of paired x, y (n,) float64 (module docstring); None for what is
    undefined."""
    n = len(x)
    out = {"n": n, "statistic": None, "p_value": None, "ci_low": None, "ci_high": None, "n_resamples": 0}
    if n < MIN_MODELS:
        return out
    stat, p = correlate(x, y, method)
    boot = bootstrap_statistics(x, y, method, resamples, seed)
    boot = boot[np.isfinite(boot)]
    out["n_resamples"] = len(boot)  # those defined: few of them, and the interval says little
    lo, hi = (np.percentile(boot, [2.5, 97.5]) if len(boot) else (np.nan, np.nan))
    fin = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731
    out.update(statistic=fin(stat), p_value=fin(p), ci_low=fin(lo), ci_high=fin(hi))
    return out
