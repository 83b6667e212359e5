"""The paper's statistics over any selection of the store (docs/method.md#statistics), for the service and the CLI.

Two ways to the per-group coefficient histograms, with identical results:

- ``layer_histograms``: with the global basis and the default bins, the per-layer histograms kept
  in the store (written at each ingest's commit) are summed per group: no filter is read.
- ``scan``: any other parameters (a selection's own basis, other bins) read the selected layers'
  filters once (twice for a selection's basis: its range first), see ``scan.py``.

The PCA basis of any selection comes from the per-layer moments of its layers, without a scan.
The histogram file is used only once its sha256 is the one the catalog recorded: a missing or
damaged store file raises StoreDamaged naming it (store.py), never a wrong answer from it.
"""
from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checks import check_bins, check_degenerate, check_density2d, check_similar
from .checksums import Checksums
from .limits import (
    DEFAULT_KDE_BINS,
)
from .scan import HeldShards, LayerGroups, ShardScanner, check_counts, scan_histogram2d, scan_range
from .selection import (
    GROUP_FIELDS,
    EmptySelectionError,
    Selection,
    SelectionError,
    check_group_by,
    check_values,
    echo,
    layers_at,
    natural_order,
    select,
    where_sql,
)
from .stats.basis import Basis, fit_basis
from .stats.divergence import DEFAULT_BINS, METRICS, WEIGHTS, component_weights, distances_to, divergence_matrix, drift
from .stats.histogram import histogram_range
from .stats.kde import histogram_quantiles, kde_from_histogram, silverman_bandwidth
from .stats.moments import pool
from .store import StoreDamaged, basis_version_at, check_version, current_version, file_problem, load_basis, unreadable

BASES = ("global", "selection")
# Bounds on what one query may build, so that memory stays bounded whatever the store: the
# histograms (groups x 9 x bins int64, 160 MB at most) and the d x d matrix of a divergence.
MAX_HISTOGRAM_CELLS = 20_000_000
MAX_GROUPS = 1_000
# The pairwise work of a divergence matrix, d (d - 1) / 2 pairs x 9 components x bins: about 1e8
# cells a second here for the slowest metrics, so at most a few seconds (a review's 973 groups x
# 2283 bins took 137 s and 1 GB); and the cells a /v1/histograms response may list (16 MB of JSON).
MAX_PAIR_CELLS = 400_000_000
MAX_RESPONSE_CELLS = 2_000_000
# The thresholds of a degenerate layer (docs/method.md#degenerate): sparsity above, normalized variance entropy
# below (redundant) or above (random-like).
DEGENERATE_THRESHOLDS = {"sparsity_gt": 0.5, "entropy_norm_lt": 0.5, "entropy_norm_gt": 1.0}

def check_divergence(group_by: str | None, metric: str, bins: int, weights: str, basis: str) -> None:
    """SelectionError naming the first bad parameter of a divergence; needs no store (the CLI's
    Spark commands check before starting Spark)."""
    if group_by is None:
        raise SelectionError("group_by is required")
    check_group_by(group_by)
    if metric not in METRICS:
        raise SelectionError(f"unknown metric {echo(metric)}; known: {list(METRICS)}")
    if weights not in WEIGHTS:
        raise SelectionError(f"unknown weights {echo(weights)}; known: {list(WEIGHTS)}")
    if basis not in BASES:
        raise SelectionError(f"unknown basis {echo(basis)}; known: {list(BASES)}")
    check_bins(bins)


