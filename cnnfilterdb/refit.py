"""The refit of a store version's global basis, and the stored histograms of its layers (docs/method.md#refit).

Run by ``StoreTransaction.commit``: ``refit`` when the store's refit policy (or its caller) asks for a
new basis, ``project`` when a commit keeps the basis and adds layers. Each reads the staging catalog
at the pending version ``v`` and the shards, writes one histogram segment (segments.py), and leaves
the catalog to the caller (it records the basis and the segment).

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
4. Histograms. A second exact scan (``scan.scan_segment``): per layer and component,
   ``DEFAULT_BINS`` (70) equal bins over [lo, hi] with numpy's semantics (``np.histogram(c, 70,
   range=(lo, hi))``: last bin closed, values outside counted apart; an empty range lo == hi
   widened to (lo - 0.5, hi + 0.5)); per unit (a model's layers of one depth bin) FINE_BINS bins
   over [lo, hi]; per model the 2-D histogram of (c0, c1) over DENSITY_RANGE. One segment file
   for every layer of the version (segments.py).

Projection (``project``): a commit that keeps the basis and adds layers runs step 4 over the new
layers only (their shards), with the basis and range as they are: coefficients outside the range
are counted in the segment's ``outside`` (reported by the analyses), not binned. A removal writes
nothing: the removed layers are no longer selected.

Guarantees:
- exact: the basis is PCA of all the version's scaled filters up to floating-point rounding
  (Chan et al.'s pooling is stable); range and counts come from full scans, the counts in
  integers, so any sum of them equals numpy's counts of the union of those filters;
- deterministic: the same catalog and shards give the same basis, range and file, whatever the
  number of scan threads (extremes and integer counts do not depend on the order of the work);
- fewer than 2 filters in the version: no basis (None), and no file is written;
- a segment holds, per layer, counts and outside values that add up to the layer's filters, or is
  not written (StoreDamaged: a shard not as committed);
- the file is fsynced before ``refit``/``project`` return; a damaged shard raises StoreDamaged (scan.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .layout import StoreDamaged, file_sha256
from .scan import LayerGroups
from .segments import SegmentPlan
from .stats.basis import Basis, fit_basis
from .stats.divergence import DEFAULT_BINS
from .stats.moments import Moments, pool


@dataclass
class Written:
    """A histogram segment a commit wrote (the catalog records it: ``_histograms``)."""
    path: Path
    n_layers: int
    bins: int
    bytes: int
    sha256: str
    outside: int   # coefficients of its layers outside the basis range (0 for a refit's)
    density: bool  # whether it holds the models' 2-D histograms (not from Spark)


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


def _max_layer_id(cur) -> int:
    return int(cur.execute("SELECT coalesce(max(layer_id), 0) FROM _layers").fetchone()[0])


def write_segment(scanner, basis: Basis, plan: SegmentPlan, path: Path) -> Written:
    """Scan the plan's layers (step 4), check that each layer's counts and outside values add up to
    its filters (``plan.n_filters``, the catalog's), and write the segment to ``path``."""
    n_filters = plan.n_filters
    counts = scanner.segment(plan, basis, basis.range_min, basis.range_max)
    found = counts.layer_counts[:, 0, :].sum(axis=1) + counts.outside[:, 0]
    if not np.array_equal(found, np.asarray(n_filters, dtype=np.int64)):  # never commit counts of shards not as committed
        k = int(np.flatnonzero(found != n_filters)[0])
        raise StoreDamaged("shards", f"the scan found {int(found[k]):,} filters of layer {int(plan.layer_ids[k])} where "
                                     f"the catalog holds {int(n_filters[k]):,}: a shard is not as committed")
    counts.write(path)
    return Written(path, len(plan.layer_ids), plan.bins, path.stat().st_size, file_sha256(path), int(counts.outside.sum()),
                   counts.model_density is not None)


def refit(cur, version: int, scanner, histogram_path: Path,
          progress: Callable[[int], None] | None = None) -> tuple[Basis, Written] | None:
    """Fit the global basis of store version ``version`` from its layers' moments, scan its
    filters for the range, then for the stored histograms of all its layers (one segment).

    Parameters
    ----------
    cur : a cursor on the staging catalog, at the pending version (its views and macros show it).
    version : the pending store version.
    scanner : runs the scans over the version's shards: ``range(groups, basis)`` and
        ``segment(plan, basis, lo, hi)`` (scan.ShardScanner, spark.SparkScanner).
    histogram_path : where to write the segment (the caller removes it if it does not commit).
    progress : called with the number of filters once the range scan is done, if given.

    Returns
    -------
    (basis, segment written), or None if the version holds fewer than 2 filters (nothing written).
    """
    total = pooled_moments(cur, version)
    if total.n < 2:
        return None
    basis = fit_basis(total)
    plan = SegmentPlan.of(cur, "SELECT * FROM layers_at(?)", [version], _max_layer_id(cur), DEFAULT_BINS)
    groups = LayerGroups.of(plan.layer_ids, np.arange(len(plan.layer_ids)), len(plan.layer_ids), plan.max_layer_id)
    lo, hi, _ = scanner.range(groups, basis)
    basis.range_min, basis.range_max = lo, hi
    if progress is not None:
        progress(basis.n_filters)
    return basis, write_segment(scanner, basis, plan, histogram_path)


def project(cur, version: int, basis: Basis, scanner, histogram_path: Path) -> Written | None:
    """The stored histograms of the layers store version ``version`` adds (those of the models it
    ingests: its basis has segments for every other layer of it), their filters projected on the basis as it is (one segment;
    None: no layer to add).

    Parameters
    ----------
    cur : a cursor on the staging catalog, at the pending version.
    basis : the version's global basis, with its range.
    scanner : a scanner over (at least) the new layers' shards.
    histogram_path : where to write the segment.
    """
    # The layers of the models this version adds: every other layer of it is in a segment of the basis.
    new = "SELECT * FROM layers_at(?) WHERE model_id IN (SELECT model_id FROM _models WHERE version_added = ?)"
    plan = SegmentPlan.of(cur, new, [version, version], _max_layer_id(cur), DEFAULT_BINS)
    if not len(plan.layer_ids):
        return None
    return write_segment(scanner, basis, plan, histogram_path)
