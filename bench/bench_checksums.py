"""The cost of the row group checksums (issue 20) on the exact scan: divergence by task's two scans
(range, then histograms: Analysis with use_stored=False) over an N-filter store (default
2e7), with the checksums checked (the engine's reads: every row group hashed before it is decoded,
on every read) and without (the same snapshot's shards held with no checksums), alternated in one
process, the shards in the page cache. Also the hashing alone (xxh3 of every row group, one
thread) and the matrices compared (identical).
    python bench/bench_checksums.py [--filters 2e7] [--db DIR] [--repeat 7] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--filters", type=float, default=2e7)
    ap.add_argument("--db", type=Path, default=None, help="an existing store (default: build a sample store)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    import duckdb
    import xxhash

    from bench._common import bench_store
    from cnnfilterdb.analysis import Analysis
    from cnnfilterdb.checksums import Checksums
    from cnnfilterdb.runtime import tune_allocator
    from cnnfilterdb.scan import HeldShards
    from cnnfilterdb.snapshot import Snapshot
    from cnnfilterdb.stats.histogram import warm_up

    tune_allocator()
    warm_up()
    with tempfile.TemporaryDirectory(prefix="bench-checksums-") as work:
        db = bench_store(args.db, Path(work), int(args.filters), args.seed)
        con = duckdb.connect(str(db / "catalog.duckdb"), read_only=True)
        checksums = Checksums.load(con)
        if checksums is None:
            sys.exit(f"{db}: a catalog of layout < 6 records no checksums; commit once (e.g. `cnnfilterdb label`)")
        n = int(con.execute("SELECT coalesce(sum(n_rows), 0) FROM _shards").fetchone()[0])
        paths = Snapshot.at(con, db).shard_paths(con)
        span_bytes = sum(int(c.row_groups[:, 1].sum()) for c in checksums.shards.values())

        def run(checked: bool) -> tuple[float, float, list]:
            snapshot = Snapshot.at(con, db)
            snapshot._cache["held"] = HeldShards(paths, checksums if checked else None)
            t, c = time.perf_counter(), time.process_time()
            r = Analysis(con, db, snapshot=snapshot, use_stored=False).divergence("task")
            seconds, cpu = time.perf_counter() - t, time.process_time() - c
            snapshot._cache["held"].close()
            return seconds, cpu, r["matrix"]

        run(True), run(False)  # the page cache and the kernels warm
        times = {True: [], False: []}
        cpus = {True: [], False: []}
        matrices = {}
        for _ in range(args.repeat):
            for checked in (False, True):
                s, cpu, matrices[checked] = run(checked)
                times[checked].append(s)
                cpus[checked].append(cpu)
        # the hashing alone, one thread, from the page cache: a fresh mapping (the pages faulted in,
        # as a scan's reader does), then the same mapping again (the hash alone)
        import pyarrow as pa

        hash_s = []
        for rel, c in checksums.shards.items():
            mm = pa.memory_map(str(db / rel))
            for _ in range(2):
                t = time.perf_counter()
                for o, length, _ in c.row_groups:
                    mm.seek(int(o))
                    xxhash.xxh3_64_intdigest(mm.read_buffer(int(length)))
                hash_s.append(time.perf_counter() - t)
            mm.close()
    off, on = statistics.median(times[False]), statistics.median(times[True])
    best_off, best_on = min(times[False]), min(times[True])
    print(f"store: {n:,} filters, {len(paths)} shard(s), {sum(len(c.row_groups) for c in checksums.shards.values())} "
          f"row groups, {span_bytes / 2**20:,.0f} MiB of row group bytes")
    print(f"divergence by task, exact scan (range + histograms: each row group read twice), median of {args.repeat}:")
    print(f"  without checksums  {off:7.3f} s  ({2 * n / off / 1e6:,.0f} M filters/s scanned)   runs {[round(x, 3) for x in times[False]]}")
    print(f"  with checksums     {on:7.3f} s  ({2 * n / on / 1e6:,.0f} M filters/s scanned)   runs {[round(x, 3) for x in times[True]]}")
    print(f"  cost: {100 * (on / off - 1):+.1f}% of the medians, {100 * (best_on / best_off - 1):+.1f}% of the fastest runs "
          f"({best_off:.3f} s / {best_on:.3f} s)   (target <= 10%)")
    cpu_off, cpu_on = statistics.median(cpus[False]), statistics.median(cpus[True])
    print(f"  CPU time of the process (all its threads; less sensitive to other processes than the wall clock), "
          f"median: {cpu_off:.3f} s without, {cpu_on:.3f} s with: {100 * (cpu_on / cpu_off - 1):+.1f}%")
    import os

    print(f"  load average during the runs: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"  hashing alone (xxh3, 1 thread, page cache), one pass over every row group: {hash_s[0]:.3f} s on a fresh "
          f"mapping (page faults included, {span_bytes / hash_s[0] / 1e9:.1f} GB/s), {hash_s[1]:.3f} s on pages "
          f"mapped ({span_bytes / hash_s[1] / 1e9:.1f} GB/s)")
    print(f"  matrices identical: {matrices[True] == matrices[False]}")


if __name__ == "__main__":
    main()
