"""The paper's statistics: /v1/divergence, /v1/pca, /v1/histograms, /v1/kde, /v1/density2d,
/v1/quality/degenerate, /v1/models/{model_id}/similar. The math is in cnnfilterdb/ (analysis.py,
scan.py, stats/); this module maps requests to it and its errors to statuses."""
from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse

from cnnfilterdb.analysis import Analysis
from cnnfilterdb.requests import (
    ANALYSES,
    AnalysisSpec,
    DegenerateRequest,
    Density2dRequest,
    DivergenceRequest,
    HistogramsRequest,
    KdeRequest,
    Metric,
    PcaRequest,
    SimilarRequest,
    Weights,
    analyses,
    build,
    parse_where,
    plain_type,
)
from cnnfilterdb.snapshot import Snapshot

from .. import schemas
from ..catalog import Generation, LiveCatalog
from ..deps import get_catalog, respond
from ..errors import ApiError, not_found
from ..jsonable import jsonable
from ..params import AS_OF, MODEL_ID, WHERE_TEXT, query
from ..schemas import (
    DegenerateResponse,
    Density2dResponse,
    DivergenceResponse,
    HistogramsResponse,
    KdeResponse,
    PcaResponse,
    SimilarResponse,
    error_responses,
)
from ..strict import StrictJsonRoute

router = APIRouter(route_class=StrictJsonRoute, tags=["analysis"], responses=error_responses(400, 404, 422, 429, 503))


@contextmanager
def analysis(catalog: LiveCatalog, gen: Generation | None = None, as_of: int | None = None) -> Iterator[Analysis]:
    # At most analysis_concurrency computations at once (each is bounded in time and memory by the
    # limits of cnnfilterdb/analysis.py; together they stay bounded too); at most analysis_queue
    # requests wait for a turn, each up to analysis_wait_s, then get a 429. The queue is bounded
    # because a waiting request holds one of the server's threads: 80 waiting figure requests
    # stalled every endpoint, /health included, for 14 s.
    settings = catalog.settings
    busy = ApiError(429, "analysis_busy", f"{settings.analysis_concurrency} analyses are running and "
                                          f"{settings.analysis_queue} waiting; retry soon", headers={"Retry-After": "1"})
    if not catalog.analysis_slots.acquire(blocking=False):
        if catalog.analysis_queue is None or not catalog.analysis_queue.acquire(blocking=False):
            raise busy
        try:
            turn = catalog.analysis_slots.acquire(timeout=settings.analysis_wait_s)
        finally:
            catalog.analysis_queue.release()
        if not turn:
            raise busy
    try:
        with _analysis(catalog, gen or catalog.generation(), as_of) as a:
            yield a
    finally:
        catalog.analysis_slots.release()


def snapshot_at(gen: Generation, cur, as_of: int | None) -> Snapshot:
    """The generation's snapshot of store version ``as_of`` (None: the current one); VersionError
    (a 404 saying which versions the store holds) if it has none."""
    return gen.snapshot_at(cur, as_of)


@contextmanager
def _analysis(catalog: LiveCatalog, gen: Generation, as_of: int | None) -> Iterator[Analysis]:
    cur = gen.cursor()  # of the same generation as the snapshot
    try:
        # The generation's snapshot of a version (basis, shards, per-layer histograms) is read once
        # and kept: repeated default-parameter queries then read no filter and only the histogram
        # rows they sum.
        yield Analysis(cur, catalog.root, snapshot=snapshot_at(gen, cur, as_of))
    finally:
        cur.close()


def where_query(text: str | None) -> dict | None:
    """A ``where`` query parameter (GET routes): a JSON object checked as the analysis bodies'
    ``where`` (the engine's grammar: the same messages for the same mistakes)."""
    return parse_where(text)


@router.post("/v1/divergence", response_model=DivergenceResponse,
             summary=ANALYSES["divergence"].summary)
def divergence(req: DivergenceRequest, catalog: LiveCatalog = Depends(get_catalog)):
    """The paper's measure of how differently groups of models learn filters. The selected filters
    are split by `group_by` (natural order of the labels); each group's filters are projected on the
    9 PCA components of the basis, and per component binned into a histogram over the basis range
    (`bins` bins). The divergence of two groups is the sum over the components of `metric` between
    their histograms, weighted by `weights`. The d x d `matrix` holds every pair; `drift`
    summarizes its upper triangle (mean, median, quartiles, min, max)."""
    with analysis(catalog, as_of=req.as_of) as a:
        out = a.divergence(req)
    return respond(DivergenceResponse(**jsonable(out)))


@router.post("/v1/pca", response_model=PcaResponse, summary=ANALYSES["pca"].summary)
def pca(req: PcaRequest, catalog: LiveCatalog = Depends(get_catalog)):
    """PCA with 9 components of the selected filters, each first scaled by its absolute peak
    (f / max|f|): their mean, the components as 3x3 eigen-images by decreasing variance, the
    explained variance (and its ratio) and the 9 x 9 covariance."""
    with analysis(catalog, as_of=req.as_of) as a:
        return respond(PcaResponse(**a.pca(req)))


@router.post("/v1/histograms", response_model=HistogramsResponse,
             summary=ANALYSES["histograms"].summary)
def histograms(req: HistogramsRequest, catalog: LiveCatalog = Depends(get_catalog)):
    """The selected filters projected on the basis' 9 components: per group (`group_by`; absent,
    one group) and component, the counts of their coefficients in `bins` equal bins over the basis
    range, with the bin edges. The data of the paper's ridge plots."""
    with analysis(catalog, as_of=req.as_of) as a:
        out = a.histograms(req)
    return respond(HistogramsResponse(**jsonable(out)))


