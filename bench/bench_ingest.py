"""Ingest benchmark (issue 2): dataset.h5 -> store, against a plain h5py read of the same file.

Writes an N-filter sample file (default 2e7), reads it once to warm the page cache, then times
(a) a plain chunked h5py read of /filters and (b) `cnnfilterdb ingest` of the file into a new
store, in a child process whose peak RSS is measured. Prints the ratio, store size against raw
float32 and peak RSS.  Usage: python bench/bench_ingest.py [--filters 2e7] [--models 200] [--dir D]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ingest.sample import write_sample_h5  # noqa: E402

TARGET_RATIO, TARGET_RSS, TARGET_SIZE = 4.0, 2 * 2**30, 1.1


def plain_read(path: Path, block: int = 1 << 21) -> float:
    t = time.perf_counter()
    with h5py.File(path, "r") as f:
        ds = f["filters"]
        s = 0.0
        for a in range(0, ds.shape[0], block):
            s += float(ds[a:a + block][0, 0, 0])
    return time.perf_counter() - t


CHILD = """
import sys, time, json
from pathlib import Path
from ingest import ingest_paths
from ingest.progress import Progress
t = time.perf_counter()
ingest_paths([Path(sys.argv[1])], Path(sys.argv[2]), Progress(enabled=False))
print(json.dumps({"seconds": time.perf_counter() - t}))
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
        plain_read(src)  # warm the page cache
        t_read = min(plain_read(src) for _ in range(3))
        db = work / "db"
        out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(db)], check=True,
                             capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        t_ingest = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        shard_bytes = sum(p.stat().st_size for p in (db / "shards").iterdir())
        size_ratio = shard_bytes / (n * 36)
        ratio = t_ingest / t_read
        print(f"plain h5py read : {t_read:8.3f} s  ({n / t_read / 1e6:6.1f} M filters/s)")
        print(f"ingest          : {t_ingest:8.3f} s  ({n / t_ingest / 1e6:6.1f} M filters/s)")
        print(f"ratio ingest/read: {ratio:.2f}x   (target <= {TARGET_RATIO}x)")
        print(f"store size      : {size_ratio:.4f}x raw float32 (shards {shard_bytes / 2**20:,.0f} MiB; "
              f"catalog {(db / 'catalog.duckdb').stat().st_size / 2**20:.1f} MiB)  (target <= {TARGET_SIZE}x)")
        print(f"peak RSS ingest : {rss / 2**20:,.0f} MiB  (target < {TARGET_RSS / 2**20:,.0f} MiB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
