"""GET /v1/plots/{figure}.{png|svg|pdf}: the paper's figures and the follow-up studies' (cnnfilterdb/figures.py,
plots.py).

The query parameters are the analysis endpoints' (``where`` as JSON), declared and checked by
the request type of the analysis each figure draws (cnnfilterdb/requests.py, through plots.py),
so they give the same errors. A figure depends only on its parameters and the catalog generation,
so its ETag is their digest: a request whose ``If-None-Match`` holds it is a 304 without any
computation, and rendered bytes are kept by ETag (service/figure_cache.py). A figure computed for
the request says how long it took in ``Server-Timing: render;dur=<ms>``; every figure names the
store and the store version it shows in ``X-Store-Id`` and ``X-Store-Version``, and in the file's own
metadata (plots.figure_metadata).
"""
from __future__ import annotations

import gc
import hashlib
import json
import time
from typing import Annotated, get_args

import matplotlib
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import WithJsonSchema

from cnnfilterdb import __version__
from cnnfilterdb.catalog import store_id
from cnnfilterdb.plots import (
    ALL_FIGURES,
    FORMATS,
    MEDIA_TYPES,
    MODEL_METRICS,
    PARAMETERS,
    SIZE,
    PlotRequest,
    Provenance,
    bounds,
    describe,
    draw,
    finite,
    render,
)
from cnnfilterdb.requests import BasisKind, CorrelationMethod, GroupField, LayerScope, Metric, Variable, Weights

from ..catalog import LiveCatalog
from ..deps import get_catalog, get_figure_cache
from ..errors import ApiError, not_found
from ..figure_cache import FigureCache
from ..params import AS_OF, WHERE_TEXT
from ..schemas import error_responses
from .analysis import analysis, snapshot_at, where_query

# Declared as the model metrics (cohort_metric's), read as any text: the figure's request type words the error.
ModelMetricName = Annotated[str, WithJsonSchema({"type": "string", "enum": list(MODEL_METRICS)})]
# A field (color_by, within, series), declared as requests.GroupField and read as any text: the figure's
# request checks it, naming the parameter ("unknown series ..."; a query parameter's own check cannot).
FieldName = Annotated[str, next(m for m in get_args(GroupField)[1:] if isinstance(m, WithJsonSchema))]

router = APIRouter(tags=["plots"], responses=error_responses(400, 404, 422, 429, 503))


def _query(name: str):
    """The query parameter of a figure parameter: what it means to each figure that takes it, its
    range and default there (plots.describe), and the widest bounds among them (plots.bounds), all
    from the request type of each figure's analysis (cnnfilterdb/requests.py) or the figure's own
    (plots.FigureOptions). Not given (None): the figure's default; each figure checks its own range."""
    return Query(None, description=describe(name), **bounds(name), **({"allow_inf_nan": False} if finite(name) else {}))


@router.get("/v1/plots/{figure}.{fmt}", response_class=Response,  # not JSON: the figure's own media types
            responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()},
                             "description": "The figure, with its ETag (Cache-Control: no-cache)"},
                       304: {"description": "Not modified: If-None-Match holds the figure's ETag"}},
            summary="One of the paper's or the follow-up studies' figures, drawn on any selection",
            description=(
                "A figure of the paper, drawn from the store as the analysis endpoints compute it, in the "
                "format `fmt` (SVG keeps text as text, PDF embeds its fonts). Every parameter of the paper's "
                "figures is optional (the defaults draw the paper's figure); the studies' figures "
                "(`cohort_divergence`, `cohort_metric`, `correlation`) need the field whose cohorts they compare "
                "(`group_by`) or the variables they correlate (`x`, `y`). Each figure takes the parameters listed "
                "below, any other is a 400. The same request gives the same bytes: send the response's ETag as If-None-Match to get "
                "a 304 when nothing changed. X-Store-Id and X-Store-Version name the store and the store version "
                "drawn, which the file's metadata also carries (PNG text chunks `Source`, `store_id`, `store_version`; "
                "SVG `dc:source` and `dc:subject`; PDF `Subject` and `Keywords`).\n\n"
                "The parameters each figure takes:\n\n"
                + "\n".join(f"- `{f}`: {', '.join(PARAMETERS[f] + SIZE)}" for f in ALL_FIGURES)))
