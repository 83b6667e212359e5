"""Analysis benchmark (issue 4): divergence by task on an N-filter store (default 2e7).

Three ways to the same matrix, each in its own child process (peak RSS measured per process):
  naive   the paper's notebook in memory: all filters loaded into RAM (not timed), then
          scikit-learn PCA, np.histogram(density=True) per group and component, scipy entropy;
  scan    the engine's exact scan of the Parquet shards (any selection, any parameters);
  cached  the engine's default-parameter path: the per-layer histograms kept in the store,
          cold (first query of a process: read from the catalog), prepared (first query after
          what the service does when it opens a catalog generation) and warm (repeated).
Prints filters per second, the ratios (scan vs naive, cached vs scan), and checks that the scan
and cached matrices are identical and agree with the naive one to 1e-9.
    python bench/bench_analysis.py [--filters 2e7] [--db DIR] [--group-by task] [--no-naive]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]  # the children run here, to import bench._common

ENGINE = r"""
import json, sys, time
from bench._common import peak_rss  # the child runs in the repository
from pathlib import Path
import duckdb
from cnnfilterdb.analysis import Analysis
from cnnfilterdb.runtime import tune_allocator
from cnnfilterdb.stats.histogram import warm_up
tune_allocator()  # as the CLI and the service do at start
t = time.perf_counter()
warm_up()  # as the service does at start: the compiled kernels load from numba's cache
out = {"warm_up": time.perf_counter() - t}
db, group_by, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
con = duckdb.connect(str(db / "catalog.duckdb"), read_only=True)
if mode == "scan":
    for basis in ["global", "selection"]:
        runs = []
        for _ in range(2):  # the first query of a process, then a repeated one
            t = time.perf_counter()
            r = Analysis(con, db, use_stored=False).divergence(group_by, basis=basis)
            runs.append(time.perf_counter() - t)
        out[basis] = {"seconds": runs[0], "repeated": runs[1], "matrix": r["matrix"], "method": r["method"]}
elif mode == "prepared":
    from cnnfilterdb.analysis import Snapshot
    snapshot = Snapshot.at(con, db)  # the current version
    snapshot.prepare(con)  # as the service does when it opens a catalog generation
    t = time.perf_counter()
    r = Analysis(con, db, snapshot=snapshot).divergence(group_by)
    out["prepared"] = {"seconds": time.perf_counter() - t, "matrix": r["matrix"], "method": r["method"]}
