"""The Python API's results (``cnnfilterdb.open`` and ``cnnfilterdb.Client`` return the same types).

Each result is built from the dict an ``Analysis`` method returns, which is also the JSON body of
the HTTP endpoint of the same request: the local API passes the engine's dict, the client the
endpoint's JSON, and both become the same attributes (numpy arrays, pandas DataFrames, plain
values). ``to_dict()`` gives the dict back; ``plot()`` draws the figure the service draws for the
same request (``cnnfilterdb/figures.py``), as a matplotlib ``Figure``.

Also here, shared by both: the listings' SQL (``models``, ``layers``), DuckDB rows to DataFrames,
and the reading of the ``.npy`` stream of filters (``FilterBatches``).
"""
from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from .properties import ident, properties_at
from .selection import EmptySelectionError, SelectionError, check_values, where_sql

__all__ = ["Result", "DivergenceResult", "PcaResult", "HistogramsResult", "KdeResult", "Density2dResult",
           "DegenerateResult", "SimilarResult", "CheckResult", "ModelMetricsResult", "CorrelationResult", "FilterBatches"]

# -- inputs ---------------------------------------------------------------------------------------


# -- listings: the same SQL for the local API and the client ------------------------------------

# The columns of GET /v1/models and of /v1/models/{id}/layers, in their order.
MODEL_COLUMNS = ["model_id", "model", "name", "task", "task_raw", "visual_category", "training_dataset",
                 "pretraining_dataset", "producer", "op_set", "depth", "paper", "accessible", "dataset_url",
                 "total_filters", "filter_share_3x3", "n_filters", "n_layers", "source", "sha256", "sample",
                 "version_added", "kernel_counts", "op_counts", "extra"]
LAYER_COLUMNS = ["layer_id", "model_id", "model", "conv_depth", "conv_depth_norm", "depth_bin", "filter_id_first",
                 "filter_id_last", "n_filters", "in_channels", "out_channels", "groups", "sparsity", "variance_entropy",
                 "variance_entropy_norm", "variance_entropy_clean", "orthogonality"]
# Their types, for results that arrive as JSON (degenerate layers).
LAYER_TYPES = ["INTEGER", "INTEGER", "VARCHAR", "INTEGER", "DOUBLE", "VARCHAR", "BIGINT", "BIGINT", "BIGINT",
               "INTEGER", "INTEGER", "INTEGER", "DOUBLE", "DOUBLE", "DOUBLE", "DOUBLE", "DOUBLE"]


def check_listing(cur, where: dict | None, version: int | None) -> dict[str, str]:
    """The model properties of the version (name -> type, properties.properties_at), once
    ``where`` is checked against them: an unknown field is an UnknownName, and a text value that
    no model of the version holds an EmptySelectionError with the nearest ones
    (selection.check_values), as GET /v1/models and the analyses say it: a typo is not an empty
    listing. ``cur``: a catalog cursor, or the Client's over /v1/sql (version None: the current
    views', asked for only when a where needs it)."""
    properties = properties_at(cur, version)
    if where:
        where_sql(where, properties)
        if version is None:
            version = int(cur.execute("SELECT coalesce(max(version), 0) FROM versions").fetchone()[0])
        check_values(cur, where, version, properties)
    return properties


def models_query(where: dict | None, version: int | None, properties: dict[str, str] | None) -> tuple[str, list]:
    """SELECT of the models ``where`` selects (unordered) and its parameters: MODEL_COLUMNS, then
    the version's ``properties`` (check_listing). A condition on a model's field selects on the
    model; one on a layer's (``conv_depth``, ``depth_bin``, ``layer_id``, ``conv_depth_norm``)
    keeps the models with a layer that meets it. ``properties`` None, without a where: every
    other column of the models (their properties, in the same order), so that the Client lists
    every model without asking the store for its properties first."""
    if properties is None and where:
        raise ValueError("models_query: a where is checked against the store's properties (check_listing)")
    where_sql(where, properties)  # every field and value checked first (SelectionError)
    at = "models" if version is None else f"models_at({int(version)})"
    layers = "layers_with_models" if version is None else f"layers_with_models_at({int(version)})"
    if properties is None:
        builtin = ", ".join(MODEL_COLUMNS)
        return f"SELECT {builtin}, * EXCLUDE ({builtin}) FROM {at} WHERE true", []
    model_level = set(MODEL_COLUMNS) | set(properties)
    own = {k: v for k, v in (where or {}).items() if k in model_level}
    rest = {k: v for k, v in (where or {}).items() if k not in model_level}
    cond, params = where_sql(own, properties)
    if rest:
        layer_cond, layer_params = where_sql(rest, properties)
        cond += f" AND model_id IN (SELECT model_id FROM {layers} WHERE {layer_cond})"
        params += layer_params
    columns = ", ".join([*MODEL_COLUMNS, *map(ident, properties)])
    return f"SELECT {columns} FROM {at} WHERE {cond}", params