@dataclass
class LayerHistograms:
    """The store's per-layer histograms (global basis, default bins) as prefix sums over the layers
    in layer_id order: the counts (9, bins) of layers layer_ids[i:j] sum to cumulative[j] - cumulative[i].
    """
    basis_version: int
    bins: int
    layer_ids: np.ndarray   # (n_layers,), ascending
    cumulative: np.ndarray  # (n_layers + 1, 9 * bins) int64; row 0 is zeros

    @classmethod
    def load(cls, cur, root: Path, store_version: int) -> LayerHistograms | None:
        """Read the store's file into memory and check it: its size and sha256 those the catalog
        recorded, its shape and layer ids those of the catalog; otherwise raise StoreDamaged naming
        it. Those of store version ``store_version``'s basis; None if it has none (fewer than 2 filters).
        Read, not mapped: the bytes checked
        are the bytes used, whatever happens to the file later (a mapping of a file truncated
        underneath ends the process with SIGBUS). 13 MB for 2e7 filters; ~0.5 GB for 1e5 layers."""
        row = cur.execute("SELECT basis_version, bins, n_layers, path, bytes, sha256 FROM _layer_histograms "
                          "WHERE basis_version = ?", [basis_version_at(cur, store_version)]).fetchone()
        if row is None:
            return None
        version, bins, n, rel, size, sha256 = row
        try:
            data = (Path(root) / rel).read_bytes()
        except OSError as e:
            raise unreadable(Path(root) / rel, e) from None
        if len(data) != size:
            raise StoreDamaged(rel, f"size differs ({len(data):,} bytes, the catalog recorded {size:,})")
        if (digest := hashlib.sha256(data).hexdigest()) != sha256:
            raise StoreDamaged(rel, f"checksum differs (sha256 {digest[:16]}..., the catalog recorded {sha256[:16]}...)")
        try:
            packed = np.load(io.BytesIO(data))
        except ValueError as e:
            raise StoreDamaged(rel, f"not a .npy array ({e})") from None
        del data
        if packed.dtype != np.int64 or packed.shape != (n + 1, 1 + 9 * bins):
            raise StoreDamaged(rel, f"{packed.dtype} {packed.shape}, the catalog has int64 {(n + 1, 1 + 9 * bins)}")
        # The ids from the catalog, which commits them with the file: column 0 of the file read
        # down its rows would touch every page of it. Its ends are checked against them.
        ids = np.asarray(cur.execute(f"SELECT layer_id FROM layers_at({int(store_version)}) ORDER BY layer_id").fetchnumpy()["layer_id"],
                         dtype=np.int64)
        if len(ids) != n or (n and (packed[1, 0] != ids[0] or packed[n, 0] != ids[-1])):
            raise StoreDamaged(rel, "its layer ids are not the catalog's")
        return cls(version, bins, ids, packed[:, 1:])

    def group_sums(self, layer_ids: np.ndarray, layer_group: np.ndarray, n_groups: int) -> np.ndarray:
        """Counts (n_groups, 9, bins) of the given layers (ascending ids), summed per group: exact,
        in integers. Each run of consecutive layers of one group costs one subtraction of rows."""
        pos = np.searchsorted(self.layer_ids, layer_ids)
        if len(pos) and (pos[-1] >= len(self.layer_ids) or not np.array_equal(self.layer_ids[pos], layer_ids)):
            raise LookupError("a selected layer has no stored histogram")
        cut = np.flatnonzero((np.diff(pos) != 1) | (np.diff(layer_group) != 0)) + 1
        first = np.concatenate([[0], cut]).astype(np.intp)
        last = np.concatenate([cut, [len(pos)]]).astype(np.intp) - 1
        runs = self.cumulative[pos[last] + 1] - self.cumulative[pos[first]]  # (n_runs, 9 * bins)
        out = np.zeros((n_groups, runs.shape[1]), dtype=np.int64)
        if len(runs):  # the runs sorted by group, then one reduction per group
            order = np.argsort(layer_group[first], kind="stable")
            g_sorted = layer_group[first][order]
            starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
            out[g_sorted[starts]] = np.add.reduceat(runs[order], starts, axis=0)
        return out.reshape(n_groups, 9, self.bins)


@dataclass
class LayerMoments:
    """Every layer's moments of its peak-scaled filters (count, mean, scatter), in layer_id order:
    the basis of any selection of layers is their pooled moments' PCA."""
    layer_ids: np.ndarray  # (n_layers,)
    n: np.ndarray          # (n_layers,)
    mean: np.ndarray       # (n_layers, 9)
    scatter: np.ndarray    # (n_layers, 9, 9)

    @classmethod
    def load(cls, cur) -> LayerMoments:
        t = cur.execute("SELECT layer_id, n, mean, scatter FROM _layer_moments ORDER BY layer_id").to_arrow_table()
        flat = lambda name, width: t.column(name).combine_chunks().flatten().to_numpy().reshape(-1, width)  # noqa: E731
        return cls(t.column("layer_id").to_numpy().astype(np.int64), t.column("n").to_numpy().astype(np.float64),
                   flat("mean", 9), flat("scatter", 81).reshape(-1, 9, 9))


