"""Connections cannot starve the service (issue 20, point 4; service/connections.py): the real
`cnnfilterdb serve` held by hundreds of idle or header-trickling connections keeps answering, closes
trickling ones at the head timeout, refuses connections over the per-address cap at once, and
clients that stop reading cannot hold every export slot. The hostile connections come from
127.0.0.2, the probes from 127.0.0.1: two client addresses on the loopback. No timing is asserted
(latencies: bench/bench_connections.py); waits are bounded only to fail rather than hang."""
from __future__ import annotations

import json
import resource
import select
import socket
import time
from collections import Counter
from contextlib import contextmanager

import httpx
import pytest

from .helpers import start_serve

HOSTILE = "127.0.0.2"


@pytest.fixture(scope="module", autouse=True)
def enough_file_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def export_store(tmp_path_factory):
    """A store whose CSV export (about 55 MB) is larger than what the loopback's socket buffers
    take in for a client that stops reading."""
    from cnnfilterdb.ingest.sample import write_sample_h5

    from .helpers import cli_main

    work = tmp_path_factory.mktemp("export-store")
    src = write_sample_h5(work / "s.h5", n_models=10, n_filters=500_000, seed=11)
    assert cli_main(["ingest", "--allow-missing", str(src), "--db", str(work / "db")]) == 0
    return work / "db"


@contextmanager
def serve(db, *flags: str):
    """`cnnfilterdb serve` on a free loopback port with these flags: yields (base URL, port)."""
    p, base, port = start_serve(["--db", str(db), *flags])
    try:
        yield base, port
    finally:
        p.terminate()
        p.wait(timeout=30)
        p.stderr.close()


SLOW_BODY = (b"POST /v1/sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: 100000\r\n\r\n{")  # and the rest of the body never comes


def open_connections(port: int, n: int, trickle_every: int = 0, addresses: tuple[str, ...] = (HOSTILE,),
                     send: bytes = b"") -> list[socket.socket]:
    """n connections from ``addresses`` in turn, each sending ``send``; every trickle_every-th one
    sends part of a request head."""
    socks = []
    for i in range(n):
        s = socket.socket()
        s.bind((addresses[i % len(addresses)], 0))
        s.connect(("127.0.0.1", port))
        if trickle_every and i % trickle_every == 0:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaa")
        elif send:
            s.sendall(send)
        s.setblocking(False)
        socks.append(s)
    return socks


def what_came(s: socket.socket) -> bytes | None:
    """None while the connection is open and silent; else what the server sent before closing
    (b"" for a bare close or a reset). A connection sent something and left open counts as open."""
    try:
        data = s.recv(65536)
    except BlockingIOError:
        return None
    except ConnectionResetError:
        return b""
    if not data:
        return b""
    while True:  # the rest, up to the close
        try:
            more = s.recv(65536)
        except BlockingIOError:
            if b"connection: close" not in data:
                return None
            # a response sent, the rest of it and the close to come (it may arrive in pieces)
            if not select.select([s], [], [], 5.0)[0]:
                return data
            continue
        except ConnectionResetError:
            return data
        if not more:
            return data
        data += more


def wait_all_closed(socks: list[socket.socket], seconds: float) -> list[bytes]:
    """What each connection got before the server closed it, waiting at most ``seconds``."""
    got: dict[int, bytes] = {}
    deadline = time.monotonic() + seconds
    while len(got) < len(socks):
        for i, s in enumerate(socks):
            if i not in got and (data := what_came(s)) is not None:
                got[i] = data
        if len(got) < len(socks):
            assert time.monotonic() < deadline, f"{len(socks) - len(got)} of {len(socks)} connections still open"
            time.sleep(0.1)
    return [got[i] for i in range(len(socks))]


def probe(base: str, rounds: int = 10) -> None:
    """/health and /v1/models answer 200, on new connections from 127.0.0.1."""
    for _ in range(rounds):
        for path in ("/health", "/v1/models"):
            r = httpx.get(base + path, timeout=30)
            assert r.status_code == 200, (path, r.status_code, r.text[:200])


def test_600_idle_and_trickling_connections_leave_the_service_answering(v1_store):
    """All 600 held open (the per-address cap raised over them): the service answers; each is
    closed by the server at the head timeout, a trickling one with a 408."""
    with serve(v1_store, "--header-timeout-s", "8", "--max-connections-per-client", "1000") as (base, port):
        limits = httpx.get(base + "/v1/stats").json()["limits"]
        assert limits["header_timeout_s"] == 8 and limits["max_connections_per_client"] == 1000
        socks = open_connections(port, 600, trickle_every=2)
        try:
            assert sum(what_came(s) is not None for s in socks) == 0  # all 600 held open
            probe(base)
            got = wait_all_closed(socks, 60)  # by the server, at the head timeout (8 s)
            assert all(g.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in g for g in got[::2]), got[0][:200]
            assert all(g == b"" for g in got[1::2])  # an idle one: closed without a word
            probe(base, 2)
        finally:
            for s in socks:
                s.close()


