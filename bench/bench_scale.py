"""Scale benchmark (issue 22, point 3; not in CI): the store at the real dataset's shape.

1. Writes a synthetic dataset.h5 of the real dataset's shape (647 models, 31,693 layers, 20 to 80
   layers a model; docs/method.md#dataset-h5) holding N filters (default 6e8; the real one holds
   1.4e9), STREAMED: /filters is written block by block with h5py (memory bounded whatever N: a
   layer larger than a block is drawn in pieces), /meta (one row per layer, independent of N) as
   pandas HDF the way ingest/sample.py writes it. Its filters are the sample's mixtures of 3x3
   prototypes (not real data: the file carries the sample's root attribute).
2. `cnnfilterdb ingest` of it into a new store: wall time and peak RSS (of the command and its
   children: ru_maxrss of a small wrapper process's children, so neither this process's memory nor
   the generator's counts).
3. `cnnfilterdb verify` (time, RSS).
4. Small commits into the large store: `cnnfilterdb ingest` of one real ONNX model of
   tests/data/models (480 filters), `cnnfilterdb label` of one dataset model, `cnnfilterdb remove`
   of the ONNX model, its ingest again (time, RSS, and the basis version each commit left: the refit
   policy keeps the basis of a large store, docs/method.md#refit), then `cnnfilterdb refit` (a full
   refit: the model is not in the basis, time).
   Then exactness: the answers from the stored histograms (divergence by task, the ridge plot's KDE
   by depth bin for the largest task, the density figure) against the exact scan with the same
   basis (the engine without its stored histograms), in one process; and the stored histograms'
   bytes (segments.py).
5. `cnnfilterdb serve` on a free port: every figure the dashboard draws (service/static/app.js:
   the overview's kl_combined, the explorer's five for its default view and for a model-level
   selection grouped by depth, the degenerate view's quality, a layer's filters) as the page asks
   for it, first request (with the service's Server-Timing) and the median of 3 repeats; the
   analysis endpoints behind them (POST /v1/divergence, /v1/kde as the ridge plot asks, /v1/density2d
   as its figure asks, /v1/pca, /v1/histograms) with the `method` that answered; the JSON requests of
   the other views. Then, on a fresh service, the overview's and the explorer's full page as a
   browser loads them (GET /, its assets, /v1/stats, /v1/fields, the drift table, the figures two at
   a time as app.js asks), first and repeated.
6. Prints one JSON (stdout; progress on stderr): every figure, the disk used, and a projection to
   1.4e9 filters (project()): what passes over every filter grows linearly in N (the file, the
   ingest, verify, a refit, the analyses whose method is a scan or not stated), over a fixed part
   measured here (a command's start: `cnnfilterdb info`; a figure's drawing); the small commits
   that keep the basis (they read only their own filters), answers from stored sums (method
   layer_histograms or unit_histograms) and from the figure cache are taken as measured. It means most for a run at a large N (the default).

Disk: about 36 bytes a filter for the file and as much for the store (6e8: 21.6 GB + ~22 GB;
the script refuses to start with less than 2.2 x 36 x N bytes free). Time at 6e8 on 2 cores: the
file ~5 min, the ingest ~2 min, the figures a few minutes while they scan.
    python bench/bench_scale.py [--n 6e8] [--workdir DIR] [--keep] [--seed 0]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import duckdb
import h5py
import httpx
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
# bench._common is in the repository, not in the installed package (as the other benchmarks).
sys.path.append(str(REPO))

from bench._common import peak_rss, start_service  # noqa: E402
from cnnfilterdb.ingest.sample import (  # noqa: E402
    ARCHITECTURES,
    CATEGORIES,
    DATASETS,
    OPERATORS,
    SAMPLE_ATTR,
    TASKS,
    _prototypes,
)
from cnnfilterdb.plots import FIGURE_DEFAULTS  # noqa: E402

# The real dataset's shape (issue 22).
MODELS, LAYERS, LAYERS_MIN, LAYERS_MAX = 647, 31_693, 20, 80
REAL_N = 1.4e9
BYTES_PER_FILTER = 36  # float32 3x3
SMALL_MODEL = REPO / "tests" / "data" / "models" / "ch_PP-OCRv4_rec_infer.onnx"  # 480 3x3 filters
REPEATS = 3
HTTP_TIMEOUT = 3600.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- 1. the streamed dataset.h5 ------------------------------------------------------------------
def _layer_counts(rng: np.random.Generator) -> np.ndarray:
    """Layers a model, each in [20, 80], summing to 31,693."""
    counts = rng.integers(LAYERS_MIN, LAYERS_MAX + 1, size=MODELS)
    while (diff := LAYERS - int(counts.sum())) != 0:
        i = int(rng.integers(MODELS))
        step = 1 if diff > 0 else -1
        if LAYERS_MIN <= counts[i] + step <= LAYERS_MAX:
            counts[i] += step
    return counts


def _layer_sizes(rng: np.random.Generator, n: int, counts: np.ndarray, depth_norm: np.ndarray) -> np.ndarray:
    """Filters a layer, summing to n exactly, each >= 1: models' budgets log-normal, a model's
    layers Gamma-distributed shares growing with depth (channels widen with depth)."""
    model_share = np.repeat(rng.lognormal(0.0, 1.0, size=MODELS), counts)
    layer_share = rng.gamma(2.0, size=LAYERS) * (0.5 + depth_norm)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    layer_share /= np.repeat(np.add.reduceat(layer_share, starts), counts)
    share = model_share * layer_share
    share /= share.sum()
    rest = n - LAYERS
    exact = share * rest
    sizes = np.floor(exact).astype(np.int64)
    short = rest - int(sizes.sum())
    sizes[np.argsort(exact - sizes)[::-1][:short]] += 1
    return sizes + 1


def write_scale_h5(path: Path, n: int, seed: int = 0, block_rows: int = 1 << 20) -> dict:
    """A synthetic dataset.h5 of the real dataset's shape with ``n`` filters, streamed (memory
    bounded by ``block_rows``, not by n). Returns what the benchmark needs of it."""
    if n < LAYERS:
        raise SystemExit(f"--n must be at least {LAYERS:,} (one filter a layer)")
    rng = np.random.default_rng(seed)
    counts = _layer_counts(rng)
    rows, layer_model, layer_depth = [], [], []
    for mid, n_layers in enumerate(counts.tolist()):
        n_levels = n_layers - int(rng.integers(0, 3))  # a few parallel convolutions share a depth
        depths = sorted(rng.choice(np.arange(n_levels), size=n_layers, replace=True).tolist())
        depths[0], depths[-1] = 0, n_levels - 1
        depths = sorted(depths)
        layer_model += [mid] * n_layers
        layer_depth += [d / (n_levels - 1) if n_levels > 1 else 0.0 for d in depths]
        rows.append((n_layers, depths))
    depth_norm = np.array(layer_depth)
    sizes = _layer_sizes(rng, n, counts, depth_norm)

    meta_rows, plan, models = [], [], []
    next_id, li = 0, 0
    for mid, (n_layers, depths) in enumerate(rows):
        arch = ARCHITECTURES[mid % len(ARCHITECTURES)]
        task, cat = int(rng.integers(len(TASKS))), int(rng.integers(len(CATEGORIES)))
        n3 = int(sizes[li:li + n_layers].sum())
        ops = {op: int(rng.integers(0, 60)) for op in OPERATORS}
        ops["Conv"] = n_layers + int(rng.integers(0, 10))
        k11, k55, k77 = int(rng.integers(0, 5000)), int(rng.integers(0, 300)), int(rng.integers(0, 200))
        total = n3 + k55 + k77
        name = f"scale-s{seed}-{mid:04d}-{arch.lower()}"
        models.append({"model": name, "task": TASKS[task]})
        model_meta = {
            "model": name, "producer": "pytorch 1.10", "op_set": int(rng.choice([9, 11, 13])), "depth": n_layers,
            "Name": arch, "Paper": "synthetic scale benchmark (bench/bench_scale.py), not real data",
            "Pretraining-Dataset": None if rng.random() < 0.6 else "ImageNet1k",
            "Training-Dataset": DATASETS[(task + cat) % len(DATASETS)], "Visual Category": CATEGORIES[cat],
            "Task": TASKS[task], "Accessible": "yes" if rng.random() < 0.8 else "no",
            "Dataset URL": f"https://example.org/datasets/{mid}", "total_filters": total, "3x3_filter_share": n3 / total,
            "(1, 1) filters": k11, "(3, 3) filters": n3, "(5, 5) filters": k55, "(7, 7) filters": k77, **ops,
        }
        for depth in depths:
            size, dn = int(sizes[li]), float(depth_norm[li])
            meta_rows.append({"model_id": mid, "conv_depth": depth, "conv_depth_norm": dn, **model_meta,
                              "filter_ids": f"{next_id}:{next_id + size - 1}"})
            plan.append((size, task, cat, dn))
            next_id += size
            li += 1
    assert next_id == n and li == LAYERS

    meta = pd.DataFrame(meta_rows).set_index(["model_id", "conv_depth", "conv_depth_norm"])
    meta = meta.astype({c: object for c in meta.columns if meta[c].dtype.kind not in "iufb"})
    path.unlink(missing_ok=True)
    with warnings.catch_warnings():  # PyTables pickles mixed object columns; so did the original
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        meta.to_hdf(path, key="meta", mode="w")
    del meta, meta_rows

    P = _prototypes().astype(np.float32)
    degenerate = {3: "zero", 7: "sparse", 11: "rank1", 15: "noise"}
    buf = np.empty((min(block_rows, n), 9), np.float32)
    with h5py.File(path, "a") as f:
        f.attrs[SAMPLE_ATTR] = f"synthetic scale benchmark written by bench/bench_scale.py, seed {seed}; not real data"
        ds = f.create_dataset("filters", shape=(n, 3, 3), dtype=np.float32, chunks=(min(n, 1 << 16), 3, 3))
        fill, written = 0, 0
        for k, (size, task, cat, dn) in enumerate(plan):
            weights = np.ones(len(P))
            weights[task % len(P)] += 3.0
            weights[(cat + 3) % len(P)] += 2.0
            weights[:2] += 2.0 * (1.0 - dn)  # shallow layers: smoother
            cdf = np.cumsum(weights / weights.sum()).astype(np.float32)
            noise, scale = np.float32(0.15 + 0.6 * dn), np.float32(0.05 + 0.1 * rng.random())
            kind = degenerate.get(k)
            done = 0
            while done < size:  # the layer in pieces of at most what the block has room for
                m = min(size - done, len(buf) - fill)
                out = buf[fill:fill + m]
                if kind == "zero":
                    out[:] = 0
                elif kind == "rank1":
                    np.multiply(rng.standard_normal((m, 1), dtype=np.float32), P[2], out=out)
                elif kind == "noise":
                    out[:] = rng.uniform(-0.1, 0.1, size=(m, 9)).astype(np.float32)
                else:
                    which = np.minimum(np.searchsorted(cdf, rng.random(m, dtype=np.float32), side="right"), len(P) - 1)
                    np.multiply(P[which], rng.standard_normal((m, 1), dtype=np.float32), out=out)
                    out += noise * rng.standard_normal((m, 9), dtype=np.float32)
                    out *= scale
                    if kind == "sparse":  # the layer's first 90 % nearly zero
                        cut = int(0.9 * size) - done
                        if cut > 0:
                            out[:cut] *= np.float32(1e-4)
                fill += m
                done += m
                if fill == len(buf) or written + fill == n:
                    ds[written:written + fill] = buf[:fill].reshape(fill, 3, 3)
                    written += fill
                    fill = 0
        assert written == n
    return {"models": models, "sizes": sizes}


# ---- 2-4. the commands, timed, with their peak RSS ----------------------------------------------
# A small process that runs the command and reports its wall time and the peak RSS of it and its
# descendants (ru_maxrss of RUSAGE_CHILDREN): the child's count starts from this wrapper's few MB
# at fork, not from the benchmark's own memory.
WRAPPER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
s = time.perf_counter() - t
print(json.dumps({"seconds": s, "rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
                  "rc": p.returncode, "stdout": p.stdout[-4000:], "stderr": p.stderr[-4000:]}))
"""