def layers_query(where: dict | None, version: int | None, properties: dict[str, str]) -> tuple[str, list]:
    """SELECT of the layers ``where`` selects (unordered), with their model's name, and its parameters."""
    cond, params = where_sql(where, properties)
    at = "layers_with_models" if version is None else f"layers_with_models_at({int(version)})"
    return f"SELECT {', '.join(LAYER_COLUMNS)} FROM {at} WHERE {cond}", params


def finish_models(df: pd.DataFrame) -> pd.DataFrame:
    """``extra`` (JSON text in the catalog) parsed, as GET /v1/models gives it."""
    df["extra"] = pd.Series([json.loads(v) if isinstance(v, str) else v for v in df["extra"]],
                            index=df.index, dtype=object)
    for c in ("kernel_counts", "op_counts"):
        df[c] = pd.Series([v if v is not None else {} for v in df[c]], index=df.index, dtype=object)
    return df


# -- rows to DataFrames ---------------------------------------------------------------------------

_INTS = {"TINYINT": "int8", "SMALLINT": "int16", "INTEGER": "int32", "BIGINT": "int64", "UTINYINT": "uint8",
         "USMALLINT": "uint16", "UINTEGER": "uint32", "UBIGINT": "uint64"}
_FLOATS = {"FLOAT": "float32", "REAL": "float32", "DOUBLE": "float64"}


def _column(values: list, duck_type: str):
    t = duck_type.upper()
    missing = any(v is None for v in values)
    if t in _INTS:  # as DuckDB's own .df(): a nullable integer column only where there are nulls
        return pd.array(values, dtype=_INTS[t].capitalize().replace("Ui", "UI")) if missing \
            else np.array(values, dtype=_INTS[t])
    if t in _FLOATS or t.startswith("DECIMAL"):
        return np.array([np.nan if v is None else v for v in values], dtype=_FLOATS.get(t, "float64"))
    if t == "BOOLEAN":
        return pd.array(values, dtype="boolean") if missing else np.array(values, dtype=bool)
    if t.startswith("TIMESTAMP") or t == "DATE":
        return pd.to_datetime(pd.Series(values, dtype=object), utc="TIME ZONE" in t).astype(
            "datetime64[us, UTC]" if "TIME ZONE" in t else "datetime64[us]")
    if t == "VARCHAR":
        return values  # pandas' own text column
    return pd.array(values, dtype=object)  # maps, lists, structs, JSON text: Python objects


def frame(columns: list[str], types: list[str], rows: list) -> pd.DataFrame:
    """A DataFrame of ``rows`` (sequences, in ``columns`` order), each column typed from its
    DuckDB type as DuckDB's ``.df()`` types it: integers as int (nullable Int where there are
    nulls), floats as float (null: NaN), booleans, timestamps as datetime64, the rest as Python
    objects. The local API and the client both build their frames here, from DuckDB's rows or
    from the JSON of /v1/sql, so that the same rows give equal frames."""
    cols = list(zip(*rows)) if rows else [() for _ in columns]
    data = {}
    for name, t, values in zip(columns, types, cols):
        data[name] = _column(list(values), t)
    return pd.DataFrame(data, columns=list(columns))


def records(rows: list[dict], columns: list[str], types: list[str]) -> pd.DataFrame:
    """A DataFrame of dict rows (an endpoint's list of objects), typed as ``frame`` types."""
    return frame(columns, types, [[r.get(c) for c in columns] for r in rows])


def _floats(x, shape: tuple | None = None) -> np.ndarray:
    """Floats from the engine or JSON (numpy reads JSON's null, NaN's stand-in, as NaN)."""
    a = np.array(x, dtype=np.float64)
    return a.reshape(shape) if shape is not None else a


def _index(labels: list, name: str | None) -> pd.Index:
    return pd.Index(labels, name=name, dtype=object if any(v is None for v in labels) else None, tupleize_cols=False)


# -- results ----------------------------------------------------------------------------------------