else:
    t = time.perf_counter()
    a = Analysis(con, db)
    r = a.divergence(group_by)
    out["cold"] = {"seconds": time.perf_counter() - t, "matrix": r["matrix"], "method": r["method"]}
    times = []
    for _ in range(20):
        t = time.perf_counter()
        r = a.divergence(group_by)
        times.append(time.perf_counter() - t)
    out["warm"] = {"seconds": float(sorted(times)[len(times) // 2]), "matrix": r["matrix"], "method": r["method"]}
out["rss"] = peak_rss()
print(json.dumps(out))
"""

NAIVE = r"""
import json, sys, time
from bench._common import peak_rss  # the child runs in the repository
from pathlib import Path
import duckdb, numpy as np, scipy.stats
import pyarrow.parquet as pq
from sklearn.decomposition import PCA
db, group_by = Path(sys.argv[1]), sys.argv[2]
con = duckdb.connect(str(db / "catalog.duckdb"), read_only=True)
paths = [db / p for (p,) in con.execute("SELECT path FROM _shards ORDER BY filter_id_first").fetchall()]
label_of_layer = dict(con.execute(f"SELECT layer_id, {group_by} FROM layers_with_models").fetchall())
t = time.perf_counter()
tables = [pq.read_table(p, columns=["layer_id"] + [f"w{i}" for i in range(9)]) for p in paths]
X = np.concatenate([np.stack([t_.column(f"w{i}").to_numpy() for i in range(9)], axis=1) for t_ in tables])
layer = np.concatenate([t_.column("layer_id").to_numpy() for t_ in tables])
del tables
load = time.perf_counter() - t
t = time.perf_counter()
# the notebook: scale by the absolute peak, PCA, transform, histograms, symmetric KL
den = np.abs(X).max(axis=1)
den = np.where(den == 0, 1, den)[:, None]
S = X.astype(np.float64) / den
pca = PCA(n_components=9, svd_solver="full")
C = pca.fit_transform(S)
lo, hi = C.min(), C.max()
labels = sorted(set(label_of_layer.values()), key=str)
lut = np.array([labels.index(label_of_layer[l]) if l in label_of_layer else -1 for l in range(layer.max() + 1)])
g = lut[layer]
P = []
for k in range(len(labels)):
    Ck = C[g == k]
    hs = []
    for i in range(9):
        h, _ = np.histogram(Ck[:, i], bins=70, range=(lo, hi), density=True)
        h[h == 0] = np.finfo(np.float32).eps
        hs.append(h / h.sum())
    P.append(hs)
D = np.zeros((len(labels), len(labels)))
for a in range(len(labels)):
    for b in range(len(labels)):
        if a != b:
            D[a, b] = sum(pca.explained_variance_ratio_[i]
                          * (scipy.stats.entropy(P[a][i], P[b][i]) + scipy.stats.entropy(P[b][i], P[a][i])) for i in range(9))
secs = time.perf_counter() - t
print(json.dumps({"seconds": secs, "load_seconds": load, "matrix": D.tolist(), "n": len(X),
                  "rss": peak_rss()}))
"""


def child(code: str, *args: str) -> dict:
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--filters", type=float, default=2e7)
    ap.add_argument("--db", type=Path, default=None)
    ap.add_argument("--group-by", default="task")
    ap.add_argument("--no-naive", action="store_true",
                    help="skip the in-memory reference (it needs ~80 bytes of RAM per filter): for large N")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnfilterdb-analysis-"))
    try:
        db = args.db
        if db is None:
            from cnnfilterdb.ingest import ingest_paths
            from cnnfilterdb.ingest.sample import write_sample_h5

            db = work / "db"
            src = write_sample_h5(work / "a.h5", n_models=max(40, int(args.filters) // 100_000),
                                  n_filters=int(args.filters), seed=5)
            ingest_paths([src], db)
            src.unlink()
        naive = None if args.no_naive else child(NAIVE, str(db), args.group_by)
        import duckdb

        with duckdb.connect(str(db / "catalog.duckdb"), read_only=True) as con:
            n = int(con.execute("SELECT coalesce(sum(n_rows), 0) FROM _shards").fetchone()[0])
        scan = child(ENGINE, str(db), args.group_by, "scan")
        cached = child(ENGINE, str(db), args.group_by, "cached")
        prepared = child(ENGINE, str(db), args.group_by, "prepared")
        rate = lambda s: n / s / 1e6  # noqa: E731
        print(f"store: {n:,} filters; divergence by {args.group_by}, kl_sym, 70 bins")
        if naive:
            print(f"naive in memory (sklearn + np.histogram + scipy): {naive['seconds']:8.3f} s  {rate(naive['seconds']):7.2f} M filters/s"
                  f"  (+ {naive['load_seconds']:.1f} s to load; peak RSS {naive['rss'] / 2**30:.2f} GiB)")
        for basis in ["global", "selection"]:
            for label, key in [("first", "seconds"), ("repeated", "repeated")]:
                s = scan[basis][key]
                versus = f"{naive['seconds'] / s:6.1f}x the naive reference" if naive else ""
                print(f"exact scan, {basis:9s} basis, {label:8s}:     {s:8.3f} s  {rate(s):7.2f} M filters/s  {versus}")
        print(f"  scan process peak RSS {scan['rss'] / 2**30:.2f} GiB; loading the compiled kernels at its start "
              f"(as the service does): {scan['warm_up']:.2f} s, not counted above")
        rows = [("first query of a process, nothing loaded", cached["cold"], "seconds", "first"),
                ("first query after the service's preparation", prepared["prepared"], "seconds", "first"),
                ("repeated", cached["warm"], "repeated", "repeated")]
        for label, r, ref, which in rows:
            s = r["seconds"]
            print(f"per-layer histograms, {label:44s} {s * 1000:8.2f} ms  "
                  f"{scan['global'][ref] / s:6.0f}x the exact scan ({which})")
        print(f"  cached process peak RSS {cached['rss'] / 2**30:.2f} GiB")
        same = (scan["global"]["matrix"] == cached["cold"]["matrix"] == cached["warm"]["matrix"]
                == prepared["prepared"]["matrix"])
        print(f"scan == per-layer histograms bit for bit: {same}", end="")
        if naive:
            err = np.max(np.abs(np.array(scan["global"]["matrix"]) - np.array(naive["matrix"])) /
                         np.maximum(np.abs(np.array(naive["matrix"])), 1e-300))
            print(f"; max relative difference to naive: {err:.2e}", end="")
        print()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
