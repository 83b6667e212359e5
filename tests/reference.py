"""An independent, deliberately slow reference of the paper's statistics (docs/method.md#basis, #layer-quality).

Written from the specification with textbook tools (numpy SVD, scikit-learn PCA, scipy entropy),
sharing no code with the product.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
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


# -- checking a model against the population (SPEC 15), naively --------------------------------------
def depth_decile(conv_depth, conv_depth_norm) -> list:
    """SPEC 14: "0" for conv_depth 0, else pandas.cut(conv_depth_norm, linspace(0, 1, 11))'s label
    (None where conv_depth_norm is unknown)."""
    norm = pd.Series(np.asarray(conv_depth_norm, dtype=np.float64))
    cut = pd.cut(norm, np.linspace(0, 1, 11)).astype(object)
    return ["0" if d == 0 else (None if pd.isna(c) else str(c)) for d, c in zip(np.asarray(conv_depth), cut)]


def oriented_basis(X: np.ndarray) -> dict:
    """``basis`` (scikit-learn PCA of the peak-scaled filters) with SPEC 6.1's sign convention made
    explicit: each component's entry of largest absolute value positive; the range recomputed."""
    S = scale_rows(X)
    pca = PCA(n_components=9, svd_solver="full").fit(S)
    comps = pca.components_.copy()
    for i in range(9):
        if comps[i, np.argmax(np.abs(comps[i]))] < 0:
            comps[i] = -comps[i]
    C = (S - pca.mean_) @ comps.T
    return {"mean": pca.mean_, "components": comps, "explained_variance_ratio": pca.explained_variance_ratio_,
            "range": (float(C.min()), float(C.max()))}


def scale_rows(X: np.ndarray) -> np.ndarray:
    """``scale``, vectorized: each row divided by its absolute peak (an all-zero row stays zero)."""
    X = np.asarray(X, dtype=np.float64).reshape(len(X), 9)
    peak = np.abs(X).max(axis=1, keepdims=True)
    return np.divide(X, peak, out=np.zeros_like(X), where=peak > 0)


def project(X: np.ndarray, b: dict) -> np.ndarray:
    """Coefficients (f / max|f| - mean) @ components.T, (n, 9)."""
    return (scale_rows(X) - b["mean"]) @ b["components"].T


def kl_weighted(P: np.ndarray, Q: np.ndarray, w: np.ndarray) -> float:
    """sum_i w_i (KL(P_i||Q_i) + KL(Q_i||P_i)), scipy.stats.entropy, natural log."""
    kl = scipy.stats.entropy(P, Q, axis=1) + scipy.stats.entropy(Q, P, axis=1)  # one per component (row)
    return float(sum(w[i] * kl[i] for i in range(9)))


def percentile_among(values, v) -> float | None:
    """SPEC 15: 100 |{values <= v}| / |{values known}| (None if v or every value is unknown)."""
    known = [x for x in values if x is not None and np.isfinite(x)]
    if v is None or not np.isfinite(v) or not known:
        return None
    return 100.0 * sum(1 for x in known if x <= v) / len(known)


def check_population(population: list[dict], b: dict, bins: int = 70) -> dict:
    """What a check needs of a population (``check``), computed once per population.

    population: one dict per population layer: "filters" (n, 9), "decile", "model_id"; b: a basis
    (``oriented_basis``). Returns the per-decile pools' probabilities, every population layer's
    divergence from its decile's pool (None without a decile), the pool of all layers with a
    decile, each model's pool, and the coefficients outside the range (np.histogram drops them:
    a basis kept by a commit does not cover the layers it added)."""
    lo, hi = b["range"]
    w = b["explained_variance_ratio"]
    coef = [project(p["filters"], b) for p in population]
    deciles = [p["decile"] for p in population]
    prob = lambda C: _probabilities(C, lo, hi, bins)  # noqa: E731
    pool = {d: prob(np.concatenate([c for c, e in zip(coef, deciles) if e == d]))
            for d in sorted({d for d in deciles if d is not None})}
    layer_kl = [None if d is None else kl_weighted(prob(c), pool[d], w) for c, d in zip(coef, deciles)]
    everything = prob(np.concatenate([c for c, d in zip(coef, deciles) if d is not None]))
    model_ids = sorted({p["model_id"] for p in population})
    per_model = {m: prob(np.concatenate([c for c, p in zip(coef, population) if p["model_id"] == m]))
                 for m in model_ids}
    outside = sum(int(np.count_nonzero((c < lo) | (c > hi))) for c in coef)  # dropped, as np.histogram drops them
    return {"pool": pool, "layer_kl": layer_kl, "deciles": deciles, "everything": everything, "per_model": per_model,
            "n_outside": outside,
            "model_divergences": [kl_weighted(per_model[m], everything, w) for m in model_ids], "bins": bins}


def check(model_layers: list[np.ndarray], model_deciles: list, population: dict, b: dict, k: int = 5,
          min_unusual_layers: int = 20) -> dict:
    """SPEC 15's divergences of a checked model from a population, from the filters, one layer at a time.

    model_layers: each checked layer's filters (n, 9); model_deciles: their depth deciles;
    population: ``check_population``'s; b: its basis. Returns per checked layer kl_to_population
    (None where the population has no layer of its decile), its percentile among the population
    layers' own divergences from their decile's pool, the 95th percentile (np.percentile) of
    those (None below min_unusual_layers of them: docs/method.md#checking-a-model),
    clipped (coefficients outside the range, then put in the edge bins with np.clip); the
    model's divergence from the whole population's pool and its percentile among the population
    models'; the k nearest models [(model_id, divergence)]."""
    lo, hi = b["range"]
    w = b["explained_variance_ratio"]
    pool, layer_kl, deciles = population["pool"], population["layer_kl"], population["deciles"]
    prob = lambda C: _probabilities(C, lo, hi, population["bins"])  # noqa: E731
    out_layers, own = [], []
    for X, d in zip(model_layers, model_deciles):
        C = project(X, b)
        clipped = int(np.count_nonzero((C < lo) | (C > hi)))
        C = np.clip(C, lo, hi)
        own.append(C)
        same = [x for x, e in zip(layer_kl, deciles) if e == d]
        kl = kl_weighted(prob(C), pool[d], w) if d in pool else None
        out_layers.append({"kl_to_population": kl, "percentile": percentile_among(same, kl),
                           "unusual_at": float(np.percentile(same, 95)) if len(same) >= min_unusual_layers else None,
                           "clipped": clipped})
    P = prob(np.concatenate(own))
    divergence = kl_weighted(P, population["everything"], w)
    model_ids = list(population["per_model"])
    to_models = [kl_weighted(P, population["per_model"][m], w) for m in model_ids]
    order = sorted(range(len(model_ids)), key=lambda i: (to_models[i], i))[:k]
    return {"layers": out_layers, "divergence": divergence,
            "divergence_percentile": percentile_among(population["model_divergences"], divergence),
            "nearest": [(model_ids[i], to_models[i]) for i in order],
            "clipped": sum(x["clipped"] for x in out_layers)}
