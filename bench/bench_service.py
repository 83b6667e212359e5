"""Load benchmark (issue 3): 16 concurrent clients for 30 s on /v1/models and /v1/layers/{id}/filters.

Builds (or reuses, --db) a store of N filters (default 2e7), starts `cnnfilterdb serve` on a free
loopback port, and runs the clients (asyncio + httpx, one process) for a bounded time. Prints
requests per second, p50/p99 latency per endpoint, and the error count (must be 0).
    python bench/bench_service.py [--filters 2e7] [--clients 16] [--seconds 30] [--workers 1] [--db DIR]
"""
from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
# bench._common is in the repository, not in the installed package: the repository goes on the
# path (after the installed package) so that `python bench/bench_service.py` finds it from any directory.
sys.path.append(str(REPO))

from bench._common import bench_store, start_service  # noqa: E402


async def client(base: str, ids: dict, stop_at: float, lat: dict, errors: list, rng: random.Random) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        while time.monotonic() < stop_at:
            if rng.random() < 0.5:
                kind, url = "models", f"/v1/models?limit=50&after={rng.choice(ids['models'])}"
            else:
                kind, url = "layer_filters", f"/v1/layers/{rng.choice(ids['layers'])}/filters"
            t = time.perf_counter()
            try:
                r = await c.get(url)
                ok = r.status_code == 200
            except httpx.HTTPError as e:
                ok, r = False, e
            lat[kind].append(time.perf_counter() - t)
            if not ok:
                errors.append((url, getattr(r, "status_code", repr(r))))


async def run_clients(base: str, ids: dict, n_clients: int, seconds: float) -> tuple[dict, list, float]:
    lat: dict = {"models": [], "layer_filters": []}
    errors: list = []
    t0 = time.monotonic()
    stop_at = t0 + seconds
    await asyncio.gather(*(client(base, ids, stop_at, lat, errors, random.Random(i)) for i in range(n_clients)))
    return lat, errors, time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--filters", type=float, default=2e7)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--db", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnfilterdb-load-"))
    server = None
    try:
        db = bench_store(args.db, work, int(args.filters), seed=7)
        from cnnfilterdb.store import FilterStore

        with FilterStore(db).connect() as con:  # resolves the views' store-relative shard paths
            ids = {"models": [r[0] for r in con.execute("SELECT model_id FROM models").fetchall()],
                   "layers": [r[0] for r in con.execute("SELECT layer_id FROM layers").fetchall()]}
            n_filters = con.execute("SELECT count(*) FROM filters").fetchone()[0]
            mean_layer = con.execute("SELECT avg(least(n_filters, 1000)) FROM layers").fetchone()[0]
        server, base = start_service(db, {"CNNFILTERDB_WORKERS": str(args.workers)})
        lat, errors, elapsed = asyncio.run(run_clients(base, ids, args.clients, args.seconds))
        total = sum(len(v) for v in lat.values())
        print(f"store: {n_filters:,} filters, {len(ids['models'])} models, {len(ids['layers'])} layers "
              f"(a layer page holds {mean_layer:.0f} filters on average); server workers: {args.workers}")
        print(f"{args.clients} clients, {elapsed:.1f} s: {total:,} requests, {total / elapsed:,.0f} req/s, errors: {len(errors)}")
        for kind, v in lat.items():
            a = np.array(v) * 1000
            print(f"  {kind:14s} {len(a):7,} req  {len(a) / elapsed:7,.0f} req/s  p50 {np.percentile(a, 50):7.1f} ms  "
                  f"p99 {np.percentile(a, 99):7.1f} ms")
        if errors:
            print("first errors:", errors[:5])
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
