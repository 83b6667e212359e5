"""Spark benchmark (issue 13): the store's exact scans as Spark jobs on local[2] against the local
engine's, on an N-filter store (default 2e7), and a projection to 1e11 filters on a cluster.

Each mode runs in its own child process (peak RSS per process; for Spark, of the whole process
tree: the Python driver, the JVM and Spark's Python workers, sampled every 50 ms):
  local   the local engine's exact scans (scan.ShardScanner, 2 threads): divergence by task
          (the scan path, not the stored per-layer histograms), the coefficient range, the
          per-layer histograms of every layer (what a refit / `spark refresh` computes);
  spark   the same on Spark local[2] (cnnfilterdb.spark.SparkScanner), with each way of reading
          the shards (read='arrow': the tasks read whole row groups with pyarrow; read='spark':
          Spark's Parquet reader hands the rows over from the JVM): session start,
          SparkStore.open (the tables read through Spark), the same three jobs, the per-layer
          moments job, and a job over one layer (Spark's fixed cost per job);
  naive   the paper's notebook in memory (bench_analysis.py's reference), for the usual ratio.
Results are checked: the histograms equal bit for bit, the ranges equal, the matrices agree.

The projection to 1e11 filters on N executors of c cores is a model, not a measurement:
  T(N) = T_job + max(T_cpu, T_io),
  T_cpu = R * t_rg / (N * c)  with R = 1e11 / rows per row group and t_rg the measured Spark
          cost of one row group on one core ((wall time - T_job) x cores / row groups here: the
          Arrow transfer from the JVM and the kernels);
  T_io  = 1e11 * 40 B / (N * B)  (layer_id + 9 float32 read per filter), B an assumed read
          bandwidth per executor from shared storage (--bandwidth, default 500 MB/s);
  T_job = the measured fixed cost of a job (one layer's scan); all with read='arrow'.
It assumes the work splits evenly (a shard's row groups are independent units), the partial
results stay small (d groups x 9 x bins per task), and executors as fast per core as this VM.
The per-layer histograms of a refresh are collected on the driver: L layers x 9 x 70 int64.

    python bench/bench_spark.py [--filters 2e7] [--db DIR] [--repeat 3] [--no-naive]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the children run here, to import bench._common

COMMON = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from bench._common import peak_rss
from cnnfilterdb.analysis import Analysis, Snapshot
from cnnfilterdb.scan import LayerGroups
from cnnfilterdb.stats.histogram import warm_up
from cnnfilterdb.store import FilterStore
db, repeat = Path(sys.argv[1]), int(sys.argv[2])
warm_up()
con = FilterStore(db).connect()
local = Analysis(con, db, snapshot=Snapshot.at(con, db), use_stored=False)
ids = np.array([r[0] for r in con.execute("SELECT layer_id FROM layers ORDER BY layer_id").fetchall()])
max_id = con.execute("SELECT max(layer_id) FROM _layers").fetchone()[0]
per_layer = LayerGroups.of(ids, np.arange(len(ids)), len(ids), max_id)
one_layer = LayerGroups.of(ids[:1], [0], 1, max_id)
basis = local.global_basis()
def timed(f):
    runs = []
    for _ in range(repeat):
        t = time.perf_counter(); r = f(); runs.append(time.perf_counter() - t)
    return r, runs
"""

LOCAL = COMMON + r"""
scanner = local.scanner
out = {}
d, out["divergence"] = timed(lambda: local.divergence("task"))
rng, out["range"] = timed(lambda: scanner.range(per_layer, basis))
h, out["per_layer_histograms"] = timed(lambda: scanner.histograms(per_layer, basis, basis.range_min, basis.range_max, 70))
np.save(sys.argv[3], h)
out.update(matrix=d["matrix"], range_value=list(rng[:2]), rss=peak_rss())
print(json.dumps(out))
"""