def cli(*args: str) -> dict:
    """`cnnfilterdb ARGS` (this checkout's code), timed; a failure stops the benchmark."""
    cmd = [sys.executable, "-m", "cnnfilterdb.cli", *args]
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    r = json.loads(out.stdout)
    if r["rc"] != 0:
        raise SystemExit(f"cnnfilterdb {' '.join(args)} failed ({r['rc']}):\n{r['stdout']}\n{r['stderr']}")
    return r


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# ---- 5. the service ------------------------------------------------------------------------------
def vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def where_text(where: dict | None) -> str | None:
    """A where as app.js puts it in a URL (JSON.stringify)."""
    return json.dumps(where, separators=(",", ":")) if where else None


def plot_url(figure: str, **query) -> str:
    """app.js's plotUrl: the query without empty values."""
    q = {k: v for k, v in query.items() if v is not None and v != ""}
    return str(httpx.URL(f"/v1/plots/{figure}.png", params=q))


def explorer_view(group_by: str, where: dict | None) -> dict:
    """The explorer's requests for one view (app.js viewExplore.show): its five figures as drawn
    in the page, and the drift table's POST /v1/divergence."""
    w = where_text(where)
    body = {"group_by": group_by, "metric": "kl_sym", "bins": 70, "basis": "global", **({"where": where} if where else {})}
    return {
        "figures": {
            "divergence": plot_url("divergence", group_by=group_by, where=w, metric="kl_sym", bins=70, basis="global",
                                   width=8, height=8),
            "ridge": plot_url("ridge", group_by=group_by, where=w, basis="global", width=12),
            "eigenimages": plot_url("eigenimages", where=w, width=12),
            "density2d": plot_url("density2d", where=w, basis="global"),
            "explained_variance": plot_url("explained_variance", where=w),
        },
        "divergence_body": body,
    }


