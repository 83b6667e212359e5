"""GET /v1/filters: any selection of filters, streamed as Parquet, Arrow IPC, .npy or CSV.

No row cap: the response streams in bounded memory (cnnfilterdb/export.py) and names the store
version it was read from (``X-Store-Version``, and the Parquet/Arrow schema metadata). The
selection is resolved before the first byte, so a bad ``where``, an unknown version or a missing
shard is an ordinary JSON error; a fault found part-way (a shard damaged under a running export)
cuts the response off, never completes it wrongly. At most ``export_concurrency`` exports run at
once (each holds a disk stream and a few reading threads); more get a 429.
"""
from __future__ import annotations

import json
from typing import Iterator, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from cnnfilterdb.export import FORMATS, export_chunks

from ..catalog import LiveCatalog
from ..deps import get_catalog
from ..errors import ApiError
from ..schemas import ErrorResponse
from .analysis import AS_OF, WHERE_QUERY, analysis, where_query

ExportFormat = Literal[tuple(FORMATS)]  # type: ignore[valid-type]

router = APIRouter(tags=["filters"], responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
                                                422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}})


@router.get("/v1/filters",
            responses={200: {"content": {media: {} for media, _ in FORMATS.values()},
                             "description": "filter_id, model_id, layer_id, w0..w8 of every selected filter, in "
                                            "filter_id order; X-Store-Version and X-Rows name the version and count"}},
            response_class=StreamingResponse)
def export_filters(
    where: str | None = Query(None, description=WHERE_QUERY + "; none: every filter"),
    format: ExportFormat = Query("parquet", description="parquet, arrow (IPC stream), npy (a structured array: "
                                                        "filter_id, model_id, layer_id, w (3, 3)) or csv"),
    as_of: int | None = AS_OF,
    catalog: LiveCatalog = Depends(get_catalog),
):
    """Export the filters of a selection, streamed, without a row cap."""
    selection = where_query(where)
    if not catalog.export_slots.acquire(blocking=False):
        raise ApiError(429, "export_busy", f"{catalog.settings.export_concurrency} exports are running; retry later",
                       headers={"Retry-After": "5"})
    try:
        with analysis(catalog, as_of=as_of) as a:  # the selection only: the stream runs outside the slot
            plan = a.export_plan(selection)
        version = plan.pop("store_version")
        metadata = {"store_version": str(version), "where": json.dumps(selection)}
        chunks = export_chunks(**plan, fmt=format, metadata=metadata)
    except BaseException:
        catalog.export_slots.release()
        raise
    media, suffix = FORMATS[format]
    return StreamingResponse(_releasing(chunks, catalog), media_type=media, headers={
        "Content-Disposition": f'attachment; filename="filters-v{version}{suffix}"',
        "X-Store-Version": str(version), "X-Rows": str(plan["n_rows"]), "X-Content-Type-Options": "nosniff"})


def _releasing(chunks: Iterator[bytes], catalog: LiveCatalog) -> Iterator[bytes]:
    """The chunks; the export's slot is released when the stream ends, fails or is abandoned."""
    try:
        yield from chunks
    finally:
        chunks.close()
        catalog.export_slots.release()