@router.post("/v1/density2d", response_model=Density2dResponse,
             summary=ANALYSES["density2d"].summary)
def density2d(req: Density2dRequest, catalog: LiveCatalog = Depends(get_catalog)):
    """The selected filters projected on two of the basis' components: the counts in a bins x bins
    grid over `range` (default the basis range), with the edges. The paper's scatter density."""
    with analysis(catalog, as_of=req.as_of) as a:
        out = a.density2d(req)
    return respond(Density2dResponse(**jsonable(out)))


@router.post("/v1/kde", response_model=KdeResponse,
             summary=ANALYSES["kde"].summary)
def kde(req: KdeRequest, catalog: LiveCatalog = Depends(get_catalog)):
    """Per group (`group_by`; absent, one group) and component: the Gaussian kernel density of the
    coefficients with Silverman's bandwidth, on the centres of `bins` bins over the basis range, with
    each component's standard deviation and quartiles. The curves of the paper's ridge plots."""
    with analysis(catalog, as_of=req.as_of) as a:
        out = a.kde(req)
    return respond(KdeResponse(**jsonable(out)))


@router.get("/v1/quality/degenerate", response_model=DegenerateResponse,
            summary=ANALYSES["degenerate"].summary)
def degenerate(
    sparsity_gt: float = query(DegenerateRequest, "sparsity_gt"),
    entropy_norm_lt: float = query(DegenerateRequest, "entropy_norm_lt"),
    entropy_norm_gt: float | None = query(DegenerateRequest, "entropy_norm_gt"),
    where: str | None = Query(None, description=f"the layers to check: {WHERE_TEXT}; none: every layer"),
    limit: int = query(DegenerateRequest, "limit"),
    offset: int = query(DegenerateRequest, "offset"),
    as_of: int | None = AS_OF,
    catalog: LiveCatalog = Depends(get_catalog),
):
    """The layers of the selection that meet any of the thresholds, in layer order, with their
    quality metrics and which flags they raise (`sparse`, `low_entropy`, `random_like`).
    variance_entropy_norm is a layer's variance entropy over that expected of random filters:
    near 0 its filters are alike, near 1 and above random-like."""
    req = build(DegenerateRequest, sparsity_gt=sparsity_gt, entropy_norm_lt=entropy_norm_lt,
                entropy_norm_gt=entropy_norm_gt, where=where_query(where), limit=limit, offset=offset, as_of=as_of)
    with analysis(catalog, as_of=req.as_of) as a:
        out = a.degenerate(req)
    return respond(DegenerateResponse(**jsonable(out)))


@router.get("/v1/models/{model_id}/similar", response_model=SimilarResponse,
            summary=ANALYSES["similar"].summary)
def similar(model_id: int = MODEL_ID,
            k: int = query(SimilarRequest, "k"),
            metric: Metric = query(SimilarRequest, "metric"),
            weights: Weights = query(SimilarRequest, "weights"),
            where: str | None = Query(None, description=f"the candidate models: {WHERE_TEXT}; none: every model"),
            as_of: int | None = AS_OF, catalog: LiveCatalog = Depends(get_catalog)):
    """Each model's filters (all its layers) as histograms of their coefficients on the global
    basis, compared as in POST /v1/divergence: the k models nearest to this one, nearest first,
    with their distance."""
    req = build(SimilarRequest, model_id=model_id, k=k, metric=metric, weights=weights, where=where_query(where),
                as_of=as_of)
    with analysis(catalog, as_of=req.as_of) as a:
        try:
            out = a.similar(req)
        except LookupError:
            raise not_found("model", model_id) from None
    return respond(SimilarResponse(**jsonable(out)))


# ---- the analyses without a route above: served from requests.ANALYSES --------------------------
def _served(name: str, spec: AnalysisSpec) -> None:
    """A route for an analysis that has none written above: POST takes the request type as its
    body; GET its fields as query parameters (declared by ``params.query``; ``where`` as JSON
    text, as the other GET routes), path parameters such as ``{model_id}`` from the path."""
    response = getattr(schemas, spec.response) if spec.response else None
    fields = spec.request.model_fields

    catalog = inspect.Parameter("catalog", inspect.Parameter.KEYWORD_ONLY, default=Depends(get_catalog),
                                annotation=LiveCatalog)
    if spec.method == "POST":
        def endpoint(req, catalog):
            return answer_with(req, catalog)
        params = [inspect.Parameter("req", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=spec.request), catalog]
    else:
        def endpoint(catalog, **values):
            if "where" in values:
                values["where"] = where_query(values["where"])
            return answer_with(build(spec.request, **values), catalog)
        params = [catalog]
        for f, info in fields.items():
            if "{" + f + "}" in spec.path:
                default = Path(..., description=info.description)
            elif f == "where":
                default = Query(None, description=f"{info.description}: {WHERE_TEXT}")
            else:
                default = query(spec.request, f)
            annotation = str | None if f == "where" else plain_type(info.annotation)
            params.append(inspect.Parameter(f, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))

    def answer_with(req, catalog):
        with analysis(catalog, as_of=req.as_of) as a:
            out = jsonable(getattr(a, name)(req))
        return respond(response(**out)) if response is not None else JSONResponse(out)

    endpoint.__signature__ = inspect.Signature(params)
    endpoint.__name__ = name
    endpoint.__doc__ = (getattr(Analysis, name).__doc__ or spec.summary).split("\n\n")[0]
    router.add_api_route(spec.path, endpoint, methods=[spec.method], response_model=response, summary=spec.summary)


for _name, _spec in analyses():
    if not any(getattr(r, "path", None) == _spec.path for r in router.routes):
        _served(_name, _spec)
