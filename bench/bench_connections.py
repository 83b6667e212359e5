"""Connection and export fairness benchmark (issue 20, point 4): `/health` and `/v1/models` latency
while hostile connections or exports load the service.

Builds (or reuses, --db) a store of N filters (default 2e6), starts `cnnfilterdb serve` on a free
loopback port, and for each phase runs the load in a child process while this process probes
`/health` and `/v1/models` in turn (one keep-alive connection, a probe every 20 ms) for --seconds:

1. baseline: the probes alone;
2. idle: --connections connections (default 600) from 127.0.0.2, half idle, half trickling a request
   head a byte a second; a closed one reconnects 0.5 s later. With the default limits (100 per client
   address: the rest refused at once, the trickling ones closed at the 10 s head timeout);
3. idle, all held: the same with max_connections_per_client raised over --connections;
4. exports: --export-clients clients (default 30) each downloading the whole store as CSV in a loop
   (honouring Retry-After on a 429);
5. mixed: the idle connections of 2 (default limits) and the export clients of 4 at once;
6. stalled: two clients start a CSV export and stop reading; a third client then asks for an export
   every 0.5 s: how long until it is served (the stalled ones' slots taken back);
7. slowbody: --connections connections (default 600), 100 from each of 127.0.0.10-15, each a POST
   /v1/sql declaring a 100,000-byte body and sending a byte of it a second; a closed one reconnects
   0.5 s later. With the default limits (a request's body is read before it counts against
   max_requests; the bodies are closed at body_timeout_s, 30 s);
8. layer-pages: --export-clients clients (default 30) each fetching the largest layer's filters as
   one JSON page (limit=100000) in a loop, honouring Retry-After on a 429 (layer_filters_concurrency).

Prints each phase's probe p50/p99/max (target: p99 < 250 ms) and errors (must be 0), the
connections refused and closed, the exports served and refused. The probes, the load and the
service share the machine's cores.
    python bench/bench_connections.py [--filters 2e6] [--db DIR] [--seconds 20] [--connections 600]
        [--export-clients 30] [--phase idle ...]
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
# bench._common is in the repository, not in the installed package: the repository goes on the
# path (after the installed package) so that `python bench/bench_connections.py` finds it from any directory.
sys.path.append(str(REPO))

from bench._common import bench_store, start_service  # noqa: E402

HOSTILE_ADDRESS = "127.0.0.2"  # the probes connect from 127.0.0.1: another client address
TRICKLE = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 4000


# -- the loads (child processes) ------------------------------------------------------------------

async def _reopened(port: int, address: str, stop_at: float, counts: Counter, talk) -> None:
    """One hostile connection from ``address`` at a time, reopened 0.5 s after the server closes
    it, until ``stop_at``: ``talk(reader, writer, opened)`` speaks on each."""
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
        except OSError:
            counts["connect failed"] += 1
            await asyncio.sleep(0.5)
            continue
        counts["opened"] += 1
        try:
            await talk(reader, writer, time.monotonic())
        except OSError:
            counts["reset by the server"] += 1
        finally:
            writer.close()
        await asyncio.sleep(0.5)


async def _hold_one(port: int, trickle: bool, stop_at: float, counts: Counter) -> None:
    """One hostile connection, idle or trickling a head, reopened 0.5 s after the server closes it."""
    async def talk(reader, writer, opened: float) -> None:
        sent = 0
        while time.monotonic() < stop_at:
            if trickle and sent < len(TRICKLE):
                writer.write(TRICKLE[sent:sent + 1])
                sent += 1
            try:
                data = await asyncio.wait_for(reader.read(4096), timeout=1.0)
            except TimeoutError:
                continue
            lived = time.monotonic() - opened
            if data.startswith(b"HTTP/1.1 503"):
                counts["refused at once (503)"] += 1
            elif data.startswith(b"HTTP/1.1 408"):
                counts[f"closed by the head timeout (408, after {round(lived)} s)"] += 1
            else:
                counts[f"closed by the server (after {round(lived)} s)"] += 1
            break

    await _reopened(port, HOSTILE_ADDRESS, stop_at, counts, talk)


SLOW_BODY_HEAD = (b"POST /v1/sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n{")


async def _slow_body_one(port: int, address: str, stop_at: float, counts: Counter) -> None:
    """One POST sending its body a byte a second, reopened 0.5 s after the server closes it."""
    async def talk(reader, writer, opened: float) -> None:
        writer.write(SLOW_BODY_HEAD)
        while time.monotonic() < stop_at:
            writer.write(b" ")
            try:
                data = await asyncio.wait_for(reader.read(4096), timeout=1.0)
            except TimeoutError:
                continue
            status = data[:12].decode(errors="replace") or "closed"
            counts[f"{status} (after {round(time.monotonic() - opened)} s)"] += 1
            break

    await _reopened(port, address, stop_at, counts, talk)


def slow_bodies(port: int, n: int, seconds: float, out) -> None:
    async def main():
        counts: Counter = Counter()
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(_slow_body_one(port, f"127.0.0.{10 + i % 6}", stop_at, counts) for i in range(n)))
        return counts
    out.put(dict(asyncio.run(main())))


async def _page_loop(c: httpx.AsyncClient, path: str, stop_at: float, counts: Counter) -> None:
    while time.monotonic() < stop_at:
        try:
            r = await c.get(path)
            counts[str(r.status_code)] += 1
            counts["bytes"] += len(r.content)
            if r.status_code == 429:
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
        except httpx.HTTPError as e:
            counts[type(e).__name__] += 1


def layer_page_clients(base: str, n: int, path: str, seconds: float, out) -> None:
    async def main():
        counts: Counter = Counter()
        stop_at = time.monotonic() + seconds
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=n)) as c:
            await asyncio.gather(*(_page_loop(c, path, stop_at, counts) for _ in range(n)))
        return counts
    out.put(dict(asyncio.run(main())))


def hold_connections(port: int, n: int, seconds: float, out) -> None:
    async def main():
        counts: Counter = Counter()
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(_hold_one(port, i % 2 == 1, stop_at, counts) for i in range(n)))
        return counts
    out.put(dict(asyncio.run(main())))


async def _export_loop(c: httpx.AsyncClient, stop_at: float, counts: Counter) -> None:
    while time.monotonic() < stop_at:
        try:
            async with c.stream("GET", "/v1/filters", params={"format": "csv"}) as r:
                if r.status_code == 429:
                    counts["429"] += 1
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                    continue
                async for chunk in r.aiter_raw():
                    counts["bytes"] += len(chunk)
                    if time.monotonic() >= stop_at:
                        break
                counts[str(r.status_code)] += 1
        except httpx.HTTPError as e:
            counts[type(e).__name__] += 1


def export_clients(base: str, n: int, seconds: float, out) -> None:
    async def main():
        counts: Counter = Counter()
        stop_at = time.monotonic() + seconds
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=n)) as c:
            await asyncio.gather(*(_export_loop(c, stop_at, counts) for _ in range(n)))
        return counts
    out.put(dict(asyncio.run(main())))


# -- the probes (this process) --------------------------------------------------------------------

def probe(base: str, seconds: float, model_id) -> tuple[dict, list]:
    lat: dict = {"/health": [], "/v1/models": []}
    errors: list = []
    stop_at = time.monotonic() + seconds
    with httpx.Client(base_url=base, timeout=30) as c:
        while time.monotonic() < stop_at:
            for path in lat:
                t = time.perf_counter()
                try:
                    r = c.get(path, params={"limit": 50} if path == "/v1/models" else None)
                    if r.status_code != 200:
                        errors.append((path, r.status_code))
                except httpx.HTTPError as e:
                    errors.append((path, repr(e)))
                lat[path].append(time.perf_counter() - t)
                time.sleep(0.02)
    return lat, errors


def report(name: str, lat: dict, errors: list, extra: str = "") -> None:
    for path, xs in lat.items():
        ms = np.array(xs) * 1000
        p99 = np.percentile(ms, 99)
        print(f"{name:28s} {path:11s} n={len(ms):5d}  p50 {np.percentile(ms, 50):6.1f} ms  p99 {p99:6.1f} ms  "
              f"max {ms.max():7.1f} ms  {'met' if p99 < 250 else 'MISSED'}")
    print(f"{'':28s} errors: {len(errors)} {errors[:5] if errors else ''}{extra}")


def with_load(base: str, seconds: float, *loads) -> tuple[dict, list, list]:
    """Probe while each (target, *args) of ``loads`` runs in a child process; their counts."""
    children = []
    for target, *args in loads:
        out = mp.Queue()
        p = mp.get_context("fork").Process(target=target, args=(*args, seconds + 2, out))
        p.start()
        children.append((p, out))
    time.sleep(2)  # the load is up
    lat, errors = probe(base, seconds, None)
    counts = [out.get(timeout=seconds + 120) for _, out in children]
    for p, _ in children:
        p.join()
    return lat, errors, counts


def stalled_exports(base: str, port: int) -> str:
    """Two clients that stop reading their exports, then a third asking every 0.5 s."""
    stalled = []
    for _ in range(2):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /v1/filters?format=csv HTTP/1.1\r\nHost: x\r\n\r\n")
        stalled.append(s)
    time.sleep(0.5)
    t = time.monotonic()
    statuses: Counter = Counter()
    with httpx.Client(base_url=base, timeout=120) as c:
        while True:
            with c.stream("GET", "/v1/filters", params={"format": "csv", "where": '{"layer_id": 0}'}) as r:
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    served = time.monotonic() - t
                    n = sum(len(b) for b in r.iter_raw())
                    done = time.monotonic() - t
                    break
            if time.monotonic() - t > 120:
                return "the third export was not served within 120 s"
            time.sleep(0.5)
    for s in stalled:
        s.close()
    return (f"third export: first byte after {served:.1f} s ({dict(statuses)} on the way), "
            f"{n / 1e6:.1f} MB done after {done:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--filters", type=float, default=2e6)
    ap.add_argument("--db", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--connections", type=int, default=600)
    ap.add_argument("--export-clients", type=int, default=30)
    all_phases = ["baseline", "idle", "idle-held", "exports", "mixed", "stalled", "slowbody", "layer-pages"]
    ap.add_argument("--phase", action="append", choices=all_phases)
    args = ap.parse_args()
    phases = args.phase or all_phases
    import cnnfilterdb

    code = Path(cnnfilterdb.__file__).resolve().parents[1]  # the service runs the code this process imports
    work = Path(tempfile.mkdtemp(prefix="cnnfilterdb-conn-"))
    try:
        db = bench_store(args.db, work, int(args.filters), seed=7).resolve()
        for shard in (db / "shards").rglob("*"):  # a warm page cache
            if shard.is_file():
                shard.read_bytes()
        print(f"store {db}; probes every 20 ms for {args.seconds:g} s per phase; 2 cores shared by all")
        for phase in phases:
            env = {"CNNFILTERDB_MAX_CONNECTIONS_PER_CLIENT": str(args.connections + 100)} if phase == "idle-held" else {}
            server, base = start_service(db, env, repo=code)
            port = int(base.rsplit(":", 1)[1])
            try:
                if phase == "baseline":
                    lat, errors = probe(base, args.seconds, None)
                    report("baseline (no load)", lat, errors)
                elif phase in ("idle", "idle-held"):
                    lat, errors, (counts,) = with_load(base, args.seconds, (hold_connections, port, args.connections))
                    held = "max_connections_per_client " + ("100 (default)" if phase == "idle" else str(args.connections + 100))
                    report(f"{args.connections} idle/trickling", lat, errors,
                           f"\n{'':28s} {held}; hostile connections: {counts}")
                elif phase == "exports":
                    lat, errors, (counts,) = with_load(base, args.seconds, (export_clients, base, args.export_clients))
                    mb = counts.pop("bytes", 0) / 1e6
                    report(f"{args.export_clients} CSV export clients", lat, errors,
                           f"\n{'':28s} exports: {counts}, {mb:,.0f} MB received")
                elif phase == "mixed":
                    lat, errors, (held, counts) = with_load(base, args.seconds, (hold_connections, port, args.connections),
                                                            (export_clients, base, args.export_clients))
                    mb = counts.pop("bytes", 0) / 1e6
                    report(f"{args.connections} idle + {args.export_clients} exports", lat, errors,
                           f"\n{'':28s} exports: {counts}, {mb:,.0f} MB received; hostile connections: {held}")
                elif phase == "slowbody":
                    lat, errors, (counts,) = with_load(base, args.seconds, (slow_bodies, port, args.connections))
                    report(f"{args.connections} slow bodies", lat, errors,
                           f"\n{'':28s} from 6 addresses, default limits; hostile connections: {counts}")
                elif phase == "layer-pages":
                    layer_id, n = httpx.post(base + "/v1/sql", json={
                        "sql": "SELECT layer_id, n_filters FROM layers ORDER BY n_filters DESC LIMIT 1"}).json()["rows"][0]
                    path = f"/v1/layers/{layer_id}/filters?limit=100000"
                    lat, errors, (counts,) = with_load(base, args.seconds,
                                                       (layer_page_clients, base, args.export_clients, path))
                    mb = counts.pop("bytes", 0) / 1e6
                    report(f"{args.export_clients} layer-page clients", lat, errors,
                           f"\n{'':28s} {path} ({min(n, 100_000):,} filters): {counts}, {mb:,.0f} MB received")
                else:
                    print(f"{'2 stalled exports':28s} {stalled_exports(base, port)}")
            finally:
                server.terminate()
                server.wait(timeout=30)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
