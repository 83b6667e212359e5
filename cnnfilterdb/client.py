"""``cnnfilterdb.Client(url)``: the Python API (``cnnfilterdb/api.py``) over HTTP.

The same methods as ``cnnfilterdb.open(path)``, with the same parameters and defaults, returning
the same types, built from the JSON of the service's endpoints (``POST /v1/divergence`` and the
other analyses, ``GET /v1/filters?format=npy`` streamed, ``POST /v1/sql``, ``GET /v1/versions``);
``models`` and ``layers`` are read through ``POST /v1/sql``, page by page, with the same query
the local API runs. ``where`` and the analyses' numbers (bins, k, model_id, thresholds, components,
range) are checked first by the engine's own checks, as the local API checks them (nothing is
coerced: a mistake is an ``InvalidRequest`` without a request); the rest by the service. An
error is a ``ServiceError`` carrying its message, also an instance of the exception the local
API raises for the same mistake (``SelectionError``, ``EmptySelectionError``, ``VersionError``,
``LookupError``). No service at the URL, or no answer in time: ``ServiceUnavailable``; an answer
that is not the service's JSON: a ``ServiceError`` "unexpected response from <url>". A 429 (the
service busy) is retried after its ``Retry-After`` (a finite number of seconds >= 0, at most
MAX_RETRY_WAIT_S; anything else: 1 s), ``retries`` times.

Whatever the server sends, a call ends, in bounded memory, with a result or a ``ServiceError``:
``timeout`` bounds the whole call (every connect, write and read of every request it makes, the
waits for a 429 and the reading of the body: a server that trickles its answer is cut off at the
deadline, ``ServiceUnavailable``); a JSON answer is read up to ``max_response_bytes`` (an error's
up to MAX_ERROR_BYTES) and parsed only then, bodies are asked for and accepted uncompressed
only; the ``.npy`` stream of the filters is parsed as it arrives, its header at most numpy's
10,000 bytes and its declared count at most MAX_FILTER_ROWS and checked against what arrives;
the pages of ``models``/``layers`` must advance, and all of a listing's pages together are
read up to ``max_response_bytes``, as one answer is. A deadline that passes while an answer was
arriving says so (the bytes received), not that the service did not answer.

Example
-------
>>> import cnnfilterdb
>>> client = cnnfilterdb.Client(url)
>>> d = client.divergence("task")
>>> d.matrix.equals(cnnfilterdb.open(path).divergence("task").matrix)
True
"""
from __future__ import annotations

import contextvars
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any

import pandas as pd

from . import errors, results
from .catalog import VersionError, check_version
from .errors import SqlError, UserError
from .properties import NAME as PROPERTY_NAME
from .requests import (
    CHECK_PATH_TEXT,
    AnalysisSpec,
    CheckRequest,
    DegenerateRequest,
    ExportRequest,
    analyses,
    build,
    check_not_hidden,
    check_where,
    documented,
    takes,
    version_arg,
)
from .results import (
    CheckResult,
    DegenerateResult,
    FilterBatches,
    check_batch,
    check_listing,
    finish_models,
    frame,
    layers_query,
    models_query,
    versions_frame,
)
from .selection import EmptySelectionError, SelectionError, UnknownName, echo

__all__ = ["Client", "ServiceError", "InvalidRequest", "InvalidModel", "EmptySelection", "UnknownVersion", "NotFound",
           "ServiceBusy", "ServiceUnavailable", "StreamCut", "SqlRefused"]

FILTER_BATCH = 1 << 16
SQL_PAGE = 10_000          # rows per /v1/sql request of models() and layers()
MAX_RETRY_WAIT_S = 30.0    # the longest Retry-After honoured
DEFAULT_RETRY_WAIT_S = 1.0  # the wait for a Retry-After that is not a finite number of seconds >= 0
NO_THRESHOLD = 1.7976931348623157e308  # entropy_norm_gt=None: no finite value is above it
# What an answer may take: a JSON answer is read whole, then parsed (Python's objects take up to
# ~20x its bytes: the cap bounds them); the service's own caps keep its answers under 20 MB
# (sql_max_bytes 16 MB of rows, an analysis at most 2,000,000 cells).
DEFAULT_MAX_RESPONSE_BYTES = 32 << 20
MAX_ERROR_BYTES = 64 << 10        # an error answer: its JSON message, or the start of a proxy's page
MAX_FILTER_ROWS = 2**36           # the most filters a .npy answer may declare (2.5 TB of float32)

# The deadline of the client call running in this thread (time.monotonic()), which every network
# operation of its requests is bounded by (_DeadlineBackend).
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("cnnfilterdb_client_deadline", default=None)
# The bytes of answers' bodies the call running in this thread has received: a deadline that
# passes while data was coming is said as such, not as a service that does not answer.
_received: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("cnnfilterdb_client_received",
                                                                            default=None)