class Snapshot:
    """One store version as a catalog holds it: its global basis, the shard files, the largest
    layer id, the per-layer moments and histograms. A version never changes once committed, so
    each is read on first use and then kept, by whoever holds the snapshot (the service: per
    catalog generation and version; the CLI: per command). Files are checked against the catalog
    when first used (shards: their size; histograms: their sha256): a missing or damaged one
    raises StoreDamaged naming it."""

    def __init__(self, root: Path, version: int):
        self.root = Path(root)
        self.version = int(version)
        self._cache: dict = {}

    @classmethod
    def at(cls, cur, root: Path, as_of: int | None = None) -> Snapshot:
        """The snapshot of store version ``as_of`` (default the current one); VersionError if the
        store does not hold it."""
        return cls(root, current_version(cur) if as_of is None else check_version(cur, as_of))

    def _get(self, key: str, load):
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    def basis(self, cur) -> Basis | None:
        return self._get("basis", lambda: load_basis(cur, self.version))

    def shard_paths(self, cur) -> list[Path]:
        """The shards in filter_id order, each there with the size the catalog recorded (a stat;
        their sha256 is ``cnnfilterdb verify``'s, their row groups' checksums the readers'), or
        StoreDamaged naming the first that is not."""
        def load():
            rows = cur.execute("SELECT path, bytes FROM _shards ORDER BY filter_id_first").fetchall()
            for rel, size in rows:
                if (problem := file_problem(self.root, rel, size)) is not None:
                    raise StoreDamaged(rel, problem)
            return [self.root / rel for rel, _ in rows]

        return self._get("shards", load)

    def held_shards(self, cur) -> HeldShards:
        """The shards, open for as long as this snapshot lives: every scan of a request (a
        selection's basis scans twice) reads the files its catalog names, even if `compact`
        unlinks them meanwhile (their space returns when the last snapshot holding them goes)."""
        return self._get("held", lambda: HeldShards(self.shard_paths(cur), self.checksums(cur)))

    def checksums(self, cur) -> Checksums | None:
        """The catalog's row group checksums of the shards (None: a catalog of a layout before 6)."""
        return self._get("checksums", lambda: Checksums.load(cur))

    def max_layer_id(self, cur) -> int:
        return self._get("max_layer_id", lambda: int(cur.execute(
            "SELECT coalesce(max(layer_id), 0) FROM _layers").fetchone()[0]))  # of every version: ids are never reused

    def layer_histograms(self, cur) -> LayerHistograms | None:
        return self._get("layer_histograms", lambda: LayerHistograms.load(cur, self.root, self.version))

    def layer_moments(self, cur) -> LayerMoments:
        return self._get("layer_moments", lambda: LayerMoments.load(cur))

    def prepare(self, cur) -> None:
        """Read everything now (the service, when a catalog generation opens), so that its first
        query costs what a repeated one does: it also runs DuckDB's first plan of the selection."""
        self.basis(cur), self.held_shards(cur), self.max_layer_id(cur), self.layer_histograms(cur)
        self.layer_moments(cur)
        select(cur, None, None, self.version)


@dataclass
class GroupHistograms:
    """The coefficient histograms of a selection's groups in one basis, on one grid."""

    selection: Selection
    basis: Basis
    lo: float
    hi: float
    bins: int
    counts: np.ndarray  # (groups, 9, bins)
    method: str

    @property
    def bin_width(self) -> float:
        return (self.hi - self.lo) / self.bins


