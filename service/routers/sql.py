"""POST /v1/sql: one read-only statement, under a time limit and a row cap.

The guarantees come from DuckDB (see service/catalog.py): the catalog is attached read-only and
the instance has external access off and its configuration locked. Here, DuckDB's own parser
splits the text to enforce one statement of a reading type, and a timer interrupts the cursor.
"""
from __future__ import annotations

import threading
import time

import duckdb
from fastapi import APIRouter, Depends

from ..catalog import LiveCatalog
from ..deps import get_catalog, get_settings, respond
from ..errors import ApiError
from ..jsonable import jsonable
from ..schemas import ErrorResponse, SqlRequest, SqlResponse
from ..settings import Settings

router = APIRouter(tags=["sql"], responses={400: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
                                            422: {"model": ErrorResponse}})

READING_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@router.post("/v1/sql", response_model=SqlResponse)
def run_sql(req: SqlRequest, catalog: LiveCatalog = Depends(get_catalog), settings: Settings = Depends(get_settings)):
    # Capped at the service's ceiling; the response's max_rows is the cap applied.
    max_rows = min(settings.sql_default_rows if req.max_rows is None else req.max_rows, settings.sql_max_rows)
    with catalog.cursor(for_user_sql=True) as cur:
        try:
            statements = cur.extract_statements(req.sql)
        except duckdb.Error as e:
            raise ApiError(400, "sql_error", _first_line(e)) from None
        if len(statements) != 1:
            raise ApiError(400, "sql_one_statement", f"send exactly one statement per request (got {len(statements)})")
        if statements[0].type not in READING_STATEMENTS:
            raise ApiError(403, "sql_read_only",
                           f"only reading statements (SELECT, EXPLAIN) are allowed; got {statements[0].type.name}")
        timer = threading.Timer(settings.sql_timeout_s, cur.interrupt)
        t0 = time.perf_counter()
        timer.start()
        try:
            cur.execute(req.sql, req.params or None)
            description = cur.description or []
            rows = cur.fetchmany(max_rows + 1) if description else []
        except duckdb.InterruptException:
            raise ApiError(400, "sql_timeout",
                           f"the query ran longer than the time limit of {settings.sql_timeout_s:g} s and was interrupted") from None
        except duckdb.OutOfMemoryException as e:
            raise ApiError(400, "sql_out_of_memory",
                           f"the query exceeded the memory limit ({settings.sql_memory_limit}): {_first_line(e)}") from None
        except duckdb.PermissionException as e:
            raise ApiError(403, "sql_forbidden", _first_line(e)) from None
        except duckdb.Error as e:
            raise ApiError(400, "sql_error", _first_line(e)) from None
        finally:
            timer.cancel()
        elapsed = (time.perf_counter() - t0) * 1000
    truncated = len(rows) > max_rows
    return respond(SqlResponse(columns=[d[0] for d in description], types=[str(d[1]) for d in description],
                       rows=[jsonable(list(r)) for r in rows[:max_rows]], truncated=truncated,
                       max_rows=max_rows, elapsed_ms=round(elapsed, 3)))
