"""Ingest benchmark (issue 2): dataset.h5 -> store, against a plain h5py read of the same file.

Writes an N-filter sample file (default 2e7), then times (a) a plain chunked h5py read of
/filters and (b) `cnnfilterdb ingest` of the file into a new store, in a child process whose peak
RSS is measured. Prints the ratio, the store size against raw float32 and the peak RSS.

Both timings are taken twice: "cold", with the source file's pages dropped from this machine's
page cache first (posix_fadvise DONTNEED), which is the regime of the real 50 GB file on a 24 GiB
machine, and "warm", with the file in the page cache. Usage:
    python bench/bench_ingest.py [--filters 2e7] [--models 200] [--dir D]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

from cnnfilterdb.ingest.sample import write_sample_h5

TARGET_RATIO, TARGET_RSS, TARGET_SIZE = 4.0, 2 * 2**30, 1.1


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (written back first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def plain_read(path: Path, block: int = 1 << 21, cold: bool = False) -> float:
    if cold:
        evict(path)
    t = time.perf_counter()
    with h5py.File(path, "r") as f:
        ds = f["filters"]
        s = 0.0
        for a in range(0, ds.shape[0], block):
            s += float(ds[a:a + block][0, 0, 0])
    return time.perf_counter() - t


CHILD = """
import sys, time, json
from bench._common import peak_rss  # the child runs in the repository
from pathlib import Path
from cnnfilterdb.ingest import ingest_paths
from cnnfilterdb.ingest.progress import Progress
from cnnfilterdb.runtime import tune_allocator
tune_allocator()  # as the CLI does at start
t = time.perf_counter()
ingest_paths([Path(sys.argv[1])], Path(sys.argv[2]), Progress(enabled=False))
print(json.dumps({"seconds": time.perf_counter() - t, "rss": peak_rss()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--filters", type=float, default=2e7)
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    n = int(args.filters)
    work = Path(tempfile.mkdtemp(prefix="cnnfilterdb-bench-", dir=args.dir))
    try:
        src = work / "dataset.h5"
        t = time.perf_counter()
        write_sample_h5(src, n_models=args.models, n_filters=n, seed=1)
        print(f"wrote {n:,} filters in {time.perf_counter() - t:.1f} s ({src.stat().st_size / 2**20:,.0f} MiB)")
        repo = Path(__file__).resolve().parents[1]
        results, rss = {}, 0
        for regime in ("cold", "warm"):
            cold = regime == "cold"
            t_read = min(plain_read(src, cold=cold) for _ in range(3))
            db = work / f"db-{regime}"
            if cold:
                evict(src)
            else:
                plain_read(src)
            out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(db)], check=True,
                                 capture_output=True, text=True, cwd=repo)
            child = json.loads(out.stdout.strip().splitlines()[-1])
            t_ingest = child["seconds"]
            rss = max(rss, child["rss"])
            results[regime] = (t_read, t_ingest)
            print(f"{regime}: plain h5py read {t_read:7.3f} s ({n / t_read / 1e6:6.1f} M filters/s); "
                  f"ingest {t_ingest:7.3f} s ({n / t_ingest / 1e6:5.1f} M filters/s); "
                  f"ratio {t_ingest / t_read:5.2f}x")
            if regime == "warm":
                break
            shutil.rmtree(db)
        shard_bytes = sum(p.stat().st_size for p in (db / "shards").glob("*.parquet"))
        size_ratio = shard_bytes / (n * 36)
        t_read, t_ingest = results["cold"]
        print(f"ratio ingest/read (cold): {t_ingest / t_read:.2f}x   (target <= {TARGET_RATIO}x)")
        print(f"store size      : {size_ratio:.4f}x raw float32 (shards {shard_bytes / 2**20:,.0f} MiB; "
              f"catalog {(db / 'catalog.duckdb').stat().st_size / 2**20:.1f} MiB)  (target <= {TARGET_SIZE}x)")
        print(f"peak RSS ingest : {rss / 2**20:,.0f} MiB over both runs  (target < {TARGET_RSS / 2**20:,.0f} MiB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