class Result:
    """An analysis result: the engine's dict (the JSON of the HTTP endpoint) as attributes.

    Every key of the dict is an attribute; lists of numbers become numpy arrays and tables
    pandas DataFrames (see each subclass). ``where`` is the selection asked for, ``to_dict()``
    the dict as the endpoint returns it.
    """

    def __init__(self, data: dict, where: dict | None = None):
        if isinstance(data.get("basis"), dict):  # as the endpoints' BasisRef: n_filters always there
            data = {**data, "basis": {**data["basis"], "n_filters": data["basis"].get("n_filters")}}
        self._data = data
        self.where = where
        for key, value in data.items():
            setattr(self, key, value)
        self._convert()

    def _convert(self) -> None:
        pass

    def to_dict(self) -> dict:
        """The result as the engine and the HTTP endpoint give it (JSON-able)."""
        return dict(self._data)

    def _subtitle(self, subtitle: str | None) -> str | None:
        from .plots import describe_where

        return describe_where(self.where) if subtitle is None else subtitle or None

    def __repr__(self) -> str:
        keys = [k for k in ("group_by", "metric", "n_filters", "bins", "store_version") if k in self._data]
        shown = ", ".join(f"{k}={_short(getattr(self, k))}" for k in keys)
        return f"{type(self).__name__}({shown})"


def _short(v) -> str:
    if isinstance(v, np.ndarray):
        return f"array(shape={v.shape})" if v.size > 6 else repr(v.tolist())
    return repr(v)


def _group_frame(labels: list, group_by: str | None, **columns) -> pd.DataFrame:
    return pd.DataFrame(columns, index=_index(labels, group_by or "group"))


class DivergenceResult(Result):
    """``divergence``: the d x d matrix between the groups of a selection
    (docs/method.md#divergence).

    Attributes
    ----------
    matrix : DataFrame, shape (d, d)
        ``D[a, b] = sum_i w_i * metric(p_a_i, p_b_i)`` over the 9 components, indexed and
        labelled by group on both axes (natural order); symmetric, zero diagonal.
    labels : list, length d
    n_filters, n_models, n_layers : ndarray of int64, shape (d,)
    n_outside : ndarray of int64, shape (d,)
        The group's coefficients outside ``range``, left out of its histograms (docs/method.md#refit).
    groups : DataFrame, the four counts per group
    drift : dict or None
        mean, median, q1, q3, min, max of the upper triangle (None below 2 groups).
    component_weights, explained_variance_ratio : ndarray, shape (9,)
    range : tuple (lo, hi), the coefficients' range the histograms cover
    group_by, metric, weights, bins, basis, empty_groups, method, elapsed_ms, store_version
    """

    def _convert(self) -> None:
        d = self._data
        self.labels = list(d["labels"])
        for k in ("n_filters", "n_models", "n_layers", "n_outside"):
            setattr(self, k, np.asarray(d[k], dtype=np.int64))
        n = len(self.labels)
        self.matrix = pd.DataFrame(_floats(d["matrix"], (n, n)), index=_index(self.labels, d["group_by"]),
                                   columns=_index(self.labels, d["group_by"]))
        self.component_weights = _floats(d["component_weights"])
        self.explained_variance_ratio = _floats(d["explained_variance_ratio"])
        self.range = tuple(d["range"])
        self.groups = _group_frame(self.labels, d["group_by"], n_filters=self.n_filters, n_models=self.n_models,
                                   n_layers=self.n_layers, n_outside=self.n_outside)
        # with ``within``: each value's matrix between the groups its layers hold (SPEC 14's cohorts)
        self.facets = None if d.get("facets") is None else {
            f["value"]: pd.DataFrame(_floats(f["matrix"], (len(f["labels"]), len(f["labels"]))),
                                     index=_index(list(f["labels"]), d["group_by"]),
                                     columns=_index(list(f["labels"]), d["group_by"]))
            for f in d["facets"]}

    def plot(self, figsize: tuple[float, float] | None = None, subtitle: str | None = None):
        """The heatmap of GET /v1/plots/divergence.png for the same request: colorcet's ``fire``,
        unordered fields sorted by column mean (ordered ones, e.g. depth bins, as they are),
        labels with their model counts. With ``within`` (``facets``), the bars of
        GET /v1/plots/cohort_divergence.png for the same request (one series): the divergence
        between the two groups per value of within, SelectionError unless group_by gives exactly
        two. ``subtitle`` defaults to the selection; "" for none.

        Returns
        -------
        matplotlib.figure.Figure
        """
        from . import figures

        if self._data.get("facets") is not None:
            from .limits import MAX_LABELS
            from .plots import check_cohorts

            check_cohorts(self.labels, self.n_models, self._data["group_by"])
            if len(self._data["facets"]) > MAX_LABELS["cohort_divergence"]:
                raise SelectionError(f"within {self._data['within']} gives {len(self._data['facets'])} values; at most "
                                     f"{MAX_LABELS['cohort_divergence']} bars in cohort_divergence")
            return figures.cohort_divergence([(None, self._data)], None, figsize, self._subtitle(subtitle))
        return figures.divergence(self._data, figsize, self._subtitle(subtitle))


