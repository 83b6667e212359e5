"""Checking a model against the population (issue 25, SPEC 15) on an N-filter store (default 2e7,
200 models of the synthetic sample), next to reading the same file and to ingesting it.

For each of the six real models of tests/data/models, each in child processes of its own (peak
RSS per process):
  load          onnx.load (.onnx) / torch.load(weights_only=True) (.pt) of the file, after the import
  read          read_checked: the file read and checked as an ingest reads it, the layer metrics
  check         db.check(file): first call (numba kernels loaded before) and repeated
  CLI check     `cnnfilterdb check FILE --json`, wall time of the command (interpreter, imports),
                next to `cnnfilterdb check --help` (the interpreter and the imports alone)
  CLI ingest    `cnnfilterdb ingest FILE` into a copy of the store (hard links: the shards and the
                catalog are never written in place, so a copy costs nothing; the original's files
                are compared before and after), wall time including the commit
  naive         the same check in memory, as tests/reference.py computes it (every filter loaded,
                scikit-learn's PCA, np.histogram per layer, scipy's entropy), once, for the first model
    python bench/bench_check.py [--filters 2e7] [--db DIR] [--out bench/results_check.json] [--no-naive]
--db DIR: the store to use, built there (and kept) if DIR does not exist.
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

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "tests" / "data" / "models"
FILES = ["ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx", "ch_ppocr_mobile_v2.0_cls_infer.onnx",
         "onet.pt", "pnet.pt", "rnet.pt"]

LOAD = r"""
import json, sys, time
from bench._common import peak_rss
path = sys.argv[1]
t = time.perf_counter()
if path.endswith(".onnx"):
    import onnx
    imported = time.perf_counter() - t
    runs = []
    for _ in range(2):
        t = time.perf_counter()
        onnx.load(path)
        runs.append(time.perf_counter() - t)
else:
    import torch
    imported = time.perf_counter() - t
    runs = []
    for _ in range(2):
        t = time.perf_counter()
        torch.load(path, weights_only=True)
        runs.append(time.perf_counter() - t)
print(json.dumps({"import": imported, "first": runs[0], "repeated": runs[1], "rss": peak_rss()}))
"""

CHECK = r"""
import json, sys, time
from pathlib import Path
from bench._common import peak_rss
import cnnfilterdb
from cnnfilterdb.ingest.model_files import read_checked
from cnnfilterdb.stats.histogram import warm_up
warm_up()
db, path = cnnfilterdb.open(sys.argv[1]), Path(sys.argv[2])
t = time.perf_counter()
m = read_checked(path)
read_first = time.perf_counter() - t
runs, engine = [], []
for _ in range(3):
    t = time.perf_counter()
    r = db.check(path)
    runs.append(time.perf_counter() - t)
    engine.append(r.elapsed_ms / 1000)
t = time.perf_counter()
read_checked(path)
read_again = time.perf_counter() - t
print(json.dumps({"read": read_first, "read_repeated": read_again, "first": runs[0], "repeated": min(runs[1:]),
                  "engine_first": engine[0], "engine_repeated": min(engine[1:]),
                  "layers": len(r.layers), "filters": int(r.layers.n_filters.sum()), "divergence": r.model["divergence"],
                  "population": {k: r.population[k] for k in ("n_models", "n_layers", "n_filters")},
                  "rss": peak_rss()}))
"""

# The naive method, in memory (tests/reference.py: the tests' slow reference): every filter of the
# store loaded, the basis refitted with scikit-learn's PCA, each population layer's coefficients
# histogrammed with np.histogram, the KLs by scipy.stats.entropy, then the checked model's layers.
NAIVE = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import pandas as pd
from bench._common import peak_rss
import cnnfilterdb
from cnnfilterdb.ingest.model_files import read_checked
from tests import reference
db, path = cnnfilterdb.open(sys.argv[1]), Path(sys.argv[2])
t0 = time.perf_counter()
X = db.filters().reshape(-1, 9)
layers = db.layers().sort_values("filter_id_first")
load = time.perf_counter() - t0
t = time.perf_counter()
def decile(depth, x):
    return "0" if depth == 0 else str(pd.cut([x], np.linspace(0, 1, 11))[0])
starts = np.r_[0, np.cumsum(layers.n_filters.to_numpy())]
population = [{"filters": X[a:b], "decile": decile(d, x), "model_id": m}
              for a, b, d, x, m in zip(starts[:-1], starts[1:], layers.conv_depth, layers.conv_depth_norm, layers.model_id)]
b = reference.oriented_basis(X)
pop = reference.check_population(population, b)
m = read_checked(path)
out = reference.check([l.columns.T for l in m.layers], [decile(l.conv_depth, l.conv_depth_norm) for l in m.layers], pop, b)
print(json.dumps({"load": load, "seconds": time.perf_counter() - t, "divergence": out["divergence"], "rss": peak_rss()}))
"""

# The CLI as a user runs it (python -m cnnfilterdb.cli), reporting its own peak RSS on exit.
CLI = r"""
import atexit, os, sys
from bench._common import peak_rss
atexit.register(lambda: open(os.environ["BENCH_RSS"], "w").write(str(peak_rss())))
from cnnfilterdb.cli import main
sys.exit(main(sys.argv[1:]))
"""


def child(code: str, *args: str) -> dict:
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def cli(work: Path, *args: str) -> tuple[float, int, str]:
    """(wall seconds, peak RSS, stdout) of one `cnnfilterdb ...` command."""
    rss = work / "rss"
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "BENCH_RSS": str(rss)})
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    return wall, int(rss.read_text()), p.stdout


