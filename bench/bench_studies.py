"""The follow-up studies' analyses on an N-filter store (default 2e7; issue 24), next to the paper's.

Builds a store of the synthetic sample, labels its models with a robustness-study manifest
(robust, clean_accuracy, robust_accuracy: `cnnfilterdb label --manifest --key Name`), then times,
each in its own child process (peak RSS per process), first call and repeated:
  divergence by task                       the paper's analysis, for comparison
  divergence robust within depth_decile    the cohorts (SPEC 14)
  model_metrics, model_metrics by decile   weighted means of the layer metrics
  correlation (spearman, kendall)          per training_dataset, with the 2000-resample bootstrap
against a naive reference on the same data, in memory (pandas groupby for the model metrics, a
loop of scipy calls for the bootstrap, scikit-learn PCA + np.histogram + scipy per decile for the
cohorts), and checks they agree. Also one request of each through a running service.
    python bench/bench_studies.py [--filters 2e7] [--db DIR] [--no-naive]
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

ENGINE = r"""
import json, sys, time
from bench._common import peak_rss
import cnnfilterdb
from cnnfilterdb.stats.histogram import warm_up
warm_up()
db = cnnfilterdb.open(sys.argv[1])
calls = {
    "divergence by task": lambda: db.divergence("task").matrix.to_numpy().tolist(),
    "divergence robust within depth_decile": lambda: {str(k): v.to_numpy().tolist() for k, v in
                                                      db.divergence("robust", within="depth_decile").facets.items()},
    "model_metrics": lambda: db.model_metrics().to_numpy().tolist(),
    "model_metrics by depth_decile": lambda: db.model_metrics(by="depth_decile").to_numpy().tolist(),
    "correlation spearman": lambda: db.correlation("variance_entropy", "robust_accuracy", "training_dataset").to_numpy().tolist(),
    "correlation kendall": lambda: db.correlation("sparsity", "clean_accuracy", "training_dataset", method="kendall").to_numpy().tolist(),
}
out = {}
for name, call in calls.items():
    runs = []
    for _ in range(2):
        t = time.perf_counter()
        value = call()
        runs.append(time.perf_counter() - t)
    out[name] = {"first": runs[0], "repeated": runs[1], "value": value}
out["rss"] = peak_rss()
print(json.dumps(out, default=str))
"""

NAIVE = r"""
import json, sys, time, warnings
import numpy as np, pandas as pd, duckdb
from scipy import stats
from bench._common import peak_rss
warnings.simplefilter("ignore")
db, with_divergence = sys.argv[1], sys.argv[2] == "1"
con = duckdb.connect(db + "/catalog.duckdb", read_only=True, config={"file_search_path": db})
layers = con.execute("SELECT * FROM layers_with_models ORDER BY layer_id").df()  # the notebooks' one table
out = {}
t = time.perf_counter()
df = layers.copy()
df["g"] = df.n_filters * (1 - df.sparsity)
def wmean(v, w):
    ok = v.notna() & w.notna()
    return np.average(v[ok], weights=w[ok]) if w[ok].sum() > 0 else np.nan
rows = []
for (mid, model), m in df.groupby(["model_id", "model"], sort=True):
    rows.append([mid, model, len(m), int(m.n_filters.sum()), wmean(m.sparsity, m.n_filters.astype(float)),
                 wmean(m.variance_entropy, m.g), wmean(m.variance_entropy_norm, m.g), wmean(m.variance_entropy_clean, m.g),
                 wmean(m.orthogonality, m.out_channels.astype(float))])
out["model_metrics"] = {"seconds": time.perf_counter() - t, "value": rows}
t = time.perf_counter()
meta = df.groupby("model_id").agg(training_dataset=("training_dataset", "first"), ra=("robust_accuracy", "first"))
ve = pd.Series({r[0]: r[5] for r in rows})
res = []
for g, m in meta.groupby("training_dataset", sort=True):
    x, y = ve[m.index].to_numpy(), m.ra.to_numpy(dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, n, size=(2000, n))
    boot = np.array([stats.spearmanr(x[i], y[i]).statistic for i in idx])
    boot = boot[np.isfinite(boot)]
    r = stats.spearmanr(x, y)
    res.append([n, r.statistic, r.pvalue, *np.percentile(boot, [2.5, 97.5])])
out["correlation spearman"] = {"seconds": time.perf_counter() - t, "value": res}
if with_divergence:
    from sklearn.decomposition import PCA
    t0 = time.perf_counter()
    W = con.execute("SELECT w0, w1, w2, w3, w4, w5, w6, w7, w8, layer_id FROM filters ORDER BY filter_id").fetchnumpy()
    X = np.stack([W[f"w{i}"] for i in range(9)], axis=1).astype(np.float64)
    lid = W["layer_id"]
    load = time.perf_counter() - t0
    t = time.perf_counter()
    from tests import reference  # the tests' naive method: peak scaling, sklearn PCA, np.histogram, scipy
    peak = np.abs(X).max(axis=1, keepdims=True)
    S = np.divide(X, peak, out=np.zeros_like(X), where=peak > 0)  # reference.scale, vectorized
    pca = PCA(n_components=9, svd_solver="full").fit(S)
    C = pca.transform(S)
    lo, hi = C.min(), C.max()
    cut = pd.cut(layers.conv_depth_norm, np.linspace(0, 1, 11)).astype(str)
    dec = pd.Series(np.where(layers.conv_depth == 0, "0", cut), index=layers.layer_id)
    rob = pd.Series(layers.robust.to_numpy(), index=layers.layer_id)
    fdec, frob = dec.reindex(lid).to_numpy(), rob.reindex(lid).to_numpy()
    w = pca.explained_variance_ratio_
    facets = {}
    for d in sorted(set(fdec)):
        P = [reference._probabilities(C[(fdec == d) & (frob == r)], lo, hi, 70) for r in (False, True)]
        facets[d] = float(sum(w[i] * reference._metric(P[0][i], P[1][i], "kl_sym", None) for i in range(9)))
    out["divergence robust within depth_decile"] = {"seconds": time.perf_counter() - t, "load_seconds": load,
                                                    "value": facets}