class PcaResult(Result):
    """``pca``: the PCA of a selection's peak-scaled filters (docs/method.md#basis).

    Attributes
    ----------
    mean : ndarray, shape (3, 3)
    components : ndarray, shape (9, 3, 3)
        The eigen-images, by decreasing variance, each with its largest entry positive.
    explained_variance, explained_variance_ratio : ndarray, shape (9,)
    covariance : ndarray, shape (9, 9)
        ``components.T @ diag(explained_variance) @ components`` (scikit-learn's ``get_covariance()``).
    n_filters, store_version : int; method : "layer_moments" (pooled from the stored per-layer moments)
    """

    KINDS = ("eigenimages", "covariance", "explained_variance")

    def _convert(self) -> None:
        d = self._data
        self.mean = _floats(d["mean"], (3, 3))
        self.components = _floats(d["components"], (9, 3, 3))
        self.explained_variance = _floats(d["explained_variance"])
        self.explained_variance_ratio = _floats(d["explained_variance_ratio"])
        self.covariance = _floats(d["covariance"], (9, 9))

    def plot(self, kind: str = "eigenimages", figsize: tuple[float, float] | None = None,
             subtitle: str | None = None):
        """A figure of this PCA: ``eigenimages`` (the 9 components, ``seismic``), ``covariance``
        (9 x 9) or ``explained_variance`` (cumulative ratio); as GET /v1/plots/{kind}.png.

        Returns
        -------
        matplotlib.figure.Figure
        """
        from . import figures

        if kind not in self.KINDS:
            raise ValueError(f"unknown kind {kind!r}; known: {list(self.KINDS)}")
        if kind == "explained_variance":
            return figures.explained_variance([("selection" if self.where else "all filters", self._data)], figsize,
                                              self._subtitle(subtitle))
        return getattr(figures, kind)(self._data, figsize, self._subtitle(subtitle))


class HistogramsResult(Result):
    """``histograms``: per group and component, the coefficient histogram over the basis range.

    Attributes
    ----------
    counts : ndarray of int64, shape (groups, 9, bins)
        ``np.histogram(c_i, bins, range)`` of each group's coefficients ``c_i``.
    edges : ndarray, shape (bins + 1,)
    labels : list; n_filters, n_outside : ndarray of int64, shape (groups,) (n_outside: the
    coefficients outside ``range``, not in ``counts``); groups : DataFrame of both
    range, bins, basis, group_by, method, store_version
    """

    def _convert(self) -> None:
        d = self._data
        groups = d["groups"]
        self.labels = [g["label"] for g in groups]
        self.n_filters = np.asarray([g["n_filters"] for g in groups], dtype=np.int64)
        self.n_outside = np.asarray([g["n_outside"] for g in groups], dtype=np.int64)
        self.counts = np.asarray([g["counts"] for g in groups], dtype=np.int64).reshape(len(groups), 9, d["bins"])
        self.edges = _floats(d["edges"])
        self.range = tuple(d["range"])
        self.groups = _group_frame(self.labels, d["group_by"], n_filters=self.n_filters, n_outside=self.n_outside)


