"""Distribution shift between groups of filters (docs/method.md#divergence).

For each group and each of the 9 basis components, the coefficients are binned into a histogram
over the basis range (numpy semantics, see ``histogram.py``). A histogram with counts c (bins,)
of n in-range values and bin width b becomes a probability vector by

    p = c / (n b)                 (the density, as np.histogram(density=True))
    p[p == 0] = eps32             (float32 epsilon, 1.1920929e-07, on the density, not the count)
    p = p / sum(p)

Then, with w the weights (explained variance ratio of the basis, or uniform 1/9),

    D(A, B) = sum_i w_i * metric(p_A_i, p_B_i)

for the metrics (natural log throughout):

- ``kl_sym``:      KL(p||q) + KL(q||p), KL(p||q) = sum p log(p / q)
- ``js``:          (KL(p||m) + KL(q||m)) / 2 with m = (p + q) / 2
- ``hellinger``:   sqrt(sum (sqrt p - sqrt q)^2 / 2)
- ``wasserstein``: the 1-D earth mover's distance between the histograms placed at the bin
                   centers: sum_k |P_k - Q_k| * b, P and Q the cumulative sums.

Drift statistics of a d x d matrix are over its upper triangle (diagonal excluded).
"""
from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 1.1920929e-07
DEFAULT_BINS = 70
METRICS = ("kl_sym", "js", "hellinger", "wasserstein")
WEIGHTS = ("explained_variance", "uniform")


def probabilities(counts: np.ndarray, bin_width: float) -> np.ndarray:
    """Histogram counts to probability vectors, as described in the module docstring.

    A histogram with no values (n = 0) has no density; it becomes uniform after the epsilon step.

    Parameters
    ----------
    counts : (..., bins) counts over equal bins.
    bin_width : the width b of a bin.

    Returns
    -------
    (..., bins) float64, each vector summing to 1 with no zero entry.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, counts / (n * bin_width), 0.0)
    p[p == 0] = EPS32
    return p / p.sum(axis=-1, keepdims=True)


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (p * np.log(p / q)).sum(axis=-1)


def metric_values(P: np.ndarray, Q: np.ndarray, metric: str, bin_width: float) -> np.ndarray:
    """The metric between probability vectors, over the last axis.

    Parameters
    ----------
    P, Q : (..., bins) probability vectors (``probabilities``), of one shape.
    metric : one of METRICS.
    bin_width : the bins' width (``wasserstein`` only).

    Returns
    -------
    (...) the metric of each pair of vectors.
    """
    if metric == "kl_sym":
        return _kl(P, Q) + _kl(Q, P)
    if metric == "js":
        M = (P + Q) / 2
        return (_kl(P, M) + _kl(Q, M)) / 2
    if metric == "hellinger":
        return np.sqrt(((np.sqrt(P) - np.sqrt(Q)) ** 2).sum(axis=-1) / 2)
    if metric == "wasserstein":
        return np.abs(np.cumsum(P, axis=-1) - np.cumsum(Q, axis=-1)).sum(axis=-1) * bin_width
    raise ValueError(f"unknown metric {metric!r}; known: {list(METRICS)}")


def component_weights(kind: str, explained_variance_ratio: np.ndarray) -> np.ndarray:
    """The weights w (9,) of the components: the basis's explained variance ratio
    (``explained_variance``) or 1/9 each (``uniform``); ValueError for another ``kind``."""
    if kind == "explained_variance":
        return np.asarray(explained_variance_ratio, dtype=np.float64)
    if kind == "uniform":
        return np.full(len(explained_variance_ratio), 1.0 / len(explained_variance_ratio))
    raise ValueError(f"unknown weights {kind!r}; known: {list(WEIGHTS)}")


def divergence_matrix(counts: np.ndarray, weights: np.ndarray, metric: str, bin_width: float) -> np.ndarray:
    """The divergence matrix between groups.

    Parameters
    ----------
    counts : (d, 9, bins) histogram counts of d groups over one range.
    weights : (9,) component weights (``component_weights``).
    metric : one of METRICS.
    bin_width : the bins' width.

    Returns
    -------
    D : (d, d) float64, symmetric, zero on the diagonal.
    """
    P = probabilities(counts, bin_width)  # (d, 9, bins)
    d = len(P)
    D = np.zeros((d, d))
    if metric == "kl_sym":
        # KL(p||q) + KL(q||p) = sum (p - q)(log p - log q): the logs once per group, not per pair;
        # every term is >= 0, so nothing cancels and the sum keeps its full relative precision.
        L = np.log(P)
        for a in range(d - 1):
            D[a, a + 1:] = ((P[a] - P[a + 1:]) * (L[a] - L[a + 1:])).sum(axis=-1) @ weights
    else:
        for a in range(d - 1):  # row a against all later groups at once
            D[a, a + 1:] = metric_values(np.broadcast_to(P[a], P[a + 1:].shape), P[a + 1:], metric, bin_width) @ weights
    return D + D.T


def distances_to(counts_one: np.ndarray, counts_many: np.ndarray, weights: np.ndarray, metric: str,
                 bin_width: float) -> np.ndarray:
    """D(one, each of many), as ``divergence_matrix``'s entries.

    Parameters
    ----------
    counts_one : (9, bins) counts of one group; counts_many : (k, 9, bins) of k others.
    weights, metric, bin_width : as ``divergence_matrix``.

    Returns
    -------
    (k,) float64.
    """
    P = probabilities(counts_one, bin_width)[None]
    Q = probabilities(counts_many, bin_width)
    return metric_values(np.broadcast_to(P, Q.shape), Q, metric, bin_width) @ weights


def drift(D: np.ndarray) -> dict | None:
    """The drift statistics of a divergence matrix.

    Parameters
    ----------
    D : (d, d) divergence matrix.

    Returns
    -------
    dict of floats mean, median, q1, q3 (np.percentile 25, 75), min, max over the upper triangle
    of D (diagonal excluded); None with fewer than 2 groups.
    """
    if len(D) < 2:
        return None
    u = D[np.triu_indices(len(D), k=1)]
    q1, median, q3 = np.percentile(u, [25, 50, 75])
    return {"mean": float(u.mean()), "median": float(median), "q1": float(q1), "q3": float(q3),
            "min": float(u.min()), "max": float(u.max())}
