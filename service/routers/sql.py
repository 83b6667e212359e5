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
from ..schemas import SqlRequest, SqlResponse, error_responses
from ..settings import Settings
from ..strict import StrictJsonRoute
from ..usersql.pool import PoolBusy, SqlFailed, SqlPool

router = APIRouter(route_class=StrictJsonRoute, tags=["sql"], responses=error_responses(
    400, 403, 422, 429, 503,
    said={400: "Bad request: not valid SQL, more than one statement, over the time limit, or a result too large",
          429: "Busy: every SQL worker is running a query; retry after Retry-After seconds",
          503: "Unavailable: no SQL worker could be started, or the store cannot be read"}))


@router.post("/v1/sql", response_model=SqlResponse, summary="The result of one read-only SQL query on the store")
def run_sql(req: SqlRequest, pool: SqlPool = Depends(get_sql_pool), settings: Settings = Depends(get_settings)):
    """Runs one reading statement (SELECT, or EXPLAIN of one) in DuckDB's SQL on the store's views
    (`models`, `layers`, `filters`, `basis`, `layers_with_models`, `versions`, and the `*_at(v)`
    macros of older versions). Read-only: nothing can be written, and no other file, the network or
    an extension can be reached. A query is stopped after sql_timeout_s; rows beyond `max_rows` or
    sql_max_bytes of JSON are left out and `truncated` says so (the limits: GET /v1/stats). A 429
    when every SQL worker is busy."""
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