class KdeResult(Result):
    """``kde``: per group and component, the Gaussian KDE of the coefficients (the ridge plots).

    Attributes
    ----------
    grid : ndarray, shape (bins,), the bin centres where the densities are given
    density : ndarray, shape (groups, 9, bins)
    bandwidth, std : ndarray, shape (groups, 9)
        Silverman's ``bw = min(std, IQR / 1.349) * (3 n / 4) ** (-1/5)``, and the exact ``std`` (ddof=1).
    quartiles : ndarray, shape (groups, 9, 2)
    labels : list; n_filters, n_models, n_outside : ndarray of int64; groups : DataFrame of the three
    range, bins, basis, group_by, method, store_version
    """

    def _convert(self) -> None:
        d = self._data
        groups = d["groups"]
        g, bins = len(groups), d["bins"]
        self.labels = [x["label"] for x in groups]
        self.n_filters = np.asarray([x["n_filters"] for x in groups], dtype=np.int64)
        self.n_models = np.asarray([x["n_models"] for x in groups], dtype=np.int64)
        self.n_outside = np.asarray([x["n_outside"] for x in groups], dtype=np.int64)
        self.grid = _floats(d["grid"])
        self.density = _floats([x["density"] for x in groups], (g, 9, bins))
        self.bandwidth = _floats([x["bandwidth"] for x in groups], (g, 9))
        self.std = _floats([x["std"] for x in groups], (g, 9))
        self.quartiles = _floats([x["quartiles"] for x in groups], (g, 9, 2))
        self.range = tuple(d["range"])
        self.groups = _group_frame(self.labels, d["group_by"], n_filters=self.n_filters, n_models=self.n_models,
                                   n_outside=self.n_outside)

    def plot(self, figsize: tuple[float, float] | None = None, subtitle: str | None = None):
        """The ridge plot of GET /v1/plots/ridge.png for the same request (a row per group, a
        column per coefficient c0..c8).

        Returns
        -------
        matplotlib.figure.Figure
        """
        from . import figures

        return figures.ridge(self._data, figsize, self._subtitle(subtitle))


class Density2dResult(Result):
    """``density2d``: the 2-D histogram of two components' coefficients (the paper's scatter density).

    Attributes
    ----------
    counts : ndarray of int64, shape (bins, bins)
        ``np.histogram2d(c_i, c_j, bins, [range, range])``: rows c_i, columns c_j.
    edges : ndarray, shape (bins + 1,); range : tuple (lo, hi); components : tuple (i, j)
    bins, n_filters, basis, store_version
    """

    def _convert(self) -> None:
        d = self._data
        self.counts = np.asarray(d["counts"], dtype=np.int64).reshape(d["bins"], d["bins"])
        self.edges = _floats(d["edges"])
        self.range = tuple(d["range"])
        self.components = tuple(d["components"])

    def plot(self, figsize: tuple[float, float] | None = None, subtitle: str | None = None):
        """The figure of GET /v1/plots/density2d.png: counts / max on a log scale (1e-5 to 1),
        colorcet's ``fire``, c_j increasing upwards.

        Returns
        -------
        matplotlib.figure.Figure
        """
        from . import figures

        return figures.density2d(self._data, figsize, self._subtitle(subtitle))


DEGENERATE_COLUMNS = LAYER_COLUMNS + ["sparse", "low_entropy", "random_like"]
DEGENERATE_TYPES = LAYER_TYPES + ["BOOLEAN"] * 3


class DegenerateResult(Result):
    """``degenerate``: the layers over any of the thresholds (docs/method.md#degenerate), a page
    of them.

    Attributes
    ----------
    layers : DataFrame
        One row per layer (layer_id order): the layer's columns (``layers()``'s), its quality
        metrics and the flags ``sparse`` (sparsity > sparsity_gt), ``low_entropy``
        (variance_entropy_norm < entropy_norm_lt), ``random_like`` (> entropy_norm_gt).
    thresholds : dict; total : int, the layers flagged (all pages); limit, offset, store_version
    """

    def _convert(self) -> None:
        self.layers = records(self._data["layers"], DEGENERATE_COLUMNS, DEGENERATE_TYPES)


SIMILAR_COLUMNS = ["model_id", "model", "task", "visual_category", "distance"]
SIMILAR_TYPES = ["INTEGER", "VARCHAR", "VARCHAR", "VARCHAR", "DOUBLE"]


class SimilarResult(Result):
    """``similar``: the k models whose filter distributions are nearest to one model's.

    Attributes
    ----------
    similar : DataFrame
        model_id, model, task, visual_category, distance; nearest first.
    model_id, metric, weights, basis, method, store_version
    """

    def _convert(self) -> None:
        self.similar = records(self._data["similar"], SIMILAR_COLUMNS, SIMILAR_TYPES)


