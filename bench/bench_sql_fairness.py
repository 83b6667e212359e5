"""Fairness benchmark (issue 9): 32 clients send 5-second user SQL queries while two probe clients
time `/v1/models/{id}` and a default `/v1/divergence`; the probes' p50/p99 with and without that load.

Builds (or reuses, --db) a store of N filters (default 2e7), starts `cnnfilterdb serve` on a free
loopback port with its default limits (2 SQL workers, 5 s), then, all from this one process
(asyncio + httpx, on the same 2 cores as the service):

1. baseline: the probes alone for --seconds;
2. under load: the probes plus --sql-clients clients, each sending a query that runs past the
   time limit, honouring Retry-After on a 429, for --seconds.

Prints each probe's p50/p99 (target under load: p99 < 250 ms), the SQL outcomes by status, how long
a 429 took to arrive, and the errors (must be 0: probes answer 200, SQL 400/429 only).
    python bench/bench_sql_fairness.py [--filters 2e7] [--sql-clients 32] [--seconds 30] [--db DIR]
"""
from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
# bench._common is in the repository, not in the installed package: the repository goes on the
# path (after the installed package) so that `python bench/bench_sql_fairness.py` finds it from any directory.
sys.path.append(str(REPO))

from bench._common import bench_store, start_service  # noqa: E402

# Runs far past 5 s (1e12 pairs), in constant memory: the worker is interrupted at the limit.
SLOW_SQL = "SELECT count(*) FROM range(1000000) a, range(1000000) b WHERE (a.range * b.range) % 1000003 = 7"




async def probe(c: httpx.AsyncClient, model_ids: list, stop_at: float, lat: dict, errors: list, rng) -> None:
    while time.monotonic() < stop_at:
        for kind in ("model", "divergence"):
            t = time.perf_counter()
            try:
                if kind == "model":
                    r = await c.get(f"/v1/models/{rng.choice(model_ids)}")
                else:
                    r = await c.post("/v1/divergence", json={"group_by": "task"})
                ok = r.status_code == 200
            except httpx.HTTPError as e:
                ok, r = False, e
            lat[kind].append(time.perf_counter() - t)
            if not ok:
                errors.append((kind, getattr(r, "status_code", repr(r))))
            await asyncio.sleep(0.02)


async def sql_client(c: httpx.AsyncClient, stop_at: float, outcomes: Counter, busy_lat: list, errors: list) -> None:
    while time.monotonic() < stop_at:
        t = time.perf_counter()
        try:
            r = await c.post("/v1/sql", json={"sql": SLOW_SQL})
        except httpx.HTTPError as e:
            errors.append(("sql", repr(e)))
            continue
        code = r.json().get("error", {}).get("code", "ok") if r.status_code != 200 else "ok"
        outcomes[f"{r.status_code} {code}"] += 1
        if r.status_code == 429:
            busy_lat.append(time.perf_counter() - t)
            await asyncio.sleep(float(r.headers.get("retry-after", "1")))
        elif r.status_code not in (200, 400):
            errors.append(("sql", r.status_code))


async def phase(base: str, model_ids: list, seconds: float, n_sql: int):
    lat: dict = {"model": [], "divergence": []}
    errors: list = []
    outcomes: Counter = Counter()
    busy_lat: list = []
    limits = httpx.Limits(max_connections=n_sql + 8)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c:
        stop_at = time.monotonic() + seconds
        tasks = [probe(c, model_ids, stop_at, lat, errors, random.Random(1))]
        tasks += [sql_client(c, stop_at, outcomes, busy_lat, errors) for _ in range(n_sql)]
        await asyncio.gather(*tasks)
    return lat, errors, outcomes, busy_lat


def sql_worker_peaks() -> list[int]:
    """VmHWM (peak RSS, bytes) of every running SQL worker process on this machine."""
    peaks = []
    for proc in Path("/proc").iterdir():
        try:
            if b"cnnfilterdb.service.usersql.boot" in (proc / "cmdline").read_bytes():
                line = next(x for x in (proc / "status").read_text().splitlines() if x.startswith("VmHWM"))
                peaks.append(int(line.split()[1]) * 1024)
        except (OSError, StopIteration):
            continue
    return peaks


def report(name: str, lat: dict) -> None:
    for kind, v in lat.items():
        a = np.array(v) * 1000
        print(f"  {name:10s} {kind:11s} {len(a):6,} req  p50 {np.percentile(a, 50):7.1f} ms  "
              f"p99 {np.percentile(a, 99):7.1f} ms  max {a.max():7.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--filters", type=float, default=2e7)
    ap.add_argument("--sql-clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--db", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnfilterdb-fair-"))
    server = None
    try:
        db = bench_store(args.db, work, int(args.filters), seed=11)
        from cnnfilterdb.store import FilterStore

        with FilterStore(db).connect() as con:
            model_ids = [r[0] for r in con.execute("SELECT model_id FROM models").fetchall()]
            n_filters = con.execute("SELECT coalesce(sum(n_rows), 0) FROM _shards").fetchone()[0]
        server, base = start_service(db, None)
        base_lat, base_err, _, _ = asyncio.run(phase(base, model_ids, args.seconds, 0))
        load_lat, load_err, outcomes, busy_lat = asyncio.run(phase(base, model_ids, args.seconds, args.sql_clients))
        limits = httpx.get(base + "/v1/stats").json()["limits"]
        print(f"store: {n_filters:,} filters, {len(model_ids)} models; SQL: {limits['sql_workers']} workers, "
              f"{limits['sql_timeout_s']:g} s limit, sandbox {limits['sql_sandbox']}")
        print(f"probes alone, then with {args.sql_clients} SQL clients, {args.seconds:g} s each:")
        report("alone", base_lat)
        report("under load", load_lat)
        b = np.array(busy_lat) * 1000
        print(f"  SQL outcomes: {dict(outcomes)}; a 429 arrived in p50 {np.percentile(b, 50):.1f} ms, "
              f"p99 {np.percentile(b, 99):.1f} ms" if len(b) else f"  SQL outcomes: {dict(outcomes)}")
        print(f"  errors: {len(base_err) + len(load_err)}", (base_err + load_err)[:5])
        print(f"  peak RSS of the live SQL workers: {[f'{p / 2**20:.0f} MiB' for p in sql_worker_peaks()]} "
              f"(cap {limits['sql_worker_memory_cap'] / 2**30:.0f} GiB of address space each)")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