def test_connections_over_the_per_address_cap_are_refused_at_once(v1_store):
    with serve(v1_store, "--max-connections-per-client", "50") as (base, port):
        socks = open_connections(port, 600)
        try:
            held, refused = socks[:50], socks[50:]
            got = wait_all_closed(refused, 30)  # answered and closed without waiting for a request
            for g in got:
                assert g.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in g
                assert json.loads(g.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "too_many_connections"
            assert all(what_came(s) is None for s in held)  # the address's first 50 are untouched
            probe(base)  # another address is served
            held[0].setblocking(True)
            held[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # so is one of the 50
            assert held[0].recv(65536).startswith(b"HTTP/1.1 200 ")
        finally:
            for s in socks:
                s.close()
        # Once they are closed, the address may connect again.
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                s.bind((HOSTILE, 0))
                s.connect(("127.0.0.1", port))
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(65536).startswith(b"HTTP/1.1 200 "):
                    break
            assert time.monotonic() < deadline, "the address stayed refused after closing its connections"
            time.sleep(0.2)


def test_idle_connections_give_way_to_requests_at_the_total_cap(v1_store):
    """At max_connections the connection waiting longest for a request head is closed to make
    room: 600 idle connections never keep a request out, and no more than the cap stay open."""
    with serve(v1_store, "--max-connections", "100", "--max-connections-per-client", "1000") as (base, port):
        socks = open_connections(port, 600)
        try:
            deadline = time.monotonic() + 30
            while (still := sum(what_came(s) is None for s in socks)) > 100:
                assert time.monotonic() < deadline, f"{still} connections open, over max_connections 100"
                time.sleep(0.1)
            assert still >= 50  # the newest were kept, the oldest closed
            probe(base)
        finally:
            for s in socks:
                s.close()


def test_a_keep_alive_connection_trickling_its_next_request_is_closed(v1_store):
    with serve(v1_store, "--header-timeout-s", "2") as (base, port), socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        s.sendall(b"GET /health HTTP/1.1\r\n")  # and no more
        s.setblocking(False)
        got = wait_all_closed([s], 30)[0]
        assert got.startswith(b"HTTP/1.1 408 ") and b"within 2 s" in got


def test_600_slow_request_bodies_from_6_addresses_leave_the_service_answering(v1_store):
    """A review held 600 POSTs (100 from each of 127.0.0.10-15) sending their body a byte a second:
    each counted against max_requests (500) and every /health was a 503 until body_timeout_s. A
    request whose body is still arriving is not a request in progress: the probes answer while
    all 600 are held, and the 600 are then closed by the body timeout with a 408."""
    addresses = tuple(f"127.0.0.{10 + i}" for i in range(6))
    with serve(v1_store, "--body-timeout-s", "20") as (base, port):
        limits = httpx.get(base + "/v1/stats").json()["limits"]
        assert limits["max_requests"] == 500 and limits["max_connections_per_client"] == 100
        socks = open_connections(port, 600, addresses=addresses, send=SLOW_BODY)
        try:
            probe(base)
            for s in socks[::7]:
                s.sendall(b" ")  # a byte of body now and then: still far from complete
            probe(base)
            assert sum(what_came(s) is not None for s in socks) == 0  # all 600 still held
            got = wait_all_closed(socks, 90)
            assert all(g.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in g for g in got), got[0][:200]
            probe(base, 2)
        finally:
            for s in socks:
                s.close()


def test_slow_request_bodies_give_way_to_requests_at_the_total_cap(v1_store):
    """At max_connections, with no connection waiting for a request head, the request whose body
    is arriving slowest is closed (503) to make room: no more than the cap stay open, and the
    probes are served."""
    with serve(v1_store, "--max-connections", "100", "--max-connections-per-client", "1000") as (base, port):
        socks = open_connections(port, 100, send=SLOW_BODY)  # at the cap
        try:
            probe(base)  # the first probe's connection, one over the cap, closes a slow body
            closed = [g for s in socks if (g := what_came(s)) is not None]
            assert closed and all(g.startswith(b"HTTP/1.1 503 ") and b"body slowest" in g for g in closed), \
                Counter(g[:60] for g in closed)
            socks += open_connections(port, 300, send=SLOW_BODY)  # new ones evict new ones, before their heads
            deadline = time.monotonic() + 30
            while (still := sum(what_came(s) is None for s in socks)) > 100:
                assert time.monotonic() < deadline, f"{still} connections open, over max_connections 100"
                time.sleep(0.1)
            probe(base)
        finally:
            for s in socks:
                s.close()


def test_requests_beyond_max_requests_get_a_503_while_idle_connections_do_not_count(export_store):
    """max_requests counts requests under way only: 90 idle connections and a request whose body
    is still coming leave room for one; an export whose client does not read fills it, and the
    next request is a 503."""
    with serve(export_store, "--max-requests", "1", "--export-send-timeout-s", "600") as (base, port):
        idle = open_connections(port, 90)
        slow_body = open_connections(port, 1, send=SLOW_BODY)[0]
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", port))
        try:
            probe(base, 2)
            slow.sendall(b"GET /v1/filters?format=csv HTTP/1.1\r\nHost: x\r\n\r\n")  # never read: under way
            deadline = time.monotonic() + 30
            while (r := httpx.get(base + "/health")).status_code == 200:
                assert time.monotonic() < deadline, "the request under way was not counted"
                time.sleep(0.1)
            assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"]
            slow.close()
            deadline = time.monotonic() + 30
            while httpx.get(base + "/health").status_code != 200:
                assert time.monotonic() < deadline, "the finished request was still counted"
                time.sleep(0.1)
            assert what_came(slow_body) is None  # the slow body, never counted, still held
        finally:
            slow.close()
            slow_body.close()
            for s in idle:
                s.close()


def test_clients_that_stop_reading_cannot_hold_every_export_slot(export_store):
    """Two clients stall their exports, holding both slots: a third export is refused (429) until
    they have taken no data for export_stall_s, then it is served, and a stalled one is cut off."""
    with serve(export_store, "--export-concurrency", "2", "--export-stall-s", "1",
               "--export-send-timeout-s", "600") as (base, port):
        stalled = []
        for _ in range(2):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /v1/filters?format=csv HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
            stalled.append(s)
        try:
            deadline = time.monotonic() + 60
            statuses = []
            while (r := httpx.get(base + "/v1/filters", params={"format": "npy", "where": '{"layer_id": 0}'},
                                  timeout=60)).status_code == 429:
                statuses.append(r.status_code)
                assert time.monotonic() < deadline, "stalled clients kept every export slot"
                time.sleep(0.2)
            assert r.status_code == 200 and int(r.headers["x-rows"]) > 0 and len(r.content) > 128
            assert statuses  # the stalled ones held both slots first
            # One of the stalled downloads was cut off: reading it to its end gives less than a whole file.
            for s in stalled:
                s.settimeout(30)
            ends = []
            for s in stalled:
                data, n = b"", 0
                try:
                    while chunk := s.recv(1 << 20):
                        n += len(chunk)
                        data = (data + chunk)[-16:]
                except (ConnectionResetError, TimeoutError):
                    pass
                ends.append(data.endswith(b"0\r\n\r\n"))  # the chunked body's last chunk: complete
            assert not all(ends)
        finally:
            for s in stalled:
                s.close()


def test_clients_that_stop_reading_cannot_hold_the_layer_filter_slots(export_store):
    """GET /v1/layers/{id}/filters (JSON pages and .npy) is bounded like exports: one slot here,
    held by a client that asked for a 100,000-filter page and reads nothing; another gets a 429
    (Retry-After) until that client has taken no data for export_stall_s, then its page whole,
    and the service answers cheap requests throughout."""
    with serve(export_store, "--layer-filters-concurrency", "1", "--export-stall-s", "1",
               "--export-send-timeout-s", "600") as (base, port):
        assert httpx.get(base + "/v1/stats").json()["limits"]["layer_filters_concurrency"] == 1
        layer_id, n = httpx.post(base + "/v1/sql", json={
            "sql": "SELECT layer_id, n_filters FROM layers ORDER BY n_filters DESC LIMIT 1"}).json()["rows"][0]
        page = f"/v1/layers/{layer_id}/filters?limit=100000"
        want = min(n, 100_000)
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        try:
            stalled.sendall(f"GET {page} HTTP/1.1\r\nHost: x\r\n\r\n".encode())  # and never reads
            deadline = time.monotonic() + 60
            refused = []
            while (r := httpx.get(base + page, timeout=60)).status_code == 429:
                assert r.json()["error"]["code"] == "layer_filters_busy" and r.headers["retry-after"] == "1"
                refused.append(r)
                probe(base, 1)
                assert time.monotonic() < deadline, "a client that reads nothing kept the slot"
                time.sleep(0.2)
            assert r.status_code == 200 and len(r.json()["items"]) == want
            assert refused  # the stalled client held the slot first
            npy = httpx.get(base + f"/v1/layers/{layer_id}/filters?format=npy", timeout=60)
            assert npy.status_code == 200 and len(npy.content) > n * 36  # the slot came back
        finally:
            stalled.close()


def test_the_check_upload_is_not_read_before_its_route():
    """POST /v1/check bounds its own upload (a slot before it is read, its own size, time and rate:
    tests/test_check_http.py exercises it behind the guard): the guard hands its body over unread."""
    from cnnfilterdb.service.connections import STREAMED
    from cnnfilterdb.service.routers import check

    assert STREAMED == {("POST", check.PATH)}
