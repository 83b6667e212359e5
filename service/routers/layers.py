"""/v1/layers/{layer_id}, /v1/layers/{layer_id}/filters (JSON or .npy), /v1/filters/{filter_id}."""
from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import duckdb
import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from pydantic_core import to_json

from cnnfilterdb.catalog import store_id
from cnnfilterdb.errors import first_line
from cnnfilterdb.layout import SHARDS, StoreDamaged, damage_in, relative_to_store

from .. import queries
from ..catalog import LiveCatalog
from ..deps import get_catalog, get_settings, respond
from ..errors import ApiError, not_found
from ..params import FILTER_ID, LAYER_ID
from ..schemas import Filter, FilterPage, Layer, error_responses
from ..settings import Settings
from .export import ClosingStream, _Pump, _releasing, _take_a_stalled_slot
from .models import layer_out

# Tagged per route: /v1/filters/{filter_id} is listed with the filters only.
router = APIRouter(responses=error_responses(400, 404, 422, 503,
                                             said={404: "Not found: no layer (or filter) of that id"}))

NPY_BATCH_ROWS = 1 << 16
JSON_BATCH_ROWS = 2048  # filters encoded at a time: the GIL is held for a short piece of work at a time


class LayerFiltersSlot:
    """One of the layer_filters_concurrency slots of GET /v1/layers/{id}/filters (JSON or .npy),
    taken before any work (a FastAPI dependency: ``layer_filters_slot``); none free: a 429 at once,
    unless a running answer's client has taken no data for export_stall_s (its slot is taken back,
    as for exports). The answer is produced in a thread at export_nice (routers/export._Pump) and
    sent by a ClosingStream, which gives the slot back however the response ends; an answer never
    handed over (an error first) gives it back when the request ends. A review measured /health's
    p99 at 1.4 s with 30 clients each fetching a 1.1 MB JSON page, encoded at full priority, all at once."""

    def __init__(self, catalog: LiveCatalog):
        self.catalog = catalog
        slots, sending = catalog.layer_filter_slots, catalog.layer_filters_sending
        if not slots.acquire(blocking=False) and not _take_a_stalled_slot(catalog, slots, sending):
            raise ApiError(429, "layer_filters_busy", f"{catalog.settings.layer_filters_concurrency} answers of a "
                                                      f"layer's filters are being sent; retry later",
                           headers={"Retry-After": "1"})
        self.handed = False

    def stream(self, chunks: Iterator[bytes], **kwargs) -> ClosingStream:
        s = self.catalog.settings
        response = ClosingStream(_Pump(_releasing(chunks, self.catalog, self.catalog.layer_filter_slots),
                                       s.export_nice),
                                 s.export_send_timeout_s, self.catalog.layer_filters_sending, **kwargs)
        self.handed = True
        return response


def layer_filters_slot(catalog: LiveCatalog = Depends(get_catalog)) -> Iterator[LayerFiltersSlot]:
    slot = LayerFiltersSlot(catalog)
    try:
        yield slot
    finally:
        if not slot.handed:
            catalog.layer_filter_slots.release()


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


def _verify(catalog: LiveCatalog, cur, first: int, last: int):
    """Check the checksums of the row groups holding filters first..last, and of every shard's
    footer as it is now (StoreDamaged: a 503 naming the shard and row group), before DuckDB reads
    them: it checks none itself. Returns the held shards checked."""
    held = catalog.generation().snapshot.held_shards(cur)
    held.verify_filter_ids(first, last)
    return held


@contextmanager
def _duckdb_reading(catalog: LiveCatalog, held, first: int, last: int) -> Iterator[None]:
    """DuckDB's errors reading the shards for the filters first..last (it parses their footers and
    pages itself: one damaged after the checks of ``_verify`` is a TProtocolException, a column
    "not found", ...) as StoreDamaged naming the shard: a 503 store_damaged, never a 500. The shard
    is the one DuckDB's message names, else the one the checks, run again, find damaged now."""
    try:
        yield
    except duckdb.Error as e:
        if isinstance(e, (duckdb.OutOfMemoryException, duckdb.InterruptException)):
            raise  # a busy service or a cancelled query (errors.py), not damage
        if (damage := damage_in(catalog.root, e)) is None:
            try:
                held.verify_filter_ids(first, last)
            except StoreDamaged as found:
                damage = found
        if damage is None:
            damage = StoreDamaged(SHARDS, f"a shard could not be read ({relative_to_store(catalog.root, first_line(e))})")
        raise damage from None


def _as_filters(ids, W, model_id: int, layer_id: int) -> list[dict]:
    """Filters as plain dicts of the ``Filter`` shape (values straight from the store, of the
    declared types: serialized by pydantic-core without building a model per filter)."""
    W = np.asarray(W, dtype=np.float32).reshape(-1, 3, 3).tolist()
    return [{"filter_id": i, "model_id": model_id, "layer_id": layer_id, "w": w} for i, w in zip(np.asarray(ids).tolist(), W)]


