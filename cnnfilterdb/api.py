"""The Python API (docs/notebook.md): ``cnnfilterdb.open(path)`` gives the HTTP API's operations on a
store directory, in this process, on the same engine (``cnnfilterdb.analysis``), returning numpy
arrays, pandas DataFrames and result objects with a ``plot()``. ``cnnfilterdb.Client(url)``
(``client.py``) has the same methods over HTTP and returns the same types.

Example
-------
>>> import cnnfilterdb
>>> db = cnnfilterdb.open(path)
>>> d = db.divergence("task")
>>> d.matrix.shape == (len(d.labels), len(d.labels))
True
>>> W = db.filters({"task": d.labels[0]})
>>> W.dtype, W.shape[1:]
(dtype('float32'), (3, 3))
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import duckdb
import pandas as pd

from . import results
from .analysis import Analysis
from .catalog import check_version, list_versions, store_id
from .errors import NotFound, SqlError, first_paragraph
from .layout import default_db
from .reader import ATTACHED, CatalogReader, attach
from .requests import (
    CHECK_PATH_TEXT,
    AnalysisSpec,
    CheckRequest,
    DegenerateRequest,
    Density2dRequest,
    DivergenceRequest,
    ExportRequest,
    HistogramsRequest,
    KdeRequest,
    PcaRequest,
    SimilarRequest,
    analyses,
    build,
    check_not_hidden,
    check_where,
    documented,
    plain,
    takes,
    version_arg,
)
from .results import (
    CheckResult,
    DegenerateResult,
    Density2dResult,
    DivergenceResult,
    FilterBatches,
    HistogramsResult,
    KdeResult,
    PcaResult,
    SimilarResult,
    check_listing,
    finish_models,
    frame,
    layers_query,
    models_query,
    versions_frame,
)
from .selection import InvalidValue, echo, integral
from .store import FilterStore

__all__ = ["open", "FilterDB"]

FILTER_BATCH = 1 << 16  # filters per batch of iter_filters (2.4 MB)


class FilterDB:
    """A store, open for reading: the HTTP API's operations, in this process.

    Every method reads the store as it is committed when it is called (an ingest's commit is
    seen by the next call), or as of store version ``as_of`` (``versions()`` lists them): the same
    request as of the same version gives the same result, bit for bit. Selections (``where``) are
    the HTTP API's: a dict of field -> value | [values] | {"gte", "gt", "lte", "lt"} over the
    fields of ``cnnfilterdb.selection.FILTER_FIELDS``; a bad one raises ``SelectionError`` naming
    the field and the valid ones; a text value no model has raises ``EmptySelectionError`` with the
    nearest known values, in an analysis and a listing alike (values the models have that together
    select nothing give an empty answer, as GET /v1/models does); an unknown version raises
    ``cnnfilterdb.catalog.VersionError``.

    Parameters
    ----------
    path : str or Path, optional
        The store directory; default as the command line's: ``$CNNFILTERDB_DB`` or ``./filterdb``.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.store = FilterStore(default_db() if path is None else path)
        self.root = self.store.root
        self._reader = CatalogReader(self.root)
        self._reader.generation()  # a missing or foreign store is an error now, not at the first query
        check_not_hidden(self)

    def __repr__(self) -> str:
        return f"FilterDB({str(self.root)!r})"

    # -- connection ------------------------------------------------------------------------------
    @contextmanager
    def _cursor(self) -> Iterator:
        with closing(self._reader.generation().cursor()) as cur:
            yield cur

    @contextmanager
    def _analysis(self, as_of) -> Iterator[Analysis]:
        as_of = version_arg(as_of)
        gen = self._reader.generation()
        with closing(gen.cursor()) as cur:
            yield Analysis(cur, self.root, snapshot=gen.snapshot_at(cur, as_of))

    def close(self) -> None:
        """Let go of the catalog connection (a later call opens it again; calls in flight in other
        threads finish on it)."""
        self._reader.close()

    def __enter__(self) -> FilterDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- listings --------------------------------------------------------------------------------
    def _listing(self, query: tuple[str, list], order: str) -> pd.DataFrame:
        sql, params = query
        with self._cursor() as cur:
            cur.execute(f"{sql} ORDER BY {order}", params)
            columns, types = [d[0] for d in cur.description], [str(d[1]) for d in cur.description]
            return frame(columns, types, cur.fetchall())

    def _version(self, as_of) -> int | None:
        as_of = version_arg(as_of)
        if as_of is not None:
            with self._cursor() as cur:
                check_version(cur, as_of)
        return as_of

    def models(self, where: dict | None = None, as_of: int | None = None) -> pd.DataFrame:
        """The models a selection holds, in model_id order, with the columns of GET /v1/models.

        Parameters
        ----------
        where : dict, optional
            A selection (see the class); a condition on a layer's field (``conv_depth``,
            ``depth_bin``, ``layer_id``, ``conv_depth_norm``) keeps the models with such a layer.
            Default: every model.
        as_of : int, optional
            A store version; default the current one.

        Returns
        -------
        DataFrame, one row per model: model_id, model, name, task, ..., n_filters, n_layers,
        kernel_counts and op_counts (dicts), extra (parsed JSON).

        Example
        -------
        >>> import cnnfilterdb
        >>> db = cnnfilterdb.open(path)
        >>> db.models().columns[:4].tolist()
        ['model_id', 'model', 'name', 'task']
        >>> gan = db.models({"task": "GAN"})
        >>> bool((gan.task == "GAN").all())
        True
        """
        version, where = self._version(as_of), check_where(where)
        with self._cursor() as cur:
            properties = check_listing(cur, where, version)
        return finish_models(self._listing(models_query(where, version, properties), "model_id"))

    def layers(self, where: dict | None = None, as_of: int | None = None) -> pd.DataFrame:
        """The layers a selection holds, in layer_id order, with the columns of GET
        /v1/models/{model_id}/layers: the layer, its model's name, its quality metrics
        (docs/method.md#layer-quality).

        Parameters
        ----------
        where : dict, optional
            A selection (see the class); default every layer.
        as_of : int, optional
            A store version; default the current one.

        Returns
        -------
        DataFrame, one row per layer: layer_id, model_id, model, conv_depth, conv_depth_norm,
        depth_bin, filter_id_first, filter_id_last, n_filters, in_channels, out_channels, groups,
        sparsity, variance_entropy, variance_entropy_norm, variance_entropy_clean, orthogonality.

        Example
        -------
        >>> import cnnfilterdb
        >>> db = cnnfilterdb.open(path)
        >>> first = db.layers({"conv_depth": 0})
        >>> bool((first.conv_depth == 0).all()), first.layer_id.is_monotonic_increasing
        (True, True)
        """
        version, where = self._version(as_of), check_where(where)
        with self._cursor() as cur:
            properties = check_listing(cur, where, version)
        return self._listing(layers_query(where, version, properties), "layer_id")

    # -- filters ---------------------------------------------------------------------------------
    def iter_filters(self, where: dict | None = None, batch: int = FILTER_BATCH,
                     as_of: int | None = None) -> FilterBatches:
        """The filters of a selection, batch by batch, in bounded memory whatever its size.

        The selection is checked and the shards opened now; the filters are read as the batches
        are consumed (the export's reader, ``cnnfilterdb/export.py``: a few row groups ahead).

        Parameters
        ----------
        where : dict, optional
            A selection (see the class); default every filter.
        batch : int, default 65536
            Filters per batch.
        as_of : int, optional
            A store version; default the current one.

        Returns
        -------
        FilterBatches
            An iterator of ``(k, 3, 3)`` float32 arrays, k = ``batch`` but for the last, in
            filter_id order; ``n_rows`` the selection's filter count, ``store_version``;
            ``close()`` stops early.

        Example
        -------
        >>> import cnnfilterdb
        >>> db = cnnfilterdb.open(path)
        >>> batches = db.iter_filters({"conv_depth": 0}, batch=1000)
        >>> sizes = [len(w) for w in batches]
        >>> sum(sizes) == batches.n_rows, max(sizes)
        (True, 1000)
        """
        from .export import export_chunks

        req = build(ExportRequest, where=where, format="npy", as_of=version_arg(as_of))  # GET /v1/filters' request
        with self._analysis(req.as_of) as a:
            plan = a.export_plan(plain(where))
        version = plan.pop("store_version")
        return FilterBatches(export_chunks(**plan, fmt=req.format), batch, version)

    def filters(self, where: dict | None = None, as_of: int | None = None):
        """The filters of a selection as one array.

        Parameters
        ----------
        where : dict, optional
            A selection (see the class); default every filter (36 bytes each: mind the memory,
            or use ``iter_filters``).
        as_of : int, optional
            A store version; default the current one.

        Returns
        -------
        ndarray of float32, shape (n, 3, 3)
            In filter_id order, the stored weights bit for bit (``w[r, c]`` is ``w{3r + c}``).

        Example
        -------
        >>> import cnnfilterdb
        >>> db = cnnfilterdb.open(path)
        >>> W = db.filters({"model_id": 0})
        >>> W.dtype, W.shape[1:], len(W) == int(db.models({"model_id": 0}).n_filters.iloc[0])
        (dtype('float32'), (3, 3), True)
        """
        return self.iter_filters(where, FILTER_BATCH, as_of).collect()

    # -- statistics ------------------------------------------------------------------------------
    @takes(DivergenceRequest)
    def divergence(self, req: DivergenceRequest) -> DivergenceResult:
        """The divergence matrix between the groups of a selection and its drift
        (docs/method.md#divergence; POST /v1/divergence).

        Each group's coefficients ``c = (f / max|f| - mean) @ components.T`` are binned per
        component into ``bins`` bins over the basis range, taken as densities (empty bins set to
        float32 epsilon, normalized), and ``D(A, B) = sum_i w_i * metric(p_A_i, p_B_i)``, with
        ``w`` the basis' explained variance ratio (or uniform).

        Returns
        -------
        DivergenceResult
            ``matrix`` (d x d DataFrame labelled by group), ``drift``, ``labels``, ``n_filters``,
            ``n_models``, ``store_version``, ...; ``plot()`` draws the heatmap.

        Example
        -------
        >>> import cnnfilterdb
        >>> db = cnnfilterdb.open(path)
        >>> d = db.divergence("depth_bin", metric="js")
        >>> d.labels[0]
        '[0.0, 0.1]'
        >>> bool((d.matrix.values.diagonal() == 0).all()), d.drift["min"] <= d.drift["max"]
        (True, True)
        """
        with self._analysis(req.as_of) as a:
            return DivergenceResult(a.divergence(req), req.selection)

    @takes(PcaRequest)
    def pca(self, req: PcaRequest) -> PcaResult:
        """The PCA of a selection's peak-scaled filters ``f / max|f|`` (docs/method.md#basis;
        POST /v1/pca),
        from the per-layer moments (no filter is read).

        Returns
        -------
        PcaResult
            ``mean`` (3, 3), ``components`` (9, 3, 3), ``explained_variance(_ratio)`` (9,),
            ``covariance`` (9, 9), ``n_filters``; ``plot(kind)`` draws the eigen-images.

        Example
        -------
        >>> import cnnfilterdb
        >>> db = cnnfilterdb.open(path)
        >>> p = db.pca()
        >>> p.components.shape, round(float(p.explained_variance_ratio.sum()), 9)
        ((9, 3, 3), 1.0)
        """
        with self._analysis(req.as_of) as a:
            return PcaResult(a.pca(req), req.selection)

    @takes(HistogramsRequest)
    def histograms(self, req: HistogramsRequest) -> HistogramsResult:
        """Per group and component, the histogram of the coefficients over the basis range
        (numpy's semantics: equal bins, the last closed; POST /v1/histograms).

        Returns
        -------
        HistogramsResult
            ``counts`` (groups, 9, bins) int64, ``edges`` (bins + 1,), ``labels``, ``n_filters``.

        Example
        -------
        >>> import cnnfilterdb
        >>> db = cnnfilterdb.open(path)
        >>> h = db.histograms(group_by="task", bins=30)
        >>> h.counts.shape[1:], bool((h.counts.sum(axis=2) == h.n_filters[:, None]).all())
        ((9, 30), True)
        """
        with self._analysis(req.as_of) as a:
            return HistogramsResult(a.histograms(req), req.selection)

    @takes(KdeRequest)
    def kde(self, req: KdeRequest) -> KdeResult:
        """Per group and component, the Gaussian KDE of the coefficients with Silverman's
        bandwidth (the ridge plots; POST /v1/kde), from an exact histogram of ``bins`` bins and
        the group's exact standard deviation: ``bw = min(std, IQR / 1.349) * (3 n / 4) ** (-1/5)``.

        Returns
        -------
        KdeResult
            ``grid`` (bins,), ``density`` (groups, 9, bins), ``bandwidth`` and ``std`` (groups, 9);
            ``plot()`` draws the ridge plot.

        Example
        -------
        >>> import cnnfilterdb
        >>> db = cnnfilterdb.open(path)
        >>> k = db.kde(group_by="visual_category", bins=256)
        >>> k.density.shape[1:], k.grid.shape
        ((9, 256), (256,))
        """
        with self._analysis(req.as_of) as a:
            return KdeResult(a.kde(req), req.selection)

    @takes(Density2dRequest)
    def density2d(self, req: Density2dRequest) -> Density2dResult:
        """The 2-D histogram of two components' coefficients (the paper's scatter density;
        POST /v1/density2d): ``np.histogram2d(c_i, c_j, bins, [range, range])``.

        Returns
        -------
        Density2dResult
            ``counts`` (bins, bins) int64 (rows c_i), ``edges`` (bins + 1,), ``range``;
            ``plot()`` draws the density.

        Example
        -------
        >>> import cnnfilterdb
        >>> db = cnnfilterdb.open(path)
        >>> h = db.density2d(components=(0, 1), bins=64)
        >>> h.counts.shape, int(h.counts.sum()) + h.n_outside == h.n_filters
        ((64, 64), True)
        """
        with self._analysis(req.as_of) as a:
            return Density2dResult(a.density2d(req), req.selection)

    @takes(DegenerateRequest)
    def degenerate(self, req: DegenerateRequest) -> DegenerateResult:
        """The layers over any of the thresholds (docs/method.md#degenerate;
        GET /v1/quality/degenerate):
        ``sparsity > sparsity_gt``, ``variance_entropy_norm < entropy_norm_lt`` (redundant) or
        ``variance_entropy_norm > entropy_norm_gt`` (random-like; None: not checked).

        Returns
        -------
        DegenerateResult
            ``layers`` (DataFrame with the flags sparse, low_entropy, random_like), ``total``.

        Example
        -------
        >>> import cnnfilterdb
        >>> db = cnnfilterdb.open(path)
        >>> g = db.degenerate(limit=5)
        >>> len(g.layers) == min(5, g.total), bool(g.layers[["sparse", "low_entropy", "random_like"]].any(axis=1).all())
        (True, True)
        """
        with self._analysis(req.as_of) as a:
            return DegenerateResult(a.degenerate(req), req.selection)

    @takes(SimilarRequest)
    def similar(self, req: SimilarRequest) -> SimilarResult:
        """The k models whose filter distributions (all their layers, global basis, default
        bins) are nearest to one model's: ``D(model, other)`` as in ``divergence``
        (GET /v1/models/{model_id}/similar).

        Returns
        -------
        SimilarResult
            ``similar``: DataFrame of model_id, model, task, visual_category, distance, nearest first.

        Raises
        ------
        LookupError
            No model ``model_id`` in the store (at ``as_of``).

        Example
        -------
        >>> import cnnfilterdb
        >>> db = cnnfilterdb.open(path)
        >>> s = db.similar(0, k=3)
        >>> len(s.similar), 0 in s.similar.model_id.tolist(), s.similar.distance.is_monotonic_increasing
        (3, False, True)
        """
        with self._analysis(req.as_of) as a:
            try:
                return SimilarResult(a.similar(req), req.selection)
            except LookupError:
                raise NotFound(f"no model {req.model_id}") from None

    @documented(CheckRequest, path=CHECK_PATH_TEXT)
    def check(self, path: str | os.PathLike, where: dict | None = None, **options) -> CheckResult:
        """Check a model file against the population (docs/method.md#checking-a-model; POST
        /v1/check): how its layers' filters and quality compare with the store's layers of the
        same depth decile, and which models are nearest. Nothing is written to the store; the
        options are the fields of ``cnnfilterdb.requests.CheckRequest``, by keyword.

        Returns
        -------
        CheckResult
            ``layers`` (DataFrame: one row per 3x3 convolution: conv_depth, depth_decile, its
            metrics, kl_to_population, percentiles, flags), ``model`` (dict: model metrics,
            divergence, percentiles), ``nearest_models`` (DataFrame), ``clipped``,
            ``store_version``; ``plot()`` draws the check figure.

        Raises
        ------
        cnnfilterdb.ingest.IngestError
            The file is not a model, holds no 3x3 convolution or a NaN weight, cannot be read.
        """
        from .check import check
        from .ingest.model_files import read_checked

        if "as_of" in options:
            options["as_of"] = version_arg(options["as_of"])
        req = build(CheckRequest, where=where, **options)
        model = read_checked(Path(path))
        with self._analysis(req.as_of) as a:
            return CheckResult(check(a, req, model), req.selection)

    # -- SQL and versions ------------------------------------------------------------------------
    def sql(self, query: str, params: list | dict | None = None, max_rows: int | None = None) -> pd.DataFrame:
        """One SQL query on the store's catalog, opened read-only (the views ``models``,
        ``layers``, ``layers_with_models``, ``filters``, ``basis``, ``versions``, the macros
        ``models_at(v)``, ``filters_at(v)``, ``as_3x3``, ...: docs/sql.md). Unlike POST
        /v1/sql it runs in this process, with its rights, without the service's sandbox, time
        limit or row cap: the catalog cannot be written, but ``COPY ... TO`` writes a file. Each
        call has a DuckDB instance of its own: its SET, USE or temporary tables last one call.

        Parameters
        ----------
        query : str
        params : list or dict, optional
            Values for its ``?`` (or ``$name``) placeholders.
        max_rows : int, optional
            Return at most this many rows (default all).

        Returns
        -------
        DataFrame (DuckDB's ``.df()``)

        Raises
        ------
        cnnfilterdb.SqlError
            DuckDB refused the query or could not run it (its message).

        Example
        -------
        >>> import cnnfilterdb
        >>> db = cnnfilterdb.open(path)
        >>> n = db.sql("SELECT count(*) AS n FROM models WHERE task = ?", ["GAN"]).n.iloc[0]
        >>> int(n) == len(db.models({"task": "GAN"}))
        True
        """
        if max_rows is not None and (isinstance(max_rows, bool) or integral(max_rows) is None
                                     or not 0 <= integral(max_rows) <= 2**62):
            raise InvalidValue(f"max_rows must be an integer from 0 to 2**62, got {echo(max_rows)}")
        # An instance of its own, closed after the query: what the query does to its session
        # (SET, USE, DETACH, temporary tables) cannot reach the engine's reads.
        with closing(attach(self.root)) as con, closing(con.cursor().execute(f"USE {ATTACHED}")) as cur:
            try:
                cur.execute(query, params)
            except duckdb.Error as e:  # the project's error, as every other call's: one paragraph, no traceback
                raise SqlError(f"{type(e).__name__.removesuffix('Exception')}: {first_paragraph(e)}") from None
            except UnicodeEncodeError:  # a lone surrogate: no SQL text can hold one
                raise SqlError("the query or a parameter is not valid Unicode (a lone surrogate)") from None
            if cur.description is None:  # a statement without a result
                return pd.DataFrame()
            if max_rows is None:
                return cur.df()
            return frame([d[0] for d in cur.description], [str(d[1]) for d in cur.description],
                         cur.fetchmany(integral(max_rows)))

    def versions(self) -> pd.DataFrame:
        """The store versions, oldest first (GET /v1/versions): version, committed_at (UTC),
        action, summary, models added/changed/removed, n_models, n_filters, basis_version,
        compacted. ``.attrs`` holds ``store_id`` and ``current``; any version not compacted is
        readable with ``as_of``.

        Example
        -------
        >>> import cnnfilterdb
        >>> db = cnnfilterdb.open(path)
        >>> v = db.versions()
        >>> int(v.version.iloc[0]), v.action.iloc[0], v.attrs["current"] == int(v.version.iloc[-1])
        (1, 'ingest', True)
        """
        with self._cursor() as cur:
            rows, sid = list_versions(cur), store_id(cur)
        return versions_frame(rows, sid, rows[-1]["version"] if rows else 0)


