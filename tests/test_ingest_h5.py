"""dataset.h5 -> store: the store reproduces the file exactly; quality and basis match a reference."""
from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pandas as pd
import pytest

import cnnfilterdb.ingest.h5 as h5mod
from cnnfilterdb.ingest import ingest_paths
from cnnfilterdb.ingest.progress import Progress
from cnnfilterdb.ingest.sample import write_sample_h5

from . import reference
from .helpers import open_catalog


def _ingest(src, db, block_rows=None, monkeypatch=None):
    if block_rows is not None:
        monkeypatch.setattr(h5mod, "BLOCK_ROWS", block_rows)
    return ingest_paths([src], db, Progress(enabled=False))


def _file_filters(src) -> np.ndarray:
    with h5py.File(src, "r") as f:
        name = "filters" if "filters" in f else "filter"
        return np.asarray(f[name][...], dtype=np.float32).reshape(-1, 9)


def _store_filters(db) -> tuple[np.ndarray, np.ndarray]:
    with open_catalog(db) as con:
        ids = con.execute("SELECT filter_id FROM filters ORDER BY filter_id").fetchnumpy()["filter_id"]
        W = con.execute("SELECT w FROM filters ORDER BY filter_id").fetchnumpy()["w"]
    return ids, np.array([np.asarray(w, dtype=np.float32) for w in W])


def expected_depth_bin(x: float) -> str:
    edges = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    for k, e in enumerate(edges):
        if x <= e:
            return "[0.0, 0.1]" if k == 0 else f"({edges[k - 1]}, {e}]"
    return "(0.9, 1.0]"


@pytest.mark.parametrize("block_rows", [None, 1000])  # 1000: many layers span block boundaries
def test_store_reproduces_file_v1(sample_v1, tmp_path, monkeypatch, block_rows):
    db = tmp_path / "db"
    result = _ingest(sample_v1, db, block_rows, monkeypatch)
    meta = pd.read_hdf(sample_v1, "meta").reset_index()
    assert result["models_added"] == meta["model_id"].nunique()

    # Filters: bit-identical, ids as in the file.
    X = _file_filters(sample_v1)
    ids, W = _store_filters(db)
    np.testing.assert_array_equal(ids, np.arange(len(X)))
    assert np.array_equal(W.view(np.uint32), X.view(np.uint32))

    con = open_catalog(db)
    # Layers: one per /meta row, with its range, count, depth and bin.
    layers = con.execute("SELECT * FROM layers ORDER BY filter_id_first").df()
    assert len(layers) == len(meta)
    for (_, row), (_, layer) in zip(meta.sort_values("filter_ids", key=lambda s: s.str.split(":").str[0].astype(int)).iterrows(),
                                    layers.iterrows()):
        first, last = map(int, row["filter_ids"].split(":"))
        assert (layer.filter_id_first, layer.filter_id_last, layer.n_filters) == (first, last, last - first + 1)
        assert layer.model_id == row["model_id"]
        assert layer.conv_depth == row["conv_depth"]
        assert layer.conv_depth_norm == row["conv_depth_norm"]
        assert layer.depth_bin == expected_depth_bin(row["conv_depth_norm"])
        assert pd.isna(layer.in_channels) and pd.isna(layer.orthogonality)
    # Every layer's filters carry its ids.
    bad = con.execute("""SELECT count(*) FROM filters f JOIN layers l ON f.filter_id BETWEEN l.filter_id_first AND l.filter_id_last
                         WHERE f.layer_id <> l.layer_id OR f.model_id <> l.model_id""").fetchone()[0]
    assert bad == 0

    # Models: every metadata column.
    cur = con.execute("SELECT * FROM models")
    cols = [d[0] for d in cur.description]
    models = {r["model_id"]: r for r in (dict(zip(cols, row)) for row in cur.fetchall())}
    firsts = meta.drop_duplicates("model_id")
    assert len(models) == len(firsts)
    kernel_cols = [c for c in meta.columns if re.fullmatch(r"\(\d+, \d+\) filters", c)]
    op_cols = ["Conv", "Relu", "Add", "BatchNormalization", "MaxPool", "Gemm", "Concat"]
    for _, row in firsts.iterrows():
        m = models[row["model_id"]]
        assert m["model"] == row["model"]
        assert m["name"] == row["Name"]
        assert m["task_raw"] == row["Task"]
        assert m["task"] == ("Segmentation" if "Segmentation" in row["Task"] else row["Task"])
        assert m["visual_category"] == row["Visual Category"]
        assert m["training_dataset"] == row["Training-Dataset"]
        assert (m["pretraining_dataset"] is None) == pd.isna(row["Pretraining-Dataset"])
        if not pd.isna(row["Pretraining-Dataset"]):
            assert m["pretraining_dataset"] == row["Pretraining-Dataset"]
        for col, key in [("producer", "producer"), ("Paper", "paper"), ("Accessible", "accessible"),
                         ("Dataset URL", "dataset_url")]:
            assert m[key] == row[col]
        assert m["op_set"] == row["op_set"] and m["depth"] == row["depth"]
        assert m["total_filters"] == row["total_filters"]
        assert m["filter_share_3x3"] == pytest.approx(row["3x3_filter_share"], rel=1e-15)
        assert m["kernel_counts"] == {c: row[c] for c in kernel_cols}
        assert m["op_counts"] == {c: row[c] for c in op_cols}
        assert json.loads(m["extra"]) == {"comment": row["comment"]}
        n_model = meta[meta.model_id == row["model_id"]]
        assert m["n_layers"] == len(n_model)
        assert m["n_filters"] == sum(int(b) - int(a) + 1 for a, b in n_model["filter_ids"].str.split(":"))
        assert m["source"].startswith("SAMPLE") and str(sample_v1) in m["source"]
        assert m["sha256"] is None
    # The sample marks itself; segmentation labels were folded.
    assert con.execute("SELECT count(*) FROM models WHERE task_raw <> task").fetchone()[0] > 0


