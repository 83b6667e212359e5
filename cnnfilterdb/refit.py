"""The refit of a store version's global basis and its per-layer histograms (docs/method.md#refit).

Run by ``StoreTransaction.commit`` when a version's filters change; reads the staging catalog at
the pending version ``v`` and the version's shards, writes one histogram file, and leaves the
catalog to the caller (it records the basis and the file).

1. Pooled moments. At ingest, each layer l stored the moments of its peak-scaled filters
   (``_layer_moments``: count n_l, mean m_l (9,), scatter S_l (9, 9), S = sum of outer products
   of the rows centered on their mean). Over the layers of version v (ordered by layer_id):

       N = sum_l n_l,   m = sum_l n_l m_l / N,
       S = sum_l S_l + sum_l n_l (m_l - m)(m_l - m)^T        (stats/moments.py: ``pool``)

   which is the scatter of all the version's scaled filters, exactly in arithmetic: no filter is
   read for the fit.
2. Covariance -> eigh. With N >= 2: C = S / (N - 1), the sample covariance (9, 9).
   ``np.linalg.eigh(C)``; eigenvalues sorted decreasing and clipped at 0 (explained_variance,
   (9,)); components the matching eigenvectors, one per row (9, 9), each multiplied by the sign
   of its entry of largest absolute value (scikit-learn's ``svd_flip``: that entry positive).
   explained_variance_ratio = eigenvalues / their sum (zeros if the sum is 0). Mean: m.
   (stats/basis.py: ``fit_basis``.)
3. Range. One exact scan of the version's filters x (9,) (a scanner's ``range``: scan.py's
   ShardScanner on this machine, cnnfilterdb.spark's SparkScanner on a cluster): the
   coefficients c = components (x / p - mean), p = max_j |x_j| (p = 1 for an all-zero filter),
   and (lo, hi) = (min, max) over all 9 coefficients of all N filters.
4. Histograms. A second exact scan: per layer and component, ``DEFAULT_BINS`` (70) equal bins
   over [lo, hi] with numpy's semantics (``np.histogram(c, 70, range=(lo, hi))``: last bin
   closed, nothing outside; an empty range lo == hi widened to (lo - 0.5, hi + 0.5)).

The histogram file (``shards/<ingest id>-histograms.npy``) is one int64 ``.npy`` array of shape
(L + 1, 1 + 9 * 70) for the version's L layers in layer_id order: column 0 holds the layer ids
(row 0: -1), columns 1.. the prefix sums over the layers of their counts (9, 70) raveled (row 0:
zeros). The counts of the layers i..j-1 are row j - row i; any grouping's histograms are sums of
its layers' (snapshot.LayerHistograms).

Guarantees:
- exact: the basis is PCA of all the version's scaled filters up to floating-point rounding
  (Chan et al.'s pooling is stable); range and counts come from full scans, the counts in
  integers, so any sum of them equals numpy's counts of the union of those filters;
- deterministic: the same catalog and shards give the same basis, range and file, whatever the
  number of scan threads (extremes and integer counts do not depend on the order of the work);
- fewer than 2 filters in the version: no basis (None), and no file is written;
- the file is fsynced before ``refit`` returns; a damaged shard raises StoreDamaged (scan.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import fsync_path
from .layout import file_sha256
from .scan import LayerGroups, check_counts
from .stats.basis import Basis, fit_basis
from .stats.divergence import DEFAULT_BINS
from .stats.moments import Moments, pool


@dataclass
class Refit:
    """What ``refit`` computed and wrote."""
    basis: Basis           # the fitted basis, with range_min, range_max (its version left 0: the catalog's)
    layer_ids: np.ndarray  # (L,) int64, ascending: the version's layers, the rows 1..L of the file
    bins: int              # bins per component of the file
    path: Path             # the histogram file written
    bytes: int             # its size
    sha256: str            # its sha256 (hex)


def pooled_moments(cur, version: int) -> Moments:
    """The moments of all the peak-scaled filters of store version ``version``, pooled from its
    layers' stored moments (step 1).

    Parameters
    ----------
    cur : a cursor on a catalog (the staging one of a transaction) that holds ``version``.
    version : the store version.

    Returns
    -------
    Moments with n = N, mean (9,), scatter (9, 9); n = 0 if the version has no layers.
    """
    rows = cur.execute("SELECT n, mean, scatter FROM _layer_moments SEMI JOIN layers_at(?) USING (layer_id) "
                       "ORDER BY layer_id", [version]).fetchall()
    if not rows:
        return Moments()
    ns = np.array([r[0] for r in rows])
    means = np.array([r[1] for r in rows])
    scatters = np.array([r[2] for r in rows]).reshape(-1, 9, 9)
    return pool(ns, means, scatters)


def pack_histograms(layer_ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The histogram file's array: layer ids and prefix sums of the layers' counts.

    Parameters
    ----------
    layer_ids : (L,) ascending layer ids.
    counts : (L, 9, bins) int64, the counts of each layer.

    Returns
    -------
    (L + 1, 1 + 9 * bins) little-endian int64: row 0 = [-1, 0, ..., 0]; row k = [layer_ids[k - 1],
    counts[:k].sum(axis=0).ravel()].
    """
    packed = np.zeros((len(layer_ids) + 1, 1 + 9 * counts.shape[-1]), dtype="<i8")
    packed[0, 0] = -1
    packed[1:, 0] = layer_ids
    np.cumsum(counts.reshape(len(layer_ids), -1), axis=0, out=packed[1:, 1:])
    return packed


def refit(cur, version: int, scanner, histogram_path: Path,
          progress: Callable[[int], None] | None = None) -> Refit | None:
    """Fit the global basis of store version ``version`` from its layers' moments, scan its
    filters for the range and the per-layer histograms, and write the histogram file.

    Parameters
    ----------
    cur : a cursor on the staging catalog, at the pending version (its views and macros show it).
    version : the pending store version.
    scanner : runs the two scans over the version's shards: ``range(groups, basis)`` and
        ``histograms(groups, basis, lo, hi, bins)`` (scan.ShardScanner, spark.SparkScanner).
    histogram_path : where to write the histogram file (the caller removes it if it does not commit).
    progress : called with the number of filters once the range scan is done, if given.

    Returns
    -------
    Refit, or None if the version holds fewer than 2 filters (nothing written).
    """
    total = pooled_moments(cur, version)
    if total.n < 2:
        return None
    basis = fit_basis(total)
    # One exact scan for the range, then one for the per-layer histograms of the default
    # parameters (counts add across layers, so any grouping's histograms are their sums).
    rows = cur.execute("SELECT layer_id, n_filters FROM layers_at(?) ORDER BY layer_id", [version]).fetchall()
    layer_ids = np.array([r[0] for r in rows])
    max_layer_id = int(cur.execute("SELECT max(layer_id) FROM _layers").fetchone()[0])
    groups = LayerGroups.of(layer_ids, np.arange(len(layer_ids)), len(layer_ids), max_layer_id)
    lo, hi, _ = scanner.range(groups, basis)
    basis.range_min, basis.range_max = lo, hi
    if progress is not None:
        progress(basis.n_filters)
    counts = scanner.histograms(groups, basis, lo, hi, DEFAULT_BINS)
    check_counts(counts, np.array([r[1] for r in rows]))  # never commit histograms of shards not as committed
    np.save(histogram_path, pack_histograms(layer_ids, counts))
    fsync_path(histogram_path)
    return Refit(basis, layer_ids, DEFAULT_BINS, histogram_path, histogram_path.stat().st_size,
                 file_sha256(histogram_path))
