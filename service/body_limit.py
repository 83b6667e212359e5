"""Request bodies within bounds: at most ``max_bytes``, all of it arriving within ``timeout_s``.

Without it a client could make the service buffer a body of any size (the route's own checks run
only after the whole body is read) or hold a connection open forever by sending it slowly. A body
declared larger than the cap is refused before any of it is read; one that grows past it while
arriving (chunked), or stalls, ends with a 413 or 408 raised from ``receive`` as an HTTP error,
which FastAPI passes through and the service's error handler renders as JSON.

A route may have bounds of its own (``routes``: (method, path) -> (max_bytes, timeout_s)): the upload
of POST /v1/check is a model file of up to ``max_check_bytes``, arriving within
``check_upload_timeout_s``; every other body keeps ``max_body_bytes`` and ``body_timeout_s``.
"""
from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float,
                 routes: dict[tuple[str, str], tuple[int, float]] | None = None):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self.routes = dict(routes or {})

    @staticmethod
    def _too_large(max_bytes: int) -> str:
        return f"the request body is larger than the limit of {max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, timeout_s = self.routes.get((scope["method"], scope["path"]), (self.max_bytes, self.timeout_s))
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
            response = JSONResponse({"error": {"code": "request_too_large", "message": self._too_large(max_bytes)}},
                                    status_code=413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD") and declared is None:  # no body to bound: no per-request task
            await self.app(scope, receive, send)
            return
        received = 0
        deadline = asyncio.get_running_loop().time() + timeout_s  # for the whole body, not each part

        async def bounded_receive() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), max(deadline - asyncio.get_running_loop().time(), 0.001))
            except TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {timeout_s:g} s",
                                    headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise HTTPException(413, self._too_large(max_bytes), headers={"Connection": "close"})
            return message

        await self.app(scope, bounded_receive, send)
