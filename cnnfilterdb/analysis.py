"""The paper's statistics over any selection of the store (docs/method.md#statistics), for the service and the CLI.

Three ways to the per-group coefficient histograms, with identical results (the ``method`` every
result names):

- ``layer_histograms``: with the global basis and the default bins, the per-layer histograms kept
  in the store (segments.py, written by the commits) are summed per group: no filter is read.
- ``unit_histograms``: with the global basis and FINE_BINS bins (the ridge plots' KDE), or the
  density figure's 2-D histogram, the stored histograms of whole units (a model's layers of one
  depth bin) or whole models are summed: any grouping or selection by model fields or depth_bin.
- ``scan``: any other parameters (a selection's own basis, other bins, a selection of parts of
  units) read the selected layers' filters once (twice for a selection's basis: its range first),
  see ``scan.py``.

With the global basis, coefficients outside its range (of layers added since it was fitted, which
a commit projects on it: docs/method.md#refit) are dropped from the histograms, as numpy drops
them, and counted: ``n_outside`` in each result. The PCA basis of any selection comes from the
per-layer moments of its layers, without a scan. A stored histogram segment is used only once its
sha256 is the one the catalog recorded: a missing or damaged store file raises StoreDamaged naming
it (snapshot.py), never a wrong answer from it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .layout import StoreDamaged
from .limits import MAX_GROUPS, MAX_HISTOGRAM_CELLS, MAX_KENDALL_PAIRS, MAX_PAIR_CELLS, MAX_RESPONSE_CELLS
from .properties import properties_at
from .requests import (
    MODEL_METRICS,
    CorrelationRequest,
    DegenerateRequest,
    Density2dRequest,
    DivergenceRequest,
    HistogramsRequest,
    KdeRequest,
    ModelMetricsRequest,
    PcaRequest,
    SimilarRequest,
    takes,
)
from .scan import HeldShards, LayerGroups, ShardScanner, check_counts, scan_histogram2d, scan_range
from .segments import DENSITY_BINS, DENSITY_COMPONENTS, DENSITY_RANGE, FINE_BINS, StoredHistograms
from .selection import (
    LAYER_GROUP_FIELDS,
    EmptySelectionError,
    InvalidValue,
    Selection,
    SelectionError,
    check_group_by,
    condition,
    field_sql,
    layers_at,
    natural_order,
    select,
)
from .snapshot import Snapshot
from .stats.basis import Basis, fit_basis
from .stats.correlation import RESAMPLES, SEED, correlation
from .stats.divergence import DEFAULT_BINS, component_weights, distances_to, divergence_matrix, drift
from .stats.histogram import histogram_range
from .stats.kde import histogram_quantiles, kde_from_histogram, silverman_bandwidth
from .stats.moments import pool
from .studies import check_variable, model_metrics


@dataclass
class GroupHistograms:
    """The coefficient histograms of a selection's groups in one basis, on one grid."""

    selection: Selection
    basis: Basis
    lo: float
    hi: float
    bins: int
    counts: np.ndarray   # (groups, 9, bins)
    outside: np.ndarray  # (groups, 9): coefficients outside [lo, hi], not in counts
    method: str

    @property
    def bin_width(self) -> float:
        return (self.hi - self.lo) / self.bins