def plot(
    request: Request,
    figure: str = Path(..., description="the figure", json_schema_extra={"enum": list(ALL_FIGURES)}),
    fmt: str = Path(..., description="the file format", json_schema_extra={"enum": list(FORMATS)}),
    group_by: str | None = _query("group_by"),
    where: str | None = Query(None, description=f"the filters drawn: {WHERE_TEXT}; none: every filter"),
    # a divergence's metric, or cohort_metric's model metric: both sets in the schema, each figure's request
    # type checks its own (a divergence's with the words of /v1/divergence)
    metric: Metric | ModelMetricName | None = _query("metric"),
    bins: int | None = _query("bins"),
    weights: Weights | None = _query("weights"),
    basis: BasisKind | None = _query("basis"),
    components: str | None = _query("components"),
    range: str | None = _query("range"),
    layer_id: int | None = _query("layer_id"),
    color_by: FieldName | None = _query("color_by"),
    sparsity_gt: float | None = _query("sparsity_gt"),
    entropy_norm_lt: float | None = _query("entropy_norm_lt"),
    entropy_norm_gt: float | None = _query("entropy_norm_gt"),
    within: FieldName | None = _query("within"),
    series: FieldName | None = _query("series"),
    x: Variable | None = _query("x"),
    y: Variable | None = _query("y"),
    method: CorrelationMethod | None = _query("method"),
    layers: LayerScope | None = _query("layers"),
    dpi: int | None = _query("dpi"),
    width: float | None = _query("width"),
    height: float | None = _query("height"),
    as_of: int | None = AS_OF,
    catalog: LiveCatalog = Depends(get_catalog),
    cache: FigureCache = Depends(get_figure_cache),
):
    if figure not in ALL_FIGURES:
        raise ApiError(404, "not_found", f"no figure {figure[:100]!r}; the figures: {', '.join(ALL_FIGURES)}")
    if fmt not in FORMATS:
        raise ApiError(404, "not_found", f"no format {fmt[:20]!r}; the formats: {', '.join(FORMATS)}")
    # A parameter the figure does not take, or out of its range there: a 400 (PlotParameterError);
    # the where grammar's errors and a name outside its set are the analysis endpoints' (errors.ANSWERS).
    req = PlotRequest.of(figure, group_by=group_by, where=where_query(where), metric=metric, bins=bins, weights=weights,
                         basis=basis, components=components, range=range, layer_id=layer_id, color_by=color_by,
                         sparsity_gt=sparsity_gt, entropy_norm_lt=entropy_norm_lt, entropy_norm_gt=entropy_norm_gt,
                         within=within, series=series, x=x, y=y, method=method, layers=layers,
                         dpi=dpi, width=width, height=height)

    gen = catalog.generation()
    cur = gen.cursor()
    try:
        if as_of is not None:  # a version the store does not hold is a 404, also for a conditional request
            snapshot_at(gen, cur, as_of)
        provenance = Provenance(store_id(cur), as_of or gen.snapshot.version)  # in the file's metadata
    finally:
        cur.close()
    # The provenance is the generation's (and as_of's): in the key for all to see, and so in the
    # figure cache's (which is by ETag).
    key = json.dumps([*gen.key, as_of, provenance.store_id, fmt, req.resolved(), __version__, matplotlib.__version__],
                     sort_keys=True, default=str)
    etag = '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'
    # An SVG opened on its own is a document: it may run nothing and load nothing.
    headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
               "X-Store-Id": provenance.store_id, "X-Store-Version": str(provenance.store_version),
               "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"}
    if_none_match = {t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")}
    if etag in if_none_match or "*" in if_none_match:
        return Response(status_code=304, headers=headers)
    data = cache.get(etag)
    if data is None:
        t0 = time.perf_counter()
        with analysis(catalog, gen, as_of) as a:
            try:
                data = render(draw(a, req), fmt, req.dpi, provenance)
            except LookupError:  # layer_filters of a layer that is not there
                raise not_found("layer", req.layer_id) from None
            # A figure is a web of reference cycles holding its pixel buffers (8 MB for
            # kl_combined): freed now rather than by a later full collection, the service's peak
            # memory after 48 figures rose by 24 MB instead of 66 MB (2 ms a figure).
            gc.collect()
        cache.put(etag, data)
        headers["Server-Timing"] = f"render;dur={(time.perf_counter() - t0) * 1000:.1f}"
    headers["Content-Disposition"] = "inline"  # a page's download attribute names the file
    return Response(content=data, media_type=MEDIA_TYPES[fmt], headers=headers)
