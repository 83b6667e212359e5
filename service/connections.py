"""Connections that cannot starve the service: `cnnfilterdb serve`'s HTTP protocol (main.run).

uvicorn alone keeps a connection that never sends a request open for ever (its keep-alive timer
starts only after a first response), and its ``limit_concurrency`` counts open connections with the
requests: a hostile review held 520 idle or header-trickling connections and every request was a 503
for as long as they stayed. ``GuardedH11Protocol`` is uvicorn's h11 protocol with:

* a head timeout: a connection that has not sent a complete request head within
  ``header_timeout_s`` of its first byte (or of being opened) is closed, with a 408 if it had sent
  part of one; between requests, uvicorn's keep-alive timer (``keep_alive_timeout_s``) applies;
* a cap per client address (``max_connections_per_client``): a connection beyond it gets a one-line
  503 and is closed at once; the address's other connections are untouched;
* a cap on open connections in all (``max_connections``): at the cap, the connection that has waited
  longest for a request head (idle or trickling) is closed to make room; only when none is waiting is
  the new one refused (503). Idle connections never keep a request out;
* ``max_requests``: requests in progress at once; more get a 503 (Retry-After). Connections do not
  count: a request is refused only when that many requests are being answered.

The counts are per process (per uvicorn worker). Behind a reverse proxy every connection comes from
the proxy's address: raise ``max_connections_per_client`` there (the proxy then bounds clients).
"""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class _Limits:
    """The settings in force in this process, read once (the protocol is built by uvicorn, which
    knows nothing of Settings: main.run hands them over as CNNFILTERDB_* variables, as it does
    for the app factory)."""

    loaded = False
    header_timeout_s = 10.0
    max_connections = 1000
    max_connections_per_client = 100
    max_requests = 500

    @classmethod
    def load(cls) -> None:
        if not cls.loaded:
            from .settings import Settings

            s = Settings()
            cls.header_timeout_s = s.header_timeout_s
            cls.max_connections = s.max_connections
            cls.max_connections_per_client = s.max_connections_per_client
            cls.max_requests = s.max_requests
            cls.loaded = True


def _raw_response(status: int, reason: str, code: str, message: str, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 error response in the service's JSON shape, closing the connection:
    written where no request (or none h11 can answer) is under way."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
            "connection: close"]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Registry:
    """The open connections of this process: how many per client address, and those waiting for a
    request head, oldest first (a dict keeps insertion order)."""

    per_client: Counter = Counter()
    waiting: dict[GuardedH11Protocol, None] = {}
    open = 0


class _BoundedApp:
    """The app, answering 503 at once when max_requests requests are in progress."""

    def __init__(self, app):
        self.app = app
        self.in_progress = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.in_progress < _Limits.max_requests:
            self.in_progress += 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.in_progress -= 1
            return
        body = json.dumps({"error": {"code": "overloaded", "message": f"{_Limits.max_requests} requests are in "
                                                                       "progress; retry later"}}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", b"1"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


_bounded_apps: dict[int, _BoundedApp] = {}


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a head timeout and caps on connections (see the module)."""

    def __init__(self, config, server_state, app_state: dict[str, Any], _loop=None) -> None:
        _Limits.load()
        super().__init__(config, server_state, app_state, _loop)
        self.limit_concurrency = None  # uvicorn's count of connections + requests: replaced by the caps here
        bounded = _bounded_apps.get(id(config))
        if bounded is None:
            bounded = _bounded_apps[id(config)] = _BoundedApp(config.loaded_app)
        self.app = bounded
        self._address: str | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # of the request head being received
        self._refused = False  # closed at once: never counted, never handed to uvicorn
        self._forgotten = False  # no longer counted

    # -- accepting ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else None
        if address is not None and _Registry.per_client[address] >= _Limits.max_connections_per_client:
            self._refuse(transport, "too_many_connections",
                         f"this address has {_Limits.max_connections_per_client} connections open; close one")
            return
        if _Registry.open >= _Limits.max_connections and not self._evict_one():
            self._refuse(transport, "too_many_connections",
                         f"{_Limits.max_connections} connections are open and busy; retry later")
            return
        super().connection_made(transport)
        self._address = address
        _Registry.open += 1
        if address is not None:
            _Registry.per_client[address] += 1
        self._wait_for_head()

    def _refuse(self, transport: asyncio.Transport, code: str, message: str) -> None:
        """A one-line 503 and the connection closed, before anything is read; nothing else changes."""
        self.transport = transport
        self._refused = True  # connection_lost has nothing to undo
        transport.write(_raw_response(503, "Service Unavailable", code, message, retry_after=1))
        transport.close()

    @staticmethod
    def _evict_one() -> bool:
        """Close the connection that has waited longest for a request head; False if none waits."""
        while _Registry.waiting:
            oldest = next(iter(_Registry.waiting))
            del _Registry.waiting[oldest]
            if not oldest.transport.is_closing():
                oldest._close_waiting(_raw_response(
                    503, "Service Unavailable", "too_many_connections",
                    f"{_Limits.max_connections} connections are open: this one, waiting longest for a request, "
                    "is closed", retry_after=1))
                oldest._forget()  # its count goes now, not when the event loop reports the close
                return True
        return False

    # -- waiting for a request head -------------------------------------------------------------

    def _wait_for_head(self) -> None:
        """The connection now waits for a request head: it may be evicted, and once bytes of the head
        arrive (or from now, for a new connection) it has header_timeout_s to complete it."""
        _Registry.waiting[self] = None
        self._head_bytes = 0
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(_Limits.header_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._close_waiting(_raw_response(408, "Request Timeout", "request_timeout",
                                              f"the request head did not arrive within {_Limits.header_timeout_s:g} s"))

    def _close_waiting(self, answer: bytes) -> None:
        """Close a connection that has no request under way, with ``answer`` if part of a head had
        come (a connection that sent nothing is closed without a word, as at a keep-alive timeout)."""
        self._disarm_head_timer()
        if self._head_bytes:
            self.transport.write(answer)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        waiting = self.conn.their_state is h11.IDLE
        if waiting:
            self._head_bytes += len(data)
            if self._head_bytes and self._head_timer is None:
                # A keep-alive connection's next request starts: its head has header_timeout_s.
                _Registry.waiting.setdefault(self, None)
                self._arm_head_timer()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # a head has come (or the connection failed)
            self._disarm_head_timer()
            _Registry.waiting.pop(self, None)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            # Idle between requests: uvicorn's keep-alive timer runs; evictable. The head timer
            # starts with the next request's first byte (data_received).
            _Registry.waiting[self] = None
            self._head_bytes = 0

    # -- closing --------------------------------------------------------------------------------

    def _forget(self) -> None:
        if self._forgotten:
            return
        self._forgotten = True
        _Registry.waiting.pop(self, None)
        _Registry.open -= 1
        if self._address is not None:
            _Registry.per_client[self._address] -= 1
            if _Registry.per_client[self._address] <= 0:
                del _Registry.per_client[self._address]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return  # never counted, never handed to uvicorn
        self._disarm_head_timer()
        self._forget()
        super().connection_lost(exc)