class Analysis:
    """Queries on one read-only catalog connection (a cursor), with the shard files under ``root``."""

    def __init__(self, cur, root: Path, snapshot: Snapshot | None = None, use_stored: bool = True,
                 scanner=None):
        self.cur = cur
        # Runs the range and histogram scans of group_histograms: default the local shards
        # (scan.ShardScanner); cnnfilterdb.spark passes its SparkScanner.
        self._scanner = scanner
        self.snapshot = snapshot or Snapshot.at(cur, root)
        self.version = self.snapshot.version  # every query reads the store as of this version
        self.layers = layers_at(self.version)
        self.use_stored = use_stored  # False: always scan (tests, benchmarks, Spark)

    def select(self, where: dict | None, group_by: str | None = None) -> Selection:
        """The selected layers of this version, grouped (see selection.select)."""
        return select(self.cur, where, group_by, self.version)

    # -- building blocks -----------------------------------------------------------------------
    def shard_paths(self) -> list[Path]:
        return self.snapshot.shard_paths(self.cur)

    def held_shards(self) -> HeldShards:
        return self.snapshot.held_shards(self.cur)

    @property
    def scanner(self):
        if self._scanner is None:
            self._scanner = ShardScanner(self.shard_paths(), self.held_shards())
        return self._scanner

    def groups_of(self, sel: Selection) -> LayerGroups:
        return LayerGroups.of(sel.layer_ids, sel.layer_group, len(sel.labels), self.snapshot.max_layer_id(self.cur))

    def selection_basis(self, sel: Selection) -> Basis:
        """PCA of the selection's scaled filters, from its layers' moments (no scan)."""
        if len(sel.layer_ids) == 0:
            raise EmptySelectionError("no filters match the selection")
        moments = self.snapshot.layer_moments(self.cur)
        pos = np.searchsorted(moments.layer_ids, sel.layer_ids)  # in layer_id order: a deterministic sum
        m = pool(moments.n[pos], moments.mean[pos], moments.scatter[pos])
        if m.n < 2:
            raise EmptySelectionError(f"the selection holds {m.n} filter(s); a basis needs at least 2")
        return fit_basis(m)

    def global_basis(self) -> Basis:
        b = self.snapshot.basis(self.cur)
        if b is None:
            raise SelectionError("the store has no basis yet (fewer than 2 filters)")
        return b

    # -- histograms ----------------------------------------------------------------------------
    def group_histograms(self, where: dict | None, group_by: str | None, bins: int = DEFAULT_BINS,
                         basis: str = "global", max_groups: int | None = None,
                         max_pair_cells: int | None = None, max_cells: int | None = None) -> GroupHistograms:
        """The per-group histograms of a request's selection (its parameters checked by its type)."""
        return self.histograms_of(self.select(where, group_by), where, group_by, bins, basis, max_groups,
                                  max_pair_cells, max_cells)

    def histograms_of(self, sel: Selection, where: dict | None, group_by: str | None, bins: int = DEFAULT_BINS,
                      basis: str = "global", max_groups: int | None = None, max_pair_cells: int | None = None,
                      max_cells: int | None = None) -> GroupHistograms:
        """The per-group histograms of the selection ``sel`` (of ``where``, grouped by ``group_by``:
        their names for the messages), within the limits given."""
        if len(sel.labels) == 0:
            raise EmptySelectionError("no filters match the selection" + (f" (where: {where})" if where else ""))
        if max_groups is not None and len(sel.labels) > max_groups:
            raise SelectionError(f"group_by {group_by} gives {len(sel.labels)} groups; at most {max_groups} "
                                 f"here: narrow the selection with where")
        d = len(sel.labels)
        max_cells = MAX_HISTOGRAM_CELLS if max_cells is None else max_cells
        if d * 9 * bins > max_cells:
            raise SelectionError(f"group_by {group_by} gives {d} groups; with {bins} bins that is "
                                 f"{d * 9 * bins:,} histogram cells, over the limit of "
                                 f"{max_cells:,}: narrow the selection with where, or use fewer bins")
        if max_pair_cells is not None and d * (d - 1) // 2 * 9 * bins > max_pair_cells:
            raise SelectionError(f"group_by {group_by} gives {d} groups; with {bins} bins their {d * (d - 1) // 2:,} "
                                 f"pairs are {d * (d - 1) // 2 * 9 * bins:,} cells to compare, over the limit of "
                                 f"{max_pair_cells:,}: narrow the selection with where, or use fewer bins")
        if basis == "global":
            b = self.global_basis()
            lo, hi = b.range_min, b.range_max
            stored = self.stored()
            if stored is not None and stored.basis_version == b.version:
                args = sel.layer_ids, sel.layer_group, len(sel.labels)
                if bins == stored.bins:
                    return GroupHistograms(sel, b, lo, hi, bins, stored.group_sums(*args), stored.outside_sums(*args),
                                           "layer_histograms")
                if bins == FINE_BINS and (fine := stored.fine_sums(*args)) is not None:
                    counts, rest = fine
                    if rest.any():  # the layers of units too small to be stored: scanned
                        small = LayerGroups.of(sel.layer_ids[rest], sel.layer_group[rest], len(sel.labels),
                                               self.snapshot.max_layer_id(self.cur))
                        more, more_outside = self.scanner.histograms(small, b, lo, hi, bins)
                        # their filters in range, from the stored per-layer counts: a shard not as committed is damage
                        in_range = stored.group_sums(sel.layer_ids[rest], sel.layer_group[rest], len(sel.labels))
                        check_counts(more, more_outside, in_range[:, 0].sum(axis=1) + more_outside[:, 0])
                        counts = counts + more
                    return GroupHistograms(sel, b, lo, hi, bins, counts, stored.outside_sums(*args), "unit_histograms")
            groups = self.groups_of(sel)
        else:
            b = self.selection_basis(sel)
            groups = self.groups_of(sel)
            lo, hi, _ = self.scanner.range(groups, b)
            b.range_min, b.range_max = lo, hi
        counts, outside = self.scanner.histograms(groups, b, lo, hi, bins)
        check_counts(counts, outside, sel.n_filters)
        return GroupHistograms(sel, b, lo, hi, bins, counts, outside, self.scanner.method)

    def stored(self) -> StoredHistograms | None:
        """The store's stored histograms of this version's basis (None: none, or not to be used)."""
        return self.snapshot.stored_histograms(self.cur) if self.use_stored else None

    # -- the statistics --------------------------------------------------------------------------
    @takes(DivergenceRequest)
    def divergence(self, req: DivergenceRequest, max_groups: int | None = None,
                   max_pair_cells: int | None = None) -> dict:
        """The d x d matrix between the groups of a selection and its drift statistics (docs/method.md#divergence, #drift).

        At most ``max_groups`` groups and ``max_pair_cells`` cells of pairwise work (defaults
        MAX_GROUPS, MAX_PAIR_CELLS; the figures ask for less), given with a built request.
        """
        group_by, metric, bins, weights, basis = req.group_by, req.metric, req.bins, req.weights, req.basis
        t0 = time.perf_counter()
        max_groups = MAX_GROUPS if max_groups is None else max_groups
        max_pair_cells = MAX_PAIR_CELLS if max_pair_cells is None else max_pair_cells
        if req.within is not None:
            return self._cohort_divergence(req, max_groups, max_pair_cells, t0)
        h = self.group_histograms(req.selection, group_by, bins, basis, max_groups=max_groups,
                                  max_pair_cells=max_pair_cells)
        w = component_weights(weights, h.basis.explained_variance_ratio)
        D = divergence_matrix(h.counts, w, metric, h.bin_width)
        return self._divergence_answer(req, h, h.selection, h.counts, h.outside, w, D, t0)

    def _divergence_answer(self, req: DivergenceRequest, h: GroupHistograms, sel: Selection, counts, outside,
                           w: np.ndarray, D: np.ndarray, t0: float, facets: list | None = None) -> dict:
        group_by, metric, weights, basis = req.group_by, req.metric, req.weights, req.basis
        out = {
            "store_version": self.version,
            "group_by": group_by,
            "labels": sel.labels,
            "n_filters": sel.n_filters.tolist(),
            "n_models": sel.n_models.tolist(),
            "n_layers": sel.n_layers.tolist(),
            "matrix": D.tolist(),
            "metric": metric,
            "weights": weights,
            "component_weights": w.tolist(),
            "explained_variance_ratio": h.basis.explained_variance_ratio.tolist(),
            "range": [h.lo, h.hi],
            "bins": h.bins,
            "basis": {"kind": basis, "version": h.basis.version if basis == "global" else None,
                      "n_filters": h.basis.n_filters},
            "drift": drift(D),
            "empty_groups": sel.empty_groups,
            "n_outside": outside.sum(axis=1).tolist(),
            "method": h.method,
        }
        return out | {"within": req.within, "facets": facets, "elapsed_ms": round((time.perf_counter() - t0) * 1000, 3)}

    def _cohort_divergence(self, req: DivergenceRequest, max_groups: int, max_pair_cells: int, t0: float) -> dict:
        """``divergence`` with ``within`` (SPEC 14's cohort divergence): the groups of group_by
        split by the values of ``within`` (natural order) in one pass over the selection (a
        composite grouping: the stored histograms answer it when whole units do); per value of
        ``within``, the matrix between the groups of group_by its layers hold; the matrix of the
        whole selection is the sum over the values, reported as without ``within``."""
        where, group_by, within = req.selection, req.group_by, req.within
        check_group_by(within, properties_at(self.cur, self.version), parameter="within")
        inner, outer = self.select(where, group_by), self.select(where, within)
        for name, sel in (("within", outer), ("group_by", inner)):
            if len(sel.labels) > max_groups:
                what = "values" if name == "within" else "groups"
                raise SelectionError(f"{name} {getattr(req, name)} gives {len(sel.labels)} {what}; at most {max_groups} "
                                     "here: narrow the selection with where")
        d = len(inner.labels)
        code = outer.layer_group * d + inner.layer_group
        present, composite = np.unique(code, return_inverse=True)  # the (value, group) pairs that hold layers
        per_value = np.bincount(present // d, minlength=len(outer.labels))
        # every value's matrix and the whole selection's: their pairs and their cells are bounded
        pairs = sum(k * (k - 1) // 2 for k in per_value) + d * (d - 1) // 2
        if int((per_value ** 2).sum()) + d * d > MAX_RESPONSE_CELLS:
            raise SelectionError(f"within {within} and group_by {group_by} give {int((per_value ** 2).sum()) + d * d:,} "
                                 f"matrix cells, over the limit of {MAX_RESPONSE_CELLS:,}: narrow the selection with where")
        if pairs * 9 * req.bins > max_pair_cells:
            raise SelectionError(f"within {within} and group_by {group_by} give {pairs:,} pairs of groups to compare; "
                                 f"with {req.bins} bins that is {pairs * 9 * req.bins:,} cells, over the limit of "
                                 f"{max_pair_cells:,}: narrow the selection with where, or use fewer bins")
        n = len(present)
        cond, params = condition(self.cur, where, self.version)
        t = self.cur.execute(f"SELECT n_filters, model_id FROM {self.layers} WHERE {cond} ORDER BY layer_id",
                             params).fetchnumpy()  # the rows of both selections, in their order
        models = np.unique(composite * (int(t["model_id"].max(initial=0)) + 1) + np.asarray(t["model_id"], np.int64))
        sel = Selection([tuple(map(int, divmod(c, d))) for c in present], inner.layer_ids, composite.astype(np.int64),
                        np.bincount(composite, weights=np.asarray(t["n_filters"], np.float64), minlength=n).astype(np.int64),
                        np.bincount(models // (int(t["model_id"].max(initial=0)) + 1), minlength=n).astype(np.int64),
                        np.bincount(composite, minlength=n).astype(np.int64), [])
        h = self.histograms_of(sel, where, f"{within} and {group_by}", req.bins, req.basis, max_groups=None)
        w = component_weights(req.weights, h.basis.explained_variance_ratio)
        facets = []
        for v, value in enumerate(outer.labels):
            rows = np.flatnonzero(present // d == v)
            D = divergence_matrix(h.counts[rows], w, req.metric, h.bin_width)
            facets.append({"value": value, "labels": [inner.labels[present[r] % d] for r in rows],
                           "n_filters": sel.n_filters[rows].tolist(), "n_models": sel.n_models[rows].tolist(),
                           "n_layers": sel.n_layers[rows].tolist(), "matrix": D.tolist(), "drift": drift(D),
                           "n_outside": h.outside[rows].sum(axis=1).tolist()})
        # the whole selection's groups: sums over the values
        group_of = present % d
        counts = np.zeros((d, *h.counts.shape[1:]), h.counts.dtype)
        np.add.at(counts, group_of, h.counts)
        outside = np.zeros((d, *h.outside.shape[1:]), h.outside.dtype)
        np.add.at(outside, group_of, h.outside)
        D = divergence_matrix(counts, w, req.metric, h.bin_width)
        return self._divergence_answer(req, h, inner, counts, outside, w, D, t0, facets)

    @takes(KdeRequest)
    def kde(self, req: KdeRequest, max_groups: int | None = None) -> dict:
        """Per group and component, the Gaussian KDE of the coefficients with Silverman's bandwidth
        (the ridge plots; the math in ``stats/kde.py``), from an exact histogram of ``bins`` bins
        over the basis range and the group's exact standard deviation (from its layers' moments).

        Returns
        -------
        dict with ``grid`` (bins,) the bin centres, and per group ``density`` (9, bins),
        ``bandwidth`` (9,), ``std`` (9,), ``quartiles`` (9, 2): the 25th and 75th percentiles.
        """
        where, group_by, bins, basis = req.selection, req.group_by, req.bins, req.basis
        # floats in JSON: about twice the bytes of the histograms' integers
        h = self.group_histograms(where, group_by, bins, basis, max_groups=MAX_GROUPS if max_groups is None else max_groups,
                                  max_cells=MAX_RESPONSE_CELLS // 2)
        sel, b = h.selection, h.basis
        std = self._coefficient_std(sel, b)
        n = h.counts.sum(axis=2)  # (groups, 9): the values in range (all of them: the range is the basis's)
        q = histogram_quantiles(h.counts, h.lo, h.hi, np.array([0.01, 0.25, 0.75, 0.99]))
        bw = silverman_bandwidth(n, std, q)
        density = kde_from_histogram(h.counts.reshape(-1, bins), h.lo, h.hi, bw.reshape(-1)).reshape(h.counts.shape)
        edges = np.linspace(h.lo, h.hi, bins + 1)
        return {
            "store_version": self.version,
            "group_by": group_by, "range": [h.lo, h.hi], "bins": bins, "grid": ((edges[:-1] + edges[1:]) / 2).tolist(),
            "basis": {"kind": basis, "version": b.version if basis == "global" else None},
            "groups": [{"label": lab, "n_filters": int(nf), "n_models": int(nm), "n_outside": int(h.outside[g].sum()),
                        "bandwidth": bw[g].tolist(), "std": std[g].tolist(),
                        # NaN (no value of the component in range: all outside a kept basis's) is null
                        "quartiles": [[None if np.isnan(v) else float(v) for v in row] for row in q[g, :, 1:3]],
                        "density": density[g].tolist()}
                       for g, (lab, nf, nm) in enumerate(zip(sel.labels, sel.n_filters, sel.n_models))],
            "method": h.method,
        }

    def _coefficient_std(self, sel: Selection, b: Basis) -> np.ndarray:
        """(groups, 9): each group's standard deviation (ddof=1) of each coefficient, exact, from
        its layers' moments projected on the components: with layer counts n_i, projected means
        p_i = C m_i and projected within-layer scatter s_i = diag(C S_i C^T), a group's scatter
        is sum s_i + sum n_i (p_i - p)^2, p its pooled mean (Chan et al.'s merge, see moments.py)."""
        moments = self.snapshot.layer_moments(self.cur)
        pos = np.searchsorted(moments.layer_ids, sel.layer_ids)
        C, g, d = b.components, sel.layer_group, len(sel.labels)
        n = moments.n[pos]
        p = moments.mean[pos] @ C.T                                    # (layers, 9)
        # s[l, i] = C_i^T S_l C_i = S_l (raveled) . (C_i outer C_i) (raveled): one matrix product
        s = moments.scatter[pos].reshape(len(pos), 81) @ np.einsum("ij,ik->ijk", C, C).reshape(9, 81).T  # (layers, 9)
        N = np.bincount(g, weights=n, minlength=d)
        mean = np.stack([np.bincount(g, weights=n * p[:, i], minlength=d) for i in range(9)], axis=1)
        mean /= np.maximum(N, 1)[:, None]
        dev = p - mean[g]
        scatter = np.stack([np.bincount(g, weights=s[:, i] + n * dev[:, i] ** 2, minlength=d) for i in range(9)], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.sqrt(np.maximum(scatter, 0) / (N - 1)[:, None])
        return np.where((N >= 2)[:, None], std, 0.0)

    def layer_quality(self, req: DegenerateRequest, color_by: str) -> dict:
        """Every layer of the request's selection with its quality metrics
        (docs/method.md#layer-quality) and its value of ``color_by`` (one of GROUP_FIELDS, checked
        by the figure's request): the quality figure's data, the request's thresholds drawn over it.

        Returns
        -------
        dict with ``layers``: columns layer_id, model_id, label, n_filters, sparsity,
        variance_entropy_norm (one list each, layer_id order); ``labels`` the distinct values of
        ``color_by`` in natural order with ``n_models`` each; ``thresholds`` the request's.
        """
        cond, params = condition(self.cur, req.selection, self.version)
        check_group_by(color_by, properties_at(self.cur, self.version), parameter="color_by")
        rows = self.cur.execute(f"SELECT layer_id, model_id, {field_sql(color_by)} AS label, n_filters, sparsity, "
                                f"variance_entropy_norm FROM {self.layers} WHERE {cond} ORDER BY layer_id",
                                params).fetchall()
        if not rows:
            raise EmptySelectionError("no layers match the selection")
        cols = ["layer_id", "model_id", "label", "n_filters", "sparsity", "variance_entropy_norm"]
        layers = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
        models: dict = {}
        for lab, mid in zip(layers["label"], layers["model_id"]):
            models.setdefault(lab, set()).add(mid)
        labels = natural_order(list(models))
        return {"store_version": self.version, "color_by": color_by, "labels": labels, "n_models": [len(models[v]) for v in labels],
                "layers": layers, "thresholds": req.thresholds}

    def export_plan(self, where: dict | None) -> dict:
        """What ``export.export_chunks`` needs to stream the filters of a selection: ``paths``
        (the shards, filter_id order), ``layer_ids`` (n_layers,) ascending, ``max_layer_id``,
        ``n_rows`` (the selected filters, as the catalog counts them), ``store_version``.
        An empty selection is an empty export, not an error."""
        sel = self.select(where)
        return {"paths": self.shard_paths(), "held": self.held_shards(), "layer_ids": sel.layer_ids,
                "max_layer_id": self.snapshot.max_layer_id(self.cur), "n_rows": int(sel.n_filters.sum()),
                "store_version": self.version}

    def first_layer_id(self) -> int:
        """The store's lowest layer id (EmptySelectionError for a store with no layers)."""
        row = self.cur.execute(f"SELECT min(layer_id) FROM {self.layers}").fetchone()
        if row[0] is None:
            raise EmptySelectionError("the store holds no layers")
        return int(row[0])

    def layer_filters(self, layer_id: int, limit: int) -> tuple[dict, np.ndarray]:
        """A layer (layer_id, model_id, model, conv_depth, n_filters) and its first ``limit``
        filters, (min(limit, n_filters), 3, 3) float32 in filter_id order. LookupError: no such layer."""
        row = self.cur.execute("SELECT layer_id, model_id, model, conv_depth, n_filters, filter_id_first "
                               f"FROM {self.layers} WHERE layer_id = ?", [layer_id]).fetchone()
        if row is None:
            raise LookupError(layer_id)
        layer = dict(zip(("layer_id", "model_id", "model", "conv_depth", "n_filters", "filter_id_first"), row))
        first, n = layer["filter_id_first"], min(limit, layer["n_filters"])
        self.held_shards().verify_filter_ids(first, first + n - 1)  # DuckDB reads them: their checksums first
        res = self.cur.execute("SELECT w0, w1, w2, w3, w4, w5, w6, w7, w8 FROM _all_filters WHERE filter_id BETWEEN ? AND ? "
                               "ORDER BY filter_id", [first, first + n - 1]).fetchnumpy()
        W = np.stack([np.asarray(res[f"w{i}"], dtype=np.float32) for i in range(9)], axis=1)
        if len(W) != n:  # filter ids of a damaged shard
            raise StoreDamaged("shards", f"layer {layer_id}'s first {n} filters read back as {len(W)} rows")
        return layer, W.reshape(n, 3, 3)

    @takes(PcaRequest)
    def pca(self, req: PcaRequest) -> dict:
        """The PCA of a selection's peak-scaled filters, from its layers' moments (no filter read)."""
        sel = self.select(req.selection)
        b = self.selection_basis(sel)
        return {
            "store_version": self.version,
            "n_filters": b.n_filters,
            "mean": b.mean.reshape(3, 3).tolist(),
            "components": [c.reshape(3, 3).tolist() for c in b.components],
            "explained_variance": b.explained_variance.tolist(),
            "explained_variance_ratio": b.explained_variance_ratio.tolist(),
            # scikit-learn's get_covariance() with all 9 components: the sample covariance (9, 9)
            "covariance": (b.components.T @ np.diag(b.explained_variance) @ b.components).tolist(),
            "method": "layer_moments",  # pooled from the stored per-layer moments: no filter read
        }

    @takes(HistogramsRequest)
    def histograms(self, req: HistogramsRequest) -> dict:
        """Per group and component, the coefficients' histogram over the basis range."""
        group_by, basis = req.group_by, req.basis
        h = self.group_histograms(req.selection, group_by, req.bins, basis, max_cells=MAX_RESPONSE_CELLS)
        edges = np.linspace(h.lo, h.hi, h.bins + 1).tolist()
        return {
            "store_version": self.version,
            "group_by": group_by,
            "range": [h.lo, h.hi],
            "bins": h.bins,
            "edges": edges,
            "basis": {"kind": basis, "version": h.basis.version if basis == "global" else None},
            "groups": [{"label": lab, "n_filters": int(n), "n_outside": int(o.sum()), "counts": c.tolist()}
                       for lab, n, o, c in zip(h.selection.labels, h.selection.n_filters, h.outside, h.counts)],
            "method": h.method,
        }

    @takes(Density2dRequest)
    def density2d(self, req: Density2dRequest) -> dict:
        """2-D histogram of two components' coefficients (the paper's scatter density).

        ``components`` (i, j) are the coefficients on the first and second axis of ``counts``;
        ``range``: the ends of both axes, in either order, default the basis range (the notebook:
        (-3.3, 3.3)); as numpy's, an empty range is widened by 0.5 each side.

        Returns
        -------
        dict with ``counts`` (bins, bins) int: np.histogram2d(c_i, c_j, bins, [value_range] * 2),
        rows indexed by c_i; ``edges`` (bins + 1,); ``range``; ``n_filters``; ``basis``.
        """
        components, bins, basis, value_range = tuple(req.components), req.bins, req.basis, req.range
        sel = self.select(req.selection)
        if len(sel.labels) == 0:
            raise EmptySelectionError("no filters match the selection")
        groups = self.groups_of(sel)
        paths = self.shard_paths()
        if basis == "global":
            b = self.global_basis()
            lo, hi = b.range_min, b.range_max
        else:
            b = self.selection_basis(sel)
            lo, hi, _ = scan_range(paths, groups, b, held=self.held_shards())
        if value_range is not None:
            lo, hi = float(min(value_range)), float(max(value_range))
        lo, hi = histogram_range(lo, hi)  # numpy widens an empty range; the response says so
        width = (hi - lo) / bins
        if not (np.isfinite(width) and width > 0 and lo + width > lo and hi - width < hi):
            raise SelectionError(f"range [{lo!r}, {hi!r}] cannot hold {bins} bins of a float64 width: "
                                 "give a range of ordinary numbers")
        counts, method = None, self.scanner.method
        stored = self.stored() if basis == "global" else None
        if stored is not None and stored.basis_version == b.version and (bins, (lo, hi), tuple(components)) \
                == (DENSITY_BINS, DENSITY_RANGE, DENSITY_COMPONENTS) \
                and (dense := stored.density_sum(sel.layer_ids)) is not None:
            counts, rest = dense
            method = "unit_histograms"
            if rest.any():  # the layers of models too small to be stored: scanned
                small = LayerGroups.of(sel.layer_ids[rest], np.zeros(int(rest.sum()), dtype=np.int64), 1,
                                       self.snapshot.max_layer_id(self.cur))
                counts = counts + scan_histogram2d(paths, small, b, lo, hi, bins, tuple(components),
                                                   held=self.held_shards())
        if counts is None:
            counts, method = scan_histogram2d(paths, groups, b, lo, hi, bins, tuple(components),
                                              held=self.held_shards()), self.scanner.method
        n = int(sel.n_filters.sum())
        return {"store_version": self.version, "components": list(components), "range": [lo, hi], "bins": bins,
                "edges": np.linspace(lo, hi, bins + 1).tolist(), "n_filters": n, "n_outside": n - int(counts.sum()),
                "counts": counts.tolist(), "basis": {"kind": basis, "version": b.version if basis == "global" else None},
                "method": method}

    @takes(DegenerateRequest)
    def degenerate(self, req: DegenerateRequest) -> dict:
        """Layers over any of the thresholds: sparsity > sparsity_gt, variance_entropy_norm <
        entropy_norm_lt (redundant), variance_entropy_norm > entropy_norm_gt (random-like; None: off)."""
        sparsity_gt, entropy_norm_lt, entropy_norm_gt = req.sparsity_gt, req.entropy_norm_lt, req.entropy_norm_gt
        limit, offset = req.limit, req.offset
        cond, params = condition(self.cur, req.selection, self.version)
        flags = ("(sparsity > ?) AS sparse, (variance_entropy_norm < ?) AS low_entropy, "
                 "coalesce(variance_entropy_norm > ?, false) AS random_like")
        fparams = [sparsity_gt, entropy_norm_lt, entropy_norm_gt if entropy_norm_gt is not None else float("inf")]
        base = (f"SELECT layer_id, model_id, model, conv_depth, conv_depth_norm, depth_bin, filter_id_first, "
                f"filter_id_last, n_filters, in_channels, out_channels, groups, sparsity, variance_entropy, "
                f"variance_entropy_norm, variance_entropy_clean, orthogonality, {flags} "
                f"FROM {self.layers} WHERE ({cond})")
        q = f"SELECT * FROM ({base}) WHERE sparse OR low_entropy OR random_like"
        total = self.cur.execute(f"SELECT count(*) FROM ({q})", fparams + params).fetchone()[0]
        cur = self.cur.execute(f"{q} ORDER BY layer_id LIMIT ? OFFSET ?", fparams + params + [limit, offset])
        cols = [d[0] for d in cur.description]
        return {"store_version": self.version, "thresholds": req.thresholds,
                "total": total, "limit": limit, "offset": offset,
                "layers": [dict(zip(cols, r)) for r in cur.fetchall()]}

    @takes(SimilarRequest)
    def similar(self, req: SimilarRequest) -> dict:
        """The k models nearest to model_id's filter distribution (global basis, default bins),
        among the models of the selection ``where`` (default: all), with their task and visual
        category. LookupError: no such model; EmptySelectionError: no other model in ``where``."""
        model_id, k, metric, weights, where = req.model_id, req.k, req.metric, req.weights, req.selection
        target = self.group_histograms({"model_id": model_id}, "model_id", DEFAULT_BINS, "global") \
            if self.cur.execute(f"SELECT 1 FROM models_at({self.version}) WHERE model_id = ?", [model_id]).fetchone() else None
        if target is None or not target.selection.labels:
            raise LookupError(model_id)
        h = self.group_histograms(where, "model_id", DEFAULT_BINS, "global")  # the candidates
        labels = h.selection.labels
        w = component_weights(weights, h.basis.explained_variance_ratio)
        d = distances_to(target.counts[0], h.counts, w, metric, h.bin_width)
        order = [j for j in np.argsort(d, kind="stable") if labels[j] != model_id][:k]
        if not order and k > 0:
            raise EmptySelectionError(f"no model but {model_id} in the selection")
        meta = {r[0]: r[1:] for r in self.cur.execute(f"SELECT model_id, model, task, visual_category "
                                                      f"FROM models_at({self.version})").fetchall()}
        return {"store_version": self.version, "basis": {"kind": "global", "version": h.basis.version},
                "model_id": model_id, "metric": metric, "weights": weights, "method": h.method,
                "similar": [{"model_id": labels[j], "model": meta[labels[j]][0], "task": meta[labels[j]][1],
                             "visual_category": meta[labels[j]][2], "distance": float(d[j])} for j in order]}

    @takes(ModelMetricsRequest)
    def model_metrics(self, req: ModelMetricsRequest) -> dict:
        """Per model (and depth decile, ``by``): n_layers, n_filters and its selected layers'
        quality metrics as weighted means (SPEC 14; the math in ``studies.py``), in model_id order.

        Returns
        -------
        dict with ``columns`` and ``rows`` (one list per row: model_id, model, [depth_decile],
        then ``metrics``), ``metrics``, ``layers``, ``by``, ``store_version``.
        """
        cond, params = condition(self.cur, req.selection, self.version)
        t = model_metrics(self.cur, self.layers, cond, params, req.layers, req.by)
        return {"store_version": self.version, "layers": req.layers, "by": req.by, "metrics": list(MODEL_METRICS),
                "columns": list(t.columns), "rows": [list(map(_py, r)) for r in t.itertuples(index=False, name=None)]}

    @takes(CorrelationRequest)
    def correlation(self, req: CorrelationRequest, max_groups: int | None = None) -> dict:
        """The correlation of ``x`` with ``y`` over the models of each group (SPEC 14; the math in
        ``stats/correlation.py``): per model, x and y are model metrics over its selected layers
        (``layers``) or its model properties; models lacking either are left out.

        Returns
        -------
        dict with ``groups`` (one per group, natural order: group, n, statistic, p_value, ci_low,
        ci_high), ``points`` (model, group, x, y of every model used), x, y, method, layers,
        group_by, resamples, seed, store_version.
        """
        properties = properties_at(self.cur, self.version)
        x, y = check_variable(req.x, properties), check_variable(req.y, properties)
        group_by = req.group_by
        check_group_by(group_by, properties)
        cond, params = condition(self.cur, req.selection, self.version)
        # a layer field (depth_decile, depth_bin, ...) groups a model's metrics per value of it
        by = group_by if group_by in LAYER_GROUP_FIELDS else None
        own = [v for v in dict.fromkeys((x, y, group_by)) if v is not None and v not in MODEL_METRICS
               and v not in (by, "model", "model_id")]  # those are model_metrics' own columns
        t = model_metrics(self.cur, self.layers, cond, params, req.layers, by, extra=tuple(own))
        if t.empty:
            raise EmptySelectionError("no layers match the selection" + ("" if req.layers == "all" else " (first layers)"))
        labels = [None if v is None or (isinstance(v, float) and np.isnan(v)) else v  # a null: a group of its own
                  for v in t[group_by].tolist()] if group_by else ["all"] * len(t)
        order = natural_order(list(dict.fromkeys(labels)))
        if len(order) > (MAX_GROUPS if max_groups is None else max_groups):
            raise SelectionError(f"group_by {group_by} gives {len(order)} groups; at most {MAX_GROUPS}: narrow the "
                                 "selection with where")
        xs, ys = (t[v].to_numpy(np.float64) if v in MODEL_METRICS else
                  pd.to_numeric(t[v].astype(object), errors="coerce").astype(np.float64).to_numpy() for v in (x, y))
        used = np.isfinite(xs) & np.isfinite(ys)
        members = [np.flatnonzero(used & np.array([lab == g or (lab is None and g is None) for lab in labels]))
                   for g in order]
        if req.method == "kendall":
            pairs = RESAMPLES * sum(len(m) * (len(m) - 1) // 2 for m in members)
            if pairs > MAX_KENDALL_PAIRS:
                raise SelectionError(f"a kendall bootstrap over these groups compares {pairs:,} pairs of models, over "
                                     f"the limit of {MAX_KENDALL_PAIRS:,}: narrow the selection with where, group the "
                                     "models, or use spearman")
        groups = []
        for g, rows in zip(order, members):
            groups.append({"group": g, **correlation(xs[rows], ys[rows], req.method)})
        keep = np.flatnonzero(used)
        return {"store_version": self.version, "x": x, "y": y, "method": req.method, "layers": req.layers,
                "group_by": group_by, "resamples": RESAMPLES, "seed": SEED, "groups": groups,
                "points": {"model": t["model"].iloc[keep].tolist(), "group": [labels[i] for i in keep],
                           "x": xs[keep].tolist(), "y": ys[keep].tolist()}}

    def figure_model_metrics(self, req: ModelMetricsRequest, fields: dict[str, str]) -> dict:
        """``model_metrics`` with each row's values of some model fields: the cohort_metric
        figure's data (plots.py). ``fields``: parameter name -> field (e.g. {"group_by": "robust",
        "series": "training_dataset"}), each a built-in model field or a boolean or text property of
        this version (InvalidValue or UnknownName naming the parameter otherwise: a layer field,
        a numeric property, an unknown name).

        Returns
        -------
        The dict of ``model_metrics``, its ``columns`` and ``rows`` followed by the fields' (a field
        named twice, or model / model_id, once); ``fields`` as given. EmptySelectionError: no layer.
        """
        properties = properties_at(self.cur, self.version)
        for parameter, name in fields.items():
            check_group_by(name, properties, parameter=parameter)
            if name in LAYER_GROUP_FIELDS:
                raise InvalidValue(f"{parameter} {name!r} is a layer field; {parameter} takes a model field (a "
                                   "built-in one, or a boolean or text property)")
        cond, params = condition(self.cur, req.selection, self.version)
        extra = tuple(f for f in dict.fromkeys(fields.values()) if f not in ("model", "model_id"))
        t = model_metrics(self.cur, self.layers, cond, params, req.layers, req.by, extra=extra)
        if t.empty:
            raise EmptySelectionError("no layers match the selection" + ("" if req.layers == "all" else " (first layers)"))
        return {"store_version": self.version, "layers": req.layers, "by": req.by, "metrics": list(MODEL_METRICS),
                "fields": dict(fields), "columns": list(t.columns),
                "rows": [list(map(_py, r)) for r in t.itertuples(index=False, name=None)]}


def _py(v):
    """A table's value as JSON takes it: a numpy scalar as Python's, NaN (unknown) as None."""
    v = v.item() if isinstance(v, np.generic) else v
    return None if isinstance(v, float) and not np.isfinite(v) else v
