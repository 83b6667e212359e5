"""Layer quality (docs/method.md#layer-quality), on the raw, unscaled filters of one layer.

For a layer with filters W of shape (n, 9):

- ``sparsity``: share of filters f with max_j |f_j| < 0.01 * max |W| (all sparse if max |W| = 0).
- ``variance_entropy``: with W_c = W centered per column and s its singular values,
  v = s**2 / (n - 1) (the eigenvalues of the sample covariance), the base-10 Shannon entropy
  H = -sum p log10 p of p = v / sum(v). 0 when sum(v) = 0, null when n < 2. Range 0 .. log10(9).
- ``variance_entropy_norm``: H / h(n), h the expected entropy of a random layer of n filters
  (``expected_random_entropy``); null where h(n) <= 0 (n = 2), since the ratio means nothing there.
- ``variance_entropy_clean``: H of the non-sparse filters only (null when fewer than 2).
- ``orthogonality``: 1 - mean |cos| over pairs of distinct output channels, each flattened to
  in * 9 (needs the layer's (out, in, 3, 3) shape; null otherwise, and beyond
  MAX_ORTHOGONALITY_CHANNELS output channels or MAX_ORTHOGONALITY_FILTERS filters; wide layers
  in blocks of rows).

Large layers are processed in pieces by ``LayerQualityAccumulator`` in two passes (the sparsity
threshold needs the layer maximum first); the eigenvalues of the merged scatter matrix equal s**2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .moments import Moments

SPARSITY_THRESHOLD = 0.01


def expected_random_entropy(n: int) -> float:
    """h(n) = 1.2618047 / (1 + exp(-0.88767525 * (log2(n) - 2.30436435))) - 0.31050834: the
    expected variance entropy of a random layer of ``n`` >= 1 filters (negative for n <= 2)."""
    return 1.2618047 / (1.0 + math.exp(-0.88767525 * (math.log2(n) - 2.30436435))) - 0.31050834


def variance_entropy(m: Moments) -> float | None:
    """Base-10 entropy of the normalized covariance spectrum of the rows summarized by ``m``.

    Parameters
    ----------
    m : Moments of the raw filters (n, scatter (9, 9)).

    Returns
    -------
    float in [0, log10(9)]; 0.0 if every filter is the same; None if m.n < 2.
    """
    if m.n < 2:
        return None
    v = np.clip(np.linalg.eigvalsh(m.scatter), 0.0, None) / (m.n - 1)
    total = v.sum()
    if total <= 0.0:
        return 0.0
    p = v[v > 0] / total
    return float(-(p * np.log10(p)).sum())


def column_peaks(Xt: np.ndarray) -> np.ndarray:
    """max_j |Xt_ji| per column of ``Xt`` (9, n): the absolute peak of each filter, shape (n,)."""
    return np.abs(Xt).max(axis=0)


@dataclass(frozen=True)
class LayerQuality:
    sparsity: float | None
    variance_entropy: float | None
    variance_entropy_norm: float | None
    variance_entropy_clean: float | None
    orthogonality: float | None = None


class LayerQualityAccumulator:
    """Two-pass accumulation of a layer's quality over pieces of its filters.

    Pass 1 (``add``) sees every piece once: count, layer maximum, moments of all filters.
    Pass 2 (``add_thresholded``) sees every piece again once the maximum is known: sparse count
    and moments of the non-sparse filters. A layer held whole in memory calls both on the same pieces.
    Pieces are float64 and transposed, (9, n) (one filter per column), with their filter peaks;
    or augmented, (10, n) with a last row of ones (``Moments.of_augmented``), which is faster.
    """

    def __init__(self) -> None:
        self.n = 0
        self.peak = 0.0
        self.all = Moments()
        self.n_sparse = 0
        self.clean = Moments()

    def see_peaks(self, peaks: np.ndarray) -> None:
        """Raise the layer maximum to cover ``peaks`` (lets pass 2 start before pass 1 ends)."""
        if len(peaks):
            self.peak = max(self.peak, float(peaks.max()))

    def add(self, Xt: np.ndarray, peaks: np.ndarray) -> Moments:
        """Pass 1 over a piece; returns the piece's moments (reused by ``add_thresholded``)."""
        m = Moments.of_augmented(Xt) if Xt.shape[0] == 10 else Moments.of_columns(Xt)
        if m.n:
            self.n += m.n
            self.see_peaks(peaks)
            self.all = self.all.merge(m)
        return m

    @property
    def threshold(self) -> float:
        return SPARSITY_THRESHOLD * self.peak

    def add_thresholded(self, Xt: np.ndarray, peaks: np.ndarray, moments: Moments | None = None) -> None:
        """Pass 2 over a piece; ``moments``: the piece's, from ``add``, if at hand."""
        n = Xt.shape[1]
        if n == 0:
            return
        if self.peak == 0.0:
            self.n_sparse += n
            return
        dense = peaks >= self.threshold
        n_dense = int(dense.sum())
        self.n_sparse += n - n_dense
        if n_dense == n and moments is not None:
            self.clean = self.clean.merge(moments)
        else:
            self.clean = self.clean.merge(Moments.of_columns(Xt[:9] if n_dense == n else Xt[:9, dense]))

    def result(self, orthogonality: float | None = None) -> LayerQuality:
        if self.n == 0:
            return LayerQuality(None, None, None, None, orthogonality)
        h = variance_entropy(self.all)
        hn = expected_random_entropy(self.n) if self.n >= 2 else 0.0
        return LayerQuality(
            sparsity=self.n_sparse / self.n,
            variance_entropy=h,
            variance_entropy_norm=(h / hn) if (h is not None and hn > 0) else None,
            variance_entropy_clean=variance_entropy(self.clean),
            orthogonality=orthogonality,
        )


