"""cnnfilterdb.Client against hostile servers (issue 20, finding 5): whatever a server sends, a
call ends with a result or a ServiceError, by its deadline, in bounded memory.

The servers are real HTTP/1.1 servers on a loopback port (``Hostile``) whose answers a test
writes byte by byte: pages that do not advance, a 64 MiB .npy header, JSON nested 100,000 deep, a
header declaring 10^12 filters, a stream cut short, an answer trickled a byte at a time, a
300 MB body, an error page of 300 MB, a compressed body. Durations are measured only loosely
(the call raises the deadline's error; it returns well within 10x its timeout)."""
from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
import tracemalloc
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import pytest

import cnnfilterdb
from cnnfilterdb.client import (
    DEFAULT_MAX_RESPONSE_BYTES,
    MAX_FILTER_ROWS,
    SQL_PAGE,
    ServiceBusy,
    ServiceError,
    ServiceUnavailable,
    StreamCut,
)
from cnnfilterdb.export import NPY_DTYPE

MiB = 1 << 20


class _Closed(Exception):
    """The client went away: the server stops sending."""


class Conn:
    """One request to a hostile server: what the client asked, and how to answer."""

    def __init__(self, sock: socket.socket, method: str, path: str, body: bytes, stop: threading.Event):
        self.sock, self.method, self.path, self.body, self.stop = sock, method, path, body, stop

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            raise _Closed from None

    def head(self, status: int = 200, headers: dict | None = None) -> None:
        lines = [f"HTTP/1.1 {status} X", "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    def json(self, value, status: int = 200) -> None:
        body = json.dumps(value).encode()
        self.head(status, {"Content-Type": "application/json", "Content-Length": len(body)})
        self.send(body)

    def trickle(self, data: bytes, every_s: float) -> None:
        """``data`` a byte at a time, one every ``every_s`` seconds (until the client goes)."""
        for i in range(len(data)):
            self.send(data[i:i + 1])
            if self.stop.wait(every_s):
                raise _Closed

    def stream(self, chunk: bytes, total: int) -> None:
        """``total`` bytes of ``chunk`` repeated, as fast as the client reads them."""
        sent = 0
        while sent < total and not self.stop.is_set():
            self.send(chunk[:total - sent])
            sent += len(chunk)


@contextmanager
def hostile(respond: Callable[[Conn], None]):
    """A threaded HTTP server on a free loopback port answering every request with ``respond``;
    yields its URL; ``requests`` lists the paths asked for."""
    stop = threading.Event()
    requests: list[str] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            sock = self.request
            data = b""
            while b"\r\n\r\n" not in data:
                more = sock.recv(65536)
                if not more:
                    return
                data += more
            head, body = data.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = next((int(v) for k, _, v in (h.partition(":") for h in lines[1:])
                           if k.strip().lower() == "content-length"), 0)
            while len(body) < length:
                body += sock.recv(65536)
            requests.append(path)
            try:
                respond(Conn(sock, method, path, body, stop))
            except _Closed:
                pass

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    with Server(("127.0.0.1", 0), Handler) as srv:
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{srv.server_address[1]}", requests
        finally:
            stop.set()
            srv.shutdown()
            thread.join(10)


@contextmanager
def peak_memory():
    """The peak of Python's and numpy's allocations (tracemalloc) inside the block, in bytes: out["peak"]."""
    out = {}
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield out
    finally:
        out["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


@contextmanager
def elapsed_under(limit_s: float):
    """Loosely: the block takes less than ``limit_s`` (a generous multiple of the timeout)."""
    t0 = time.monotonic()
    yield
    assert time.monotonic() - t0 < limit_s


def _npy(n_rows: int, rows: int | None = None, version: int = 1) -> bytes:
    """An .npy stream of the export's dtype whose header declares ``n_rows`` and that holds ``rows``."""
    header = {"descr": np.lib.format.dtype_to_descr(NPY_DTYPE), "fortran_order": False, "shape": (n_rows,)}
    import io

    out = io.BytesIO()
    (np.lib.format.write_array_header_1_0 if version == 1 else np.lib.format.write_array_header_2_0)(out, header)
    data = np.zeros(n_rows if rows is None else rows, dtype=NPY_DTYPE)
    return out.getvalue() + data.tobytes()


def _sql_page(first_id: int, n: int, truncated: bool = False) -> dict:
    return {"columns": ["model_id", "model"], "types": ["INTEGER", "VARCHAR"],
            "rows": [[first_id + i, f"m{first_id + i}"] for i in range(n)], "truncated": truncated,
            "truncated_reason": "row cap" if truncated else None, "n_rows": n, "elapsed_ms": 1.0}


# -- pages that do not advance --------------------------------------------------------------------

@pytest.mark.parametrize("page", ["same page", "same last row truncated", "keys going back", "keys not ints"])
def test_pages_that_do_not_advance_are_an_error(page):
    """A server that answers every page with the same rows once made models() run for ever
    (3.3 GB in 20 s); now the second page is refused, whatever the server does."""
    def respond(conn: Conn):
        if page == "same page":
            conn.json(_sql_page(0, SQL_PAGE))
        elif page == "same last row truncated":
            conn.json(_sql_page(5, 1, truncated=True))
        elif page == "keys going back":
            conn.json(_sql_page(0, SQL_PAGE) | {"rows": [[SQL_PAGE - i, "m"] for i in range(SQL_PAGE)]})
        else:
            conn.json(_sql_page(0, 3, truncated=True) | {"rows": [["1", "m"], ["2", "m"], ["3", "m"]]})

    with hostile(respond) as (url, requests), peak_memory() as mem, elapsed_under(60):
        with cnnfilterdb.Client(url, timeout=30) as c, pytest.raises(ServiceError) as e:
            c.models()
    assert type(e.value) is ServiceError and e.value.code == "unexpected_response"
    assert f"unexpected response from {url}/v1/sql: its pages of model_id do not advance" in str(e.value)
    assert len(requests) <= 2 and mem["peak"] < 100 * MiB


@pytest.mark.parametrize("cap", [4 * MiB, DEFAULT_MAX_RESPONSE_BYTES])
def test_pages_that_advance_for_ever_stop_at_max_response_bytes(cap):
    """Each page's keys advance but every page says ``truncated``: only each answer was capped, so
    models() read page after page (2.9 GB by its 60 s timeout). Now the pages together are read up
    to max_response_bytes, and the error names that cap."""
    def respond(conn: Conn):
        params = json.loads(conn.body).get("params") or []
        after = params[-1] if params and isinstance(params[-1], int) else 0
        conn.json(_sql_page(after + 1, SQL_PAGE, truncated=True)
                  | {"rows": [[after + 1 + i, "x" * 300] for i in range(SQL_PAGE)]})

    with hostile(respond) as (url, requests), peak_memory() as mem, elapsed_under(120):
        kwargs = {} if cap == DEFAULT_MAX_RESPONSE_BYTES else {"max_response_bytes": cap}
        with cnnfilterdb.Client(url, timeout=120, **kwargs) as c, pytest.raises(ServiceError) as e:
            c.models()
    assert type(e.value) is ServiceError and e.value.code == "response_too_large"
    assert f"the listing from {url}/v1/sql is over {cap:,} bytes" in str(e.value)
    assert "max_response_bytes" in str(e.value) and "overloaded" not in str(e.value)
    page_bytes = len(json.dumps(_sql_page(1, SQL_PAGE) | {"rows": [[1, "x" * 300]] * SQL_PAGE}))
    assert len(requests) <= cap // page_bytes + 1
    assert mem["peak"] < 4 * cap + 32 * MiB  # the rows of the pages under the cap, and one page's bytes


def test_a_deadline_passing_while_pages_arrive_says_so():
    """A listing whose pages keep coming until the call's timeout: the error says data was
    arriving (and how much), not 'no answer ... is the service running?'."""
    def respond(conn: Conn):
        params = json.loads(conn.body).get("params") or []
        after = params[-1] if params and isinstance(params[-1], int) else 0
        time.sleep(0.1)
        conn.json(_sql_page(after + 1, 100, truncated=True))

    with hostile(respond) as (url, requests), cnnfilterdb.Client(url, timeout=2) as c:
        with pytest.raises(ServiceUnavailable) as e:
            c.models()
    message = str(e.value)
    assert e.value.code == "timeout" and len(requests) > 1
    assert message.startswith(f"the answer from {url}/v1/sql did not complete in time (")
    assert "bytes received in this call" in message and "overloaded" not in message


def test_a_page_of_more_rows_than_asked_is_an_error():
    with hostile(lambda conn: conn.json(_sql_page(0, SQL_PAGE + 1))) as (url, _):
        with cnnfilterdb.Client(url) as c, pytest.raises(ServiceError, match=f"a page of {SQL_PAGE + 1:,} rows"):
            c.layers()


# -- the .npy stream of the filters ---------------------------------------------------------------

def test_a_64_mib_npy_header_is_refused_at_once():
    """A header declaring 64 MiB (an .npy of version 2) cost 109 s of CPU buffering it."""
    def respond(conn: Conn):
        conn.head(200, {"Content-Type": "application/octet-stream"})
        conn.send(b"\x93NUMPY\x02\x00" + (64 * MiB).to_bytes(4, "little"))
        conn.stream(b"{" * 65536, 64 * MiB)

    with hostile(respond) as (url, _), peak_memory() as mem, elapsed_under(30):
        with cnnfilterdb.Client(url, timeout=20) as c, pytest.raises(ServiceError) as e:
            c.filters()
    assert type(e.value) is ServiceError
    assert str(e.value) == (f"unexpected response from {url}/v1/filters: ValueError: an .npy header of 67,108,864 "
                            "bytes, longer than numpy reads (10,000) (HTTP 200 unexpected_response)")
    assert mem["peak"] < 20 * MiB


@pytest.mark.parametrize("header", [b"{'descr': " + b"[" * 5000 + b"]" * 5000 + b"}",
                                    b"{'descr': '<f4', 'fortran_order': False, 'shape': (" + b"(" * 3000 + b")"
                                    * 3000 + b",)}"])
def test_a_forged_npy_dict_is_an_error(header):
    def respond(conn: Conn):
        conn.head(200)
        conn.send(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)

    with hostile(respond) as (url, _), cnnfilterdb.Client(url) as c, pytest.raises(ServiceError) as e:
        c.filters()
    assert type(e.value) is ServiceError and f"unexpected response from {url}/v1/filters: ValueError" in str(e.value)


def test_a_header_declaring_10_to_the_12_filters_is_an_error_not_a_memory_error():
    def respond(conn: Conn):
        conn.head(200)
        conn.send(_npy(10**12, rows=10))

    with hostile(respond) as (url, _), peak_memory() as mem:
        with cnnfilterdb.Client(url) as c:
            for call in (c.filters, lambda: list(c.iter_filters())):
                with pytest.raises(ServiceError) as e:
                    call()
                assert type(e.value) is ServiceError
                assert (f"its header declares 1,000,000,000,000 filters, more than the {MAX_FILTER_ROWS:,} a stream "
                        "may hold") in str(e.value)
    assert mem["peak"] < 20 * MiB


def test_a_header_declaring_more_than_arrives_costs_what_arrives():
    """2^30 filters declared (under the limit), 1,000 sent: the collect grows as rows arrive,
    and ends with the stream's shortfall, not a 38 GB allocation."""
    def respond(conn: Conn):
        conn.head(200, {"X-Store-Version": "3"})
        conn.send(_npy(2**30, rows=1_000))

    with hostile(respond) as (url, _), peak_memory() as mem:
        with cnnfilterdb.Client(url) as c, pytest.raises(StreamCut) as e:
            c.filters()
    assert str(e.value).startswith(f"the service cut the stream of {url}/v1/filters after 1,000 of the "
                                   "1,073,741,824 filters it declared, ")
    assert "(the filters' stream ended after 1,000 of its 1,073,741,824 filters)" in str(e.value)
    assert mem["peak"] < 100 * MiB


@pytest.mark.parametrize("cut", ["within the header", "within a row", "rows short", "rows over", "x-rows"])
def test_a_stream_not_as_its_header_says_is_a_service_error(cut):
    full = _npy(100)
    data = {"within the header": full[:40], "within a row": full[:-7], "rows short": _npy(100, rows=60),
            "rows over": _npy(100, rows=140), "x-rows": full}[cut]

    def respond(conn: Conn):
        conn.head(200, {"X-Rows": "99"} if cut == "x-rows" else {})  # no Content-Length: the body ends at the close
        conn.send(data)

    with hostile(respond) as (url, _), cnnfilterdb.Client(url) as c:
        for call in (c.filters, lambda: [len(w) for w in c.iter_filters(batch=7)]):
            with pytest.raises(ServiceError) as e:
                call()
            if cut in ("within a row", "rows short"):  # a body ended short of its header: the service cut it
                assert type(e.value) is StreamCut and e.value.code == "stream_cut", e.value
                assert str(e.value).startswith(f"the service cut the stream of {url}/v1/filters after ")
            else:
                assert type(e.value) is ServiceError and e.value.code == "unexpected_response", e.value
            words = {"within the header": "EOFError: the filters' .npy stream ended within its header",
                     "within a row": "(the filters' .npy stream ended within a row)",
                     "rows short": "(the filters' stream ended after 60 of its 100 filters)",
                     "rows over": "ValueError: the stream holds more than the 100 filters its header states",
                     "x-rows": "ValueError: X-Rows says 99 filters, the stream's header 100"}[cut]
            assert words in str(e.value)


def test_a_stream_cut_against_its_content_length_is_said_cut_by_the_service():
    """The status was sent, the connection closed mid-body: the service cut the stream (its log says
    why), not "cannot reach the service"."""
    def respond(conn: Conn):
        data = _npy(100)
        conn.head(200, {"Content-Length": len(data)})
        conn.send(data[:len(data) // 2])

    with hostile(respond) as (url, _), cnnfilterdb.Client(url) as c, pytest.raises(StreamCut) as e:
        c.filters()
    assert not isinstance(e.value, ServiceUnavailable) and "cannot reach" not in str(e.value)
    assert str(e.value).startswith(f"the service cut the stream of {url}/v1/filters after 0 of the 100 filters it "
                                   f"declared, {len(_npy(100)) // 2:,} bytes (RemoteProtocolError: ")


# -- JSON: nested deep, too large -----------------------------------------------------------------

@pytest.mark.parametrize("status", [200, 500])
def test_deeply_nested_json_is_a_service_error(status):
    body = b"[" * 200_000 + b"]" * 200_000

    def respond(conn: Conn):
        conn.head(status, {"Content-Type": "application/json", "Content-Length": len(body)})
        conn.send(body)

    with hostile(respond) as (url, _), cnnfilterdb.Client(url) as c:
        for path, call in (("/v1/pca", c.pca), ("/v1/versions", c.versions), ("/v1/sql", lambda: c.sql("SELECT 1")),
                           ("/v1/sql", c.models)):
            with pytest.raises(ServiceError) as e:
                call()
            assert type(e.value) is ServiceError
            if status == 200:
                assert str(e.value).startswith(f"unexpected response from {url}{path}: RecursionError"), e.value
            else:
                assert e.value.status == 500 and e.value.code == "http_error" and str(e.value).startswith("HTTP 500: [[[")


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "until-close"])
def test_a_300_mb_body_is_refused_in_bounded_memory(declared):
    """A 300 MB answer took 1.1 GB; now the client reads at most max_response_bytes of a JSON answer."""
    total = 300 * MiB

    def respond(conn: Conn):
        conn.head(200, {"Content-Type": "application/json", **({"Content-Length": total} if declared else {})})
        conn.send(b'{"rows": [')
        conn.stream(b"[1,2,3,4,5,6,7,8,9]," * 3000, total)

    with hostile(respond) as (url, _), peak_memory() as mem, elapsed_under(60):
        with cnnfilterdb.Client(url) as c, pytest.raises(ServiceError) as e:
            c.sql("SELECT 1")
    assert type(e.value) is ServiceError and e.value.code == "response_too_large"
    assert str(e.value).startswith(f"the answer from {url}/v1/sql is over {DEFAULT_MAX_RESPONSE_BYTES:,} bytes, "
                                   "more than the client reads (Client(max_response_bytes=...)")
    assert mem["peak"] < 3 * DEFAULT_MAX_RESPONSE_BYTES


def test_a_300_mb_error_page_is_read_only_in_part():
    def respond(conn: Conn):
        conn.head(502, {"Content-Type": "text/html"})
        conn.send(b"<html>bad gateway")
        conn.stream(b"x" * 65536, 300 * MiB)

    with hostile(respond) as (url, _), peak_memory() as mem, elapsed_under(60):
        with cnnfilterdb.Client(url) as c, pytest.raises(ServiceError) as e:
            c.pca()
    assert type(e.value) is ServiceError and str(e.value).startswith("HTTP 502: <html>bad gateway")
    assert len(str(e.value)) < 500 and mem["peak"] < 20 * MiB


def test_a_compressed_body_is_refused():
    """The client asks for bodies as they are: a gzip answer could inflate 1000-fold before any cap."""
    import gzip

    def respond(conn: Conn):
        body = gzip.compress(b'{"versions": []}' + b" " * 10_000_000)
        conn.head(200, {"Content-Encoding": "gzip", "Content-Length": len(body)})
        conn.send(body)

    with hostile(respond) as (url, _), cnnfilterdb.Client(url) as c, pytest.raises(ServiceError) as e:
        c.versions()
    assert type(e.value) is ServiceError
    assert str(e.value).startswith(f"unexpected response from {url}/v1/versions: compressed (gzip)")
    assert c._http.headers["Accept-Encoding"] == "identity"


# -- the deadline of a call -----------------------------------------------------------------------

@pytest.mark.parametrize("where", ["headers", "json body", "npy body"])
def test_a_trickled_answer_ends_at_the_calls_deadline(where):
    """timeout=3 let a 44-byte body trickled a byte a second take 42 s: each read was within
    httpx's timeout. Now the whole call ends by its deadline."""
    body = json.dumps({"versions": [], "store_id": "x", "current": 1, "pad": "0" * 6}).encode()
    npy = _npy(10)

    def respond(conn: Conn):
        if where == "headers":
            conn.trickle(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: " + b"a" * 100, 0.5)
        elif where == "json body":
            conn.head(200, {"Content-Type": "application/json", "Content-Length": len(body)})
            conn.trickle(body, 0.5)
        else:
            conn.head(200)
            conn.send(npy[:200])
            conn.trickle(npy[200:], 0.5)

    with hostile(respond) as (url, _), cnnfilterdb.Client(url, timeout=3) as c:
        t0 = time.monotonic()
        with pytest.raises(ServiceUnavailable) as e:
            c.filters() if where == "npy body" else c.versions()
        took = time.monotonic() - t0
    path = "/v1/filters" if where == "npy body" else "/v1/versions"
    # Nothing of the answer's body had come (its head trickling): no answer; part of it had: said so.
    said = f"no answer from {url}{path} in time (" if where == "headers" else \
        f"the answer from {url}{path} did not complete in time ("
    assert e.value.code == "timeout" and str(e.value).startswith(said), str(e.value)
    assert took < 30, took  # loosely: the deadline plus slack, far from the 42 s of one read at a time


def test_each_batch_of_iter_filters_has_its_own_deadline():
    """iter_filters returns at once; a batch that does not arrive by its call's deadline raises."""
    npy = _npy(100)
    first = len(npy) - 50 * NPY_DTYPE.itemsize  # the header and 50 rows at once, then a trickle

    def respond(conn: Conn):
        conn.head(200)
        conn.send(npy[:first])
        conn.trickle(npy[first:], 0.5)

    with hostile(respond) as (url, _), cnnfilterdb.Client(url, timeout=3) as c:
        batches = c.iter_filters(batch=50)
        assert batches.n_rows == 100
        assert next(batches).shape == (50, 3, 3)
        with pytest.raises(ServiceUnavailable, match=f"the answer from {url}/v1/filters did not complete in time"):
            next(batches)


def test_a_retry_after_past_the_deadline_is_not_waited_for():
    def respond(conn: Conn):
        conn.head(429, {"Retry-After": "30", "Content-Type": "application/json", "Content-Length": 52})
        conn.send(b'{"error": {"code": "busy", "message": "busy, wait."}}'[:52])

    with hostile(respond) as (url, requests), cnnfilterdb.Client(url, timeout=3, retries=5) as c:
        with elapsed_under(20), pytest.raises(ServiceBusy) as e:
            c.pca()
    assert e.value.status == 429 and len(requests) == 1


def test_the_deadline_backend_is_on_the_default_transport():
    """The deadline reaches every read through httpx's default transport (a private attribute of
    httpx: if a new httpx moves it, this fails rather than the deadline silently not applying)."""
    from cnnfilterdb.client import _DeadlineBackend

    with cnnfilterdb.Client("http://127.0.0.1:9") as c:
        assert isinstance(c._http._transport._pool._network_backend, _DeadlineBackend)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "3", True])
def test_a_timeout_is_a_finite_number_of_seconds(timeout):
    with pytest.raises(ValueError, match="timeout: a number of seconds > 0"):
        cnnfilterdb.Client("http://127.0.0.1:9", timeout=timeout)


# -- answers of the wrong shape: always a ServiceError --------------------------------------------

@pytest.mark.parametrize("value", [
    {"versions": [{"version": "x"}], "store_id": 1, "current": None},
    {"columns": ["a"], "types": ["NOPE"], "rows": [[1, 2, 3]], "truncated": False, "truncated_reason": None},
    {"columns": ["model_id"], "types": ["INTEGER"], "rows": "x" * 100, "truncated": False},
    {"matrix": [[1e400]], "labels": None},
    {"error": "x"},
], ids=["versions", "types", "rows-string", "matrix", "error"])
def test_answers_of_the_wrong_shape_are_service_errors(value):
    with hostile(lambda conn: conn.json(value)) as (url, _), cnnfilterdb.Client(url) as c:
        for call in (c.versions, lambda: c.sql("SELECT 1"), c.models, c.layers, c.pca, lambda: c.divergence("task"),
                     c.histograms, c.kde, c.density2d, c.degenerate, lambda: c.similar(0)):
            with pytest.raises(ServiceError) as e:
                call()
            assert type(e.value) is ServiceError and e.value.code == "unexpected_response", e.value
