"""A model checked against the population (SPEC 15): how its filters compare with those of the
store's models, depth decile by depth decile, without writing anything.

The population is the layers (and models) of the store version read, within ``where``. With the
store's global basis (components C, mean mu, range [lo, hi]), the default bins B = DEFAULT_BINS and
the explained-variance weights w (docs/method.md#divergence):

- A checked layer's filters x (n, 9) are projected as every scan projects them
  (``stats/histogram.coefficients_of``: c = C (x / max|x|) - C mu); a coefficient outside [lo, hi]
  is counted in the nearest edge bin (clipped, and the number reported: ``clipped``), so its 9
  histograms h_l (9, B) hold all its filters (the store's own layers hold no such values: a
  basis's range covers the filters it was fitted on; those projected later drop theirs, as the
  analyses do, ``population.n_outside``).
- ``kl_to_population`` of a layer l of depth decile d = D(h_l, H_d), H_d the pooled (summed)
  histograms of the population's layers of decile d, D the symmetric KL of 6.2 (float32-epsilon
  densities, weighted by w).
- The percentile of a value v of a metric among the population's layers of the same decile:
  100 |{layers with metric <= v}| / |{layers with the metric known}|; for kl_to_population, among
  the population layers' own divergences D(h_j, H_d(j)) from their decile's pooled histograms. A
  layer is flagged ``unusual`` when its kl_to_population is at or above the 95th percentile of those
  (np.percentile, linear) of at least MIN_UNUSUAL_LAYERS layers (none is flagged in a decile of
  fewer: ``kl_unusual_at`` null), and sparse / low_entropy / random_like by the degenerate thresholds.
- The model: its model metrics (SPEC 14, ``studies.metrics_of``) with their percentiles among the
  population's models; ``divergence`` = D(sum of its layers' h_l, H), H the whole population's
  pooled histograms (its percentile among the population models' own D(H_m, H)); and the k models
  m nearest by D(model, H_m).

Layer metrics are those an ingest stores (the ingest computes them with the same code:
``cnnfilterdb.ingest.model_files.model_layers``). Bounded work: the population's per-layer
histograms are read in chunks of CHUNK layers from the stored histograms (a scan where a store has
none), the checked model's once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .analysis import Analysis
from .catalog import store_id
from .checked import CheckedLayer, CheckedModel
from .requests import MODEL_METRICS, CheckRequest
from .scan import LayerGroups, kernel_basis
from .selection import EmptySelectionError, condition, field_sql, natural_order
from .stats.divergence import DEFAULT_BINS, component_weights, distances_to, metric_values, probabilities
from .stats.histogram import coefficients_of
from .studies import metrics_of

LAYER_METRICS = ("sparsity", "variance_entropy", "variance_entropy_norm", "variance_entropy_clean", "orthogonality")
KL = "kl_to_population"
UNUSUAL_PERCENTILE = 95.0   # a layer whose kl_to_population is at or above this percentile of its decile's is unusual
MIN_UNUSUAL_LAYERS = 20     # ... among at least this many population layers (the 95th percentile of fewer is not one)
QUALITY_BINS = 40           # per axis of the population's quality density (the check figure's background)
CHUNK = 4096                # population layers whose histograms are held at once
METRIC, WEIGHTS = "kl_sym", "explained_variance"
# The metadata of a nearest model, as GET /v1/models names it.
NEAREST_FIELDS = ("model_id", "model", "name", "task", "visual_category", "training_dataset", "pretraining_dataset",
                  "producer")
FLAGS = ("sparse", "low_entropy", "random_like", "unusual")


class Ranks:
    """Values of a population, sorted once, for the percentile of any value among them:
    100 |{values <= v}| / |{values known}| (NaN values are unknown)."""

    def __init__(self, values: np.ndarray):
        values = np.asarray(values, dtype=np.float64)
        self.sorted = np.sort(values[np.isfinite(values)])

    def percentile(self, v: float | None) -> float | None:
        """None: v unknown, or no value known."""
        if v is None or not np.isfinite(v) or len(self.sorted) == 0:
            return None
        return float(100.0 * np.searchsorted(self.sorted, v, side="right") / len(self.sorted))


def _float(v) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


@dataclass
class Population:
    """The population's layers (layer_id order) as a check compares with them."""
    layers: pd.DataFrame          # n_filters, out_channels and LAYER_METRICS, one row per layer (NaN: unknown)
    decile_names: list[str]       # its depth deciles (sorted; ``natural_order`` for display)
    decile_of: np.ndarray         # (L,) each layer's index in decile_names, -1 without one
    models: np.ndarray            # (M,) its model ids, ascending
    model_of: np.ndarray          # (L,) each layer's index in models
    pooled_decile: np.ndarray     # (D, 9, bins) int64: the counts of each decile's layers
    pooled_model: np.ndarray      # (M, 9, bins) int64: of each model's layers
    layer_kl: np.ndarray          # (L,) each layer's D from its decile's pool (NaN without a decile)
    n_outside: int                # its coefficients outside the range (not in the counts)

    def decile(self, d: str | None) -> tuple[int, dict | None, float | None]:
        """Decile ``d``'s population layers, their Ranks per metric and kl, and its unusual threshold."""
        if d not in self.decile_names:
            return 0, None, None
        same = self.decile_of == self.decile_names.index(d)
        ranks = {k: Ranks(self.layers[k].to_numpy(np.float64)[same]) for k in LAYER_METRICS}
        ranks[KL] = Ranks(self.layer_kl[same])
        return int(same.sum()), ranks, _unusual_at(self.layer_kl[same])


