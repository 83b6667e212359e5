"""Figure benchmark (issue 10): GET /v1/plots latency, the ETag path, the dashboard's weight, and
the service's peak memory against the code before the figures.

Builds (or reuses, --db) a store of N filters (default 2e7), starts `cnnfilterdb serve` on a free
loopback port and measures, one request at a time (latency on loopback: an upper bound of the
time at the server):
- the first figure of the process (fonts and imports), then heatmap PNGs (`divergence`, default
  size) of distinct parameters (group_by x metric x weights: no request answered from the cache);
- `kl_combined` PNGs of distinct parameters (metric x weights);
- a repeated request answered from its ETag (If-None-Match: 304) and one answered from the cache;
- the dashboard's HTML + JS + CSS bytes (GET / and what it references);
- the service's peak RSS (VmHWM) after all of it, and that of the service of --baseline (a git
  revision before the figures, checked out in a temporary worktree) after the same JSON requests.
    python bench/bench_plots.py [--filters 2e7] [--db DIR] [--baseline REV]
"""
from __future__ import annotations

import argparse
import itertools
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
# bench._common is in the repository, not in the installed package: the repository goes on the
# path (after the installed package) so that `python bench/bench_plots.py` finds it from any directory.
sys.path.append(str(REPO))

from bench._common import bench_store, start_service  # noqa: E402

GROUPINGS = ["task", "visual_category", "depth_bin", "training_dataset", "pretraining_dataset"]
METRICS = ["kl_sym", "js", "hellinger", "wasserstein"]
WEIGHTS = ["explained_variance", "uniform"]


def vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def timed(c: httpx.Client, url: str, **kw) -> tuple[float, httpx.Response]:
    t = time.perf_counter()
    r = c.get(url, **kw)
    return (time.perf_counter() - t) * 1000, r


def at_server(r: httpx.Response) -> float:
    """The time the service spent on the figure (its Server-Timing header)."""
    return float(re.search(r"render;dur=([0-9.]+)", r.headers["server-timing"]).group(1))


def json_workload(c: httpx.Client) -> None:
    """The JSON requests both services answer: what a dashboard's explorer asks besides images."""
    c.get("/v1/stats").raise_for_status()
    c.get("/v1/fields").raise_for_status()
    for g, m, w in itertools.product(GROUPINGS, METRICS, WEIGHTS):
        c.post("/v1/divergence", json={"group_by": g, "metric": m, "weights": w}).raise_for_status()
    c.post("/v1/pca", json={}).raise_for_status()
    c.get("/v1/quality/degenerate").raise_for_status()


def summary(ms: list[float]) -> str:
    return (f"p50 {statistics.median(ms):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, max {max(ms):.1f} ms "
            f"({len(ms)} requests)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--filters", type=float, default=2e7)
    ap.add_argument("--db", type=Path)
    ap.add_argument("--baseline", default="9aa225a", help="git revision of the service before the figures")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnfilterdb-bench-plots-"))
    try:
        db = bench_store(args.db, work, int(args.filters), seed=0)
        server, base = start_service(db)
        try:
            with httpx.Client(base_url=base, timeout=120) as c:
                json_workload(c)
                first, r = timed(c, "/v1/plots/divergence.png?dpi=99")
                r.raise_for_status()
                print(f"first figure of the process: {first:.0f} ms")
                heat, heat_server = [], []
                for g, m, w in itertools.product(GROUPINGS, METRICS, WEIGHTS):
                    ms, r = timed(c, "/v1/plots/divergence.png", params={"group_by": g, "metric": m, "weights": w})
                    r.raise_for_status()
                    heat.append(ms)
                    heat_server.append(at_server(r))
                print(f"heatmap PNG (divergence, 1000 x 1000 px, distinct parameters): at the server "
                      f"{summary(heat_server)}; at the client {summary(heat)}")
                combined, combined_server = [], []
                for m, w in itertools.product(METRICS, WEIGHTS):
                    ms, r = timed(c, "/v1/plots/kl_combined.png", params={"metric": m, "weights": w})
                    r.raise_for_status()
                    combined.append(ms)
                    combined_server.append(at_server(r))
                print(f"kl_combined PNG (2400 x 860 px, distinct parameters): at the server "
                      f"{summary(combined_server)}; at the client {summary(combined)}")
                etag = c.get("/v1/plots/kl_combined.png").headers["etag"]
                revalidated, cached = [], []
                for _ in range(200):
                    ms, r = timed(c, "/v1/plots/kl_combined.png", headers={"If-None-Match": etag})
                    assert r.status_code == 304
                    revalidated.append(ms)
                    ms, r = timed(c, "/v1/plots/kl_combined.png")
                    assert r.status_code == 200
                    cached.append(ms)
                print(f"repeated request with If-None-Match (304): {summary(revalidated)}")
                print(f"repeated request without it (from the figure cache): {summary(cached)}")
                page = c.get("/").text
                assets = sorted(set(re.findall(r'(?:src|href)="(/static/[^"]+)"', page)))
                sizes = {"/": len(page.encode())} | {a: len(c.get(a).content) for a in assets}
                print(f"dashboard: {sum(sizes.values()) / 1024:.1f} KB ({', '.join(f'{k} {v / 1024:.1f} KB' for k, v in sizes.items())})")
            after = vm_hwm(server.pid)
        finally:
            server.terminate()
            server.wait()
        print(f"service peak RSS after the JSON requests and every figure above: {after / 2**20:.0f} MiB")
        tree = work / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.baseline],
                       check=True, capture_output=True)
        try:
            server, base = start_service(db, repo=tree)
            try:
                with httpx.Client(base_url=base, timeout=120) as c:
                    json_workload(c)
                before = vm_hwm(server.pid)
            finally:
                server.terminate()
                server.wait()
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
        print(f"service peak RSS of {args.baseline} (before the figures) after the JSON requests: "
              f"{before / 2**20:.0f} MiB; difference {(after - before) / 2**20:+.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