class CheckResult(Result):
    """``check``: a model file against the population (SPEC 15, ``cnnfilterdb/check.py``).

    Attributes
    ----------
    layers : DataFrame
        One row per 3x3 convolution of the model, in its order: layer, name, conv_depth,
        conv_depth_norm, depth_decile, n_filters, in_channels, out_channels, groups, the layer
        metrics (as an ingest stores them), kl_to_population, kl_unusual_at (its decile's 95th
        percentile), population_layers, clipped, percentiles (dict: metric -> percentile among the
        population's layers of the decile), flags (list; ``layers["flags"]``: ``layers.flags`` is
        pandas' own attribute).
    model : dict
        The model's metrics (SPEC 14), ``divergence`` from the population, ``percentiles`` among
        the population's models, and what the file is (name, kind, sha256, ...).
    nearest_models : DataFrame
        The k nearest population models: model_id, model, name, task, ..., divergence.
    population : dict (where, n_models, n_layers, n_filters, n_outside, deciles)
    clipped : int, the checked model's coefficients outside the basis range (counted in the edge bins)
    store_id, store_version, basis_version, parameters, elapsed_ms
    """

    def _convert(self) -> None:
        self.layers = pd.DataFrame(self._data["layers"], columns=CHECK_LAYER_COLUMNS)
        self.nearest_models = pd.DataFrame(self._data["nearest_models"], columns=CHECK_NEAREST_COLUMNS)

    def __repr__(self) -> str:
        return (f"CheckResult(model={self.model['name']!r}, layers={len(self.layers)}, "
                f"divergence={self.model['divergence']:.4g}, store_version={self.store_version})")

    def save(self, path) -> str:
        """Write the report to ``path`` by its suffix, as ``cnnfilterdb check -o``: ``.html`` the
        self-contained page, ``.png``, ``.svg`` or ``.pdf`` the check figure (the store id and
        version in its metadata). Returns what was written, one line."""
        from .check_report import write_check_output

        return write_check_output(self.to_dict(), None, path)

    def plot(self, figsize: tuple[float, float] | None = None, subtitle: str | None = None):
        """The figure of POST /v1/check with format=png (svg, pdf): each layer's kl_to_population against its depth with
        the population's median and interquartile band per decile, and the quality scatter with
        this model's layers marked.

        Returns
        -------
        matplotlib.figure.Figure
        """
        from . import figures

        return figures.check(self._data, figsize, self._subtitle(subtitle))


CHECK_LAYER_COLUMNS = ["layer", "name", "conv_depth", "conv_depth_norm", "depth_decile", "n_filters", "in_channels",
                       "out_channels", "groups", "sparsity", "variance_entropy", "variance_entropy_norm",
                       "variance_entropy_clean", "orthogonality", "kl_to_population", "kl_unusual_at",
                       "population_layers", "clipped", "percentiles", "flags"]
CHECK_NEAREST_COLUMNS = ["model_id", "model", "name", "task", "visual_category", "training_dataset",
                         "pretraining_dataset", "producer", "divergence"]


class FrameResult(pd.DataFrame):
    """A result that is a DataFrame (the studies' tables): the engine's dict is ``result``
    (``to_result()``), its scalar keys are also in ``attrs``; operations on it give plain DataFrames."""
    _metadata = ["result", "where"]

    @property
    def _constructor(self):
        return pd.DataFrame

    def __init__(self, data: dict, where: dict | None = None):
        super().__init__(self._frame(data))
        self.result = data
        self.where = where
        self.attrs.update({k: v for k, v in data.items() if not isinstance(v, (list, dict))})

    def _frame(self, data: dict) -> pd.DataFrame:
        raise NotImplementedError

    def to_result(self) -> dict:
        """The result as the engine and the HTTP endpoint give it (JSON-able)."""
        return dict(self.result)


class ModelMetricsResult(FrameResult):
    """``model_metrics``: one row per model (and depth decile), indexed by ``model`` (and
    ``depth_decile``): model_id, n_layers, n_filters, sparsity, variance_entropy,
    variance_entropy_norm, variance_entropy_clean, orthogonality (NaN: unknown). ``attrs``:
    store_version, layers, by."""

    def _frame(self, data: dict) -> pd.DataFrame:
        df = pd.DataFrame.from_records(data["rows"], columns=data["columns"])
        for c in data["metrics"]:
            df[c] = df[c].astype(np.int64 if c in ("n_layers", "n_filters") else np.float64)
        df["model_id"] = df["model_id"].astype(np.int64)
        if data.get("by") == "depth_decile":  # ordered as the deciles are ("0" first): sort_index keeps it
            from .selection import natural_order

            deciles = [v for v in natural_order(list(set(df["depth_decile"]))) if v is not None]  # null: NaN
            df["depth_decile"] = pd.Categorical(df["depth_decile"], deciles, ordered=True)
            return df.set_index(["model", "depth_decile"])
        return df.set_index("model")