SPARK = COMMON + r"""
import os, threading
def tree_rss(pid):  # the resident memory of the process and all its descendants (the JVM, Python workers)
    parent = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                parent[int(p)] = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    tree, frontier = {pid}, [pid]
    while frontier:
        frontier = [c for c, pp in parent.items() if pp in frontier and c not in tree]
        tree.update(frontier)
    total = 0
    for p in tree:
        try:
            total += next(int(l.split()[1]) * 1024 for l in open(f"/proc/{p}/status") if l.startswith("VmRSS"))
        except (OSError, StopIteration):
            pass
    return total
peak = [0]
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], tree_rss(os.getpid()))
        stop.wait(0.05)
threading.Thread(target=sample, daemon=True).start()
from cnnfilterdb.spark import SparkStore, session
out = {}
t = time.perf_counter(); spark = session("local[2]"); out["session"] = time.perf_counter() - t
for read in ["arrow", "spark"]:
    r = out[read] = {}
    t = time.perf_counter(); st = SparkStore.open(spark, db, read=read); r["open"] = time.perf_counter() - t
    s = st.scanner
    d, r["divergence"] = timed(lambda: st.divergence("task"))
    rng, r["range"] = timed(lambda: s.range(per_layer, basis))
    h, r["per_layer_histograms"] = timed(lambda: s.histograms(per_layer, basis, basis.range_min, basis.range_max, 70))
    _, r["layer_moments"] = timed(lambda: s.layer_moments(ids))
    _, r["one_layer_job"] = timed(lambda: s.histograms(one_layer, basis, basis.range_min, basis.range_max, 70))
    np.save(sys.argv[3] + f".{read}.npy", h)
    r.update(matrix=d["matrix"], range_value=list(rng[:2]))
stop.set()
out.update(rss=peak_rss(), tree_rss=peak[0])
spark.stop()
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--filters", type=float, default=2e7)
    ap.add_argument("--db", type=Path, default=None, help="a store (written by this version: it has tables/)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bandwidth", type=float, default=500e6, help="assumed read bytes/s per executor (projection)")
    ap.add_argument("--cores", type=int, default=4, help="cores per executor (projection)")
    ap.add_argument("--no-naive", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    import numpy as np
    import pyarrow.parquet as pq

    from bench._common import bench_store
    from bench.bench_analysis import NAIVE, child
    from cnnfilterdb.store import FilterStore

    work = Path(tempfile.mkdtemp(prefix="cnnfilterdb-spark-"))
    try:
        db = bench_store(args.db, work, int(args.filters), seed=5)
        with FilterStore(db).connect() as con:
            shards = [db / p for (p,) in con.execute("SELECT path FROM _shards").fetchall()]
            n = int(con.execute("SELECT sum(n_filters) FROM layers").fetchone()[0])
            n_layers = int(con.execute("SELECT count(*) FROM layers").fetchone()[0])
        row_groups = sum(pq.ParquetFile(p).metadata.num_row_groups for p in shards)
        rows_per_group = n / row_groups
        local = child(LOCAL, str(db), str(args.repeat), str(work / "local.npy"))
        spark = child(SPARK, str(db), str(args.repeat), str(work / "spark"))
        naive = None if args.no_naive else child(NAIVE, str(db), "task")
        jobs = ["divergence", "range", "per_layer_histograms"]
        reads = ["arrow", "spark"]
        cores = 2
        best = {"local": {j: min(local[j]) for j in jobs}} | {r: {j: min(spark[r][j]) for j in jobs} for r in reads}
        checks = {r: {"per_layer_histograms_bit_identical": bool(np.array_equal(np.load(work / "local.npy"),
                                                                                np.load(work / f"spark.{r}.npy"))),
                      "range_equal": local["range_value"] == spark[r]["range_value"],
                      "divergence_matrix_max_abs_diff": float(np.max(np.abs(np.array(local["matrix"])
                                                                            - np.array(spark[r]["matrix"]))))}
                  for r in reads}
        t_job = {r: min(spark[r]["one_layer_job"]) for r in reads}
        # Seconds per row group on one core: Spark's beyond its fixed cost per job, the local engine's all of it.
        t_rg = {r: {j: max(best[r][j] - t_job[r], 0.0) * cores / row_groups for j in jobs} for r in reads}
        t_rg["local"] = {j: best["local"][j] * cores / row_groups for j in jobs}
        target, bytes_per_filter = 1e11, 40
        projection = []
        for executors in (10, 50, 100, 500):
            t_cpu = target / rows_per_group * t_rg["arrow"]["per_layer_histograms"] / (executors * args.cores)
            t_io = target * bytes_per_filter / (executors * args.bandwidth)
            projection.append({"executors": executors, "cores_each": args.cores, "cpu_s": round(t_cpu, 1),
                               "io_s": round(t_io, 1), "total_s": round(t_job["arrow"] + max(t_cpu, t_io), 1)})
        layers_at_target = target / (n / n_layers)
        result = {
            "filters": n, "layers": n_layers, "row_groups": row_groups,
            "seconds_best_of_repeats": {m: {j: round(v, 3) for j, v in b.items()} for m, b in best.items()},
            "spark_first_divergence_s": {r: round(spark[r]["divergence"][0], 3) for r in reads},
            "spark_layer_moments_s": {r: round(min(spark[r]["layer_moments"]), 3) for r in reads},
            "spark_session_s": round(spark["session"], 2), "spark_open_s": {r: round(spark[r]["open"], 2) for r in reads},
            "spark_job_fixed_s": {r: round(t_job[r], 3) for r in reads},
            "overhead_ratio_over_local": {r: {j: round(best[r][j] / best["local"][j], 2) for j in jobs} for r in reads},
            "per_row_group_ms": {m: {j: round(1e3 * v, 3) for j, v in t.items()} for m, t in t_rg.items()},
            "naive_s": None if naive is None else round(naive["seconds"], 3),
            "rss_gib": {"local": round(local["rss"] / 2**30, 2), "spark_driver_python": round(spark["rss"] / 2**30, 2),
                        "spark_process_tree": round(spark["tree_rss"] / 2**30, 2),
                        "naive": None if naive is None else round(naive["rss"] / 2**30, 2)},
            "checks": checks,
            "projection_1e11": {"model": "T = T_job + max(R * t_rg / (N * c), 1e11 * 40 B / (N * B)), read='arrow'",
                                "t_rg_ms": round(1e3 * t_rg["arrow"]["per_layer_histograms"], 3),
                                "rows_per_row_group": round(rows_per_group), "bandwidth_B_per_s": args.bandwidth,
                                "T_job_s": round(t_job["arrow"], 3), "rows": projection,
                                "refresh_driver_histograms_gib": round(layers_at_target * 9 * 70 * 8 / 2**30, 1),
                                "layers_at_1e11": round(layers_at_target)},
        }
        print(json.dumps(result, indent=1))
        print(f"\nstore: {n:,} filters, {n_layers:,} layers, {row_groups} row groups; best of {args.repeat}")
        for j in jobs:
            print(f"{j:22s} local {best['local'][j]:7.3f} s   " + "   ".join(
                f"spark read={r} {best[r][j]:7.3f} s ({best[r][j] / best['local'][j]:5.2f}x)" for r in reads))
        if naive:
            print(f"naive in-memory divergence: {naive['seconds']:.3f} s (local {naive['seconds'] / best['local']['divergence']:.1f}x "
                  f"faster, spark read=arrow {naive['seconds'] / best['arrow']['divergence']:.1f}x)")
        print(f"spark: session {spark['session']:.1f} s, open {spark['arrow']['open']:.1f} s, fixed cost of a job "
              f"{t_job['arrow']:.2f} s (read=arrow), process tree peak RSS {spark['tree_rss'] / 2**30:.2f} GiB "
              f"(local engine {local['rss'] / 2**30:.2f} GiB)")
        print(f"checks: {checks}")
        for row in projection:
            print(f"1e11 filters on {row['executors']:4d} executors x {row['cores_each']} cores: "
                  f"cpu {row['cpu_s']:8.1f} s, io {row['io_s']:8.1f} s -> {row['total_s']:8.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