def population(an: Analysis, req: CheckRequest, b, w: np.ndarray, width: float) -> Population:
    """The population of ``an``'s version within ``req.where``: its layers, deciles and models,
    their counts pooled per decile and per model (CHUNK layers at a time), each layer's divergence
    from its decile's pool. EmptySelectionError: no layer."""
    cond, params = condition(an.cur, req.selection, an.version)
    columns = ", ".join(["layer_id", "model_id", f"{field_sql('depth_decile')} AS depth_decile", "n_filters",
                         "out_channels", *LAYER_METRICS])
    t = an.cur.execute(f"SELECT {columns} FROM {an.layers} WHERE {cond} ORDER BY layer_id", params).fetchnumpy()
    ids = np.asarray(t["layer_id"], dtype=np.int64)
    if len(ids) == 0:
        raise EmptySelectionError("the population holds no layer" + (f" (where: {req.selection})" if req.selection else ""))
    layers = pd.DataFrame({k: _numbers(t[k]) for k in ("n_filters", "out_channels", *LAYER_METRICS)})
    deciles = [None if v is None else str(v) for v in _texts(t["depth_decile"])]
    names = sorted({d for d in deciles if d is not None})
    decile_of = np.array([names.index(d) if d is not None else -1 for d in deciles], dtype=np.int64)
    models, model_of = np.unique(np.asarray(t["model_id"], dtype=np.int64), return_inverse=True)
    n, bins = len(ids), DEFAULT_BINS

    counts_of, outside = _population_counts(an, b, ids)
    pooled_decile = np.zeros((len(names), 9, bins), dtype=np.int64)
    pooled_model = np.zeros((len(models), 9, bins), dtype=np.int64)
    for s in range(0, n, CHUNK):
        sl = slice(s, min(s + CHUNK, n))
        c = counts_of(sl)
        has = decile_of[sl] >= 0
        np.add.at(pooled_decile, decile_of[sl][has], c[has])
        np.add.at(pooled_model, model_of[sl], c)
    P_decile = probabilities(pooled_decile, width)
    layer_kl = np.full(n, np.nan)
    for s in range(0, n, CHUNK):
        sl = slice(s, min(s + CHUNK, n))
        has = np.flatnonzero(decile_of[sl] >= 0)
        if len(has):
            P = probabilities(counts_of(sl)[has], width)
            layer_kl[s + has] = metric_values(P, P_decile[decile_of[sl][has]], METRIC, width) @ w
    return Population(layers, names, decile_of, models, model_of, pooled_decile, pooled_model, layer_kl, outside)


