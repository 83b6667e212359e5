"""The paper's statistics: /v1/divergence, /v1/pca, /v1/histograms, /v1/kde, /v1/density2d,
/v1/quality/degenerate, /v1/models/{model_id}/similar. The math is in cnnfilterdb/ (analysis.py,
scan.py, stats/); this module maps requests to it and its errors to statuses."""
from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Iterator

from fastapi import APIRouter, Depends, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from cnnfilterdb.analysis import DEGENERATE_THRESHOLDS, Analysis, Snapshot
from cnnfilterdb.selection import EmptySelectionError, SelectionError
from cnnfilterdb.store import VersionError

from ..catalog import Generation, LiveCatalog
from ..deps import get_catalog, respond
from ..errors import ApiError, not_found
from ..strict import StrictJsonRoute
from ..jsonable import jsonable
from ..schemas import (DegenerateResponse, Density2dRequest, Density2dResponse, DivergenceRequest,
                       DivergenceResponse, ErrorResponse, HistogramsRequest, HistogramsResponse, KdeRequest,
                       KdeResponse, Metric, PcaRequest, PcaResponse, SimilarResponse, Weights, Where)

WHERE_QUERY = 'a selection as JSON, as the analysis bodies\' where, e.g. {"task": ["Classification"]}'
AS_OF = Query(None, ge=1, le=2**31 - 1, description="the store version to read (GET /v1/versions); default the current one")

router = APIRouter(route_class=StrictJsonRoute, tags=["analysis"], responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
                                                 422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}})


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
    """The generation's snapshot of store version ``as_of`` (None: the current one), or a 404
    saying which versions the store holds."""
    try:
        return gen.snapshot_at(cur, as_of)
    except VersionError as e:
        raise ApiError(404, "unknown_version", str(e)) from None


@contextmanager
def _analysis(catalog: LiveCatalog, gen: Generation, as_of: int | None) -> Iterator[Analysis]:
    cur = gen.cursor()  # of the same generation as the snapshot
    try:
        # The generation's snapshot of a version (basis, shards, per-layer histograms) is read once
        # and kept: repeated default-parameter queries then read no filter and only the histogram
        # rows they sum.
        snapshot = snapshot_at(gen, cur, as_of)
        try:
            yield Analysis(cur, catalog.root, snapshot=snapshot)
        except EmptySelectionError as e:
            raise ApiError(404, "empty_selection", str(e)) from None
        except SelectionError as e:
            raise ApiError(400, "invalid_selection", str(e)) from None
    finally:
        cur.close()


def where_query(text: str | None) -> dict | None:
    """A ``where`` query parameter (GET routes): a JSON object validated as the analysis bodies'
    ``where`` (the same messages for the same mistakes)."""
    if text is None or not text.strip():  # given empty: no selection
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(400, "invalid_request", f"where: not JSON ({e.msg} at character {e.pos})") from None
    except RecursionError:
        raise ApiError(400, "invalid_request", "where: nested too deeply") from None
    if value is None:
        return None
    try:
        return Where.model_validate(value).conditions()
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("where", *err["loc"])} for err in e.errors()]) from None


def _where(req) -> dict | None:
    return req.where.conditions() if req.where is not None else None


@router.post("/v1/divergence", response_model=DivergenceResponse)
def divergence(req: DivergenceRequest, catalog: LiveCatalog = Depends(get_catalog)):
    """The d x d divergence matrix between the groups of a selection, with drift statistics (SPEC 6.2)."""
    with analysis(catalog, as_of=req.as_of) as a:
        out = a.divergence(req.group_by, _where(req), req.metric, req.bins, req.weights, req.basis)
    return respond(DivergenceResponse(**jsonable(out)))


@router.post("/v1/pca", response_model=PcaResponse)
def pca(req: PcaRequest, catalog: LiveCatalog = Depends(get_catalog)):
    """PCA of a selection's peak-scaled filters: mean, eigen-images, explained variance (SPEC 6.1)."""
    with analysis(catalog, as_of=req.as_of) as a:
        return respond(PcaResponse(**a.pca(_where(req))))


@router.post("/v1/histograms", response_model=HistogramsResponse)
def histograms(req: HistogramsRequest, catalog: LiveCatalog = Depends(get_catalog)):
    """Per group and component: the coefficient histogram over the basis range (ridge plots)."""
    with analysis(catalog, as_of=req.as_of) as a:
        out = a.histograms(_where(req), req.group_by, req.bins, req.basis)
    return respond(HistogramsResponse(**jsonable(out)))


@router.post("/v1/density2d", response_model=Density2dResponse)
def density2d(req: Density2dRequest, catalog: LiveCatalog = Depends(get_catalog)):
    """2-D histogram of two components' coefficients (the paper's scatter density)."""
    with analysis(catalog, as_of=req.as_of) as a:
        out = a.density2d(_where(req), tuple(req.components), req.bins, req.basis, req.range)
    return respond(Density2dResponse(**jsonable(out)))


@router.post("/v1/kde", response_model=KdeResponse)
def kde(req: KdeRequest, catalog: LiveCatalog = Depends(get_catalog)):
    """Per group and component: the Gaussian KDE of the coefficients, Silverman's bandwidth (the ridge plots)."""
    with analysis(catalog, as_of=req.as_of) as a:
        out = a.kde(_where(req), req.group_by, req.bins, req.basis)
    return respond(KdeResponse(**jsonable(out)))


@router.get("/v1/quality/degenerate", response_model=DegenerateResponse)
def degenerate(
    sparsity_gt: float = Query(DEGENERATE_THRESHOLDS["sparsity_gt"], ge=0, le=1,
                               description="flag layers with sparsity above this"),
    entropy_norm_lt: float = Query(DEGENERATE_THRESHOLDS["entropy_norm_lt"], allow_inf_nan=False,
                                   description="flag layers with variance_entropy_norm below this (redundant)"),
    entropy_norm_gt: float | None = Query(DEGENERATE_THRESHOLDS["entropy_norm_gt"], allow_inf_nan=False,
                                          description="flag layers with variance_entropy_norm above this (random-like)"),
    where: str | None = Query(None, description=WHERE_QUERY),
    limit: int = Query(100, ge=1, le=10_000),
    offset: int = Query(0, ge=0, le=2**40),
    as_of: int | None = AS_OF,
    catalog: LiveCatalog = Depends(get_catalog),
):
    """Layers over any of the thresholds (defaults: sparsity > 0.5, variance_entropy_norm < 0.5 or > 1.0)."""
    with analysis(catalog, as_of=as_of) as a:
        out = a.degenerate(sparsity_gt, entropy_norm_lt, entropy_norm_gt, where_query(where), limit, offset)
    return respond(DegenerateResponse(**jsonable(out)))


@router.get("/v1/models/{model_id}/similar", response_model=SimilarResponse, tags=["models"])
def similar(model_id: int = Path(..., ge=0, le=2**31 - 1), k: int = Query(5, ge=1, le=1000), metric: Metric = "kl_sym",
            weights: Weights = "explained_variance",
            where: str | None = Query(None, description="the candidate models: " + WHERE_QUERY),
            as_of: int | None = AS_OF, catalog: LiveCatalog = Depends(get_catalog)):
    """The k models whose filter distributions (all their layers, global basis) are nearest."""
    selection = where_query(where)
    with analysis(catalog, as_of=as_of) as a:
        try:
            out = a.similar(model_id, k, metric, weights, selection)
        except LookupError:
            raise not_found("model", model_id) from None
    return respond(SimilarResponse(**jsonable(out)))
