"""GET /v1/plots/{figure}.{png|svg|pdf}: the paper's figures (cnnfilterdb/figures.py, plots.py).

The query parameters are the analysis endpoints' (``where`` as JSON), validated as theirs are
and giving the same errors. A figure depends only on its parameters and the catalog generation,
so its ETag is their digest: a request whose ``If-None-Match`` holds it is a 304 without any
computation, and rendered bytes are kept by ETag (service/figure_cache.py). A figure computed for
the request says how long it took in ``Server-Timing: render;dur=<ms>``; every figure names the
store version it shows in ``X-Store-Version``.
"""
from __future__ import annotations

import gc
import hashlib
import json
import time

import matplotlib
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from cnnfilterdb import __version__
from cnnfilterdb.limits import MAX_BINS
from cnnfilterdb.plots import (
    FIGURES,
    FORMATS,
    MAX_DPI,
    MAX_INCHES,
    MEDIA_TYPES,
    PARAMETERS,
    SIZE,
    PlotParameterError,
    PlotRequest,
    draw,
    render,
)
from cnnfilterdb.selection import SelectionError

from ..catalog import LiveCatalog
from ..deps import get_catalog, get_figure_cache
from ..errors import ApiError, not_found
from ..figure_cache import FigureCache
from ..params import AS_OF, WHERE_TEXT
from ..schemas import BASIS_TEXT, METRIC_TEXT, WEIGHTS_TEXT, BasisKind, GroupField, Metric, Weights, error_responses
from .analysis import analysis, snapshot_at, where_query

router = APIRouter(tags=["plots"], responses=error_responses(400, 404, 422, 429, 503))


@router.get("/v1/plots/{figure}.{fmt}", response_class=Response,  # not JSON: the figure's own media types
            responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()},
                             "description": "The figure, with its ETag (Cache-Control: no-cache)"},
                       304: {"description": "Not modified: If-None-Match holds the figure's ETag"}},
            summary="One of the paper's figures, drawn on any selection",
            description=(
                "A figure of the paper, drawn from the store as the analysis endpoints compute it, in the "
                "format `fmt` (SVG keeps text as text, PDF embeds its fonts). Every parameter is optional (the "
                "defaults draw the paper's figure); each figure takes the parameters listed below, any other is "
                "a 400. The same request gives the same bytes: send the response's ETag as If-None-Match to get "
                "a 304 when nothing changed. X-Store-Version names the store version drawn.\n\n"
                "The parameters each figure takes:\n\n"
                + "\n".join(f"- `{f}`: {', '.join(PARAMETERS[f] + SIZE)}" for f in FIGURES)))
def plot(
    request: Request,
    figure: str = Path(..., description="the figure", json_schema_extra={"enum": list(FIGURES)}),
    fmt: str = Path(..., description="the file format", json_schema_extra={"enum": list(FORMATS)}),
    group_by: str | None = Query(None, description="the field the figure groups by (kl_combined, drift_box: several, "
                                                   "comma-separated; GET /v1/fields lists them)"),
    where: str | None = Query(None, description=f"the filters drawn: {WHERE_TEXT}; none: every filter"),
    metric: Metric | None = Query(None, description=METRIC_TEXT),
    bins: int | None = Query(None, ge=1, le=MAX_BINS, description="histogram bins (ridge: the KDE's grid; default "
                                                                "the figure's)"),
    weights: Weights | None = Query(None, description=WEIGHTS_TEXT),
    basis: BasisKind | None = Query(None, description=BASIS_TEXT),
    components: str | None = Query(None, description="density2d: two components, e.g. 0,1"),
    range: str | None = Query(None, description="density2d: lo,hi of both axes (default -3.3,3.3, the paper's)"),
    layer_id: int | None = Query(None, ge=0, le=2**31 - 1, description="layer_filters: the layer (default the first)"),
    color_by: GroupField | None = Query(None, description="quality: the field that colours the layers"),
    sparsity_gt: float | None = Query(None, ge=0, le=1, description="quality: the sparsity threshold drawn (0.5)"),
    entropy_norm_lt: float | None = Query(None, ge=-1e6, le=1e6, allow_inf_nan=False,
                                          description="quality: the low normalized entropy threshold drawn (0.5)"),
    entropy_norm_gt: float | None = Query(None, ge=-1e6, le=1e6, allow_inf_nan=False,
                                          description="quality: the high (random-like) threshold drawn (1.0)"),
    dpi: int | None = Query(None, ge=10, le=MAX_DPI, description="dots per inch (default 100)"),
    width: float | None = Query(None, ge=0.5, le=MAX_INCHES, description="inches (default the figure's)"),
    height: float | None = Query(None, ge=0.5, le=MAX_INCHES, description="inches (default the figure's)"),
    as_of: int | None = AS_OF,
    catalog: LiveCatalog = Depends(get_catalog),
    cache: FigureCache = Depends(get_figure_cache),
):
    if figure not in FIGURES:
        raise ApiError(404, "not_found", f"no figure {figure[:100]!r}; the figures: {', '.join(FIGURES)}")
    if fmt not in FORMATS:
        raise ApiError(404, "not_found", f"no format {fmt[:20]!r}; the formats: {', '.join(FORMATS)}")
    try:
        req = PlotRequest.of(figure, group_by=group_by, where=where_query(where), metric=metric, bins=bins, weights=weights,
                             basis=basis, components=components, range=range, layer_id=layer_id, color_by=color_by,
                             sparsity_gt=sparsity_gt, entropy_norm_lt=entropy_norm_lt,
                             entropy_norm_gt=entropy_norm_gt, dpi=dpi, width=width, height=height)
    except PlotParameterError as e:
        raise ApiError(400, "invalid_request", str(e)) from None
    except SelectionError as e:
        raise ApiError(400, "invalid_selection", str(e)) from None

    gen = catalog.generation()
    if as_of is not None:  # a version the store does not hold is a 404, also for a conditional request
        cur = gen.cursor()
        try:
            snapshot_at(gen, cur, as_of)
        finally:
            cur.close()
    key = json.dumps([*gen.key, as_of, fmt, req.resolved(), __version__, matplotlib.__version__],
                     sort_keys=True, default=str)
    etag = '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'
    # An SVG opened on its own is a document: it may run nothing and load nothing.
    headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
               "X-Store-Version": str(as_of or gen.snapshot.version),
               "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"}
    if_none_match = {t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")}
    if etag in if_none_match or "*" in if_none_match:
        return Response(status_code=304, headers=headers)
    data = cache.get(etag)
    if data is None:
        t0 = time.perf_counter()
        with analysis(catalog, gen, as_of) as a:
            try:
                data = render(draw(a, req), fmt, req.dpi)
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
