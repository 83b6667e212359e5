"""Errors as JSON `{"error": {"code", "message"}}` with the right status; never a traceback."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("cnnfilterdb.service")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def not_found(what: str, key) -> ApiError:
    return ApiError(404, "not_found", f"no {what} {key}")


def _body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError):
        return JSONResponse(_body(e.code, e.message), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError):
        # A value outside a documented set (group_by, metric, weights, basis) or an unknown field of
        # `where` is a 400 that lists the valid ones; other malformed input is a 422.
        parts, status = [], 422
        for err in e.errors():
            loc = [str(x) for x in err.get("loc", ()) if x != "body"]
            where = ".".join(loc) or "request"
            if err.get("type") == "literal_error":
                status = 400
                parts.append(f"unknown {where} {err.get('input')!r}; {err.get('msg', '').replace('Input should be', 'valid:')}")
            elif err.get("type") == "extra_forbidden":
                from cnnfilterdb.selection import FILTER_FIELDS

                status = 400
                parts.append(f"unknown field {where}; known fields of where: {FILTER_FIELDS}")
            else:
                parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse(_body("invalid_request", "; ".join(parts)), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        # Keep the exception's headers (405 carries the required `Allow`).
        return JSONResponse(_body(code, str(e.detail)), status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, e: Exception):
        log.exception("unhandled error")
        return JSONResponse(_body("internal_error", "internal error; see the service log"), status_code=500)
