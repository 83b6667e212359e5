"""The PCA basis of peak-scaled filters (docs/method.md#basis).

1. Scale each filter f (9,) by its absolute peak: f / max|f|; an all-zero filter stays zero.
2. PCA with 9 components of the scaled filters X (n, 9): centered by their mean, no whitening.
   Components are the eigenvectors of the sample covariance, sorted by decreasing eigenvalue,
   each oriented so that its entry of largest absolute value is positive (scikit-learn's
   ``svd_flip`` convention). explained_variance_ratio = eigenvalues / their sum.
3. Coefficients c = (X - mean) @ components.T, shape (n, 9). The basis range is one (min, max)
   over all 9 coefficients of all its filters.

The fit takes the pooled ``Moments`` of the scaled filters, so the basis of any union of layers
comes from their stored moments without touching the filters; only the range needs a scan.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .moments import Moments

N_COMPONENTS = 9


def peak_scale_columns(Xt: np.ndarray, peaks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Step 1: filters given as the columns of ``Xt`` divided by their absolute peaks; an all-zero
    filter stays zero.

    Parameters
    ----------
    Xt : (9, n) filters, one per column.
    peaks : (n,) max_j |Xt[j, i]| of each filter (``quality.column_peaks``).
    out : (9, n) float64, may be ``Xt`` itself: avoids an allocation.

    Returns
    -------
    (9, n) the scaled filters (``out`` if given).
    """
    return np.divide(Xt, np.where(peaks > 0, peaks, 1.0), out=out)


@dataclass
class Basis:
    n_filters: int
    mean: np.ndarray                      # (9,)
    components: np.ndarray                # (9, 9), one component per row
    explained_variance: np.ndarray        # (9,)
    explained_variance_ratio: np.ndarray  # (9,)
    range_min: float | None = None
    range_max: float | None = None
    version: int = 0


def fit_basis(m: Moments) -> Basis:
    """Steps 2 and 3's basis (without its range) from the moments of peak-scaled filters.

    Parameters
    ----------
    m : Moments of the scaled filters (n >= 2, else ValueError): mean (9,), scatter (9, 9).

    Returns
    -------
    Basis with mean (9,), components (9, 9) one per row, explained_variance (9,) and
    explained_variance_ratio (9,); range_min and range_max None (they need a scan).
    """
    if m.n < 2:
        raise ValueError(f"a basis needs at least 2 filters, got {m.n}")
    eigval, eigvec = np.linalg.eigh(m.covariance())
    order = np.argsort(eigval)[::-1]
    variance = np.clip(eigval[order], 0.0, None)
    components = eigvec[:, order].T.copy()
    peak_idx = np.argmax(np.abs(components), axis=1)
    components *= np.sign(components[np.arange(N_COMPONENTS), peak_idx])[:, None]
    total = variance.sum()
    ratio = variance / total if total > 0 else np.zeros_like(variance)
    return Basis(m.n, m.mean.copy(), components, variance, ratio)