class CorrelationResult(FrameResult):
    """``correlation``: one row per group (natural order), indexed by the group_by's values (or
    "all"): n, statistic, p_value, ci_low, ci_high (NaN: undefined), n_resamples (the bootstrap
    resamples whose statistic is defined: the interval is theirs). ``points``: the models used
    (model, group, x, y). ``attrs``: x, y, method, layers, group_by, resamples, seed, store_version."""
    _metadata = ["result", "where", "points"]

    def _frame(self, data: dict) -> pd.DataFrame:
        self.points = pd.DataFrame(data["points"], columns=["model", "group", "x", "y"])
        rows = data["groups"]
        labels = [r["group"] for r in rows]
        cols = {"n": np.array([r["n"] for r in rows], dtype=np.int64)}
        for k in ("statistic", "p_value", "ci_low", "ci_high"):
            cols[k] = np.array([np.nan if r[k] is None else r[k] for r in rows], dtype=np.float64)
        cols["n_resamples"] = np.array([r["n_resamples"] for r in rows], dtype=np.int64)
        return pd.DataFrame(cols, index=_index(labels, data.get("group_by") or "group"))

    def plot(self, figsize: tuple[float, float] | None = None, subtitle: str | None = None):
        """The scatter panels of GET /v1/plots/correlation.png for the same request: per group, its
        models' x against y, titled with the statistic, its 95% bootstrap interval and n
        (SelectionError beyond the figure's panels). ``subtitle`` defaults to the selection; "" for
        none. (Not pandas' ``DataFrame.plot``: a frame derived from this one has that.)

        Returns
        -------
        matplotlib.figure.Figure
        """
        from . import figures
        from .plots import check_panels, describe_where

        check_panels(len(self.result["groups"]), self.result.get("group_by"))
        return figures.correlation(self.result, figsize, describe_where(self.where) if subtitle is None else subtitle or None)


def versions_frame(rows: list[dict], store_id: str, current: int) -> pd.DataFrame:
    """The store versions (GET /v1/versions' ``versions``) as a DataFrame, oldest first;
    ``attrs`` holds ``store_id`` and ``current``."""
    df = pd.DataFrame.from_records(rows)
    if len(df):
        df["committed_at"] = pd.to_datetime(pd.Series([v.isoformat() if isinstance(v, dt.datetime) else v
                                                       for v in df["committed_at"]])).astype("datetime64[us]")
    df.attrs.update(store_id=store_id, current=current)
    return df


# -- filters as (n, 3, 3) float32 batches, from an .npy stream ------------------------------------


def check_batch(batch: Any) -> int:
    """``batch`` (filters per batch) as a positive int; ValueError otherwise."""
    if isinstance(batch, (bool, np.bool_)) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    return int(batch)


NPY_MAX_HEADER = 10_000       # numpy's max_header_size (np.lib.format.read_array_header_*)
COLLECT_FIRST_ROWS = 1 << 20  # rows collect() allocates before any arrive


