"""Mergeable first and second moments of rows of a matrix.

Streaming and per-layer statistics are combined with the pairwise update of Chan, Golub and
LeVeque: for two parts with counts n_a, n_b, means m_a, m_b and scatter matrices S_a, S_b
(S = sum of outer products of rows centered on their own mean),

    n = n_a + n_b,   m = m_a + (m_b - m_a) * n_b / n,
    S = S_a + S_b + outer(m_b - m_a, m_b - m_a) * n_a * n_b / n.

This is exact in arithmetic and stable in floating point, unlike sum(x x^T) - n m m^T.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Moments:
    """Count ``n``, mean ``(d,)`` and scatter matrix ``(d, d)`` of a set of rows (float64)."""

    d: int = 9
    n: int = 0
    mean: np.ndarray = field(default=None)  # type: ignore[assignment]
    scatter: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = np.zeros(self.d)
        if self.scatter is None:
            self.scatter = np.zeros((self.d, self.d))

    @classmethod
    def of_columns(cls, Xt: np.ndarray) -> Moments:
        """Moments of the columns of ``Xt`` (d, n), float64: the layout the ingest works in,
        where every reduction runs over contiguous memory."""
        d, n = Xt.shape
        if n == 0:
            return cls(d=d)
        mean = Xt.sum(axis=1) / n
        Xc = Xt - mean[:, None]
        return cls(d=d, n=n, mean=mean, scatter=Xc @ Xc.T)

    @classmethod
    def of_augmented(cls, Z: np.ndarray) -> Moments:
        """Moments of the columns of ``Z[:-1]``, where ``Z`` is (d + 1, n) float64 with a last row of ones.

        One matrix product G = Z Z^T yields n = G[d, d], the sums G[:d, d] and the raw products
        G[:d, :d]; then scatter = G[:d, :d] - sums sums^T / n. That subtraction cancels digits when
        a coordinate's mean is large against its spread (|mean| > 100 std), as in a layer of
        near-identical filters; such a piece is recomputed centered, so the result stays exact.
        """
        d = Z.shape[0] - 1
        G = Z @ Z.T
        n = G[d, d]
        if n == 0:
            return cls(d=d)
        sums = G[:d, d]
        scatter = G[:d, :d] - np.outer(sums, sums) / n
        if np.any(sums * sums > 1e4 * n * np.abs(np.diag(scatter))):
            return cls.of_columns(Z[:d])
        return cls(d=d, n=int(round(n)), mean=sums / n, scatter=scatter)

    def merge(self, other: Moments) -> Moments:
        """Moments of the union of both row sets (returns a new object)."""
        if other.n == 0:
            return Moments(self.d, self.n, self.mean.copy(), self.scatter.copy())
        if self.n == 0:
            return Moments(other.d, other.n, other.mean.copy(), other.scatter.copy())
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.n * other.n / n)
        return Moments(self.d, n, mean, scatter)

    def covariance(self) -> np.ndarray:
        """Sample covariance ``scatter / (n - 1)``; requires n >= 2."""
        return self.scatter / (self.n - 1)


def pool(ns: np.ndarray, means: np.ndarray, scatters: np.ndarray) -> Moments:
    """Moments of the union of k parts given as arrays.

    The closed form of repeated ``merge``: within-part scatter plus between-part scatter,
    S = sum_i S_i + sum_i n_i (m_i - m)(m_i - m)^T with m = sum_i n_i m_i / N.

    Parameters
    ----------
    ns : (k,) counts; means : (k, d) means; scatters : (k, d, d) scatter matrices.

    Returns
    -------
    Moments with n = N, mean (d,), scatter (d, d) (n = 0 for no rows).
    """
    ns = np.asarray(ns, dtype=np.float64)
    d = means.shape[1] if means.ndim == 2 else 9
    N = ns.sum()
    if N == 0:
        return Moments(d=d)
    mean = (ns[:, None] * means).sum(axis=0) / N
    dev = means - mean
    scatter = scatters.sum(axis=0) + (dev * ns[:, None]).T @ dev
    return Moments(d=d, n=int(N), mean=mean, scatter=scatter)