class ServiceError(UserError):
    """An error answer of the service: ``status`` (HTTP), ``code`` and the service's ``message``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status} {self.code})"


class InvalidRequest(ServiceError, SelectionError):
    """A 400/422: a bad where, group_by, metric, bins, ... (locally: SelectionError). The engine's
    checks of ``where`` and of the analyses' numbers run before sending: their mistakes raise
    this (a 422, the engine's message) without a request."""


class InvalidModel(ServiceError):
    """A 422 invalid_model of POST /v1/check: the uploaded file is not a model, holds no 3x3
    convolution or a NaN weight, cannot be read, or is a zip bomb (``FilterDB.check`` raises
    ``cnnfilterdb.ingest.IngestError`` for the same file, with the same message: both are
    ``cnnfilterdb.UserError``)."""


class EmptySelection(ServiceError, EmptySelectionError):
    """A 404 empty_selection: no filters, or a text value no model has (locally: EmptySelectionError)."""


class UnknownVersion(ServiceError, VersionError):
    """A 404 unknown_version: as_of a version the store does not hold (locally: VersionError)."""


class NotFound(ServiceError, errors.NotFound):
    """A 404 not_found: no such model (locally: cnnfilterdb.NotFound, a LookupError)."""


class ServiceBusy(ServiceError):
    """A 429 still, after the retries."""


class StreamCut(ServiceError):
    """A stream whose status was 200 ended early: the connection closed mid-body, or the body
    ended short of what its header declared (``received`` bytes and ``rows`` filters arrived).
    The service cut it (a damaged shard met part-way, or the service stopping): its log says why."""

    def __init__(self, message: str, received: int, rows: int | None = None, how: str = ""):
        super().__init__(200, "stream_cut", message)
        self.received, self.rows, self.how = received, rows, how


class ServiceUnavailable(ServiceError):
    """No answer: the service could not be reached (not running, wrong URL) or did not answer in time
    (``status`` 0)."""

    def __str__(self) -> str:
        return self.message


def retry_wait(value: str | None) -> float:
    """The seconds to wait for a ``Retry-After`` header: a finite number >= 0, at most
    MAX_RETRY_WAIT_S; DEFAULT_RETRY_WAIT_S for anything else (absent, a date, nan, -1, ...)."""
    try:
        wait = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_RETRY_WAIT_S
    if not math.isfinite(wait) or wait < 0:
        return DEFAULT_RETRY_WAIT_S
    return min(wait, MAX_RETRY_WAIT_S)


class SqlRefused(ServiceError, SqlError):
    """POST /v1/sql refused the query or could not run it (locally: SqlError)."""


_ERRORS = {"invalid_request": InvalidRequest, "invalid_selection": InvalidRequest, "empty_selection": EmptySelection,
           "unknown_version": UnknownVersion, "not_found": NotFound,
           **{code: SqlRefused for code in ("sql_error", "sql_forbidden", "sql_one_statement", "sql_read_only",
                                            "sql_timeout", "sql_out_of_memory", "sql_result_too_deep",
                                            "sql_result_too_large", "sql_worker_memory_cap", "sql_worker_crashed")}}


def _error(status: int, body: bytes) -> ServiceError:
    """The ServiceError of an error answer (its body read up to MAX_ERROR_BYTES)."""
    try:
        error = json.loads(body)["error"]
        code, message = str(error["code"])[:100], str(error["message"])[:2000]
    except Exception:  # not the service's JSON (a proxy's page, cut, nested too deep, ...)
        code, message = "http_error", f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}"
    cls = ServiceBusy if status == 429 else InvalidModel if code == "invalid_model" else _ERRORS.get(code, ServiceError)
    return cls(status, code, message)


