"""Issue 25: a model checked against the population (SPEC 15; cnnfilterdb/check.py) is exact.

The six real models of tests/data/models are checked (``db.check`` and ``cnnfilterdb check --json``)
against a store of the synthetic sample (200,000 filters, 30 models), then ingested into a copy of
that store: every layer metric the check reports equals the ingested layer's row bit for bit, the
model metrics ``db.model_metrics``' of the ingested model. The divergences (kl_to_population, its
percentile and the 95th percentile that flags a layer unusual, the model's divergence and its
percentile, the k nearest models, the clipped coefficients) are checked against the naive method
of tests/reference.py (``check``): scikit-learn PCA of the population's filters read from the store
(``db.filters``, not its stored histograms), peak scaling, np.clip, np.histogram(density=True),
float32 epsilon, scipy.stats.entropy, depth deciles by pandas.cut; to 1e-9 relative. The store is
byte-identical after every check, nothing is left in the temporary directory, and bad input is one
line and exit code 1.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pandas as pd
import pytest

import cnnfilterdb
from cnnfilterdb.ingest import ingest_paths
from cnnfilterdb.ingest.errors import IngestError
from cnnfilterdb.ingest.progress import Progress
from cnnfilterdb.ingest.sample import write_sample_h5

from . import reference
from .helpers import REPO, cli_main

MODELS = REPO / "tests" / "data" / "models"
FILES = ["ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx", "ch_ppocr_mobile_v2.0_cls_infer.onnx",
         "onet.pt", "pnet.pt", "rnet.pt"]
METRICS = ["sparsity", "variance_entropy", "variance_entropy_norm", "variance_entropy_clean", "orthogonality"]
LAYER_FACTS = ["conv_depth", "conv_depth_norm", "n_filters", "in_channels", "out_channels", "groups"]
MODEL_METRICS = ["n_layers", "n_filters", *METRICS]
REL = 1e-9


# -- helpers ---------------------------------------------------------------------------------------
def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256 of its bytes): equal digests = a byte-identical store."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def same(a, b) -> bool:
    """Equal to the last bit; None and NaN are both 'unknown'."""
    if a is None or (isinstance(a, float) and np.isnan(a)):
        return b is None or (isinstance(b, float) and np.isnan(b)) or b is pd.NA
    return a == b and type(a) is not bool


def close(got, want, rel: float = REL) -> bool:
    if want is None:
        return got is None
    return got is not None and abs(got - want) <= rel * max(abs(want), 1e-300)


def file_weights(path: Path) -> list[np.ndarray]:
    """The 3x3 convolution weights of a model file read with the format's own library (not the
    ingest's reader), as (n, 9) float32 rows, in the file's order."""
    if path.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        m = onnx.load(str(path))
        consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node if n.op_type == "Constant"}
        consts.update({t.name: numpy_helper.to_array(t) for t in m.graph.initializer})
        ws = [consts[n.input[1]] for n in m.graph.node if n.op_type == "Conv"]
    elif path.suffix == ".npz":
        with np.load(path) as z:
            ws = [z[k] for k in z.files]
    else:
        import torch

        ws = [v.numpy() for v in torch.load(path, weights_only=True).values()]
    return [np.asarray(w, np.float32).reshape(-1, 9) for w in ws if w.ndim == 4 and w.shape[2:] == (3, 3)]


def cli_json(*args: str) -> tuple[int, dict | None, str]:
    """``cnnfilterdb check ... --json`` in this process: (exit code, the JSON, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["check", *args, "--json"])
    return code, (json.loads(out.getvalue()) if code == 0 else None), err.getvalue()


