"""Errors as JSON `{"error": {"code", "message"}}` with the right status; never a traceback.

Messages show a client's values through `cnnfilterdb.selection.echo` (cut short); a message is
also cut after MESSAGE_CHARS characters whatever its source, so an error body stays small
whatever the request held (DuckDB's messages quote the SQL, a request may hold many errors).
A store file that is missing or cannot be read is a 503 `store_damaged` naming it relative to the
store (`cnnfilterdb.layout.StoreDamaged`, and DuckDB's errors reading a shard)."""
from __future__ import annotations

import logging

import duckdb
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from cnnfilterdb.catalog import VersionError
from cnnfilterdb.errors import UserError, first_line
from cnnfilterdb.layout import StoreDamaged, StoreError, damage_in, relative_to_store
from cnnfilterdb.limits import MESSAGE_CHARS
from cnnfilterdb.plots import PlotParameterError
from cnnfilterdb.requests import NotJson, explain
from cnnfilterdb.selection import EmptySelectionError, InvalidValue, SelectionError, UnknownName

log = logging.getLogger("cnnfilterdb.service")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


# The project's errors a client can act on, and their answers: the first class an error is an
# instance of gives its status and code (so a subclass comes before its base).
ANSWERS: list[tuple[type[Exception], int, str]] = [
    (EmptySelectionError, 404, "empty_selection"),
    (PlotParameterError, 400, "invalid_request"),
    (NotJson, 400, "invalid_request"),
    (UnknownName, 400, "invalid_request"),
    (InvalidValue, 422, "invalid_request"),
    (SelectionError, 400, "invalid_selection"),
    (VersionError, 404, "unknown_version"),
    (StoreDamaged, 503, "store_damaged"),
    (StoreError, 503, "store_unavailable"),
    (UserError, 400, "invalid_request"),
]


def answer_of(e: UserError) -> tuple[int, str]:
    """The status and code of one of the project's errors (ANSWERS)."""
    return next((status, code) for cls, status, code in ANSWERS if isinstance(e, cls))


def not_found(what: str, key) -> ApiError:
    return ApiError(404, "not_found", f"no {what} {key}")


def body_fields(request: Request) -> list[str] | None:
    """The fields of the matched route's request body model, or None (the known fields an
    unknown body key's message lists: request models forbid extra keys, strict.py)."""
    route = request.scope.get("route")
    field = getattr(route, "body_field", None)
    model = getattr(getattr(field, "field_info", None), "annotation", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return None


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
        # Worded by the engine, as its own checks word them (cnnfilterdb/requests.explain): a value
        # outside a documented set or a name the request lacks is a 400, other malformed input a 422.
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == "POST" and media != "application/json" and any(
                err.get("type") in ("missing", "model_attributes_type") and tuple(err.get("loc", ())) == ("body",)
                for err in e.errors()):
            return JSONResponse(_body("invalid_request", f"the body must be a JSON object sent with Content-Type: "
                                                         f"application/json (got {media or 'no content type'})"),
                                status_code=415 if media else 422)
        problems = explain(e.errors(), body_fields(request))
        status = 400 if any(unknown for unknown, _ in problems) else 422
        return JSONResponse(_body("invalid_request", "; ".join(text for _, text in problems)), status_code=status)

    @app.exception_handler(UserError)
    async def user_error(request: Request, e: UserError):
        status, code = answer_of(e)
        if status >= 500:
            log.warning("%s: %s", code, first_line(e))
        return JSONResponse(_body(code, str(e)), status_code=status)

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
