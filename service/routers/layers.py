"""/v1/layers/{layer_id}, /v1/layers/{layer_id}/filters (JSON or .npy), /v1/filters/{filter_id}."""
from __future__ import annotations

import io
import itertools
from typing import Iterator, Literal

import numpy as np
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic_core import to_json

from cnnfilterdb.store import SHARDS, StoreDamaged

from ..catalog import LiveCatalog
from ..deps import get_catalog, get_settings, respond, rows_as_dicts
from ..errors import not_found
from ..schemas import ErrorResponse, Filter, FilterPage, Layer
from ..settings import Settings
from .models import LAYER_COLUMNS, layer_out

router = APIRouter(tags=["layers"], responses={404: {"model": ErrorResponse}, 400: {"model": ErrorResponse},
                                               422: {"model": ErrorResponse}})

WEIGHTS = ", ".join(f"w{i}" for i in range(9))
NPY_BATCH_ROWS = 1 << 16


def _layer(cur, layer_id: int) -> dict:
    cur.execute(f"SELECT {LAYER_COLUMNS} FROM layers l JOIN models m USING (model_id) WHERE l.layer_id = ?", [layer_id])
    rows = rows_as_dicts(cur)
    if not rows:
        raise not_found("layer", layer_id)
    return rows[0]


@router.get("/v1/layers/{layer_id}", response_model=Layer)
def get_layer(layer_id: int = Path(..., ge=0, le=2**31 - 1), catalog: LiveCatalog = Depends(get_catalog)):
    with catalog.cursor() as cur:
        return respond(layer_out(_layer(cur, layer_id)))


def _as_filters(ids, W, model_id: int, layer_id: int) -> list[dict]:
    """Filters as plain dicts of the ``Filter`` shape (values straight from the store, of the
    declared types: serialized by pydantic-core without building a model per filter)."""
    W = np.asarray(W, dtype=np.float32).reshape(-1, 3, 3).tolist()
    return [{"filter_id": i, "model_id": model_id, "layer_id": layer_id, "w": w} for i, w in zip(np.asarray(ids).tolist(), W)]


@router.get("/v1/layers/{layer_id}/filters", response_model=FilterPage,
            responses={200: {"content": {"application/x-npy": {}},
                             "description": "JSON page, or with format=npy the whole layer as a (n, 3, 3) float32 .npy"}})
def layer_filters(
    request: Request,
    layer_id: int = Path(..., ge=0, le=2**31 - 1),
    format: Literal["json", "npy"] = Query("json", description="json: a page of 3x3 arrays; npy: the whole layer, streamed"),
    offset: int = Query(0, ge=0, le=2**40),
    limit: int | None = Query(None, ge=1, description="page size for JSON (default 1000, capped at the maximum in /v1/stats limits)"),
    catalog: LiveCatalog = Depends(get_catalog),
    settings: Settings = Depends(get_settings),
):
    if format == "npy":
        with catalog.cursor() as cur:
            layer = _layer(cur, layer_id)
        first, last, n = layer["filter_id_first"], layer["filter_id_last"], layer["n_filters"]
        return StreamingResponse(_npy_stream(catalog, first, last, n), media_type="application/x-npy",
                                 headers={"Content-Disposition": f'attachment; filename="layer-{layer_id}.npy"'})
    # Capped, and the response shows the limit used; format=npy streams whole layers.
    limit = min(limit or 1000, settings.filters_json_max)
    items: list[dict] = []
    with catalog.cursor() as cur:
        layer = _layer(cur, layer_id)
        first, last, n = layer["filter_id_first"], layer["filter_id_last"], layer["n_filters"]
        lo, hi = first + offset, min(last, first + offset + limit - 1)
        if lo <= last:
            res = cur.execute(f"SELECT filter_id, {WEIGHTS} FROM filters WHERE filter_id BETWEEN ? AND ? "
                              "ORDER BY filter_id", [lo, hi]).fetchnumpy()
            if len(res["filter_id"]) != hi - lo + 1:  # filter ids of a damaged shard
                raise StoreDamaged(SHARDS, f"layer {layer_id}'s filters {lo}..{hi} read back as "
                                           f"{len(res['filter_id'])} rows")
            W = np.stack([res[f"w{i}"] for i in range(9)], axis=1)
            items = _as_filters(res["filter_id"], W, layer["model_id"], layer_id)
    nxt = f"{request.url.path}?offset={offset + limit}&limit={limit}" if hi < last else None
    page = {"layer_id": layer_id, "n_filters": n, "offset": offset, "limit": limit, "items": items, "next": nxt}
    return Response(content=to_json(page), media_type="application/json")


def _npy_stream(catalog: LiveCatalog, first: int, last: int, n: int) -> Iterator[bytes]:
    """The filters first..last as a .npy, in chunks. The query runs and its first batch is read
    here, before the response starts, so that a shard that cannot be read is an error status (503)
    rather than a cut stream."""
    cur = catalog.generation().cursor()
    try:
        batches = iter(cur.execute(f"SELECT {WEIGHTS} FROM filters WHERE filter_id BETWEEN ? AND ? "
                                   "ORDER BY filter_id", [first, last]).to_arrow_reader(NPY_BATCH_ROWS))
        head = next(batches, None)
    except BaseException:
        cur.close()
        raise
    return _npy_chunks(cur, n, [head] if head is not None else [], batches)


def _npy_chunks(cur, n: int, head: list, batches) -> Iterator[bytes]:
    try:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (n, 3, 3)})
        yield header.getvalue()
        sent = 0
        for batch in itertools.chain(head, batches):
            sent += batch.num_rows
            if sent > n:  # a damaged shard's filter ids: never a body that contradicts its header
                raise StoreDamaged(SHARDS, f"more than the layer's {n} filters read back")
            W = np.empty((batch.num_rows, 9), dtype="<f4")
            for j in range(9):
                W[:, j] = batch.column(j).to_numpy(zero_copy_only=False)
            yield W.tobytes()
        if sent != n:  # raised mid-stream, this ends the connection: the client sees a cut body
            raise StoreDamaged(SHARDS, f"{sent} of the layer's {n} filters read back")
    finally:
        cur.close()


@router.get("/v1/filters/{filter_id}", response_model=Filter, tags=["filters"])
def get_filter(filter_id: int = Path(..., ge=0, le=2**63 - 1), catalog: LiveCatalog = Depends(get_catalog)):
    with catalog.cursor() as cur:
        res = cur.execute(f"SELECT filter_id, model_id, layer_id, {WEIGHTS} FROM filters WHERE filter_id = ?",
                          [filter_id]).fetchall()
    if not res:
        raise not_found("filter", filter_id)
    fid, mid, lid, *w = res[0]
    return respond(Filter(**_as_filters([fid], [w], mid, lid)[0]))