def files_state(root: Path) -> dict:
    return {str(p.relative_to(root)): (s.st_size, s.st_mtime_ns, s.st_ino)
            for p in sorted(root.rglob("*")) if p.is_file() and (s := p.stat())}


def linked_copy(db: Path, to: Path) -> Path:
    """A copy of the store whose files are hard links: a commit writes new files and renames them."""
    shutil.copytree(db, to, copy_function=os.link)
    return to


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--filters", type=float, default=2e7)
    ap.add_argument("--db", type=Path, default=None, help="the store (built there and kept if missing)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results_check.json")
    ap.add_argument("--no-naive", action="store_true", help="skip the in-memory reference (~200 bytes a filter)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnfilterdb-check-"))
    sys.path.insert(0, str(REPO))
    from bench._common import build_sample_store

    try:
        db = args.db or work / "db"
        built = None
        if not (db / "catalog.duckdb").exists():
            t = time.perf_counter()
            build_sample_store(db, int(args.filters), seed=25)
            built = time.perf_counter() - t
            print(f"built a store of {int(args.filters):,} filters in {built:.1f} s")
        before = files_state(db)
        results = {"machine": {"cpus": os.cpu_count(), "load_average_before": os.getloadavg()},
                   "store": {"path": str(db), "built_seconds": built}, "models": {}}
        cli(work, "check", "--help")
        startup = min(cli(work, "check", "--help")[0] for _ in range(3))
        results["cli_startup"] = startup  # the interpreter and cnnfilterdb's imports: what every command pays
        print(f"`cnnfilterdb check --help`: {startup:.2f} s (the interpreter and the imports)")
        if not args.no_naive:  # once: the population's part dominates, whatever the model
            naive = child(NAIVE, str(db), str(MODELS / FILES[0]))
            results["naive"] = {"model": FILES[0], **naive}
            print(f"naive, in memory ({FILES[0]}): {naive['load']:.1f} s to load the filters, {naive['seconds']:.1f} s "
                  f"to check, peak RSS {naive['rss'] / 2**30:.1f} GiB", flush=True)
        for f in FILES:
            path = MODELS / f
            r = {"bytes": path.stat().st_size}
            r["load"] = child(LOAD, str(path))
            r["check"] = child(CHECK, str(db), str(path))
            cli(work, "check", str(path), "--db", str(db), "--json")  # the file and the shards cached
            wall, rss, out = cli(work, "check", str(path), "--db", str(db), "--json")
            r["cli_check"] = {"wall": wall, "rss": rss}
            copy = linked_copy(db, work / "copy")
            wall, rss, out = cli(work, "ingest", str(path), "--db", str(copy), "--allow-missing", "--model", f"bench-{f}")
            r["cli_ingest"] = {"wall": wall, "rss": rss, "output": out.strip().splitlines()[-3:]}
            shutil.rmtree(copy)
            results["models"][f] = r
            c = r["check"]
            results["store"]["population"] = c["population"]
            print(f"{f}: load {r['load']['first']:.3f} s, check {c['first']:.3f} s / {c['repeated']:.3f} s, "
                  f"CLI check {r['cli_check']['wall']:.2f} s, CLI ingest {r['cli_ingest']['wall']:.2f} s", flush=True)
        assert files_state(db) == before, "the store changed"
        results["machine"]["load_average_after"] = os.getloadavg()
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        pop = results["store"]["population"]
        print(f"\nstore: {pop['n_filters']:,} filters, {pop['n_models']} models, {pop['n_layers']:,} layers; "
              f"load average {results['machine']['load_average_before'][0]:.2f} before, "
              f"{results['machine']['load_average_after'][0]:.2f} after")
        print("load: onnx.load / torch.load after the import; read: read_checked, repeated (the first call "
              "imports onnx or torch: 'read 1st'); check: db.check, first (numba kernels loaded) and repeated")
        head = (f"{'model':38s} {'MB':>6s} {'layers':>6s} {'filters':>7s} {'load':>7s} {'read 1st':>8s} {'read':>7s} "
                f"{'check 1st':>9s} {'again':>7s} {'CLI check':>9s} {'CLI ingest':>10s} {'RSS check':>9s} "
                f"{'RSS ingest':>10s}")
        print(head)
        for f, r in results["models"].items():
            c = r["check"]
            print(f"{f:38s} {r['bytes'] / 1e6:6.2f} {c['layers']:6d} {c['filters']:7d} {r['load']['first']:6.3f}s "
                  f"{c['read']:7.3f}s {c['read_repeated']:6.3f}s {c['first']:8.3f}s {c['repeated']:6.3f}s {r['cli_check']['wall']:8.2f}s "
                  f"{r['cli_ingest']['wall']:9.2f}s {c['rss'] / 2**20:7.0f}Mi {r['cli_ingest']['rss'] / 2**20:8.0f}Mi")
        if "naive" in results:
            nv, c = results["naive"], results["models"][FILES[0]]["check"]
            print(f"naive / db.check ({FILES[0]}): {nv['seconds']:.1f} s / {c['first']:.3f} s = "
                  f"{nv['seconds'] / c['first']:,.0f}x (loading the filters: +{nv['load']:.1f} s); divergence "
                  f"{nv['divergence']:.12g} vs {c['divergence']:.12g}")
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