def analyses_of(group_by: str, where: dict | None) -> dict:
    """The analysis requests behind the explorer's figures, as the figures make them (their
    FIGURE_DEFAULTS), to read which method answers: figure -> (endpoint, body); None: the drift
    histograms (no figure draws them)."""
    w = {"where": where} if where else {}
    d2 = FIGURE_DEFAULTS["density2d"]
    return {
        "divergence": ("/v1/divergence", {"group_by": group_by, "metric": "kl_sym", "bins": 70, "basis": "global", **w}),
        "ridge": ("/v1/kde", {"group_by": group_by, "bins": FIGURE_DEFAULTS["ridge"]["bins"], "basis": "global", **w}),
        "density2d": ("/v1/density2d", {"bins": d2["bins"], "range": list(d2["range"]), "basis": "global", **w}),
        "eigenimages": ("/v1/pca", {**w}),
        None: ("/v1/histograms", {"group_by": group_by, "bins": 70, "basis": "global", **w}),
    }


def request(c: httpx.Client, method: str, url: str, body: dict | None = None) -> tuple[float, httpx.Response]:
    t = time.perf_counter()
    r = c.request(method, url, json=body)
    ms = (time.perf_counter() - t) * 1000
    if r.status_code != 200:
        raise SystemExit(f"{method} {url} {json.dumps(body) if body else ''}: {r.status_code} {r.text[:500]}")
    return ms, r


