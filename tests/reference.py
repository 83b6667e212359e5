"""An independent, deliberately slow reference of the paper's statistics (SPEC 6.1, 6.4).

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