def test_v01_layout(sample_v01, tmp_path):
    """v0.1.0: /filter, (N, 9), 'Datatype' and 'formula' map to visual_category and 'fractals'."""
    db = tmp_path / "db"
    _ingest(sample_v01, db)
    meta = pd.read_hdf(sample_v01, "meta").reset_index().drop_duplicates("model_id")
    assert "Datatype" in meta.columns and "Visual Category" not in meta.columns
    with open_catalog(db) as con:
        got = dict(con.execute("SELECT model_id, visual_category FROM models").fetchall())
    want = {r.model_id: ("fractals" if r.Datatype == "formula" else r.Datatype) for r in meta.itertuples()}
    assert got == want
    assert "formula" in set(meta.Datatype) or "fractals" not in set(want.values())
    X = _file_filters(sample_v01)
    _, W = _store_filters(db)
    assert np.array_equal(W.view(np.uint32), X.view(np.uint32))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_dtypes(tmp_path, dtype):
    src = write_sample_h5(tmp_path / "d.h5", n_models=3, n_filters=5000, seed=5, dtype=dtype)
    db = tmp_path / "db"
    _ingest(src, db)
    with h5py.File(src) as f:
        X = f["filters"][...].reshape(-1, 9)
    _, W = _store_filters(db)
    assert np.array_equal(W, X.astype(np.float32))


@pytest.mark.parametrize("block_rows", [None, 700])
def test_quality_matches_reference(sample_v1, tmp_path, monkeypatch, block_rows):
    db = tmp_path / "db"
    _ingest(sample_v1, db, block_rows, monkeypatch)
    X = _file_filters(sample_v1)
    with open_catalog(db) as con:
        rows = con.execute("""SELECT filter_id_first, filter_id_last, sparsity, variance_entropy,
                              variance_entropy_norm, variance_entropy_clean FROM layers""").fetchall()
    kinds = set()
    for first, last, *got in rows:
        want = reference.layer_quality(X[first:last + 1])
        for key, g in zip(["sparsity", "variance_entropy", "variance_entropy_norm", "variance_entropy_clean"], got):
            w = want[key]
            assert (g is None) == (w is None), (first, key)
            if w is not None:
                assert abs(g - w) <= 1e-9, (first, key, g, w)
        if want["sparsity"] == 1.0:
            kinds.add("all sparse")
        elif want["sparsity"] > 0.5:
            kinds.add("mostly sparse")
        if want["variance_entropy"] is not None and want["variance_entropy"] < 1e-6:
            kinds.add("rank one")
        if want["variance_entropy_norm"] is not None and want["variance_entropy_norm"] > 1.0:
            kinds.add("random-like")
    # The sample's degenerate layers are there and recognized.
    assert kinds >= {"all sparse", "mostly sparse", "rank one", "random-like"}


