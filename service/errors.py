"""Errors as JSON `{"error": {"code", "message"}}` with the right status; never a traceback.

Messages show a client's values through `cnnfilterdb.selection.echo` (cut short); a message is
also cut after MESSAGE_CHARS characters whatever its source, so an error body stays small
whatever the request held (DuckDB's messages quote the SQL, a request may hold many errors).
A store file that is missing or cannot be read is a 503 `store_damaged` naming it relative to the
store (`cnnfilterdb.store.StoreDamaged`, and DuckDB's errors reading a shard)."""
from __future__ import annotations

import logging

import duckdb
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cnnfilterdb.store import StoreDamaged, damage_in, first_line, relative_to_store

log = logging.getLogger("cnnfilterdb.service")
MESSAGE_CHARS = 1000


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def not_found(what: str, key) -> ApiError:
    return ApiError(404, "not_found", f"no {what} {key}")


def is_type_tag(loc_item) -> bool:
    """A location item that names a member of a union type (``str``, ``list[...]``,
    ``function-before[...]``) rather than a field or an index: not for a client's eyes."""
    return isinstance(loc_item, str) and ("[" in loc_item or loc_item in ("str", "int", "float", "bool"))


def _body(code: str, message: str) -> dict:
    if len(message) > MESSAGE_CHARS:
        message = f"{message[:MESSAGE_CHARS]}... ({len(message):,} characters)"
    return {"error": {"code": code, "message": message}}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError):
        return JSONResponse(_body(e.code, e.message), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        # A value outside a documented set (group_by, metric, weights, basis) or an unknown field of
        # `where` is a 400 that lists the valid ones; other malformed input is a 422.
        from cnnfilterdb.selection import FILTER_FIELDS, echo

        parts, status, unions, bounded = [], 422, set(), set()
        for err in e.errors():
            raw = [x for x in err.get("loc", ()) if x not in ("body", "query")]
            loc = [str(x) for x in raw if not is_type_tag(x)]  # pydantic's names of union members
            where = ".".join(loc) or "request"
            in_bounds = any(isinstance(x, str) and x.startswith("Bounds[") for x in raw)
            if err.get("type") == "literal_error":
                status = 400
                parts.append(f"unknown {where} {echo(err.get('input'))}; {err.get('msg', '').replace('Input should be', 'valid:')}")
            elif err.get("type") == "extra_forbidden" and in_bounds:
                status = 400
                parts.append(f"unknown bound {echo(loc[-1])} in {'.'.join(loc[:-1])}; valid: gte, gt, lte, lt")
                bounded.add(".".join(loc[:-1]))
            elif err.get("type") == "extra_forbidden" and len(loc) == 1:  # a body key the endpoint lacks
                from .strict import body_fields

                status = 400
                parts.append(f"unknown field {echo(loc[0])} in the request; known: {', '.join(body_fields(request) or [])}")
            elif err.get("type") == "extra_forbidden":  # the last element of loc is the client's name
                status = 400
                parts.append(f"unknown field {echo(loc[-1])} in {'.'.join(loc[:-1]) or 'the request'}; "
                             f"known fields of where: {FILTER_FIELDS}")
            elif err.get("type") == "json_invalid":
                error = (err.get("ctx") or {}).get("error", "invalid")
                parts.append(f"the body is not JSON ({error} at character {raw[-1] if raw else 0})")
            elif len(raw) != len(loc) and len(loc) >= 2 and loc[0] == "where":
                unions.add(".".join(loc[:2]))  # a where value that fits no form: said once, below
            else:
                parts.append(f"{where}: {err.get('msg', 'invalid')}")
        parts += [f"{u}: not a value, a list of values or an object of bounds (gte, gt, lte, lt) of the "
                  "field's type" for u in sorted(unions - bounded)]
        return JSONResponse(_body("invalid_request", "; ".join(parts)), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException):
        code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
                413: "request_too_large"}.get(e.status_code, "http_error")
        # Keep the exception's headers (405 carries the required `Allow`).
        return JSONResponse(_body(code, str(e.detail)), status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, e: Exception):
        log.exception("unhandled error")
        return JSONResponse(_body("internal_error", "internal error; see the service log"), status_code=500)

    @app.exception_handler(StoreDamaged)
    async def store_damaged(_: Request, e: StoreDamaged):
        return JSONResponse(_body("store_damaged", str(e)), status_code=503)

    @app.exception_handler(duckdb.Error)
    async def duckdb_error(request: Request, e: duckdb.Error):
        # The service's own queries: DuckDB failing to read a store file (a shard named in the
        # message; a corrupt page raises the base class, "TProtocolException: Invalid data") is
        # a damaged store; running out of its memory or spill space, a busy one; anything else
        # is unexpected.
        root = request.app.state.catalog.root
        if (damage := damage_in(root, e)) is not None:
            return await store_damaged(request, damage)
        if type(e) in (duckdb.Error, duckdb.IOException, duckdb.InvalidInputException):
            message = relative_to_store(root, first_line(e))
            return JSONResponse(_body("store_damaged", f"a store file could not be read ({message}); "
                                                       "run `cnnfilterdb verify` to check every file"), status_code=503)
        if isinstance(e, duckdb.OutOfMemoryException):
            return JSONResponse(_body("service_busy", "the service ran out of memory for this request; retry later"),
                                status_code=503, headers={"Retry-After": "5"})
        return await unexpected(request, e)
