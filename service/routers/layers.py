"""/v1/layers/{layer_id}, /v1/layers/{layer_id}/filters (JSON or .npy), /v1/filters/{filter_id}."""
from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic_core import to_json

from cnnfilterdb.store import SHARDS, StoreDamaged

from .. import queries
from ..catalog import LiveCatalog
from ..deps import get_catalog, get_settings, respond
from ..errors import not_found
from ..params import FILTER_ID, LAYER_ID
from ..schemas import Filter, FilterPage, Layer, error_responses
from ..settings import Settings
from .models import layer_out

# Tagged per route: /v1/filters/{filter_id} is listed with the filters only.
router = APIRouter(responses=error_responses(400, 404, 422, 503,
                                             said={404: "Not found: no layer (or filter) of that id"}))

NPY_BATCH_ROWS = 1 << 16


def _layer(cur, layer_id: int) -> dict:
    row = queries.layer(cur, layer_id)
    if row is None:
        raise not_found("layer", layer_id)
    return row


@router.get("/v1/layers/{layer_id}", response_model=Layer, tags=["layers"],
            summary="One layer and its quality metrics")
def get_layer(layer_id: int = LAYER_ID, catalog: LiveCatalog = Depends(get_catalog)):
    """A 3x3 convolution layer: its model, depth, shape, range of filter ids and quality metrics
    (sparsity, variance entropy, orthogonality)."""
    with catalog.cursor() as cur:
        return respond(layer_out(_layer(cur, layer_id)))


def _verify(catalog: LiveCatalog, cur, first: int, last: int) -> None:
    """Check the checksums of the row groups holding filters first..last (StoreDamaged: a 503
    naming the shard and row group) before DuckDB reads them: it checks none itself."""
    catalog.generation().snapshot.held_shards(cur).verify_filter_ids(first, last)


def _as_filters(ids, W, model_id: int, layer_id: int) -> list[dict]:
    """Filters as plain dicts of the ``Filter`` shape (values straight from the store, of the
    declared types: serialized by pydantic-core without building a model per filter)."""
    W = np.asarray(W, dtype=np.float32).reshape(-1, 3, 3).tolist()
    return [{"filter_id": i, "model_id": model_id, "layer_id": layer_id, "w": w} for i, w in zip(np.asarray(ids).tolist(), W)]


@router.get("/v1/layers/{layer_id}/filters", response_model=FilterPage, tags=["layers"],
            summary="A layer's filters, as JSON pages or one .npy file",
            responses={200: {"content": {"application/x-npy": {}},
                             "description": "JSON page, or with format=npy the whole layer as a (n, 3, 3) float32 .npy"}})
def layer_filters(
    request: Request,
    layer_id: int = LAYER_ID,
    format: Literal["json", "npy"] = Query("json", description="json: a page of filters, each a 3x3 array; npy: "
                                                               "the whole layer as one (n, 3, 3) float32 array"),
    offset: int = Query(0, ge=0, le=2**40, description="JSON: how many of the layer's filters to skip (default 0)"),
    limit: int | None = Query(None, ge=1, description="JSON: filters per page (default 1000; at most filters_json_max "
                                                      "of GET /v1/stats limits, a larger limit is capped)"),
    catalog: LiveCatalog = Depends(get_catalog),
    settings: Settings = Depends(get_settings),
):
    """The layer's filters in filter_id order, each a 3x3 array of weights (row-major, as trained).
    As JSON a page at a time (`next` is the URL of the next page, null on the last); with
    `format=npy` the whole layer as a NumPy file, streamed (`numpy.load` reads it)."""
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
            _verify(catalog, cur, lo, hi)
            res = queries.filter_weights(cur, lo, hi)
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
    gen = catalog.generation()
    cur = gen.cursor()
    try:
        gen.snapshot.held_shards(cur).verify_filter_ids(first, last)  # see _verify
        batches = iter(queries.filter_weight_batches(cur, first, last, NPY_BATCH_ROWS))
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


@router.get("/v1/filters/{filter_id}", response_model=Filter, tags=["filters"], summary="One filter's 3x3 weights")
def get_filter(filter_id: int = FILTER_ID, catalog: LiveCatalog = Depends(get_catalog)):
    """A filter's weights as a 3x3 array (row-major, as trained), with its model and layer."""
    with catalog.cursor() as cur:
        _verify(catalog, cur, filter_id, filter_id)
        row = queries.filter_row(cur, filter_id)
    if row is None:
        raise not_found("filter", filter_id)
    fid, mid, lid, *w = row
    return respond(Filter(**_as_filters([fid], [w], mid, lid)[0]))