class FilterBatches:
    """The filters of a selection, in filter_id order, as ``(k, 3, 3)`` float32 arrays of
    ``batch`` rows (the last one shorter): an iterator over the ``.npy`` stream of the export
    (``cnnfilterdb/export.py``, or GET /v1/filters?format=npy), read as it is consumed, so that
    memory stays bounded whatever the selection's size.

    Attributes
    ----------
    n_rows : int, the number of filters of the selection (from the stream's header)
    store_version : int or None, the store version read

    ``close()`` (or leaving a ``with`` block) stops the reading early.

    A stream not as an export writes it is a ValueError or an EOFError, in memory bounded by
    what arrived: a header of at most numpy's NPY_MAX_HEADER bytes, a declared count of at most
    ``max_rows`` (default any), rows beyond or short of it; ``collect`` allocates as rows arrive.
    """

    def __init__(self, chunks: Iterator[bytes], batch: int, store_version: int | None = None,
                 on_close: Callable[[], None] | None = None, max_rows: int | None = None):
        from .export import NPY_DTYPE

        self.batch = check_batch(batch)
        self.store_version = store_version
        self._chunks = chunks
        self._on_close = on_close
        self._closed = False
        try:
            head = bytearray()
            while True:  # the header: magic, version, its length, then the dict
                start, length = _npy_header_span(head)
                if length is not None and len(head) >= start + length:
                    break
                chunk = next(chunks, None)
                if chunk is None:
                    raise EOFError("the filters' .npy stream ended within its header")
                head += chunk
            fp = io.BytesIO(head)
            version = np.lib.format.read_magic(fp)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            try:
                shape, fortran, dtype = read(fp)
            except (RecursionError, MemoryError, SyntaxError, TypeError) as e:  # a forged dict literal
                raise ValueError(f"not an .npy header ({type(e).__name__})") from None
            if dtype != NPY_DTYPE or fortran or len(shape) != 1:
                raise ValueError(f"not an export of filters: {str(dtype)[:100]} {str(shape)[:100]}")
            self.n_rows = int(shape[0])
            if max_rows is not None and self.n_rows > max_rows:
                raise ValueError(f"its header declares {self.n_rows:,} filters, more than the {max_rows:,} "
                                 "a stream may hold")
            self._rest = bytes(head[fp.tell():])
            self._it = self._batches()
        except BaseException:
            self.close()
            raise

    def _batches(self) -> Iterator[np.ndarray]:
        from .export import NPY_DTYPE

        size = NPY_DTYPE.itemsize
        pending: list[np.ndarray] = []
        held = sent = 0
        rest = b""
        try:
            for chunk in _chain_first(self._rest, self._chunks):
                data = rest + chunk if rest else chunk
                k = len(data) // size
                rest = data[k * size:]
                if k:
                    if sent + held + k > self.n_rows:
                        raise ValueError(f"the stream holds more than the {self.n_rows:,} filters its header states")
                    pending.append(np.frombuffer(data, dtype=NPY_DTYPE, count=k)["w"])
                    held += k
                while held >= self.batch:
                    out, pending, held = _take(pending, self.batch)
                    sent += len(out)
                    yield out
            if rest:
                raise EOFError("the filters' .npy stream ended within a row")
            if held:
                out, pending, held = _take(pending, held)
                sent += len(out)
                yield out
            if sent != self.n_rows:
                raise EOFError(f"the filters' stream ended after {sent:,} of its {self.n_rows:,} filters")
        finally:
            self.close()

    def __iter__(self) -> FilterBatches:
        return self

    def __next__(self) -> np.ndarray:
        return next(self._it)

    def __len__(self) -> int:
        """The number of batches."""
        return -(-self.n_rows // self.batch)

    def collect(self) -> np.ndarray:
        """Every remaining filter in one ``(n, 3, 3)`` float32 array. The array grows as the
        rows arrive (doubling, up to the count the header declares), so that a header declaring
        more than is sent costs no more memory than what was sent."""
        out = np.empty((min(self.n_rows, COLLECT_FIRST_ROWS), 3, 3), dtype=np.float32)
        at = 0
        for w in self:
            if at + len(w) > len(out):
                grown = np.empty((min(self.n_rows, max(2 * len(out), at + len(w))), 3, 3), dtype=np.float32)
                grown[:at] = out[:at]
                out = grown
            out[at:at + len(w)] = w
            at += len(w)
        return out[:at]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        finally:
            if self._on_close is not None:
                self._on_close()

    def __enter__(self) -> FilterBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FilterBatches(n_rows={self.n_rows}, batch={self.batch}, store_version={self.store_version})"


def _npy_header_span(head: bytes | bytearray) -> tuple[int, int | None]:
    """(offset of the header dict, its length) of an .npy file starting with ``head``; length None
    while too few bytes are there to tell. ValueError for a stream that is not .npy or whose
    header is longer than numpy reads (NPY_MAX_HEADER)."""
    if head[:6] != b"\x93NUMPY"[:len(head)]:
        raise ValueError("not an .npy stream")
    if len(head) < 8:
        return 0, None
    start = 10 if head[6] == 1 else 12
    if len(head) < start:
        return start, None
    length = int.from_bytes(head[8:start], "little")
    if length > NPY_MAX_HEADER:
        raise ValueError(f"an .npy header of {length:,} bytes, longer than numpy reads ({NPY_MAX_HEADER:,})")
    return start, length


def _chain_first(first: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from chunks


def _take(pending: list[np.ndarray], n: int) -> tuple[np.ndarray, list[np.ndarray], int]:
    """The first n rows of the pending pieces as one C-contiguous (n, 3, 3) float32 array, the
    pieces left, and their row count."""
    out = np.empty((n, 3, 3), dtype=np.float32)
    at = 0
    while at < n:
        piece = pending[0]
        k = min(n - at, len(piece))
        out[at:at + k] = piece[:k]
        at += k
        if k == len(piece):
            pending.pop(0)
        else:
            pending[0] = piece[k:]
    return out, pending, sum(len(p) for p in pending)


# The exceptions the engine raises for bad input, re-exported for callers of either API.
__all__ += ["SelectionError", "EmptySelectionError"]