def _served(name: str, spec: AnalysisSpec) -> Callable:
    """``FilterDB.<name>`` of an analysis of ``requests.ANALYSES`` that has no method written above:
    the engine's function on this store, its answer as its result class (or a plain Result)."""
    result_class = getattr(results, spec.result, results.Result)

    def method(self, req):
        with self._analysis(req.as_of) as a:
            return result_class(getattr(a, name)(req), req.selection)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"{spec.summary} ({spec.method} {spec.path}; the engine's ``Analysis.{name}``)."
    return takes(spec.request)(method)


for _name, _spec in analyses():
    if _name not in vars(FilterDB):
        setattr(FilterDB, _name, _served(_name, _spec))
    elif getattr(vars(FilterDB)[_name], "request_type", None) is not _spec.request:
        raise RuntimeError(f"the analysis {_name!r} of requests.ANALYSES would hide FilterDB.{_name}: give it another name")


def open(path: str | os.PathLike | None = None) -> FilterDB:
    """Open a store for reading: ``db = cnnfilterdb.open("filterdb")``.

    Parameters
    ----------
    path : str or Path, optional
        The store directory; default as the command line's: ``$CNNFILTERDB_DB`` or ``./filterdb``.

    Returns
    -------
    FilterDB

    Raises
    ------
    cnnfilterdb.StoreError
        No store at ``path``, or one of another layout.

    Example
    -------
    >>> import cnnfilterdb
    >>> cnnfilterdb.open(path)
    FilterDB('...')
    """
    return FilterDB(path)