def check(an: Analysis, req: CheckRequest, model: CheckedModel) -> dict:
    """The report of ``model`` against the population of ``an``'s version within ``req.where``
    (module docstring); JSON-able, the body of POST /v1/check. EmptySelectionError: the
    population holds no layer; SelectionError: the store has no basis."""
    t0 = time.perf_counter()
    cur, version = an.cur, an.version
    b = an.global_basis()
    lo, hi, bins = float(b.range_min), float(b.range_max), DEFAULT_BINS
    width = (hi - lo) / bins
    w = component_weights(WEIGHTS, b.explained_variance_ratio)
    pop = population(an, req, b, w, width)

    # -- the checked model's layers: metrics, decile, histograms (clipped into the range)
    C, shift = kernel_basis(b)
    rows, own_counts, clipped_total = [], np.zeros((9, bins), dtype=np.int64), 0
    deciles = {d: pop.decile(d) for d in pop.decile_names}
    for layer, decile in zip(model.layers, _deciles(cur, model.layers)):
        coef = coefficients_of(tuple(layer.columns), C, shift)
        clipped = int(np.count_nonzero((coef < lo) | (coef > hi)))
        np.clip(coef, lo, hi, out=coef)
        h = np.stack([np.histogram(coef[i], bins=bins, range=(lo, hi))[0] for i in range(9)]).astype(np.int64)
        own_counts += h
        clipped_total += clipped
        n_same, ranks, unusual_at = deciles.get(decile, (0, None, None))
        kl = float(distances_to(h, pop.pooled_decile[pop.decile_names.index(decile)][None], w, METRIC, width)[0]) \
            if n_same else None
        m = layer.metrics
        values = {**{k: m[k] for k in LAYER_METRICS}, KL: kl}
        percentiles = {k: ranks[k].percentile(v) if ranks else None for k, v in values.items()}
        rows.append({"layer": len(rows), "name": layer.name, "conv_depth": layer.conv_depth,
                     "conv_depth_norm": layer.conv_depth_norm, "depth_decile": decile, "n_filters": layer.n_filters,
                     "in_channels": layer.in_channels, "out_channels": layer.out_channels, "groups": layer.groups,
                     **{k: _float(m[k]) for k in LAYER_METRICS}, KL: kl,
                     "kl_unusual_at": unusual_at, "population_layers": n_same,
                     "clipped": clipped, "percentiles": percentiles, "flags": _flags(m, kl, unusual_at, req)})

    # -- the model: metrics and their percentiles among the population's models; divergences
    own_layers = pd.DataFrame({k: np.array([np.nan if r[k] is None else r[k] for r in rows], dtype=np.float64)
                               for k in ("n_filters", "out_channels", *LAYER_METRICS)})
    own = metrics_of(own_layers, np.zeros(len(rows), dtype=np.int64), 1).iloc[0]
    population_models = metrics_of(pop.layers, pop.model_of, len(pop.models))
    pooled = pop.pooled_model.sum(axis=0)  # the whole population's
    model_divergence = float(distances_to(own_counts, pooled[None], w, METRIC, width)[0])
    population_divergence = distances_to(pooled, pop.pooled_model, w, METRIC, width)
    to_models = distances_to(own_counts, pop.pooled_model, w, METRIC, width)
    percentiles = {k: Ranks(population_models[k].to_numpy(np.float64)).percentile(own[k]) for k in MODEL_METRICS}
    percentiles["divergence"] = Ranks(population_divergence).percentile(model_divergence)
    nearest = np.argsort(to_models, kind="stable")[:req.k]
    meta = _model_meta(cur, version, pop.models[nearest])
    return {
        "store_id": store_id(cur),
        "store_version": version,
        "basis_version": b.version,
        "population": {"where": req.selection, "n_models": int(len(pop.models)),
                       "n_sample_models": _samples(cur, version, pop.models), "n_layers": int(len(pop.layers)),
                       "n_filters": int(pop.layers["n_filters"].sum()), "n_outside": int(pop.n_outside),
                       "deciles": _decile_summary(pop.decile_names, pop.decile_of, pop.layer_kl),
                       "quality_density": _quality_density(pop.layers)},
        "parameters": {"metric": METRIC, "weights": WEIGHTS, "bins": bins, "range": [lo, hi],
                       "unusual_percentile": UNUSUAL_PERCENTILE, "min_unusual_layers": MIN_UNUSUAL_LAYERS, "k": req.k,
                       "thresholds": req.thresholds},
        "model": {"name": req.name or model.name.rsplit(".", 1)[0], "file": model.name, "kind": model.kind,
                  "sha256": model.sha256, "bytes": model.bytes, "producer": model.producer, "op_set": model.op_set,
                  **req.described,
                  **{k: (int(own[k]) if k in ("n_layers", "n_filters") else _float(own[k])) for k in MODEL_METRICS},
                  "divergence": model_divergence, "percentiles": percentiles},
        "layers": rows,
        "nearest_models": [{**meta[int(pop.models[j])], "divergence": float(to_models[j])} for j in nearest],
        "clipped": int(clipped_total),
        "elapsed_ms": round((time.perf_counter() - t0) * 1000, 3),
    }


def _flags(m: dict, kl: float | None, unusual_at: float | None, req: CheckRequest) -> list[str]:
    """A checked layer's flags (FLAGS), in that order: the degenerate thresholds of ``req`` on its
    metrics ``m``, and unusual (kl_to_population at or above its decile's ``unusual_at``)."""
    e = m["variance_entropy_norm"]
    return [f for f, on in (
        ("sparse", m["sparsity"] is not None and m["sparsity"] > req.sparsity_gt),
        ("low_entropy", e is not None and e < req.entropy_norm_lt),
        ("random_like", req.entropy_norm_gt is not None and e is not None and e > req.entropy_norm_gt),
        ("unusual", kl is not None and unusual_at is not None and kl >= unusual_at)) if on]


