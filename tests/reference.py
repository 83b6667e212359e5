"""An independent, deliberately slow reference of the paper's statistics (docs/method.md#basis, #layer-quality).

Written from the specification with textbook tools (numpy SVD, scikit-learn PCA, scipy entropy),
sharing no code with the product.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.stats
from sklearn.decomposition import PCA


def layer_quality(W: np.ndarray) -> dict:
    W = np.asarray(W, dtype=np.float64).reshape(len(W), 9)
    n = len(W)
    peak = np.abs(W).max()
    if peak == 0:
        sparse = np.ones(n, dtype=bool)
    else:
        sparse = np.array([np.all(np.abs(f) < 0.01 * peak) for f in W])

    def entropy(X):
        if len(X) < 2:
            return None
        Xc = X - X.mean(axis=0)
        s = np.linalg.svd(Xc, compute_uv=False)
        v = s**2 / (len(X) - 1)
        if v.sum() == 0:
            return 0.0
        return float(scipy.stats.entropy(v / v.sum(), base=10))

    h = entropy(W)
    expected = 1.2618047 / (1 + math.exp(-0.88767525 * (math.log2(n) - 2.30436435))) - 0.31050834 if n >= 2 else None
    return {
        "sparsity": float(sparse.mean()),
        "variance_entropy": h,
        "variance_entropy_norm": (h / expected) if (h is not None and expected and expected > 0) else None,
        "variance_entropy_clean": entropy(W[~sparse]),
    }


def scale(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    out = np.zeros_like(X)
    for i, f in enumerate(X):
        m = np.abs(f).max()
        if m > 0:
            out[i] = f / m
    return out


def basis(X: np.ndarray) -> dict:
    """scikit-learn PCA of the peak-scaled filters (float64), with the range of all coefficients."""
    S = scale(np.asarray(X).reshape(len(X), 9))
    pca = PCA(n_components=9, svd_solver="full").fit(S)
    C = pca.transform(S)
    return {
        "mean": pca.mean_,
        "components": pca.components_,
        "explained_variance_ratio": pca.explained_variance_ratio_,
        "range": (C.min(), C.max()),
    }


EPS32 = np.finfo(np.float32).eps


def _probabilities(C: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """The paper's per-component probability vectors of coefficients C (n, 9): (9, bins)."""
    out = []
    for i in range(9):
        h, _ = np.histogram(C[:, i], bins=bins, range=(lo, hi), density=True)
        h[h == 0] = EPS32
        out.append(h / h.sum())
    return np.array(out)


def _metric(p, q, metric, centers):
    from scipy.spatial.distance import jensenshannon

    if metric == "kl_sym":
        return scipy.stats.entropy(p, q) + scipy.stats.entropy(q, p)
    if metric == "js":
        return jensenshannon(p, q) ** 2
    if metric == "hellinger":
        return np.sqrt(0.5 * np.sum((np.sqrt(p) - np.sqrt(q)) ** 2))
    if metric == "wasserstein":
        return scipy.stats.wasserstein_distance(centers, centers, p, q)
    raise ValueError(metric)


def divergence(groups: list[np.ndarray], basis_filters: np.ndarray, bins: int = 70, metric: str = "kl_sym",
               weights: str = "explained_variance") -> dict:
    """The naive in-memory method: scikit-learn PCA of the basis filters (all, or the selection),
    np.histogram(density=True) per group and component over the range, epsilon on the density,
    scipy.stats.entropy for the symmetric KL."""
    S = scale(basis_filters)
    pca = PCA(n_components=9, svd_solver="full").fit(S)
    C = pca.transform(S)
    lo, hi = C.min(), C.max()
    w = pca.explained_variance_ratio_ if weights == "explained_variance" else np.full(9, 1 / 9)
    edges = np.linspace(lo, hi, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    P = [_probabilities(pca.transform(scale(X)), lo, hi, bins) for X in groups]
    d = len(groups)
    D = np.zeros((d, d))
    for a in range(d):
        for b in range(d):
            if a != b:
                D[a, b] = sum(w[i] * _metric(P[a][i], P[b][i], metric, centers) for i in range(9))
    return {"matrix": D, "range": (lo, hi), "evr": pca.explained_variance_ratio_}


def histograms(groups: list[np.ndarray], basis_filters: np.ndarray, bins: int) -> tuple[np.ndarray, tuple]:
    S = scale(basis_filters)
    pca = PCA(n_components=9, svd_solver="full").fit(S)
    C = pca.transform(S)
    lo, hi = C.min(), C.max()
    out = np.array([[np.histogram(pca.transform(scale(X))[:, i], bins=bins, range=(lo, hi))[0] for i in range(9)]
                    for X in groups])
    return out, (lo, hi), pca