class Analysis:
    """Queries on one read-only catalog connection (a cursor), with the shard files under ``root``."""

    def __init__(self, cur, root: Path, snapshot: Snapshot | None = None, use_layer_histograms: bool = True,
                 scanner=None):
        self.cur = cur
        # Runs the range and histogram scans of group_histograms: default the local shards
        # (scan.ShardScanner); cnnfilterdb.spark passes its SparkScanner.
        self._scanner = scanner
        self.snapshot = snapshot or Snapshot.at(cur, root)
        self.version = self.snapshot.version  # every query reads the store as of this version
        self.layers = layers_at(self.version)
        self.use_layer_histograms = use_layer_histograms  # False: always scan (tests, benchmarks)

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
        if basis not in BASES:
            raise SelectionError(f"unknown basis {basis!r}; known: {list(BASES)}")
        bins = check_bins(bins)
        sel = self.select(where, group_by)
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
            lh = self.snapshot.layer_histograms(self.cur) if self.use_layer_histograms else None
            if bins == DEFAULT_BINS and lh is not None and lh.bins == bins and lh.basis_version == b.version:
                counts = lh.group_sums(sel.layer_ids, sel.layer_group, len(sel.labels))
                return GroupHistograms(sel, b, lo, hi, bins, counts, "layer_histograms")
            groups = self.groups_of(sel)
        else:
            b = self.selection_basis(sel)
            groups = self.groups_of(sel)
            lo, hi, _ = self.scanner.range(groups, b)
            b.range_min, b.range_max = lo, hi
        counts = self.scanner.histograms(groups, b, lo, hi, bins)
        check_counts(counts, sel.n_filters)
        return GroupHistograms(sel, b, lo, hi, bins, counts, self.scanner.method)

    # -- the statistics --------------------------------------------------------------------------
    def divergence(self, group_by: str, where: dict | None = None, metric: str = "kl_sym",
                   bins: int = DEFAULT_BINS, weights: str = "explained_variance", basis: str = "global",
                   max_groups: int | None = None, max_pair_cells: int | None = None) -> dict:
        """The d x d matrix between the groups of a selection and its drift statistics (docs/method.md#divergence, #drift);
        at most ``max_groups`` groups and ``max_pair_cells`` cells of pairwise work (defaults:
        MAX_GROUPS, MAX_PAIR_CELLS)."""
        check_divergence(group_by, metric, bins, weights, basis)
        t0 = time.perf_counter()
        h = self.group_histograms(where, group_by, bins, basis, max_groups=MAX_GROUPS if max_groups is None else max_groups,
                                  max_pair_cells=MAX_PAIR_CELLS if max_pair_cells is None else max_pair_cells)
        w = component_weights(weights, h.basis.explained_variance_ratio)
        D = divergence_matrix(h.counts, w, metric, h.bin_width)
        sel = h.selection
        return {
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
            "method": h.method,
            "elapsed_ms": round((time.perf_counter() - t0) * 1000, 3),
        }

    def kde(self, where: dict | None = None, group_by: str | None = None, bins: int = DEFAULT_KDE_BINS,
            basis: str = "global", max_groups: int | None = None) -> dict:
        """Per group and component, the Gaussian KDE of the coefficients with Silverman's bandwidth
        (the ridge plots; the math in ``stats/kde.py``), from an exact histogram of ``bins`` bins
        over the basis range and the group's exact standard deviation (from its layers' moments).

        Returns
        -------
        dict with ``grid`` (bins,) the bin centres, and per group ``density`` (9, bins),
        ``bandwidth`` (9,), ``std`` (9,), ``quartiles`` (9, 2): the 25th and 75th percentiles.
        """
        bins = check_bins(bins, "kde")
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
            "groups": [{"label": lab, "n_filters": int(nf), "n_models": int(nm), "bandwidth": bw[g].tolist(),
                        "std": std[g].tolist(), "quartiles": q[g, :, 1:3].tolist(), "density": density[g].tolist()}
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
        s = np.einsum("ij,ljk,ik->li", C, moments.scatter[pos], C)     # (layers, 9)
        N = np.bincount(g, weights=n, minlength=d)
        mean = np.stack([np.bincount(g, weights=n * p[:, i], minlength=d) for i in range(9)], axis=1)
        mean /= np.maximum(N, 1)[:, None]
        dev = p - mean[g]
        scatter = np.stack([np.bincount(g, weights=s[:, i] + n * dev[:, i] ** 2, minlength=d) for i in range(9)], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.sqrt(np.maximum(scatter, 0) / (N - 1)[:, None])
        return np.where((N >= 2)[:, None], std, 0.0)

    def layer_quality(self, where: dict | None = None, color_by: str = "task", thresholds: dict | None = None) -> dict:
        """Every selected layer's quality metrics (docs/method.md#layer-quality) and its value of ``color_by``.

        Returns
        -------
        dict with ``layers``: columns layer_id, model_id, label, n_filters, sparsity,
        variance_entropy_norm (one list each, layer_id order); ``labels`` the distinct values of
        ``color_by`` in natural order with ``n_models`` each; ``thresholds`` the degenerate ones
        (DEGENERATE_THRESHOLDS, with those given in ``thresholds``).
        """
        bad = set(thresholds or {}) - set(DEGENERATE_THRESHOLDS)
        if bad:
            raise SelectionError(f"unknown threshold(s) {sorted(bad)}; known: {list(DEGENERATE_THRESHOLDS)}")
        if color_by not in GROUP_FIELDS:
            raise SelectionError(f"unknown color_by {color_by!r}; known: {GROUP_FIELDS}")
        cond, params = where_sql(where)
        check_values(self.cur, where, self.version)
        rows = self.cur.execute(f"SELECT layer_id, model_id, {color_by} AS label, n_filters, sparsity, "
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
                "layers": layers, "thresholds": {**DEGENERATE_THRESHOLDS, **(thresholds or {})}}

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

    def pca(self, where: dict | None = None) -> dict:
        sel = self.select(where)
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
        }

    def histograms(self, where: dict | None = None, group_by: str | None = None, bins: int = DEFAULT_BINS,
                   basis: str = "global") -> dict:
        h = self.group_histograms(where, group_by, bins, basis, max_cells=MAX_RESPONSE_CELLS)
        edges = np.linspace(h.lo, h.hi, h.bins + 1).tolist()
        return {
            "store_version": self.version,
            "group_by": group_by,
            "range": [h.lo, h.hi],
            "bins": h.bins,
            "edges": edges,
            "basis": {"kind": basis, "version": h.basis.version if basis == "global" else None},
            "groups": [{"label": lab, "n_filters": int(n), "counts": c.tolist()}
                       for lab, n, c in zip(h.selection.labels, h.selection.n_filters, h.counts)],
            "method": h.method,
        }

    def density2d(self, where: dict | None = None, components: tuple[int, int] = (0, 1), bins: int = DEFAULT_BINS,
                  basis: str = "global", value_range: tuple[float, float] | None = None) -> dict:
        """2-D histogram of two components' coefficients (the paper's scatter density).

        Parameters
        ----------
        components : (i, j), the coefficients on the first and second axis of ``counts``.
        bins : bins per axis.
        value_range : the ends of both axes, in either order; default the basis range (the
            notebook: (-3.3, 3.3)); as numpy's, an empty range is widened by 0.5 each side.

        Returns
        -------
        dict with ``counts`` (bins, bins) int: np.histogram2d(c_i, c_j, bins, [value_range] * 2),
        rows indexed by c_i; ``edges`` (bins + 1,); ``range``; ``n_filters``; ``basis``.
        """
        if basis not in BASES:
            raise SelectionError(f"unknown basis {basis!r}; known: {list(BASES)}")
        bins = check_bins(bins, "density2d")
        components, value_range = check_density2d(components, value_range)
        sel = self.select(where)
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
        counts = scan_histogram2d(paths, groups, b, lo, hi, bins, tuple(components), held=self.held_shards())
        return {"store_version": self.version, "components": list(components), "range": [lo, hi], "bins": bins,
                "edges": np.linspace(lo, hi, bins + 1).tolist(), "n_filters": int(sel.n_filters.sum()),
                "counts": counts.tolist(), "basis": {"kind": basis, "version": b.version if basis == "global" else None}}

    def degenerate(self, sparsity_gt: float = DEGENERATE_THRESHOLDS["sparsity_gt"],
                   entropy_norm_lt: float = DEGENERATE_THRESHOLDS["entropy_norm_lt"],
                   entropy_norm_gt: float | None = DEGENERATE_THRESHOLDS["entropy_norm_gt"],
                   where: dict | None = None, limit: int = 100, offset: int = 0) -> dict:
        """Layers over any of the thresholds: sparsity > sparsity_gt, variance_entropy_norm <
        entropy_norm_lt (redundant), variance_entropy_norm > entropy_norm_gt (random-like; None: off)."""
        sparsity_gt, entropy_norm_lt, entropy_norm_gt, limit, offset = check_degenerate(
            sparsity_gt, entropy_norm_lt, entropy_norm_gt, limit, offset)
        cond, params = where_sql(where)
        check_values(self.cur, where, self.version)
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
        return {"store_version": self.version, "thresholds": {"sparsity_gt": sparsity_gt, "entropy_norm_lt": entropy_norm_lt,
                               "entropy_norm_gt": entropy_norm_gt},
                "total": total, "limit": limit, "offset": offset,
                "layers": [dict(zip(cols, r)) for r in cur.fetchall()]}

    def similar(self, model_id: int, k: int = 5, metric: str = "kl_sym", weights: str = "explained_variance",
                where: dict | None = None) -> dict:
        """The k models nearest to model_id's filter distribution (global basis, default bins),
        among the models of the selection ``where`` (default: all), with their task and visual
        category. LookupError: no such model; EmptySelectionError: no other model in ``where``."""
        model_id, k = check_similar(model_id, k)
        if metric not in METRICS:
            raise SelectionError(f"unknown metric {echo(metric)}; known: {list(METRICS)}")
        if weights not in WEIGHTS:
            raise SelectionError(f"unknown weights {echo(weights)}; known: {list(WEIGHTS)}")
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