def first_and_repeats(c: httpx.Client, method: str, url: str, body: dict | None = None) -> dict:
    """The first request's latency (and its answer), then the median of REPEATS more."""
    first, r = request(c, method, url, body)
    reps = [request(c, method, url, body)[0] for _ in range(REPEATS)]
    out = {"first_ms": round(first, 1), "repeat_median_ms": round(statistics.median(reps), 1), "bytes": len(r.content)}
    if (m := re.search(r"render;dur=([0-9.]+)", r.headers.get("server-timing", ""))):
        out["first_server_ms"] = float(m.group(1))
    if r.headers.get("content-type", "").startswith("application/json"):
        j = r.json()
        if isinstance(j, dict):
            for key in ("method", "elapsed_ms"):
                if key in j:
                    out[key] = j[key]
    return out


async def page_load(base: str, api_first: list[tuple[str, str, dict | None]], figures: list[str]) -> dict:
    """One page as a browser loads it: GET /, its assets, then the page's JSON requests at once and
    its figures two at a time (app.js FIGURE_LOADS); the time until all have arrived."""
    async with httpx.AsyncClient(base_url=base, timeout=HTTP_TIMEOUT) as c:
        t0 = time.perf_counter()
        times: dict[str, float] = {}

        async def get(method: str, url: str, body: dict | None = None) -> None:
            t = time.perf_counter()
            r = await c.request(method, url, json=body)
            if r.status_code != 200:
                raise SystemExit(f"{method} {url}: {r.status_code} {r.text[:300]}")
            times[f"{method} {url}"] = round((time.perf_counter() - t) * 1000, 1)

        await get("GET", "/")
        await asyncio.gather(*(get("GET", u) for u in ("/static/app.js", "/static/app.css", "/static/favicon.svg")))
        turns = asyncio.Semaphore(2)

        async def figure(url: str) -> None:
            async with turns:
                await get("GET", url)

        await asyncio.gather(*(get(m, u, b) for m, u, b in api_first), *(figure(u) for u in figures))
        return {"total_ms": round((time.perf_counter() - t0) * 1000, 1), "requests_ms": times}