def run_cli_in(tmpdir: Path, *args: str) -> subprocess.Popen:
    """``cnnfilterdb check`` in a child process whose TMPDIR is ``tmpdir`` (started, not waited for)."""
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    return subprocess.Popen([sys.executable, "-m", "cnnfilterdb.cli", "check", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def without_timing(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "elapsed_ms"}


def write_npz(path: Path, weights: list[np.ndarray]) -> Path:
    np.savez(path, **{f"conv{i:02d}.weight": w for i, w in enumerate(weights)})
    return path


def population_of(db, where: dict | None = None, as_of: int | None = None, basis_of: int | None = None) -> SimpleNamespace:
    """The population as the reference sees it: every layer's filters read from the store
    (db.filters, one array in filter_id order), its depth decile by pandas.cut, its model; the
    scikit-learn basis of all the filters of version ``basis_of`` (default the version read: the
    global basis is fitted on them all; a commit that keeps the basis keeps the older one's)."""
    layers = db.layers(as_of=as_of)
    W = db.filters(as_of=as_of).reshape(-1, 9)
    offsets = np.concatenate([[0], np.cumsum(layers.n_filters.to_numpy())[:-1]])
    assert len(W) == layers.n_filters.sum()
    ids = np.concatenate([np.arange(a, b + 1) for a, b in zip(layers.filter_id_first, layers.filter_id_last)])
    assert np.all(np.diff(ids) > 0)  # filter_id order: layer l's rows are offsets[l] ...
    b = reference.oriented_basis(W if basis_of is None else db.filters(as_of=basis_of))
    models = db.models(as_of=as_of).set_index("model_id")
    layers = layers.assign(depth_decile=reference.depth_decile(layers.conv_depth, layers.conv_depth_norm),
                           task=layers.model_id.map(models.task))
    keep = np.ones(len(layers), bool)
    if where:
        for k, v in where.items():
            keep &= layers.model_id.map(models[k]).isin(v if isinstance(v, list) else [v]).to_numpy() \
                if k in models.columns else (layers[k] == v).to_numpy()
    pop = [{"filters": W[o:o + n], "decile": d, "model_id": m}
           for o, n, d, m, k in zip(offsets, layers.n_filters, layers.depth_decile, layers.model_id, keep) if k]
    return SimpleNamespace(layers=layers[keep].reset_index(drop=True), population=pop, basis=b, W=W, models=models,
                           reference=reference.check_population(pop, b))


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch(need):
    return need("torch")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store of the synthetic sample: 200,000 filters of 30 models."""
    work = tmp_path_factory.mktemp("check")
    h5 = write_sample_h5(work / "sample.h5", n_models=30, n_filters=200_000, seed=3)
    db = work / "db"
    ingest_paths([h5], db, Progress(enabled=False))
    h5.unlink()
    return SimpleNamespace(work=work, db=db, fdb=cnnfilterdb.open(db))


@pytest.fixture(scope="module")
def ref_population(store):
    return population_of(store.fdb)


@pytest.fixture(scope="module")
def checked(store, torch, tmp_path_factory):
    """The six models checked by db.check, by the CLI in this process, and one (a .pt) by a child
    process with a TMPDIR of its own; the store's files hashed before and after."""
    before = tree_digest(store.db)
    tmp = tmp_path_factory.mktemp("tmpdir")
    children = {f: run_cli_in(tmp, str(MODELS / f), "--db", str(store.db), "--json") for f in ("pnet.pt",)}
    api = {f: store.fdb.check(MODELS / f) for f in FILES}
    cli = {f: cli_json(str(MODELS / f), "--db", str(store.db)) for f in FILES}
    subs = {}
    for f, p in children.items():
        out, err = p.communicate(timeout=120)
        subs[f] = (p.returncode, out, err)
    return SimpleNamespace(api=api, cli=cli, subprocess=subs, before=before, after=tree_digest(store.db), tmp=tmp)


@pytest.fixture(scope="module")
def ingested(store, torch, tmp_path_factory):
    """The six models ingested into a copy of the store (one transaction): their layers and model metrics."""
    copy = tmp_path_factory.mktemp("ingested") / "db"
    shutil.copytree(store.db, copy)
    result = ingest_paths([MODELS / f for f in FILES], copy, Progress(enabled=False), allow_missing=True)
    assert result["models_added"] == 6
    fdb = cnnfilterdb.open(copy)
    models = fdb.models()
    layers = fdb.sql("SELECT * FROM layers_with_models ORDER BY layer_id")
    out = {}
    for f in FILES:
        source = str((MODELS / f).resolve())
        name = models.loc[models.source == source, "model"].item()
        out[f] = SimpleNamespace(model=name, layers=layers[layers.model == name].reset_index(drop=True),
                                 metrics=fdb.model_metrics(where={"model": name}).iloc[0],
                                 row=models[models.model == name].iloc[0])
    return out


# -- per layer and per model: what an ingest stores ------------------------------------------------
@pytest.mark.parametrize("file", FILES)
def test_layer_metrics_equal_an_ingests_bit_for_bit(checked, ingested, file):
    assert_layers_equal(checked.api[file].layers, ingested[file].layers, file)


def assert_layers_equal(got: pd.DataFrame, stored: pd.DataFrame, file: str) -> None:
    assert len(got) == len(stored) > 0
    for i in range(len(got)):
        row, want = got.iloc[i], stored.iloc[i]
        for k in LAYER_FACTS + METRICS:
            g, w = row[k], want[k]
            g = None if g is None or (isinstance(g, float) and np.isnan(g)) else g
            w = None if w is None or w is pd.NA or (isinstance(w, float) and np.isnan(w)) else w
            assert (g is None and w is None) or (g is not None and w is not None and float(g) == float(w)), \
                (file, i, k, g, w)
            if g is not None and k in METRICS:  # the same double, not a float32 of it
                assert np.float64(g).view(np.uint64) == np.float64(w).view(np.uint64)
        assert row.depth_decile == want.depth_decile
    # the deciles are pandas.cut's (SPEC 14)
    assert got.depth_decile.tolist() == reference.depth_decile(got.conv_depth, got.conv_depth_norm)


@pytest.mark.parametrize("file", FILES)
def test_model_metrics_equal_the_ingested_models(checked, ingested, file):
    model, want = checked.api[file].model, ingested[file].metrics
    row = ingested[file].row  # what the file is, as the ingest recorded it
    assert (model["sha256"], model["producer"], model["op_set"], model["kind"]) == \
        (row.sha256, *(None if pd.isna(v) else v for v in (row.producer, row.op_set)),
         "onnx" if file.endswith(".onnx") else "torch")
    assert model["bytes"] == (MODELS / file).stat().st_size and model["name"] == row.model == Path(file).stem
    for k in MODEL_METRICS:
        assert same(model[k], None if pd.isna(want[k]) else (int(want[k]) if k in ("n_layers", "n_filters")
                                                             else float(want[k]))), (file, k, model[k], want[k])


@pytest.mark.parametrize("file", FILES)
def test_the_cli_prints_what_db_check_returns(checked, file):
    code, out, err = checked.cli[file]
    assert code == 0 and err == ""
    assert without_timing(out) == without_timing(json.loads(json.dumps(checked.api[file].to_dict(), default=str)))


def test_child_processes_print_the_same_and_leave_no_temporary_file(checked):
    for f, (code, out, err) in checked.subprocess.items():
        assert code == 0, err
        assert without_timing(json.loads(out)) == without_timing(checked.cli[f][1])
    assert list(checked.tmp.iterdir()) == []


def test_the_store_is_byte_identical_after_the_checks(checked):
    assert checked.after == checked.before and len(checked.before) > 3


# -- the divergences against the naive reference ---------------------------------------------------
def _assert_matches_reference(result, file_layers, pop, population_layers: pd.DataFrame, k: int = 5):
    layers = result.layers
    deciles = reference.depth_decile(layers.conv_depth, layers.conv_depth_norm)
    ref = reference.check(file_layers, deciles, pop.reference, pop.basis, k=k)
    # the store's basis is the reference's (SPEC 6.1), so the range the histograms take
    lo, hi = pop.basis["range"]
    assert close(result.parameters["range"][0], lo) and close(result.parameters["range"][1], hi)
    for i, (r, want) in enumerate(zip(result.to_dict()["layers"], ref["layers"])):
        assert close(r["kl_to_population"], want["kl_to_population"]), (i, r["kl_to_population"], want)
        assert close(r["percentiles"]["kl_to_population"], want["percentile"]), (i, r["percentiles"], want)
        assert close(r["kl_unusual_at"], want["unusual_at"]), (i, r["kl_unusual_at"], want)
        assert r["clipped"] == want["clipped"]
        unusual = want["kl_to_population"] is not None and want["unusual_at"] is not None \
            and want["kl_to_population"] >= want["unusual_at"]
        assert ("unusual" in r["flags"]) == unusual
        t = result.parameters["thresholds"]
        s, e = r["sparsity"], r["variance_entropy_norm"]
        assert r["flags"] == [f for f, on in (
            ("sparse", s is not None and s > t["sparsity_gt"]), ("low_entropy", e is not None and e < t["entropy_norm_lt"]),
            ("random_like", t["entropy_norm_gt"] is not None and e is not None and e > t["entropy_norm_gt"]),
            ("unusual", unusual)) if on]
        # the metrics' percentiles among the population's layers of the decile (stored metrics)
        decile = population_layers[population_layers.depth_decile == r["depth_decile"]]
        assert r["population_layers"] == len(decile)
        for m in METRICS:
            values = [None if pd.isna(v) else float(v) for v in decile[m]]
            assert close(r["percentiles"][m], reference.percentile_among(values, r[m])), (i, m)
    assert result.clipped == ref["clipped"]
    assert result.population["n_outside"] == pop.reference["n_outside"]
    assert result.population["n_layers"] == len(pop.population)
    assert result.population["n_filters"] == sum(len(p["filters"]) for p in pop.population)
    assert close(result.model["divergence"], ref["divergence"])
    assert close(result.model["percentiles"]["divergence"], ref["divergence_percentile"])
    near = result.nearest_models
    assert near.model_id.tolist() == [m for m, _ in ref["nearest"]]
    for got, (_, want) in zip(near.divergence, ref["nearest"]):
        assert close(float(got), want)
    # the population's deciles: quartiles and 95th percentile of the layers' own divergences
    for d in result.population["deciles"]:
        kl = [x for x, e in zip(pop.reference["layer_kl"], pop.reference["deciles"]) if e == d["depth_decile"]]
        q = np.percentile(kl, [25, 50, 75])
        assert d["n_layers"] == len(kl)
        assert all(close(d[k], float(v)) for k, v in zip(("kl_q1", "kl_median", "kl_q3"), q))
        assert close(d["kl_unusual_at"], float(np.percentile(kl, 95)) if len(kl) >= 20 else None)
    return ref


def test_the_stores_basis_is_scikit_learns(store, ref_population):
    b = store.fdb.sql("SELECT * FROM basis").iloc[0]
    ref = ref_population.basis
    np.testing.assert_allclose(np.array(b["mean"], float), ref["mean"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.array(list(b["components"]), float).reshape(9, 9), ref["components"], rtol=0,
                               atol=1e-9)
    np.testing.assert_allclose(np.array(b["explained_variance_ratio"], float), ref["explained_variance_ratio"],
                               rtol=1e-9)


@pytest.mark.parametrize("file", FILES)
def test_divergences_equal_the_naive_reference(checked, ref_population, file):
    result = checked.api[file]
    weights = file_weights(MODELS / file)
    assert [len(w) for w in weights] == result.layers.n_filters.tolist()
    _assert_matches_reference(result, weights, ref_population, ref_population.layers)


@pytest.mark.parametrize("file", FILES)
def test_model_metric_percentiles_among_the_populations_models(store, checked, file):
    result = checked.api[file]
    population = store.fdb.model_metrics()
    assert result.population["n_models"] == len(population)
    for k in MODEL_METRICS:
        values = [None if pd.isna(v) else float(v) for v in population[k]]
        assert close(result.model["percentiles"][k], reference.percentile_among(values, result.model[k])), k


# -- the population: where, as_of, nearest, deciles it lacks -----------------------------------------
def test_where_restricts_the_population(store, torch):
    tasks = store.fdb.models().task.value_counts()
    task = tasks.index[0]
    where = {"task": task}
    pop = population_of(store.fdb, where)
    # the basis stays the store's global one: the reference's basis of every filter
    result = store.fdb.check(MODELS / "onet.pt", where=where)
    assert result.population["n_models"] == tasks.iloc[0] == len({p["model_id"] for p in pop.population})
    assert result.population["n_layers"] == len(pop.population)
    ref = _assert_matches_reference(result, file_weights(MODELS / "onet.pt"), pop, pop.layers)
    assert set(result.nearest_models.task) == {task} and len(ref["nearest"]) == 5
    code, out, err = cli_json(str(MODELS / "onet.pt"), "--db", str(store.db), "--where", json.dumps(where))
    assert code == 0 and without_timing(out) == without_timing(json.loads(json.dumps(result.to_dict(), default=str)))


def test_nearest_models_k_and_metadata(store, checked):
    file = MODELS / FILES[2]
    ten = store.fdb.check(file, k=10).nearest_models
    three = store.fdb.check(file, k=3).nearest_models
    assert len(ten) == 10 and len(three) == 3
    assert three.model_id.tolist() == ten.model_id.tolist()[:3]
    assert three.model_id.tolist() == checked.api[FILES[2]].nearest_models.model_id.tolist()[:3]
    assert ten.divergence.is_monotonic_increasing
    models = store.fdb.models().set_index("model_id")
    for r in ten.to_dict("records"):
        for k in ("model", "name", "task", "visual_category", "training_dataset", "producer"):
            assert r[k] == models.loc[r["model_id"], k], k


def test_as_of_reads_the_older_version(store, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(store.db, db)
    fdb = cnnfilterdb.open(db)
    file = MODELS / FILES[2]
    before = fdb.check(file).to_dict()
    rng = np.random.default_rng(1)
    # filters of +-1: a few reach past the range. Not both of a pair x, -x: once a refit takes those
    # as its range's ends, (lo + hi) / 2, the middle bin edge, is exactly the coefficient of an
    # all-zero filter (-C mean; the sample has all-zero layers), which rounding then puts on either side
    signs = np.array([s for s in itertools.product([-1.0, 1.0], repeat=9) if s[0] > 0], np.float32)
    extra = write_npz(tmp_path / "extra.npz", [signs.reshape(32, 8, 3, 3)] +
                      [rng.normal(0, 1, (8, 4, 3, 3)).astype(np.float32) for _ in range(4)])
    result = ingest_paths([extra], db, Progress(enabled=False), allow_missing=True, refit="never")
    assert result["basis_version"] == 1
    fdb = cnnfilterdb.open(db)
    now = fdb.check(file).to_dict()
    assert now["store_version"] == 2 and now["population"]["n_models"] == 31 and now["basis_version"] == 1
    old = fdb.check(file, as_of=1).to_dict()
    assert without_timing(old) == without_timing(before)
    code, out, _ = cli_json(str(file), "--db", str(db), "--as-of", "1")
    assert code == 0 and without_timing(out) == without_timing(json.loads(json.dumps(before, default=str)))
    # the newer version against the reference: version 1's basis (kept), version 2's layers (the
    # new model's coefficients outside its range dropped from the population's histograms)
    pop = population_of(fdb, basis_of=1)
    assert pop.reference["n_outside"] > 0
    _assert_matches_reference(fdb.check(file), file_weights(file), pop, pop.layers)
    # a third version refits the basis: as_of 1 and 2 still read theirs (basis 1, its histograms)
    more = write_npz(tmp_path / "more.npz", [rng.normal(0, 1, (4, 4, 3, 3)).astype(np.float32) for _ in range(3)])
    refitted = ingest_paths([more], db, Progress(enabled=False), allow_missing=True, refit="always")
    assert refitted["refitted"] and refitted["basis_version"] != 1
    fdb = cnnfilterdb.open(db)
    assert without_timing(fdb.check(file, as_of=1).to_dict()) == without_timing(before)
    assert without_timing(fdb.check(file, as_of=2).to_dict()) == without_timing(now)
    latest = fdb.check(file)
    assert latest.basis_version == refitted["basis_version"] and latest.store_version == 3
    pop = population_of(fdb)
    assert pop.reference["n_outside"] == 0
    _assert_matches_reference(latest, file_weights(file), pop, pop.layers)


def test_layers_in_a_decile_the_population_lacks(store, ref_population):
    layers = ref_population.layers
    # the sample model with the fewest deciles is the population
    counts = layers.groupby("model_id").depth_decile.nunique()
    model_id = int(counts.idxmin())
    model = ref_population.models.loc[model_id, "model"]
    has = set(layers.depth_decile[layers.model_id == model_id])
    file = MODELS / "ch_PP-OCRv4_det_infer.onnx"
    result = store.fdb.check(file, where={"model": model})
    rows = result.to_dict()["layers"]  # None where unknown (the DataFrame's NaN)
    missing = [r for r in rows if r["depth_decile"] not in has]
    present = [r for r in rows if r["depth_decile"] in has]
    assert missing and present
    for r in missing:
        assert r["kl_to_population"] is None and r["kl_unusual_at"] is None and r["population_layers"] == 0
        assert all(v is None for v in r["percentiles"].values()) and "unusual" not in r["flags"]
    pop = population_of(store.fdb, {"model": model})
    _assert_matches_reference(result, file_weights(file), pop, pop.layers)
    assert result.nearest_models.model_id.tolist() == [model_id]
    code, out, err = cli_json(str(file), "--db", str(store.db), "--where", json.dumps({"model": model}))
    assert code == 0, err
    assert [r["kl_to_population"] for r in out["layers"]] == [r["kl_to_population"] for r in rows]
    assert any(r["kl_to_population"] is None for r in out["layers"])  # null in the JSON


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """A store of very similar filters (one smooth kernel, anisotropic noise: well separated
    components), so a real model's coefficients reach far beyond its range."""
    work = tmp_path_factory.mktemp("narrow")
    rng = np.random.default_rng(5)
    g = np.array([1, 2, 1, 2, 4, 2, 1, 2, 1], np.float64) / 4
    spread = 0.02 * np.linspace(1.0, 3.0, 9)
    weights = []
    for _ in range(6):
        n = 16 * 8
        W = (g * rng.uniform(0.5, 1.5, (n, 1)) + rng.standard_normal((n, 9)) * spread).astype(np.float32)
        weights.append(W.reshape(16, 8, 3, 3))
    npz = write_npz(work / "narrow.npz", weights)
    db = work / "db"
    ingest_paths([npz], db, Progress(enabled=False), allow_missing=True)
    return SimpleNamespace(db=db, fdb=cnnfilterdb.open(db))


def test_clipped_coefficients_are_counted_in_the_edge_bins(narrow, tmp_path):
    rng = np.random.default_rng(9)
    spike = np.zeros(9, np.float32)
    spike[0] = 1
    sparse = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    sparse[1:] *= np.float32(1e-4)
    odd = [np.tile(spike, (12, 1)).reshape(4, 3, 3, 3),  # far from a smooth kernel, one direction: no entropy
           (rng.standard_normal((6, 2, 3, 3)) * np.float32(1e3)).astype(np.float32),
           np.zeros((3, 2, 3, 3), np.float32),  # all zero: sparse, entropies 0 or null
           rng.standard_normal((1, 1, 3, 3)).astype(np.float32),  # one filter: no entropy, no orthogonality
           rng.standard_normal((1, 4, 3, 3)).astype(np.float32),  # one output channel
           sparse]  # sparse: flagged
    file = write_npz(tmp_path / "odd.npz", odd)
    before = tree_digest(narrow.db)
    result = narrow.fdb.check(file)
    pop = population_of(narrow.fdb)
    ref = _assert_matches_reference(result, file_weights(file), pop, pop.layers, k=1)
    assert ref["clipped"] > 0 and result.clipped == ref["clipped"] == sum(result.layers.clipped)
    assert "sparse" in result.layers["flags"].iloc[-1] and "sparse" in result.layers["flags"].iloc[2]  # not .flags: pandas'
    assert tree_digest(narrow.db) == before
    # the degenerate layers' metrics (nulls among them) are an ingest's, bit for bit
    copy = tmp_path / "db"
    shutil.copytree(narrow.db, copy)
    ingest_paths([file], copy, Progress(enabled=False), allow_missing=True)
    fdb = cnnfilterdb.open(copy)
    stored = fdb.sql("SELECT * FROM layers_with_models WHERE model = 'odd' ORDER BY layer_id")
    assert_layers_equal(result.layers, stored, "odd.npz")
    assert stored.variance_entropy.isna().any() and stored.orthogonality.isna().any()
    want = fdb.model_metrics(where={"model": "odd"}).iloc[0]
    for k in MODEL_METRICS:
        assert same(result.model[k], None if pd.isna(want[k]) else want[k].item()), k


# -- bad input --------------------------------------------------------------------------------------
def _zip_bomb(path: Path, gib: int = 2) -> Path:
    """A .pt-shaped zip (data.pkl and one member) whose member unpacks to ``gib`` GiB of zeros,
    honestly recorded, compressed to a few MB: raw deflate of each 16 MiB chunk of zeros after a
    full flush is the same bytes, so it is written once and repeated (zipfile still streams
    every byte through its CRC)."""
    chunk = bytes(1 << 24)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)

    class Repeat:
        def compress(self, data):
            assert len(data) == len(chunk)
            return block

        def flush(self):
            return zlib.compressobj(9, zlib.DEFLATED, -15).flush()

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with mock.patch.object(zipfile, "_get_compressor", lambda *a, **k: Repeat()), \
                z.open(info, "w", force_zip64=True) as f:
            for _ in range(gib * 64):
                f.write(chunk)
    with zipfile.ZipFile(path) as z:
        assert sum(i.file_size for i in z.infolist()) > gib * (1 << 30) > 100 * path.stat().st_size
    return path


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    work = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(2)
    nan = rng.normal(0, 1, (4, 2, 3, 3)).astype(np.float32)
    nan[1, 1, 2, 0] = np.nan
    onnx_bytes = (MODELS / FILES[2]).read_bytes()
    (work / "truncated.onnx").write_bytes(onnx_bytes[:len(onnx_bytes) // 2])
    pt_bytes = (MODELS / "onet.pt").read_bytes()
    (work / "truncated.pt").write_bytes(pt_bytes[:len(pt_bytes) // 2])
    return {
        "not a model": (MODELS / "README.md", "not a model file"),
        "no 3x3": (write_npz(work / "five.npz", [rng.normal(0, 1, (4, 2, 5, 5)).astype(np.float32)]),
                   "no 3x3 convolution"),
        "NaN": (write_npz(work / "nan.npz", [nan]), "NaN or Inf"),
        "truncated": (work / "truncated.onnx", "not a readable ONNX model"),
        "truncated .pt": (work / "truncated.pt", "cannot be loaded"),
        "Inf": (write_npz(work / "inf.npz", [np.where(nan == nan, nan, np.float32(np.inf))]), "NaN or Inf"),
        "zip bomb": (_zip_bomb(work / "bomb.pt"), "would unpack to"),
    }


@pytest.mark.parametrize("case", ["not a model", "no 3x3", "NaN", "Inf", "truncated", "truncated .pt", "zip bomb"])
def test_bad_input_is_one_line_and_leaves_nothing(store, bad_files, case, tmp_path, monkeypatch):
    path, says = bad_files[case]
    before = tree_digest(store.db)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    with pytest.raises(IngestError, match=None) as e:
        store.fdb.check(path)
    assert says in str(e.value) and str(path.name) in str(e.value)
    code, out, err = cli_json(str(path), "--db", str(store.db))
    assert code == 1 and out is None
    assert err.count("\n") == 1 and err.startswith("cnnfilterdb: error: ") and says in err, err
    assert tree_digest(store.db) == before
    assert list(tmp.iterdir()) == []


def test_a_zip_bomb_in_a_child_process(store, bad_files, tmp_path):
    path, says = bad_files["zip bomb"]
    before = tree_digest(store.db)
    p = run_cli_in(tmp_path, str(path), "--db", str(store.db))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and out == "" and err.count("\n") == 1 and says in err, err
    assert tree_digest(store.db) == before and list(tmp_path.iterdir()) == []


def test_an_empty_population_is_a_clear_error(store):
    from cnnfilterdb.selection import EmptySelectionError

    before = tree_digest(store.db)
    with pytest.raises(EmptySelectionError) as e:
        store.fdb.check(MODELS / FILES[2], where={"conv_depth": 10_000})
    assert "no layer" in str(e.value) or "holds no" in str(e.value), str(e.value)
    code, out, err = cli_json(str(MODELS / FILES[2]), "--db", str(store.db), "--where",
                              json.dumps({"conv_depth": 10_000}))
    assert code == 1 and err.count("\n") == 1 and err.startswith("cnnfilterdb: error: "), err
    assert tree_digest(store.db) == before


def test_a_report_inside_the_store_is_refused(store):
    before = tree_digest(store.db)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(["check", str(MODELS / FILES[2]), "--db", str(store.db), "-o", str(store.db / "r.html")])
    assert code == 1 and err.getvalue().count("\n") == 1 and "inside the store" in err.getvalue()
    assert tree_digest(store.db) == before