def _decile_summary(names: list[str], decile_of: np.ndarray, layer_kl: np.ndarray) -> list[dict]:
    """Per depth decile of the population (natural order: "0" first): its layers and the
    quartiles and UNUSUAL_PERCENTILE of their kl_to_population (np.percentile, linear)."""
    out = []
    for d in natural_order(names):
        kl = layer_kl[decile_of == names.index(d)]
        q1, median, q3 = np.percentile(kl, [25, 50, 75])
        out.append({"depth_decile": d, "n_layers": int(len(kl)), "kl_q1": float(q1), "kl_median": float(median),
                    "kl_q3": float(q3), "kl_unusual_at": _unusual_at(kl)})
    return out


def _unusual_at(kl: np.ndarray) -> float | None:
    """The UNUSUAL_PERCENTILE of a decile's population layers' kl_to_population (np.percentile,
    linear); None below MIN_UNUSUAL_LAYERS layers: no layer is flagged unusual there."""
    return float(np.percentile(kl, UNUSUAL_PERCENTILE)) if len(kl) >= MIN_UNUSUAL_LAYERS else None


def _quality_density(layers: pd.DataFrame) -> dict:
    """The population's layers as a 2-D histogram of sparsity (x, QUALITY_BINS over [0, 1]) and
    variance_entropy_norm (y, QUALITY_BINS over [0, max(1.2, the largest)]): the check figure's
    background, a few KB whatever the store's size. Layers without either value are left out."""
    x = layers["sparsity"].to_numpy(np.float64)
    y = layers["variance_entropy_norm"].to_numpy(np.float64)
    known = np.isfinite(x) & np.isfinite(y)
    top = max(1.2, float(y[known].max())) if known.any() else 1.2
    counts, xe, ye = np.histogram2d(x[known], y[known], bins=QUALITY_BINS, range=[[0.0, 1.0], [0.0, top]])
    return {"sparsity_edges": xe.tolist(), "entropy_norm_edges": ye.tolist(), "counts": counts.astype(np.int64).tolist()}


def _population_counts(an: Analysis, b, ids: np.ndarray):
    """(counts_of(slice) -> (len, 9, DEFAULT_BINS) int64 of those population layers, their
    coefficients outside the range in all): the stored per-layer histograms, or one scan."""
    stored = an.stored()
    if stored is not None and stored.basis_version == b.version and stored.bins == DEFAULT_BINS:
        def counts_of(sl: slice) -> np.ndarray:
            part = ids[sl]
            return stored.group_sums(part, np.arange(len(part)), len(part))

        return counts_of, int(stored.outside_sums(ids, np.zeros(len(ids), dtype=np.int64), 1).sum())
    groups = LayerGroups.of(ids, np.arange(len(ids)), len(ids), an.snapshot.max_layer_id(an.cur))
    counts, outside = an.scanner.histograms(groups, b, b.range_min, b.range_max, DEFAULT_BINS)
    return (lambda sl: counts[sl]), int(outside.sum())


def _deciles(cur, layers: list[CheckedLayer]) -> list[str | None]:
    """Each layer's depth_decile, by the catalog's own macro (SPEC 14: the one definition)."""
    if not layers:
        return []
    row = cur.execute("SELECT [depth_decile(c[i], x[i]) FOR i IN range(1, len(c) + 1)] "
                      "FROM (SELECT ?::INTEGER[] AS c, ?::DOUBLE[] AS x)",
                      [[int(l.conv_depth) for l in layers], [float(l.conv_depth_norm) for l in layers]]).fetchone()
    return list(row[0])


def _samples(cur, version: int, model_ids: np.ndarray) -> int:
    """How many of the models are the synthetic sample's (``cnnfilterdb demo``): a report says so."""
    return int(cur.execute(f"SELECT count(*) FROM models_at({int(version)}) WHERE sample "
                           "AND list_contains(?::INTEGER[], model_id)", [[int(i) for i in model_ids]]).fetchone()[0])


def _model_meta(cur, version: int, model_ids: np.ndarray) -> dict[int, dict]:
    if not len(model_ids):
        return {}
    rows = cur.execute(f"SELECT {', '.join(NEAREST_FIELDS)} FROM models_at({int(version)}) "
                       "WHERE list_contains(?::INTEGER[], model_id)", [[int(i) for i in model_ids]]).fetchall()
    return {r[0]: dict(zip(NEAREST_FIELDS, r)) for r in rows}


def _numbers(a) -> np.ndarray:
    if hasattr(a, "mask"):
        return np.where(a.mask, np.nan, a.data.astype(np.float64))
    return np.asarray(a, dtype=np.float64)


def _texts(a) -> list:
    if hasattr(a, "mask"):
        return [None if m else v for v, m in zip(a.data, a.mask)]
    return list(a)


__all__ = ["CheckedLayer", "CheckedModel", "check", "population", "Population", "Ranks", "LAYER_METRICS", "FLAGS"]