def measure_service(db: Path) -> dict:
    out: dict = {}
    server, base = start_service(db)
    try:
        with httpx.Client(base_url=base, timeout=HTTP_TIMEOUT) as c:
            if c.get("/health").status_code != 200:
                raise SystemExit("the service did not start")
            fields = c.get("/v1/fields").json()["fields"]
            tasks = next(f for f in fields if f["name"] == "task")["values"]
            task = max(tasks, key=lambda v: v["filters"])["value"]  # the largest task: a model-level selection
            views = {"default": ("task", None), "selection": ("depth_bin", {"task": [task]})}
            log(f"service at {base}; figures (first and {REPEATS} repeats)")

            figures = {"overview/kl_combined": plot_url("kl_combined", width=16, height=5.4)}
            for view, (group_by, where) in views.items():
                for name, url in explorer_view(group_by, where)["figures"].items():
                    figures[f"explorer-{view}/{name}"] = url
            figures["degenerate/quality"] = plot_url("quality", sparsity_gt="0.5", entropy_norm_lt="0.5", entropy_norm_gt="1.0")
            model_id = c.get("/v1/models", params={"limit": 1}).json()["items"][0]["model_id"]
            layers = c.get(f"/v1/models/{model_id}/layers").json()["items"]
            layer_id = max(layers, key=lambda x: x["n_filters"])["layer_id"]
            figures["layer/layer_filters"] = plot_url("layer_filters", layer_id=layer_id)
            out["figures"] = {}
            for name, url in figures.items():
                out["figures"][name] = {"url": url, **first_and_repeats(c, "GET", url)}
                log(f"  {name}: {out['figures'][name]['first_ms']:.0f} ms, repeated {out['figures'][name]['repeat_median_ms']:.0f} ms")

            log("analyses (JSON, after the figures)")
            out["analyses"] = {}
            for view, (group_by, where) in views.items():
                for figure, (endpoint, body) in analyses_of(group_by, where).items():
                    key = f"explorer-{view}/{endpoint.removeprefix('/v1/')}"
                    out["analyses"][key] = {"for_figure": figure, "body": body, **first_and_repeats(c, "POST", endpoint, body)}
                    for fk in [f"explorer-{view}/{figure}"] + ([f"explorer-{view}/explained_variance"] if figure == "eigenimages" else []):
                        if fk in out["figures"]:
                            out["figures"][fk]["analysis"] = endpoint.removeprefix("/v1/")
                            if "method" in out["analyses"][key]:
                                out["figures"][fk]["method"] = out["analyses"][key]["method"]
            kl, methods = 0.0, set()
            for g in ("task", "visual_category", "depth_bin"):  # kl_combined's three groupings
                ms, r = request(c, "POST", "/v1/divergence", {"group_by": g, "metric": "kl_sym", "bins": 70})
                kl += ms
                methods.add(r.json()["method"])
            out["analyses"]["overview/divergence"] = {"for_figure": "kl_combined", "first_ms": round(kl, 1), "method": sorted(methods)}
            out["figures"]["overview/kl_combined"].update(analysis="divergence", method=sorted(methods))

            log("the views' other requests")
            degen = "/v1/quality/degenerate?" + str(httpx.QueryParams(
                {"sparsity_gt": "0.5", "entropy_norm_lt": "0.5", "entropy_norm_gt": "1.0", "limit": "100", "offset": "0"}))
            other = {"overview/stats": "/v1/stats", "explorer/fields": "/v1/fields", "degenerate/list": degen,
                     "models/list": "/v1/models?limit=1000", "model/model": f"/v1/models/{model_id}",
                     "model/layers": f"/v1/models/{model_id}/layers", "model/similar": f"/v1/models/{model_id}/similar?k=5",
                     "layer/layer": f"/v1/layers/{layer_id}", "layer/filters_json": f"/v1/layers/{layer_id}/filters?limit=100"}
            out["requests"] = {name: {"url": url, **first_and_repeats(c, "GET", url)} for name, url in other.items()}
        out["server_peak_rss"] = vm_hwm(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)

    log("full pages on a fresh service")
    server, base = start_service(db)
    try:
        home = ([("GET", "/v1/stats", None)], [figures["overview/kl_combined"]])
        ev = explorer_view(*views["default"])
        explorer = ([("GET", "/v1/stats", None), ("GET", "/v1/fields", None), ("POST", "/v1/divergence", ev["divergence_body"])],
                    list(ev["figures"].values()))
        pages = {}
        for name, (api, figs) in (("overview", home), ("explorer", explorer)):
            first = asyncio.run(page_load(base, api, figs))
            again = asyncio.run(page_load(base, api, figs))
            pages[name] = {"first_ms": first["total_ms"], "repeat_ms": again["total_ms"], "first_requests_ms": first["requests_ms"]}
            log(f"  {name}: {first['total_ms']:.0f} ms, repeated {again['total_ms']:.0f} ms")
        out["pages"] = pages
        out["pages_server_peak_rss"] = vm_hwm(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return out


def basis_version(db: Path) -> int:
    with duckdb.connect(str(db / "catalog.duckdb"), read_only=True) as con:
        return con.execute("SELECT basis_version FROM _versions ORDER BY version DESC LIMIT 1").fetchone()[0]


def exactness(db: Path) -> dict:
    """The stored histograms' answers against the exact scan with the same basis, and their bytes."""
    from cnnfilterdb.analysis import Analysis
    from cnnfilterdb.store import FilterStore

    log("exactness: stored histograms against the scan")
    out: dict = {}
    with FilterStore(db).connect() as con:
        out["stored_histogram_bytes"] = int(con.execute(
            "SELECT sum(bytes) FROM _histograms WHERE basis_version = (SELECT basis_version FROM _versions "
            "ORDER BY version DESC LIMIT 1)").fetchone()[0])
        task = con.execute("SELECT task FROM models GROUP BY task ORDER BY sum(n_filters) DESC LIMIT 1").fetchone()[0]
        fast, slow = Analysis(con, db), Analysis(con, db, use_stored=False)
        d2 = {"bins": FIGURE_DEFAULTS["density2d"]["bins"], "range": list(FIGURE_DEFAULTS["density2d"]["range"])}
        cases = {"divergence(task)": lambda a: a.divergence("task"),
                 f"kde(depth_bin, task={task})": lambda a: a.kde("depth_bin", {"task": task}),
                 "density2d(figure)": lambda a: a.density2d(None, **d2)}
        for name, run in cases.items():
            t = time.perf_counter()
            a = run(fast)
            t_fast = time.perf_counter() - t
            t = time.perf_counter()
            b = run(slow)
            t_slow = time.perf_counter() - t
            drop = lambda d: {k: v for k, v in d.items() if k not in ("method", "elapsed_ms")}  # noqa: E731
            out[name] = {"equal": drop(a) == drop(b), "method": a["method"], "stored_s": round(t_fast, 3),
                         "scan_s": round(t_slow, 2), "n_outside": a.get("n_outside")}
            log(f"  {name}: equal {out[name]['equal']} ({a['method']} {t_fast:.2f} s, scan {t_slow:.1f} s)")
    return out


# ---- 6. the projection ---------------------------------------------------------------------------
def project(res: dict, n: int) -> dict:
    """1.4e9 filters from this run: affine in N, what passes over every filter. A command: the
    fixed cost of any command on this store (`cnnfilterdb info`: start and catalog) plus the rest
    times 1.4e9 / N (ingest, verify, refit; a small commit only if it refitted: one that keeps the
    basis reads its own filters, as measured). A figure's first request: its drawing plus its
    analysis (the JSON request's time) times 1.4e9 / N unless that analysis answered from stored
    sums (method layer_histograms, unit_histograms, layer_moments) or is not a pass over filters
    (the layers' quality, one layer's filters). Repeated requests (the figure cache) as measured."""
    f = REAL_N / n
    base = res["cli_baseline"]["seconds"]
    cmd = lambda s: round(base + max(s - base, 0.0) * f, 1)  # noqa: E731
    p = {"factor": round(f, 3), "rule": project.__doc__.split("\n\n")[0].replace("\n    ", " "),
         "dataset_bytes": int(res["generate"]["bytes"] * f), "store_bytes": int(res["ingest"]["store_bytes"] * f),
         "generate_s": round(res["generate"]["seconds"] * f, 1), "ingest_s": cmd(res["ingest"]["seconds"]),
         "verify_s": cmd(res["verify"]["seconds"]),
         "small_commits_s": {k: v["seconds"] if v["basis_version"] == res["small_commits"]["label"]["basis_version"]
                             else cmd(v["seconds"]) for k, v in res["small_commits"].items()},
         "refit_s": cmd(res["refit"]["seconds"]), "stored_histogram_bytes": res["exactness"]["stored_histogram_bytes"]}
    analyses = res["service"]["analyses"]
    figs = {}
    for name, fig in res["service"]["figures"].items():
        view, figure = name.split("/")
        a = analyses.get(f"{view}/{fig['analysis']}") if fig.get("analysis") else None
        methods = fig.get("method", [])
        methods = methods if isinstance(methods, list) else [methods]
        scans = a is not None and any(m not in ("layer_histograms", "unit_histograms", "layer_moments")
                                      for m in methods or [None])
        first = fig["first_ms"] + (f - 1) * a["first_ms"] if scans else fig["first_ms"]
        figs[name] = {"first_ms": round(first, 1), "repeat_median_ms": fig["repeat_median_ms"],
                      "projected": f"drawing + analysis x {f:.3g} (method {'/'.join(map(str, methods or ['not stated']))})"
                      if scans else "as measured"}
    p["figures"] = figs
    return p


# ---- main ----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=6e8, help="filters in the generated dataset.h5 (default 6e8)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the file and the store go (default: the system's temp)")
    ap.add_argument("--keep", action="store_true", help="keep the file and the store (their directory is printed)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = int(args.n)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cnnfilterdb-scale-", dir=args.workdir))
    need = int(2.2 * BYTES_PER_FILTER * n)
    free = shutil.disk_usage(work).free
    if free < need:
        shutil.rmtree(work)
        raise SystemExit(f"{work.parent} has {free / 1e9:.1f} GB free; N = {n:,} needs about {need / 1e9:.1f} GB")
    res: dict = {"n_filters": n, "models": MODELS, "layers": LAYERS, "seed": args.seed, "workdir": str(work),
                 "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "free_bytes_before": free}}
    try:
        src, db = work / "dataset.h5", work / "db"
        log(f"writing {n:,} filters to {src}")
        rss_before = peak_rss()
        t = time.perf_counter()
        gen = write_scale_h5(src, n, seed=args.seed)
        secs = time.perf_counter() - t
        res["generate"] = {"seconds": round(secs, 1), "bytes": src.stat().st_size, "filters_per_s": round(n / secs),
                           "peak_rss": peak_rss(), "peak_rss_before": rss_before, "largest_layer": int(gen["sizes"].max())}
        log(f"  {secs:.1f} s, {src.stat().st_size / 2**30:.2f} GiB")

        log("cnnfilterdb ingest")
        r = cli("ingest", "--db", str(db), str(src))
        res["ingest"] = {"seconds": round(r["seconds"], 1), "filters_per_s": round(n / r["seconds"]), "peak_rss": r["rss"],
                         "store_bytes": tree_bytes(db)}
        log(f"  {r['seconds']:.1f} s, peak RSS {r['rss'] / 2**20:.0f} MiB")
        r = cli("info", "--db", str(db))
        res["cli_baseline"] = {"command": "cnnfilterdb info", "seconds": round(r["seconds"], 2), "peak_rss": r["rss"]}
        log("cnnfilterdb verify")
        r = cli("verify", "--db", str(db))
        res["verify"] = {"seconds": round(r["seconds"], 1), "filters_per_s": round(n / r["seconds"]), "peak_rss": r["rss"]}

        log("small commits")
        first = gen["models"][0]
        other_task = next(t for t in TASKS if t != first["task"])
        small = "bench-scale-onnx"
        commits = {"ingest_onnx": ("ingest", "--db", str(db), "--model", small, "--task", "Classification", str(SMALL_MODEL)),
                   "label": ("label", "--db", str(db), "--task", other_task, first["model"]),
                   "remove": ("remove", "--db", str(db), small),
                   # put back, kept out of the basis: the refit below has a model to fit
                   "ingest_onnx_again": ("ingest", "--db", str(db), "--model", small + "-2", "--task",
                                         "Classification", str(SMALL_MODEL))}
        res["small_commits"] = {}
        for name, argv in commits.items():
            r = cli(*argv)
            res["small_commits"][name] = {"seconds": round(r["seconds"], 2), "peak_rss": r["rss"],
                                          "basis_version": basis_version(db)}
            log(f"  {name}: {r['seconds']:.2f} s (basis {basis_version(db)})")
        res["small_commits"]["ingest_onnx"]["file"] = str(SMALL_MODEL.relative_to(REPO))
        res["small_commits"]["ingest_onnx"]["file_bytes"] = SMALL_MODEL.stat().st_size
        res["small_commits"]["label"]["model"] = first["model"]

        res["exactness"] = exactness(db)
        res["service"] = measure_service(db)
        log("cnnfilterdb refit")
        r = cli("refit", "--db", str(db))
        res["refit"] = {"seconds": round(r["seconds"], 1), "peak_rss": r["rss"], "basis_version": basis_version(db)}
        log(f"  {r['seconds']:.1f} s")
        res["disk"] = {"dataset_bytes": src.stat().st_size, "store_bytes": tree_bytes(db), "workdir_bytes": tree_bytes(work)}
        res["projection_1.4e9"] = project(res, n)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
