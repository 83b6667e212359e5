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
  longest for a request head (idle or trickling) is closed to make room, or else the request whose
  body is arriving slowest (fewest bytes a second since its head); only when neither is there is
  the new one refused (503). Idle connections and slow bodies never keep a request out;
* ``max_requests``: requests in progress at once; more get a 503 (Retry-After). Connections do not
  count, nor requests whose body is still arriving: a request's body is read (within
  ``body_timeout_s``, up to ``max_body_bytes``) before it is admitted, and only then does it count.
  A review held 600 POSTs sending a body byte a second (5 addresses x 100 suffice for the 500) and
  every /health was a 503 until the body timeout. Not so the routes of ``STREAMED`` (POST
  /v1/check): their body is the route's to read, bounded by its own rules (a slot taken before it
  is read, a 429 without reading it, its own size, time and rate: routers/check.py), so it is
  handed over unread and the request counts from its head; while its body arrives the connection
  is evictable as any slow body.

The counts are per process (per uvicorn worker). Behind a reverse proxy every connection comes from
the proxy's address: raise ``max_connections_per_client`` there (the proxy then bounds clients).
"""
from __future__ import annotations

import asyncio
import functools
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
    max_body_bytes = 1_000_000
    body_timeout_s = 30.0

    @classmethod
    def load(cls) -> None:
        if not cls.loaded:
            from .settings import Settings

            s = Settings()
            cls.header_timeout_s = s.header_timeout_s
            cls.max_connections = s.max_connections
            cls.max_connections_per_client = s.max_connections_per_client
            cls.max_requests = s.max_requests
            cls.max_body_bytes = s.max_body_bytes
            cls.body_timeout_s = s.body_timeout_s
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
    """The open connections of this process: how many per client address, those waiting for a
    request head, oldest first (a dict keeps insertion order), and those whose request's body is
    arriving (not yet admitted as a request)."""

    per_client: Counter = Counter()
    waiting: dict[GuardedH11Protocol, None] = {}
    bodies: dict[GuardedH11Protocol, None] = {}
    open = 0


# Routes whose body is not read before they run (method, path): the route bounds it itself.
STREAMED = frozenset({("POST", "/v1/check")})


class _BoundedApp:
    """The app, answering 503 at once when max_requests requests are in progress. A request whose
    body is still arriving has its body read first (``_read_body``), evictable meanwhile, and is
    counted only once it has come; but a STREAMED route's, handed over unread (evictable while it
    arrives, ``_tracked``), is counted from its head."""

    def __init__(self, app):
        self.app = app
        self.in_progress = 0

    async def __call__(self, scope, receive, send, protocol: GuardedH11Protocol | None = None) -> None:
        streamed = False
        if scope["type"] == "http" and protocol is not None and protocol.conn.their_state is h11.SEND_BODY:
            if (scope["method"], scope["path"]) in STREAMED:
                streamed = True
                receive = _tracked(protocol, receive)
            else:
                receive = await self._read_first(protocol, scope, receive, send)
                if receive is None:
                    return  # the client left, was evicted or timed out (answered)
        if scope["type"] != "http" or self.in_progress < _Limits.max_requests:
            self.in_progress += 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.in_progress -= 1
                if streamed:
                    _Registry.bodies.pop(protocol, None)  # its body may never have been read (a 429)
            return
        if streamed:
            _Registry.bodies.pop(protocol, None)
        body = json.dumps({"error": {"code": "overloaded", "message": f"{_Limits.max_requests} requests are in "
                                                                       "progress; retry later"}}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", b"1"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _read_first(protocol: GuardedH11Protocol, scope, receive, send):
        """``receive``, or one replaying the body read first (``_read_body``); None if the client
        left, was evicted or timed out."""
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > _Limits.max_body_bytes:
            return receive  # a 413 at once (BodyLimit)
        messages = await _read_body(protocol, receive, send)
        return None if messages is None else _replay(messages, receive)


async def _read_body(protocol: GuardedH11Protocol, receive, send) -> list[dict] | None:
    """The request's body messages, read within body_timeout_s while the connection is listed as
    waiting for a body (evictable, not a request in progress); up to the first past max_body_bytes
    (the app then answers 413). None if the client left or was evicted, or if the body did not come
    in time (a 408 is sent)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _Limits.body_timeout_s
    messages: list[dict] = []
    protocol._body_started()
    try:
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                body = json.dumps({"error": {"code": "request_timeout", "message": "the request body did not arrive "
                                             f"within {_Limits.body_timeout_s:g} s"}}).encode()
                await send({"type": "http.response.start", "status": 408,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
                return None
            if message["type"] != "http.request":
                return None  # http.disconnect
            messages.append(message)
            protocol._body_received += len(message.get("body", b""))
            if not message.get("more_body", False) or protocol._body_received > _Limits.max_body_bytes:
                return messages
    finally:
        _Registry.bodies.pop(protocol, None)


def _tracked(protocol: GuardedH11Protocol, receive):
    """A receive for a STREAMED route: the connection listed as sending a body (evictable, slowest
    first) until the body is complete or the client leaves."""
    protocol._body_started()

    async def tracked():
        try:
            message = await receive()
        except BaseException:
            _Registry.bodies.pop(protocol, None)
            raise
        if message["type"] == "http.request" and message.get("more_body", False):
            protocol._body_received += len(message.get("body", b""))
        else:
            _Registry.bodies.pop(protocol, None)
        return message
    return tracked


def _replay(messages: list[dict], receive):
    """A receive that gives ``messages`` first, then what the connection sends (a disconnect)."""
    async def replayed():
        if messages:
            return messages.pop(0)
        return await receive()
    return replayed


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
        self.app = functools.partial(bounded, protocol=self)
        self._address: str | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # of the request head being received
        self._refused = False  # closed at once: never counted, never handed to uvicorn
        self._forgotten = False  # no longer counted
        self._body_since = 0.0  # when its request's body started to be read (loop time)
        self._body_received = 0  # bytes of that body so far

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

    @classmethod
    def _evict_one(cls) -> bool:
        """Close the connection that has waited longest for a request head, or else the one whose
        request's body is arriving slowest; False if there is neither."""
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
        while _Registry.bodies:
            slowest = min(_Registry.bodies, key=cls._body_rate)
            del _Registry.bodies[slowest]
            if not slowest.transport.is_closing():
                slowest.transport.write(_raw_response(
                    503, "Service Unavailable", "too_many_connections",
                    f"{_Limits.max_connections} connections are open: this one, sending its request body "
                    "slowest, is closed", retry_after=1))
                slowest.transport.close()  # its request, never admitted, sees a disconnect
                slowest._forget()
                return True
        return False

    def _body_started(self) -> None:
        self._body_since = self.loop.time()
        self._body_received = 0
        _Registry.bodies[self] = None

    def _body_rate(self) -> tuple[float, float]:
        """Bytes a second of the body being read since its head (over at least a second); the
        oldest first among equals."""
        return self._body_received / max(self.loop.time() - self._body_since, 1.0), self._body_since

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
        _Registry.bodies.pop(self, None)
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