class _DeadlineStream:
    """A connection whose every read and write ends by the deadline of the client call (a
    server trickling one byte at a time never gets past it): httpcore's NetworkStream."""

    def __init__(self, stream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        import httpcore

        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        import httpcore

        self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname: str | None = None, timeout: float | None = None):
        import httpcore

        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname,
                                                      _bounded(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend:
    """httpcore's NetworkBackend of the client's connections: the default one, its connects and
    streams bounded by the deadline of the client call (httpx's own timeouts are per operation)."""

    def __init__(self, backend):
        self._backend = backend

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        import httpcore

        return _DeadlineStream(self._backend.connect_tcp(host, port, _bounded(timeout, httpcore.ConnectTimeout),
                                                         local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        import httpcore

        return _DeadlineStream(self._backend.connect_unix_socket(path, _bounded(timeout, httpcore.ConnectTimeout),
                                                                 socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _bounded(timeout: float | None, exc: type[Exception]) -> float | None:
    """``timeout`` cut to what is left of the current call's deadline; ``exc`` if nothing is."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise exc("the client call's deadline passed")
    return left if timeout is None else min(timeout, left)


def _install_deadlines(transport) -> bool:
    """Bound the connections of an ``httpx.HTTPTransport`` (the default one, a proxy's) by the
    call's deadline (_DeadlineBackend); False for a transport of another kind (a test's
    MockTransport: its bodies are checked against the deadline between chunks only)."""
    import httpx

    pool = getattr(transport, "_pool", None)
    if not isinstance(transport, httpx.HTTPTransport) or not hasattr(pool, "_network_backend"):
        return False
    if not isinstance(pool._network_backend, _DeadlineBackend):
        pool._network_backend = _DeadlineBackend(pool._network_backend)
    return True


def _table(out: dict) -> tuple[list[str], list[str], list[list]]:
    """The columns, types and rows of a /v1/sql answer; ValueError unless each row has a value
    per column (a row of another length would be cut or padded, silently, by the frame)."""
    columns, types, rows = out["columns"], out["types"], out["rows"]
    if not (isinstance(columns, list) and isinstance(types, list) and isinstance(rows, list)
            and len(columns) == len(types) and all(isinstance(c, str) for c in columns)
            and all(isinstance(t, str) for t in types)):
        raise ValueError("columns and types are not two lists of names of one length")
    if any(not isinstance(row, list) or len(row) != len(columns) for row in rows):
        raise ValueError(f"a row is not a list of {len(columns)} values")
    return columns, types, rows


def _raw(resp) -> Iterator[bytes]:
    """The body's bytes as they arrive, not decoded (only identity is accepted); a body that httpx
    read when the response was made (a MockTransport's ``content=``) at once."""
    import httpx

    try:
        yield from resp.iter_raw()
    except httpx.StreamConsumed:
        yield resp.content


def _call(method: Callable) -> Callable:
    """One call of the API: its requests all end by one deadline, ``timeout`` seconds after it
    starts (a call made by another keeps the outer one's)."""
    @wraps(method)
    def bounded(self, *args, **kwargs):
        with self._deadline():
            return method(self, *args, **kwargs)
    return bounded


def _where_param(where: dict | None) -> str | None:
    return None if where is None else json.dumps(where)


@contextmanager
def _invalid() -> Iterator[None]:
    """The engine's checks of a request, run before it is sent (as the local API runs them): a
    SelectionError is an InvalidRequest, as the service's 400/422 for the same mistake."""
    try:
        yield
    except ServiceError:
        raise
    except SelectionError as e:
        raise InvalidRequest(400 if isinstance(e, UnknownName) else 422, "invalid_request", str(e)) from None


def _checked(where: dict | None) -> dict | None:
    """``where`` as the local API takes it (numpy scalars as Python values), checked by the engine
    before it is sent (InvalidRequest): JSON would turn a key 1 into "1" and a nan into NaN."""
    with _invalid():
        return check_where(where)


def _analysis(request_type) -> Callable:
    """An analysis over HTTP: its Python signature and checks are the engine's request type's
    (``requests.takes``), its mistakes an InvalidRequest before anything is sent, its requests
    bounded by one deadline (``_call``)."""
    def decorate(method: Callable) -> Callable:
        inner = takes(request_type)(_call(method))

        @wraps(inner)
        def call(self, *args, **kwargs):
            with _invalid():
                return inner(self, *args, **kwargs)
        return call

    return decorate


def _requested(name: str, spec: AnalysisSpec) -> Callable:
    """``Client.<name>`` of an analysis of ``requests.ANALYSES`` that has no method written below:
    its endpoint, with the request as the body (POST) or the query (GET; path parameters such as
    ``{model_id}`` filled from it), the answer as its result class (or a plain Result)."""
    result_class = getattr(results, spec.result, results.Result)

    def method(self, req):
        in_path = [f for f in type(req).model_fields if "{" + f + "}" in spec.path]
        path = spec.path.format(**{f: getattr(req, f) for f in in_path})
        if spec.method == "POST":
            data = self._post(path, req.body())
        else:
            data = self._get(path, {k: v for k, v in req.query().items() if k not in in_path})
        return self._result(result_class, path, data, req.selection)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"{spec.summary} (``FilterDB.{name}``; {spec.method} {spec.path})."
    return _analysis(spec.request)(method)


class BadUrl(errors.UserError, ValueError):
    """A Client's url that is no service address."""


def _service_url(url) -> str:
    """``url`` without its trailing slash, if it is an http(s) address with a host; BadUrl otherwise."""
    import httpx

    wrong = BadUrl(f"url: the service's address with its scheme, e.g. http://127.0.0.1:8000, not {echo(url)}")
    if not isinstance(url, str):
        raise wrong
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, UnicodeError, ValueError):
        raise wrong from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise wrong
    return str(parsed).rstrip("/")


class _RemoteCursor:
    """Enough of a DuckDB cursor (execute, fetchone, fetchall) over POST /v1/sql for the engine's
    catalog checks (``catalog.check_version``) to run against the service's store."""

    def __init__(self, client: Client):
        self.client = client
        self.rows: list = []

    def execute(self, query: str, params: list | None = None) -> _RemoteCursor:
        out = self.client._sql_json(query, params, SQL_PAGE)
        with self.client._expect("/v1/sql"):
            self.rows = _table(out)[2]  # a list of rows, each a value per column
        return self

    def fetchone(self):
        return tuple(self.rows[0]) if self.rows else None

    def fetchall(self) -> list[tuple]:
        return [tuple(r) for r in self.rows]


class Client:
    """The Python API over HTTP: ``cnnfilterdb.open``'s methods on a running service.

    Parameters
    ----------
    url : str, default "http://127.0.0.1:8000"
        The service (``cnnfilterdb serve``).
    timeout : float, default 60
        Seconds a call may take in all: its requests, their connects, writes and reads, the
        waits for a 429's Retry-After, the reading of the answer (an analysis waits up to the
        service's ``analysis_wait_s`` for its turn). Each batch of ``iter_filters`` is a call.
    retries : int, default 3
        How many times a 429 is retried, after its Retry-After (at most 30 s), within the timeout.
    max_response_bytes : int, default 32 MiB
        The largest JSON answer read (the service's answers are under 20 MB with its default caps;
        raise it for a service configured with a larger ``sql_max_bytes``).
    **httpx_options
        Passed to ``httpx.Client`` (headers, auth, verify, transport, ...).

    Every method is documented on ``cnnfilterdb.api.FilterDB``; the results are the same types.
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 60.0, retries: int = 3,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, **httpx_options):
        import httpx

        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout: a number of seconds > 0, not {timeout!r}")
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int) or max_response_bytes < 1024:
            raise ValueError(f"max_response_bytes: an int >= 1024, not {max_response_bytes!r}")
        self.url = _service_url(url)
        self.retries = retries
        self.timeout = float(timeout)
        self.max_response_bytes = max_response_bytes
        self._http = httpx.Client(base_url=self.url, timeout=timeout, **httpx_options)
        check_not_hidden(self)
        # Bodies as sent: a compressed one would be inflated by httpx before any cap applies.
        self._http.headers["Accept-Encoding"] = "identity"
        for transport in [self._http._transport, *self._http._mounts.values()]:
            _install_deadlines(transport)

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- HTTP ------------------------------------------------------------------------------------
    @contextmanager
    def _deadline(self) -> Iterator[None]:
        """The deadline of one call, ``timeout`` from now (inside another call: that one's)."""
        if _deadline.get() is not None:
            yield
            return
        token = _deadline.set(time.monotonic() + self.timeout)
        received = _received.set([0])
        try:
            yield
        finally:
            _received.reset(received)
            _deadline.reset(token)

    def _left(self, path: str) -> float:
        """The seconds left to the call's deadline; ServiceUnavailable when none are."""
        deadline = _deadline.get()
        left = self.timeout if deadline is None else deadline - time.monotonic()
        if left <= 0:
            raise self._timed_out(path, f"the call's timeout of {self.timeout:g} s passed")
        return left

    def _timed_out(self, path: str, why: str) -> ServiceUnavailable:
        received = _received.get()
        if received and received[0]:  # the service answers: the call's answers are larger or slower than its time
            return ServiceUnavailable(0, "timeout", f"the answer from {self.url}{path} did not complete in time "
                                                    f"({why}) though data was arriving: {received[0]:,} bytes "
                                                    f"received in this call; a larger timeout "
                                                    f"(Client(timeout=...)) gives a slow link or a large "
                                                    f"answer longer")
        return ServiceUnavailable(0, "timeout", f"no answer from {self.url}{path} in time ({why}); is the service "
                                                f"running (cnnfilterdb serve --db PATH) and not overloaded?")

    def _send(self, method: str, path: str, *, body: dict | None = None, params: dict | None = None,
              form: tuple[dict, dict] | None = None):
        """The response to one request, its body not read yet (the caller closes it); the error
        of an error answer, its body read up to MAX_ERROR_BYTES. ``form``: (fields, files) sent as
        multipart/form-data, each file (name, file object, media type) streamed from its start."""
        params = None if params is None else {k: v for k, v in params.items() if v is not None}
        for attempt in range(self.retries + 1):
            if form is None:
                req = self._http.build_request(method, path, json=body, params=params, timeout=self._left(path))
            else:
                for _, f, _ in form[1].values():
                    f.seek(0)  # a retry sends the file again
                req = self._http.build_request(method, path, data=form[0], files=form[1], params=params,
                                               timeout=self._left(path))
            with self._transport(path):
                resp = self._http.send(req, stream=True)
            if resp.status_code < 400:
                try:
                    self._check_encoding(resp, path)
                except BaseException:
                    resp.close()
                    raise
                return resp
            try:
                error = _error(resp.status_code, self._read(resp, path, MAX_ERROR_BYTES, cut=True))
            finally:
                resp.close()
            if resp.status_code == 429 and attempt < self.retries:
                wait = retry_wait(resp.headers.get("Retry-After"))
                if wait >= self._left(path):
                    raise error  # busy still when the call's time is up
                time.sleep(wait)
                continue
            raise error
        raise AssertionError("unreachable")

    def _check_encoding(self, resp, path: str) -> None:
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ServiceError(resp.status_code, "unexpected_response",
                               f"unexpected response from {self.url}{path}: compressed ({encoding[:40]}), though the "
                               f"client asks for bodies as they are (Accept-Encoding: identity)")

    def _read(self, resp, path: str, limit: int, cut: bool = False) -> bytes:
        """The body of ``resp``, read as it arrives up to ``limit`` bytes (``cut``: its first
        ``limit`` bytes; else ServiceError beyond) and by the call's deadline."""
        declared = resp.headers.get("Content-Length", "")
        if not cut and declared.isdigit() and int(declared) > limit:
            raise self._too_large(resp.status_code, path, limit)
        data = bytearray()
        received = _received.get()
        with self._transport(path):
            for chunk in _raw(resp):
                data += chunk
                if received is not None:
                    received[0] += len(chunk)
                if len(data) > limit:
                    if cut:
                        break
                    raise self._too_large(resp.status_code, path, limit)
                self._left(path)
        return bytes(data[:limit])

    def _too_large(self, status: int, path: str, limit: int) -> ServiceError:
        return ServiceError(status, "response_too_large",
                            f"the answer from {self.url}{path} is over {limit:,} bytes, more than the client reads "
                            f"(Client(max_response_bytes=...); the service's own caps keep its answers smaller)")

    @contextmanager
    def _transport(self, path: str) -> Iterator[None]:
        """httpx's errors as ServiceErrors: of the connection (refused, reset, timed out) as
        ServiceUnavailable, any other (a body that cannot be decoded, redirects) as an unexpected response."""
        import httpx

        try:
            yield
        except httpx.TimeoutException as e:
            raise self._timed_out(path, f"{type(e).__name__}: {e}") from e
        except httpx.TransportError as e:
            raise ServiceUnavailable(0, "unavailable", f"cannot reach the service at {self.url} "
                                                       f"({type(e).__name__}: {e}); start it with "
                                                       f"`cnnfilterdb serve --db PATH`, or give Client the "
                                                       f"URL it serves on") from e
        except httpx.HTTPError as e:
            raise ServiceError(0, "unexpected_response", f"unexpected response from {self.url}{path}: "
                                                         f"{type(e).__name__}: {str(e)[:200]}") from e

    @contextmanager
    def _expect(self, path: str, status: int = 200) -> Iterator[None]:
        """An answer that is not the JSON expected (a proxy's HTML page, a body without its keys,
        nested too deep, values of the wrong kinds) as a ServiceError naming the URL, not an
        error from inside."""
        try:
            yield
        except (ServiceError, StopIteration):
            raise
        except Exception as e:  # KeyError, TypeError, RecursionError, EOFError, ValueError, MemoryError, ...
            raise ServiceError(status, "unexpected_response", f"unexpected response from {self.url}{path}: "
                                                              f"{type(e).__name__}: {str(e)[:200]}") from None

    def _json(self, resp, path: str, limit: int | None = None, too_large: Callable | None = None) -> dict:
        """The JSON object of ``resp``, its body read up to ``limit`` bytes (max_response_bytes;
        beyond: ``too_large(status)`` or the usual ServiceError)."""
        limit = self.max_response_bytes if limit is None else limit
        try:
            try:
                body = self._read(resp, path, limit)
            except ServiceError as e:
                if too_large is None or e.code != "response_too_large":
                    raise
                raise too_large(e.status) from None
        finally:
            resp.close()
        with self._expect(path, resp.status_code):
            data = json.loads(body)
        if not isinstance(data, dict):
            raise ServiceError(resp.status_code, "unexpected_response", f"unexpected response from {self.url}{path}: "
                                                                        f"not a JSON object ({type(data).__name__})")
        return data

    def _post(self, path: str, body: dict) -> dict:
        return self._json(self._send("POST", path, body=body), path)

    def _get(self, path: str, params: dict | None = None) -> dict:
        return self._json(self._send("GET", path, params=params), path)

    def _result(self, cls, path: str, data: dict, where: dict | None):
        with self._expect(path):
            return cls(data, where)

    def _sql_json(self, query: str, params: list | None, max_rows: int, limit: int | None = None,
                  too_large: Callable | None = None) -> dict:
        return self._json(self._send("POST", "/v1/sql", body={"sql": query, "params": list(params or []),
                                                              "max_rows": max_rows}),
                          "/v1/sql", limit, too_large)

    # -- listings --------------------------------------------------------------------------------
    def _version(self, as_of) -> int | None:
        as_of = version_arg(as_of)
        if as_of is not None:
            check_version(_RemoteCursor(self), as_of)
        return as_of

    def _listing(self, query: tuple[str, list], key: str) -> pd.DataFrame:
        """Every row of ``query``, in ``key`` order, page after page (keyset paging: each page
        is within the service's row and byte caps). The pages' bytes together are at most
        max_response_bytes, as one answer's are: a server whose pages advance for ever (each
        ``truncated``) is refused there, not read until memory runs out."""
        sql, params = query
        rows: list = []
        after = None
        received = _received.get()
        start = received[0] if received is not None else 0
        pages = 0

        def too_large(status: int) -> ServiceError:
            return ServiceError(status, "response_too_large",
                                f"the listing from {self.url}/v1/sql is over {self.max_response_bytes:,} bytes in "
                                f"its {pages + 1:,} pages of {key}, more than the client reads "
                                f"(Client(max_response_bytes=...) bounds a whole listing; the service's models "
                                f"and layers are far smaller)")

        while True:
            got_bytes = received[0] - start if received is not None else 0
            page = self._sql_json(f"SELECT * FROM ({sql}) AS t" + (f" WHERE {key} > ?" if after is not None else "")
                                  + f" ORDER BY {key} LIMIT {SQL_PAGE}",
                                  params + ([after] if after is not None else []), SQL_PAGE,
                                  max(self.max_response_bytes - got_bytes, 0), too_large)
            pages += 1
            with self._expect("/v1/sql"):
                columns, types, got = _table(page)
                if len(got) > SQL_PAGE:
                    raise ValueError(f"a page of {len(got):,} rows, where at most {SQL_PAGE:,} were asked for")
                if not page["truncated"] and len(got) < SQL_PAGE:
                    return frame(columns, types, rows + got)
                if not got:
                    raise ServiceError(200, "sql_result_too_large", f"one row is over the service's caps: "
                                                                    f"{str(page['truncated_reason'])[:300]}")
                at = columns.index(key)
                # Keyset paging: the keys of a page ascend, past the last page's; a server whose
                # pages do not advance would be asked for the same page for ever.
                last = after
                for row in got:
                    k = row[at]
                    if not isinstance(k, int) or isinstance(k, bool) or (last is not None and k <= last):
                        raise ServiceError(200, "unexpected_response",
                                           f"unexpected response from {self.url}/v1/sql: its pages of {key} do not "
                                           f"advance ({key} {str(k)[:40]} after {last})")
                    last = k
                rows += got
                after = last

    def _properties(self, where: dict | None, version: int | None) -> dict[str, str] | None:
        """The store's model properties when ``where`` needs them (results.check_listing: its
        fields and text values checked against the store, as the local API does), else None: a
        listing of everything asks the store nothing before its pages. An answer the engine
        cannot read (a version that is no integer, a column name that is no property's) is a
        ServiceError naming the URL."""
        if not where:
            return None
        try:
            properties = check_listing(_RemoteCursor(self), where, version)
        except UserError:  # the store's answer to the where (ServiceError, SelectionError, VersionError)
            raise
        except Exception as e:
            raise ServiceError(200, "unexpected_response", f"unexpected response from {self.url}/v1/sql: "
                                                           f"{type(e).__name__}: {str(e)[:200]}") from None
        bad = [n for n in properties if not (isinstance(n, str) and PROPERTY_NAME.match(n))]
        if bad:
            raise ServiceError(200, "unexpected_response", f"unexpected response from {self.url}/v1/sql: "
                                                           f"{echo(bad[0])} is not a property name")
        return properties

    @_call
    def models(self, where: dict | None = None, as_of: int | None = None) -> pd.DataFrame:
        """The models a selection holds (``FilterDB.models``), read through POST /v1/sql."""
        where, version = _checked(where), self._version(as_of)
        properties = self._properties(where, version)
        return finish_models(self._listing(models_query(where, version, properties), "model_id"))

    @_call
    def layers(self, where: dict | None = None, as_of: int | None = None) -> pd.DataFrame:
        """The layers a selection holds (``FilterDB.layers``), read through POST /v1/sql."""
        where, version = _checked(where), self._version(as_of)
        properties = self._properties(where, version)
        return self._listing(layers_query(where, version, properties), "layer_id")

    # -- filters ---------------------------------------------------------------------------------
    @_call
    def iter_filters(self, where: dict | None = None, batch: int = FILTER_BATCH,
                     as_of: int | None = None) -> FilterBatches:
        """The filters of a selection, batch by batch (``FilterDB.iter_filters``), streamed from
        GET /v1/filters?format=npy as they are consumed.

        Example
        -------
        >>> import cnnfilterdb
        >>> batches = cnnfilterdb.Client(url).iter_filters({"conv_depth": 0}, batch=1000)
        >>> sum(len(w) for w in batches) == batches.n_rows
        True
        """
        batch = check_batch(batch)
        with _invalid():  # GET /v1/filters' request, checked before it is sent
            req = build(ExportRequest, where=_checked(where), format="npy", as_of=version_arg(as_of))
        resp = self._send("GET", "/v1/filters", params=req.query())
        try:
            with self._expect("/v1/filters"):
                version = resp.headers.get("X-Store-Version")
                version = int(version) if version else None
                got = [0]  # the body's bytes received (for the message of a cut stream)
                batches = _RemoteBatches(self, self._chunks(resp, "/v1/filters", got), batch, version,
                                         on_close=resp.close, max_rows=MAX_FILTER_ROWS, received=got)
                declared = resp.headers.get("X-Rows")
                if declared is not None and declared.strip() != str(batches.n_rows):
                    raise ValueError(f"X-Rows says {declared[:40]} filters, the stream's header {batches.n_rows:,}")
                return batches
        except BaseException:
            resp.close()
            raise

    def _chunks(self, resp, path: str, got: list[int] | None = None) -> Iterator[bytes]:
        """The body's bytes as they arrive, by the deadline of the call reading them (counted in
        ``got[0]``); a connection closed or reset meanwhile is StreamCut: the status was sent, the
        service is there, it cut the stream."""
        import httpx

        got = [0] if got is None else got
        with self._transport(path):
            try:
                yield from self._counted_chunks(resp, path, got)
            except (httpx.RemoteProtocolError, httpx.ReadError) as e:
                raise self._cut(path, got[0], None, None, f"{type(e).__name__}: {str(e).strip()[:200]}") from None

    def _cut(self, path: str, received: int, rows: int | None, n_rows: int | None, how: str) -> StreamCut:
        of = "" if rows is None else f"{rows:,} of the {n_rows:,} filters it declared, "
        return StreamCut(f"the service cut the stream of {self.url}{path} after {of}{received:,} bytes ({how}); "
                         "the service's log says why", received, rows, how)

    def _counted_chunks(self, resp, path: str, got: list[int]) -> Iterator[bytes]:
        for chunk in _raw(resp):
            got[0] += len(chunk)
            received = _received.get()
            if received is not None:
                received[0] += len(chunk)
            self._left(path)
            yield chunk

    @_call
    def filters(self, where: dict | None = None, as_of: int | None = None):
        """The filters of a selection as one ``(n, 3, 3)`` float32 array (``FilterDB.filters``)."""
        with self.iter_filters(where, FILTER_BATCH, as_of) as batches:
            return batches.collect()

    # -- statistics: the engine's request types (cnnfilterdb/requests.py), checked before sending.
    # Every analysis of requests.ANALYSES is a method (made by _requested, after the class): POST
    # with the request as the body, GET with it as the query. degenerate is written out: a query
    # string cannot say entropy_norm_gt=None.
    @_analysis(DegenerateRequest)
    def degenerate(self, req: DegenerateRequest) -> DegenerateResult:
        """The layers over the thresholds (``FilterDB.degenerate``; GET /v1/quality/degenerate)."""
        params = req.query()
        if req.entropy_norm_gt is None:  # a query string cannot say null: "not checked" is a threshold no value is above
            params["entropy_norm_gt"] = NO_THRESHOLD
        data = self._get("/v1/quality/degenerate", params)
        with self._expect("/v1/quality/degenerate"):
            if req.entropy_norm_gt is None:
                data["thresholds"]["entropy_norm_gt"] = None
        return self._result(DegenerateResult, "/v1/quality/degenerate", data, req.selection)

    @documented(CheckRequest, path=CHECK_PATH_TEXT)
    def check(self, path: str | os.PathLike, where: dict | None = None, **options) -> CheckResult:
        """Check a model file against the population (``FilterDB.check``; POST /v1/check): the
        file is streamed up as the multipart part ``file``, the options (the fields of
        ``cnnfilterdb.requests.CheckRequest``, by keyword) as form fields.

        Returns
        -------
        CheckResult
            The same as ``FilterDB.check`` gives for the same file and store.

        Raises
        ------
        InvalidModel (a cnnfilterdb.UserError, as the local IngestError)
            The file is not a model, holds no 3x3 convolution or a NaN weight, cannot be read.
        InvalidRequest, EmptySelection, UnknownVersion
            A bad option or where (checked before anything is sent), no layer in the population,
            an as_of the store does not hold.
        ServiceError
            The service refused the upload: over its max_check_bytes (413), or not in its
            check_upload_timeout_s (408); a 429 is retried as every call's.
        OSError
            The file cannot be opened (as ``FilterDB.check``).
        """
        with self._deadline():
            with _invalid():
                if "as_of" in options:
                    options["as_of"] = version_arg(options["as_of"])
                req = build(CheckRequest, where=_checked(where), **options)
            fields = {}
            for name, value in req.body().items():
                if value is None and name == "entropy_norm_gt":
                    fields[name] = "null"  # the random_like flag off
                elif value is not None:
                    fields[name] = value if isinstance(value, str) else json.dumps(value)
            file = Path(os.fspath(path))
            with open(file, "rb") as f:
                try:
                    resp = self._send("POST", "/v1/check", form=(fields, {"file": (file.name, f,
                                                                                    "application/octet-stream")}))
                except ServiceUnavailable as e:
                    raise self._upload_cut(e, file) from None
                data = self._json(resp, "/v1/check")
            return self._result(CheckResult, "/v1/check", data, req.selection)

    def _upload_cut(self, e: ServiceUnavailable, file: Path) -> ServiceError:
        """A connection the service closed while the file was going up (a write that failed): it
        refused the upload before reading it all (over max_check_bytes, busy, not in time), and the
        answer saying so was lost with the connection."""
        import httpx

        if isinstance(e.__cause__, httpx.WriteError):
            return ServiceError(0, "upload_cut", f"the service at {self.url} closed the connection while {file.name} "
                                                 f"({file.stat().st_size:,} bytes) was being sent: it refused the "
                                                 f"upload (over its max_check_bytes, all its max_checks busy, or "
                                                 f"not received within its check_upload_timeout_s; GET /v1/stats "
                                                 f"shows them)")
        return e

    # -- SQL and versions ------------------------------------------------------------------------
    @_call
    def sql(self, query: str, params: list | None = None, max_rows: int | None = None) -> pd.DataFrame:
        """One read-only query (POST /v1/sql: the service's sandbox, time limit and caps).

        Parameters
        ----------
        query : str
        params : list, optional
            Values for its ``?`` / ``$n`` placeholders.
        max_rows : int, optional
            At most this many rows; default as many as the service allows (``sql_max_rows``).

        Returns
        -------
        DataFrame, typed from the result's DuckDB types; ``.attrs["truncated"]`` says whether
        rows were left out (a warning says why).

        Example
        -------
        >>> import cnnfilterdb
        >>> cnnfilterdb.Client(url).sql("SELECT 6 * 7 AS answer").answer.tolist()
        [42]
        """
        out = self._sql_json(query, params, 2**62 if max_rows is None else max_rows)
        with self._expect("/v1/sql"):
            df = frame(*_table(out))
            df.attrs["truncated"] = bool(out["truncated"])
        if out["truncated"] and (max_rows is None or len(df) < max_rows):
            warnings.warn(f"the service returned the first {len(df):,} rows only ({out['truncated_reason']})",
                          stacklevel=2)
        return df

    @_call
    def versions(self) -> pd.DataFrame:
        """The store versions, oldest first (``FilterDB.versions``; GET /v1/versions)."""
        out: dict[str, Any] = self._get("/v1/versions")
        with self._expect("/v1/versions"):
            return versions_frame(out["versions"], out["store_id"], out["current"])


for _name, _spec in analyses():
    if _name not in vars(Client):
        setattr(Client, _name, _requested(_name, _spec))
    elif getattr(vars(Client)[_name], "request_type", None) is not _spec.request:
        raise RuntimeError(f"the analysis {_name!r} of requests.ANALYSES would hide Client.{_name}: give it another name")


class _RemoteBatches(FilterBatches):
    """FilterBatches of GET /v1/filters: each batch read by the deadline of its own call (inside
    ``filters()``, of that one), a stream that is not as its header says a ServiceError."""

    def __init__(self, client: Client, *args, received: list[int] | None = None, **kwargs):
        self._client = client
        self._received = [0] if received is None else received
        self._rows = 0  # the filters handed on
        super().__init__(*args, **kwargs)

    def __next__(self):
        with self._client._deadline(), self._client._expect("/v1/filters"):
            try:
                out = super().__next__()
            except StreamCut as e:  # the count of filters said too
                raise self._client._cut("/v1/filters", e.received, self._rows, self.n_rows, e.how) from None
            except EOFError as e:  # the body ended, cleanly, short of its header's count
                raise self._client._cut("/v1/filters", self._received[0], self._rows, self.n_rows, str(e)) from None
            self._rows += len(out)
            return out