def test_basis_matches_sklearn(sample_v1, tmp_path):
    db = tmp_path / "db"
    _ingest(sample_v1, db)
    want = reference.basis(_file_filters(sample_v1))
    with open_catalog(db) as con:
        n, mean, comps, evr, lo, hi, version = con.execute(
            "SELECT n_filters, mean, components, explained_variance_ratio, range_min, range_max, version FROM basis").fetchone()
    assert n == 60_000 and version == 1
    np.testing.assert_allclose(mean, want["mean"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.array(comps), want["components"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(evr, want["explained_variance_ratio"], rtol=1e-9)
    assert lo == pytest.approx(want["range"][0], rel=1e-9)
    assert hi == pytest.approx(want["range"][1], rel=1e-9)


def test_second_ingest_appends_and_refits(sample_v1, sample_v01, tmp_path):
    db = tmp_path / "db"
    _ingest(sample_v1, db)
    _ingest(sample_v01, db)
    X = np.concatenate([_file_filters(sample_v1), _file_filters(sample_v01)])
    ids, W = _store_filters(db)
    np.testing.assert_array_equal(ids, np.arange(len(X)))
    assert np.array_equal(W.view(np.uint32), X.view(np.uint32))
    with open_catalog(db) as con:
        assert con.execute("SELECT count(*), count(DISTINCT model) FROM models").fetchone() == (21, 21)
        n, comps, version, lo = con.execute("SELECT n_filters, components, version, range_min FROM basis").fetchone()
        # Each file's layers keep their own filters.
        assert con.execute("""SELECT count(*) FROM filters f JOIN layers l USING (layer_id)
                              WHERE f.filter_id NOT BETWEEN l.filter_id_first AND l.filter_id_last""").fetchone()[0] == 0
    want = reference.basis(X)
    assert n == len(X) and version == 2
    np.testing.assert_allclose(np.array(comps), want["components"], atol=1e-9)
    assert lo == pytest.approx(want["range"][0], rel=1e-9)


def test_reingest_same_file_is_a_noop(sample_v1, tmp_path):
    from .helpers import store_snapshot

    db = tmp_path / "db"
    _ingest(sample_v1, db)
    before = store_snapshot(db)
    result = _ingest(sample_v1, db)
    assert result["models_added"] == 0
    assert store_snapshot(db) == before


def _rewrite_h5(src, dst, keep=None, task_of=None, drop_a_layer_of=None):
    """A dataset.h5 of ``src``'s models in ``keep`` (file model_ids; default all), their filters
    packed in file order, with the Task of the models in ``task_of`` replaced and the last layer
    of the model ``drop_a_layer_of`` left out; marked as a sample as ``src`` is."""
    import warnings

    meta = pd.read_hdf(src, "meta").reset_index()
    X = _file_filters(src)
    if keep is not None:
        meta = meta[meta.model_id.isin(keep)]
    if drop_a_layer_of is not None:
        meta = meta.drop(meta[meta.model_id == drop_a_layer_of].index[-1])
    for mid, task in (task_of or {}).items():
        meta.loc[meta.model_id == mid, "Task"] = task
    parts, ids, n = [], [], 0
    for r in meta["filter_ids"]:
        a, b = map(int, r.split(":"))
        parts.append(X[a:b + 1])
        ids.append(f"{n}:{n + b - a}")
        n += b - a + 1
    meta = meta.assign(filter_ids=ids).set_index(["model_id", "conv_depth", "conv_depth_norm"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        meta.to_hdf(dst, key="meta", mode="w")
    with h5py.File(src) as f_src, h5py.File(dst, "a") as f:
        f.attrs.update(f_src.attrs)
        f.create_dataset("filters", data=np.concatenate(parts))
    return dst


def _models_filters(db) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """model -> (its filter ids, its filters (n, 9), its layer ids), in filter id order."""
    with open_catalog(db) as con:
        rows = con.execute("SELECT model, filter_id, layer_id, w FROM filters JOIN models USING (model_id) "
                           "ORDER BY filter_id").fetchall()
    out: dict[str, list] = {}
    for model, fid, lid, w in rows:
        out.setdefault(model, []).append((fid, lid, w))
    return {m: (np.array([r[0] for r in v]), np.array([r[2] for r in v], dtype=np.float32), np.array([r[1] for r in v]))
            for m, v in out.items()}


def _file_models_filters(src) -> dict[str, np.ndarray]:
    meta = pd.read_hdf(src, "meta").reset_index()
    X = _file_filters(src)
    out: dict[str, list] = {}
    for model, ids in zip(meta["model"], meta["filter_ids"]):
        a, b = map(int, ids.split(":"))
        out.setdefault(model, []).append(X[a:b + 1])
    return {m: np.concatenate(v) for m, v in out.items()}


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """An older dataset.h5 and a newer one: the same 5 models, then 3 more."""
    d = tmp_path_factory.mktemp("releases")
    old = write_sample_h5(d / "old.h5", n_models=5, n_filters=20_000, seed=7)
    new = write_sample_h5(d / "new.h5", n_models=5, n_filters=20_000, seed=7, extra_models=3)
    return old, new


def test_a_newer_dataset_adds_its_new_models(releases, tmp_path):
    from .helpers import store_snapshot

    old, new = releases
    assert np.array_equal(_file_filters(new)[:20_000], _file_filters(old))  # a superset, as a newer release is
    db = tmp_path / "db"
    first = _ingest(old, db)
    second = _ingest(new, db)
    new_names = list(_file_models_filters(new))
    assert (first["models_added"], second["models_added"]) == (5, 3)
    entry, = second["files"]
    assert entry["status"] == "added 3 model(s); 5 already in the store"
    assert entry["present"] == {"count": 5, "first": new_names[:5]}
    assert entry["added_models"] == {"count": 3, "first": new_names[5:]}
    assert entry["differs"] == {"count": 0, "first": []}
    # The store holds the newer file, nothing twice: the same filters under the same ids.
    X = _file_filters(new)
    assert first["filters_added"] + second["filters_added"] == len(X)
    ids, W = _store_filters(db)
    np.testing.assert_array_equal(ids, np.arange(len(X)))
    assert np.array_equal(W.view(np.uint32), X.view(np.uint32))
    with open_catalog(db) as con:
        assert con.execute("SELECT count(*), count(DISTINCT model) FROM models").fetchone() == (8, 8)
        assert con.execute("SELECT sum(n_filters) FROM models").fetchone()[0] == len(X)
    # Both files again: nothing to do.
    before = store_snapshot(db)
    for src, n in [(new, 8), (old, 5)]:
        again = _ingest(src, db)
        assert again["models_added"] == 0 and again["files"][0]["status"] == "already in the store"
        assert again["files"][0]["present"]["count"] == n
    assert store_snapshot(db) == before


def test_new_models_between_present_ones_get_contiguous_ids(releases, tmp_path):
    """Models present in the store may sit anywhere in the newer file: the new ones' filter and
    layer ids close up over them, each model's contiguous, and its filters are the file's."""
    _, new = releases
    db = tmp_path / "db"
    _ingest(_rewrite_h5(new, tmp_path / "some.h5", keep=[1, 3, 6]), db)
    result = _ingest(new, db)
    assert result["models_added"] == 5 and result["files"][0]["present"]["count"] == 3
    want = _file_models_filters(new)
    got = _models_filters(db)
    assert set(got) == set(want)
    all_ids = np.concatenate([ids for ids, _, _ in got.values()])
    np.testing.assert_array_equal(np.sort(all_ids), np.arange(sum(len(w) for w in want.values())))
    for model, (ids, W, layer_ids) in got.items():
        assert np.array_equal(W.view(np.uint32), want[model].view(np.uint32)), model
        np.testing.assert_array_equal(ids, np.arange(ids[0], ids[0] + len(ids)))
        lids = np.unique(layer_ids)
        np.testing.assert_array_equal(lids, np.arange(lids[0], lids[0] + len(lids)))
    with open_catalog(db) as con:
        # Every layer's range holds exactly its filters; the new models' ids follow the store's
        # (the first file kept its own: 1, 3, 6), without gaps for the models left out.
        assert con.execute("""SELECT count(*) FROM filters f JOIN layers l USING (layer_id)
                              WHERE f.filter_id NOT BETWEEN l.filter_id_first AND l.filter_id_last""").fetchone()[0] == 0
        assert con.execute("SELECT sum(n_filters) FROM layers").fetchone()[0] == len(all_ids)
        assert sorted(i for (i,) in con.execute("SELECT model_id FROM models").fetchall()) == [1, 3, 6, 7, 8, 9, 10, 11]


def test_present_models_that_differ_are_reported_not_changed(releases, tmp_path):
    import io

    old, new = releases
    db = tmp_path / "db"
    names = list(_file_models_filters(new))
    _ingest(_rewrite_h5(old, tmp_path / "edited.h5", task_of={0: "GAN-like"}, drop_a_layer_of=2), db)
    with open_catalog(db) as con:
        stored = con.execute("SELECT model, task, n_filters, n_layers FROM models ORDER BY model_id").fetchall()
    err = io.StringIO()
    result = ingest_paths([new], db, Progress(enabled=False, stream=err))
    entry, = result["files"]
    assert result["models_added"] == 3 and entry["present"]["count"] == 5
    differs = {d["model"]: d["fields"] for d in entry["differs"]["first"]}
    assert entry["differs"]["count"] == 2 and set(differs) == {names[0], names[2]}
    file_task = pd.read_hdf(new, "meta").reset_index().drop_duplicates("model_id")["Task"].tolist()[0]
    assert differs[names[0]]["task_raw"] == {"stored": "GAN-like", "file": file_task}
    assert set(differs[names[2]]) == {"n_filters", "n_layers"}
    assert differs[names[2]]["n_layers"]["file"] == differs[names[2]]["n_layers"]["stored"] + 1
    assert "2 model(s) of the file are in the store with other metadata or filter counts, left as stored" in err.getvalue()
    with open_catalog(db) as con:  # left as they were
        assert con.execute("SELECT model, task, n_filters, n_layers FROM models WHERE model_id < 5 "
                           "ORDER BY model_id").fetchall() == stored
        assert con.execute("SELECT count(*) FROM models").fetchone()[0] == 8
