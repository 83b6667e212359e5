"""POST /v1/sql: one read-only statement, run by a confined worker process under hard limits.

What makes it read-only and bounded is described in ``service/usersql/__init__.py``; this route
only caps the request's limits at the service's ceilings and returns the worker's result. The rows
arrive as JSON the worker encoded under the caps, and are spliced into the body as they are (the
service never decodes a large result).
"""
from __future__ import annotations

import json

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from ..deps import get_settings, get_sql_pool
from ..errors import ApiError
from ..schemas import ErrorResponse, SqlRequest, SqlResponse
from ..settings import Settings
from ..strict import StrictJsonRoute
from ..usersql.pool import PoolBusy, SqlFailed, SqlPool

router = APIRouter(route_class=StrictJsonRoute, tags=["sql"], responses={400: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
                                            422: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
                                            503: {"model": ErrorResponse}})


@router.post("/v1/sql", response_model=SqlResponse)
def run_sql(req: SqlRequest, pool: SqlPool = Depends(get_sql_pool), settings: Settings = Depends(get_settings)):
    # Capped at the service's ceiling; the response's max_rows is the cap applied.
    max_rows = min(settings.sql_default_rows if req.max_rows is None else req.max_rows, settings.sql_max_rows)
    try:
        result = pool.run(req.sql, req.params or None, max_rows, settings.sql_max_bytes)
    except PoolBusy as e:
        raise ApiError(e.status, e.code, e.message, headers={"Retry-After": str(e.retry_after_s)}) from None
    except SqlFailed as e:
        raise ApiError(e.status, e.code, e.message) from None
    head = json.dumps({"columns": result.columns, "types": result.types})
    tail = json.dumps({"truncated": result.truncated, "truncated_reason": result.truncated_reason,
                       "max_rows": max_rows, "max_bytes": settings.sql_max_bytes, "elapsed_ms": result.elapsed_ms})
    body = b"".join([head[:-1].encode(), b', "rows": ', result.rows_json, b", ", tail[1:].encode()])
    return Response(content=body, media_type="application/json")
