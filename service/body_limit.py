"""Request bodies within bounds: at most ``max_bytes``, all of it arriving within ``timeout_s``.

Without it a client could make the service buffer a body of any size (the route's own checks run
only after the whole body is read) or hold a connection open forever by sending it slowly. A body
declared larger than the cap is refused before any of it is read; one that grows past it while
arriving (chunked), or stalls, ends with a 413 or 408 raised from ``receive`` as an HTTP error,
which FastAPI passes through and the service's error handler renders as JSON.

A route may have bounds of its own (``routes``: (method, path) -> ``Bounds``): the upload of POST
/v1/check is a model file of up to ``max_check_bytes``, arriving within ``check_upload_timeout_s``
and, once it has run ``check_upload_grace_s``, at an average of at least
``check_min_upload_bytes_per_s`` since its start (a 408 as soon as it falls under: two uploads
trickling a byte a second would otherwise hold both check slots for the whole timeout); every other
body keeps ``max_body_bytes`` and ``body_timeout_s``.
"""
from __future__ import annotations

import asyncio
from typing import NamedTuple

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Bounds(NamedTuple):
    max_bytes: int
    timeout_s: float
    min_bytes_per_s: int = 0   # the least average rate since the body's start, once grace_s has passed (0: none)
    grace_s: float = 0.0
    rate_setting: str = "the minimum rate"  # how the 408 names the minimum


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float,
                 routes: dict[tuple[str, str], Bounds] | None = None):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self.routes = {key: Bounds(*value) for key, value in (routes or {}).items()}

    @staticmethod
    def _too_large(max_bytes: int) -> str:
        return f"the request body is larger than the limit of {max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bounds = self.routes.get((scope["method"], scope["path"])) or Bounds(self.max_bytes, self.timeout_s)
        max_bytes, timeout_s, min_rate, grace_s = bounds[:4]
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
        done = False
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeout_s  # for the whole body, not each part

        def rate_deadline() -> float:
            """When the body's average rate since its start falls under min_rate, at the bytes
            received so far (never before the grace period's end)."""
            return start + max(grace_s, received / min_rate) if min_rate else deadline

        async def bounded_receive() -> Message:
            nonlocal received, done
            until = deadline if done else min(deadline, rate_deadline())  # no rate once the body is complete
            by_rate = until < deadline
            try:
                message = await asyncio.wait_for(receive(), max(until - loop.time(), 0.001))
            except TimeoutError:
                now = loop.time()
                if by_rate:  # the rate's deadline came first
                    rate = received / max(now - start, 1e-9)
                    raise HTTPException(408, f"the request body arrived at {rate:,.0f} bytes/s on average over "
                                             f"{now - start:.1f} s, under {bounds.rate_setting} of {min_rate:,} "
                                             "bytes/s: the upload is refused, its check slot and temporary file "
                                             "freed", headers={"Connection": "close"}) from None
                raise HTTPException(408, f"the request body did not arrive within {timeout_s:g} s",
                                    headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise HTTPException(413, self._too_large(max_bytes), headers={"Connection": "close"})
                done = not message.get("more_body", False)
            return message

        await self.app(scope, bounded_receive, send)