# Orthogonality compares every pair of output channels: out^2 / 2 cosines of in * 9 entries each.
# Beyond these a layer gets none (its pairs and float64 copies would take gigabytes; real 3x3
# convolutions stay far below: 2048 x 2048 = 4.2e6 filters), from a model file or dataset.h5 alike.
MAX_ORTHOGONALITY_CHANNELS = 8192
MAX_ORTHOGONALITY_FILTERS = 1 << 23
ORTHOGONALITY_BLOCK = 1 << 23        # cosines computed at once (64 MiB of float64)


PAIR_COST = 256  # a pair's cost beyond its multiply-adds, in multiply-adds (measured: about 7.6 ns a pair here)


def orthogonality_work(out: int, per_channel: int) -> int:
    """The work of ``orthogonality`` for a layer of ``out`` channels of ``per_channel`` weights
    each, in multiply-adds: out^2 x (per_channel + PAIR_COST); 0 where it is not computed. What a
    check budgets (about 3e10 a second on this project's 2-core machine)."""
    computed = 2 <= out <= MAX_ORTHOGONALITY_CHANNELS and out * per_channel <= 9 * MAX_ORTHOGONALITY_FILTERS
    return out * out * (per_channel + PAIR_COST) if computed else 0


def orthogonality(weight: np.ndarray) -> float | None:
    """1 - mean |cosine similarity| over pairs of distinct output channels of ``weight``.

    A channel of all zeros has no direction; its cosines count as 0.

    Parameters
    ----------
    weight : (out, in/groups, kh, kw) a convolution's weight (any shape whose first axis is out).

    Returns
    -------
    float in [0, 1]; None with fewer than 2 output channels, or more than
    MAX_ORTHOGONALITY_CHANNELS or MAX_ORTHOGONALITY_FILTERS (3x3 filters, ``weight.size / 9``).
    """
    out = weight.shape[0]
    if out < 2 or out > MAX_ORTHOGONALITY_CHANNELS or weight.size > 9 * MAX_ORTHOGONALITY_FILTERS:
        return None
    V = np.array(weight, dtype=np.float64).reshape(out, -1)  # a copy: scaled in place below
    norms = np.linalg.norm(V, axis=1)
    U = np.divide(V, norms[:, None], out=V, where=norms[:, None] > 0)  # a zero channel stays zero
    rows = max(1, ORTHOGONALITY_BLOCK // out)
    if rows >= out:
        C = np.abs(U @ U.T)
        iu = np.triu_indices(out, k=1)
        return float(1.0 - C[iu].mean())
    # Wider layers a block of rows at a time, in place: memory ORTHOGONALITY_BLOCK cosines, not
    # out x out (one layer of 16,384 channels would otherwise hold 2 GiB, three times over).
    total = 0.0
    for a in range(0, out, rows):
        block = U[a:a + rows] @ U.T
        np.abs(block, out=block)
        for r in range(len(block)):
            block[r, :a + r + 1] = 0.0  # the pairs (i, j) with j > i only
        total += float(block.sum())
    return float(1.0 - total / (out * (out - 1) // 2))