out["rss"] = peak_rss()
print(json.dumps(out, default=float))
"""


def child(code: str, *args: str) -> dict:
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def label_store(db: Path, work: Path) -> None:
    """A robustness-study manifest: half the models robust, accuracies, three training datasets."""
    import duckdb

    with duckdb.connect(str(db / "catalog.duckdb"), read_only=True) as con:
        models = [m for (m,) in con.execute("SELECT model FROM models ORDER BY model_id").fetchall()]
    rng = np.random.default_rng(7)
    path = work / "meta.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Name", "Robust", "Clean Accuracy", "Robust Accuracy", "Training-Dataset"])
        for i, m in enumerate(models):
            w.writerow([m, str(i % 2 == 1), f"{rng.uniform(60, 96):.2f}", f"{rng.uniform(20, 65):.2f}",
                        ["CIFAR-10", "CIFAR-100", "ImageNet"][i % 3]])
    p = subprocess.run([sys.executable, "-m", "cnnfilterdb.cli", "label", "--manifest", str(path), "--key", "Name",
                        "--new-value", "--db", str(db)], capture_output=True, text=True, cwd=REPO)
    if p.returncode != 0:
        raise SystemExit(p.stderr)


def over_http(db: Path) -> dict:
    import httpx

    sys.path.insert(0, str(REPO))
    from bench._common import start_service

    server, base = start_service(db)
    try:
        out = {}
        calls = {"divergence by task": ("POST", "/v1/divergence", {"group_by": "task"}),
                 "divergence robust within depth_decile": ("POST", "/v1/divergence",
                                                           {"group_by": "robust", "within": "depth_decile"}),
                 "model_metrics by depth_decile": ("GET", "/v1/model-metrics", {"by": "depth_decile"}),
                 "correlation spearman": ("POST", "/v1/correlation", {"x": "variance_entropy", "y": "robust_accuracy",
                                                                       "group_by": "training_dataset"})}
        for name, (method, path, body) in calls.items():
            runs = []
            for _ in range(2):
                t = time.perf_counter()
                r = (httpx.post(base + path, json=body, timeout=600) if method == "POST"
                     else httpx.get(base + path, params=body, timeout=600))
                runs.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
            out[name] = runs
        return out
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--filters", type=float, default=2e7)
    ap.add_argument("--db", type=Path, default=None, help="a store labelled already (robust, clean_accuracy, ...)")
    ap.add_argument("--no-naive", action="store_true", help="skip the in-memory reference (~100 bytes a filter)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnfilterdb-studies-"))
    sys.path.insert(0, str(REPO))
    try:
        db = args.db
        if db is None:
            from bench._common import build_sample_store

            db = work / "db"
            t = time.perf_counter()
            build_sample_store(db, int(args.filters), seed=5)
            label_store(db, work)
            print(f"built and labelled a store of {int(args.filters):,} filters in {time.perf_counter() - t:.1f} s")
        engine = child(ENGINE, str(db))
        naive = None if args.no_naive else child(NAIVE, str(db), "1")
        http = over_http(db)
        print(f"{'analysis':42s} {'first':>9s} {'repeated':>9s} {'HTTP first':>11s} {'HTTP again':>11s} "
              f"{'naive':>9s} {'ratio':>7s}")
        for name, r in engine.items():
            if name == "rss":
                continue
            h = http.get(name)
            nv = (naive or {}).get(name)
            ratio = f"{nv['seconds'] / r['first']:6.1f}x" if nv else ""
            print(f"{name:42s} {r['first']:8.3f}s {r['repeated']:8.3f}s "
                  + (f"{h[0]:10.3f}s {h[1]:10.3f}s " if h else " " * 24)
                  + (f"{nv['seconds']:8.3f}s {ratio}" if nv else ""))
        print(f"engine process peak RSS {engine['rss'] / 2**30:.2f} GiB"
              + (f"; naive {naive['rss'] / 2**30:.2f} GiB (+ {naive['divergence robust within depth_decile']['load_seconds']:.1f} s "
                 "to load the filters, not timed)" if naive else ""))
        if naive:
            mm = np.array([r[1:] for r in engine["model_metrics"]["value"]], dtype=float)  # model_id, then the metrics
            ref = np.array([r[2:] for r in naive["model_metrics"]["value"]], dtype=float)
            ok_mm = np.allclose(mm, ref, rtol=1e-12, atol=0, equal_nan=True)
            c = np.array(engine["correlation spearman"]["value"], dtype=float)[:, :5]  # n_resamples: not the loop's
            ok_c = np.allclose(c, np.array(naive["correlation spearman"]["value"], dtype=float), rtol=0, atol=1e-12)
            facets = engine["divergence robust within depth_decile"]["value"]
            want = naive["divergence robust within depth_decile"]["value"]
            err = max(abs(facets[k][0][1] - want[k]) / abs(want[k]) for k in want)
            print(f"model metrics equal the pandas reference to 1e-12: {ok_mm}; the correlation the scipy loop's to "
                  f"1e-12: {ok_c}; cohort divergences' largest relative difference to the naive one: {err:.1e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