@router.get("/v1/layers/{layer_id}/filters", response_model=FilterPage, tags=["layers"],
            summary="A layer's filters, as JSON pages or one .npy file",
            responses={200: {"content": {"application/x-npy": {}},
                             "description": "JSON page, or with format=npy the whole layer as a (n, 3, 3) float32 .npy"},
                        **error_responses(429, said={429: "layer_filters_concurrency answers of a layer's filters "
                                                          "are being sent; retry after Retry-After"})})
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
    slot: LayerFiltersSlot = Depends(layer_filters_slot),
):
    """The layer's filters in filter_id order, each a 3x3 array of weights (row-major, as trained).
    As JSON a page at a time (`next` is the URL of the next page, null on the last); with
    `format=npy` the whole layer as a NumPy file, streamed (`numpy.load` reads it). At most
    layer_filters_concurrency such answers are produced at once (GET /v1/stats limits); more get a 429."""
    if format == "npy":
        with catalog.cursor() as cur:
            layer = _layer(cur, layer_id)
            provenance = _provenance(cur)
        first, last, n = layer["filter_id_first"], layer["filter_id_last"], layer["n_filters"]
        return slot.stream(_npy_stream(catalog, first, last, n), media_type="application/x-npy",
                           headers={"Content-Disposition": f'attachment; filename="layer-{layer_id}.npy"', **provenance})
    # Capped, and the response shows the limit used; format=npy streams whole layers.
    limit = min(limit or 1000, settings.filters_json_max)
    ids, W = np.empty(0, np.int64), np.empty((0, 9), np.float32)
    with catalog.cursor() as cur:
        layer = _layer(cur, layer_id)
        provenance = _provenance(cur)
        first, last, n = layer["filter_id_first"], layer["filter_id_last"], layer["n_filters"]
        lo, hi = first + offset, min(last, first + offset + limit - 1)
        if lo <= last:
            held = _verify(catalog, cur, lo, hi)
            with _duckdb_reading(catalog, held, lo, hi):
                res = queries.filter_weights(cur, lo, hi)
            if len(res["filter_id"]) != hi - lo + 1:  # filter ids of a damaged shard
                raise StoreDamaged(SHARDS, f"layer {layer_id}'s filters {lo}..{hi} read back as "
                                           f"{len(res['filter_id'])} rows")
            ids, W = res["filter_id"], np.stack([res[f"w{i}"] for i in range(9)], axis=1)
    nxt = f"{request.url.path}?offset={offset + limit}&limit={limit}" if hi < last else None
    head = {"layer_id": layer_id, "n_filters": n, "offset": offset, "limit": limit}
    return slot.stream(_json_page(head, ids, W, layer["model_id"], layer_id, nxt), media_type="application/json",
                       headers=provenance)


def _provenance(cur) -> dict[str, str]:
    """The store and version filters were read from, as the exports and figures name them."""
    return {"X-Store-Id": store_id(cur), "X-Store-Version": str(queries.store_version(cur))}


def _json_page(head: dict, ids, W, model_id: int, layer_id: int, nxt: str | None) -> Iterator[bytes]:
    """The FilterPage ``head`` + items + next as JSON, the items encoded JSON_BATCH_ROWS at a time
    (the same bytes as one to_json of the page)."""
    yield to_json(head)[:-1] + b',"items":['
    for i in range(0, len(ids), JSON_BATCH_ROWS):
        items = to_json(_as_filters(ids[i:i + JSON_BATCH_ROWS], W[i:i + JSON_BATCH_ROWS], model_id, layer_id))
        yield (b"," if i else b"") + items[1:-1]
    yield b'],"next":' + to_json(nxt) + b"}"


def _npy_stream(catalog: LiveCatalog, first: int, last: int, n: int) -> Iterator[bytes]:
    """The filters first..last as a .npy, in chunks. The query runs and its first batch is read
    here, before the response starts, so that a shard that cannot be read is an error status (503)
    rather than a cut stream."""
    gen = catalog.generation()
    cur = gen.cursor()
    try:
        held = gen.snapshot.held_shards(cur)
        held.verify_filter_ids(first, last)  # see _verify
        reading = lambda: _duckdb_reading(catalog, held, first, last)  # noqa: E731
        with reading():
            batches = iter(queries.filter_weight_batches(cur, first, last, NPY_BATCH_ROWS))
            head = next(batches, None)
    except BaseException:
        cur.close()
        raise
    return _npy_chunks(cur, n, [head] if head is not None else [], batches, reading)


def _npy_chunks(cur, n: int, head: list, batches, reading) -> Iterator[bytes]:
    try:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (n, 3, 3)})
        yield header.getvalue()
        sent = 0
        with reading():  # DuckDB failing part-way: the stream is cut, the damage named (the log)
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
        held = _verify(catalog, cur, filter_id, filter_id)
        with _duckdb_reading(catalog, held, filter_id, filter_id):
            row = queries.filter_row(cur, filter_id)
    if row is None:
        raise not_found("filter", filter_id)
    fid, mid, lid, *w = row
    return respond(Filter(**_as_filters([fid], [w], mid, lid)[0]))
