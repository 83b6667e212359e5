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
from cnnfilterdb.stats.quality import orthogonality

from . import reference
from .helpers import REPO, open_catalog


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
    shaped = 0
    for (_, row), (_, layer) in zip(meta.sort_values("filter_ids", key=lambda s: s.str.split(":").str[0].astype(int)).iterrows(),
                                    layers.iterrows()):
        first, last = map(int, row["filter_ids"].split(":"))
        assert (layer.filter_id_first, layer.filter_id_last, layer.n_filters) == (first, last, last - first + 1)
        assert layer.model_id == row["model_id"]
        assert layer.conv_depth == row["conv_depth"]
        assert layer.conv_depth_norm == row["conv_depth_norm"]
        assert layer.depth_bin == expected_depth_bin(row["conv_depth_norm"])
        # Layer shapes where the sample gives them (in per group, groups unknown), with orthogonality.
        assert pd.isna(layer.groups)
        if pd.isna(row["in_channels"]):
            assert pd.isna(row["out_channels"])
            assert pd.isna(layer.in_channels) and pd.isna(layer.out_channels) and pd.isna(layer.orthogonality)
        else:
            k_in, k_out = int(row["in_channels"]), int(row["out_channels"])
            assert (layer.in_channels, layer.out_channels) == (k_in, k_out) and k_in * k_out == layer.n_filters
            want = orthogonality(X[first:last + 1].reshape(k_out, k_in, 3, 3))
            assert layer.orthogonality == want, (first, layer.orthogonality, want)
            shaped += 1
    assert 0 < shaped < len(layers)  # both kinds: a file that mixes rows with and without shapes
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
    # No shape columns (as in the published files): shapes and orthogonality unknown.
    assert "in_channels" not in meta.columns
    with open_catalog(db) as con:
        assert con.execute("SELECT count(in_channels), count(out_channels), count(groups), count(orthogonality), "
                           "count(*) > 0 FROM layers").fetchone() == (0, 0, 0, 0, True)


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


# ---- Layer shapes: in_channels (per group) and out_channels of the authors' later pipeline ----

MODELS = REPO / "tests" / "data" / "models"
QUALITY = ["sparsity", "variance_entropy", "variance_entropy_norm", "variance_entropy_clean", "orthogonality"]


def _write_meta(path, rows: list[dict]) -> None:
    import warnings

    meta = pd.DataFrame(rows).set_index(["model_id", "conv_depth", "conv_depth_norm"])
    with warnings.catch_warnings():  # object columns of mixed types are pickled, as pandas always did
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        meta.to_hdf(path, key="meta", mode="w")


def _shaped_h5(path, layers, columns=("in_channels", "out_channels"), seed=0):
    """A dataset.h5 of random filters: ``layers`` is a list of (model, n_filters, in_channels,
    out_channels), the values written as given (pandas picks the column types), under ``columns``."""
    rng = np.random.default_rng(seed)
    models = list(dict.fromkeys(m for m, *_ in layers))
    rows, n, depth = [], 0, {}
    for model, size, k_in, k_out in layers:
        d = depth[model] = depth.get(model, -1) + 1
        row = {"model_id": models.index(model), "conv_depth": d, "conv_depth_norm": 0.0, "model": model,
               "Task": "Classification", "filter_ids": f"{n}:{n + size - 1}"}
        row.update({col: v for col, v in zip(("in_channels", "out_channels"), (k_in, k_out)) if col in columns})
        rows.append(row)
        n += size
    for r in rows:  # depth norm within each model
        r["conv_depth_norm"] = r["conv_depth"] / max(1, depth[r["model"]])
    _write_meta(path, rows)
    with h5py.File(path, "a") as f:
        f.create_dataset("filters", data=rng.normal(size=(n, 3, 3)).astype(np.float32))
    return path


def _layer_rows(db) -> list[dict]:
    with open_catalog(db) as con:
        cur = con.execute(f"SELECT n_filters, in_channels, out_channels, groups, {', '.join(QUALITY)} FROM layers "
                          "ORDER BY filter_id_first")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


@pytest.mark.parametrize("block_rows", [None, 100])  # 100: layers span blocks (their second pass)
@pytest.mark.parametrize("name", ["ch_PP-OCRv4_det_infer.onnx", "ch_ppocr_mobile_v2.0_cls_infer.onnx"])
def test_shapes_give_the_model_files_orthogonality(name, block_rows, tmp_path, monkeypatch):
    """A real ONNX model, and the dataset.h5 the authors' pipeline writes of it (each 3x3 layer's
    w.reshape(-1, 3, 3), in_channels = w.shape[1], out_channels = w.shape[0]): the same quality
    metrics (orthogonality to the last bit, the others too unless a layer is cut by blocks);
    in_channels per group, groups unknown."""
    from cnnfilterdb.ingest.models import CONV_OPS, read_model

    src = MODELS / name
    m = read_model(src, "onnx")
    convs = [c for c in m.convs if c.op in CONV_OPS and c.weight.shape[2:] == (3, 3)]
    rows, parts, n = [], [], 0
    for c in convs:
        w = c.weight
        rows.append({"model_id": 0, "conv_depth": c.level, "conv_depth_norm": c.level / (m.n_levels - 1),
                     "model": src.stem, "filter_ids": f"{n}:{n + w.shape[0] * w.shape[1] - 1}",
                     "in_channels": w.shape[1], "out_channels": w.shape[0]})
        parts.append(w.reshape(-1, 3, 3))
        n += w.shape[0] * w.shape[1]
    h5 = tmp_path / "model.h5"
    _write_meta(h5, rows)
    with h5py.File(h5, "a") as f:
        f.create_dataset("filters", data=np.concatenate(parts))

    ingest_paths([src], tmp_path / "onnx", Progress(enabled=False),
                 meta={"task": "Text Detection", "visual_category": "documents", "training_dataset": "unknown"})
    _ingest(h5, tmp_path / "h5", block_rows, monkeypatch)
    from_model, from_h5 = _layer_rows(tmp_path / "onnx"), _layer_rows(tmp_path / "h5")
    assert len(from_model) == len(from_h5) == len(convs)
    assert any(r["orthogonality"] is not None for r in from_h5)
    grouped = 0
    for a, b, c in zip(from_model, from_h5, convs):
        for key in QUALITY:
            assert (a[key] is None) == (b[key] is None), (c.name, key)
            if a[key] is None:
                continue
            if key == "orthogonality" or block_rows is None:  # the other metrics of a layer cut by blocks
                assert np.float64(a[key]).view(np.uint64) == np.float64(b[key]).view(np.uint64), \
                    (c.name, key, a[key], b[key])  # merge its pieces' sums in another order: to 1e-12
            else:
                assert b[key] == pytest.approx(a[key], rel=1e-12, abs=1e-15), (c.name, key)
        assert b["in_channels"] == a["in_channels"] // a["groups"] == c.weight.shape[1]
        assert b["out_channels"] == a["out_channels"] and b["groups"] is None
        assert b["n_filters"] == b["out_channels"] * b["in_channels"]
        grouped += a["groups"] > 1
    if name.startswith("ch_ppocr_mobile"):
        assert grouped > 0  # depthwise layers: in_channels 1 per group


def test_shapes_mixed_and_absent(tmp_path):
    """Rows with both values missing (NaN, None) are layers of unknown shape; numeric text counts;
    a file without the columns is as before: no shapes, no orthogonality."""
    src = _shaped_h5(tmp_path / "mixed.h5", [("a", 12, 3, 4), ("a", 10, np.nan, np.nan), ("b", 8, "2", " 4 "),
                                             ("b", 6, None, None), ("b", 1, 1, 1)])
    _ingest(src, tmp_path / "db")
    rows = _layer_rows(tmp_path / "db")
    assert [(r["in_channels"], r["out_channels"], r["groups"]) for r in rows] == \
        [(3, 4, None), (None, None, None), (2, 4, None), (None, None, None), (1, 1, None)]
    X = _file_filters(src)
    assert rows[0]["orthogonality"] == orthogonality(X[:12].reshape(4, 3, 3, 3))
    assert rows[2]["orthogonality"] == orthogonality(X[22:30].reshape(4, 2, 3, 3))
    assert [r["orthogonality"] is None for r in rows] == [False, True, False, True, True]  # one output: none
    with open_catalog(tmp_path / "db") as con:  # per layer, never a model's `extra`
        assert con.execute("SELECT count(extra) FROM models").fetchone()[0] == 0

    plain = _shaped_h5(tmp_path / "plain.h5", [("c", 12, 3, 4), ("c", 9, 3, 3)], columns=())
    _ingest(plain, tmp_path / "db2")
    assert all(r["in_channels"] is None and r["out_channels"] is None and r["orthogonality"] is None
               for r in _layer_rows(tmp_path / "db2"))


@pytest.mark.parametrize("k_in, k_out, message", [
    (3, 5, "model 'b', layer at conv_depth 1 (filter_ids 17:28): 12 filters, but in_channels 3 x out_channels 5 = 15"),
    (4, 4, "12 filters, but in_channels 4 x out_channels 4 = 16"),
    (-3, -4, "in_channels -3 must be at least 1"),
    (0, 12, "in_channels 0 must be at least 1"),
    (12, 0, "out_channels 0 must be at least 1"),
    (2.5, 4.8, "in_channels 2.5 is not a whole number"),
    (np.inf, 4, "in_channels inf is not a whole number"),
    (3, "four", "out_channels 'four' is not a whole number"),
    (3, "nan", "out_channels 'nan' is not a whole number"),
    (True, 12, "in_channels True is a boolean"),
    (3, np.nan, "in_channels is 3 but out_channels is missing"),
    (None, 4, "out_channels is 4 but in_channels is missing"),
    (1e300, 4, "is too large (at most 2147483647)"),
    (2**31, 1, "in_channels 2147483648 is too large"),
    ("9" * 40, 4, "is too large"),
    (3, 2**-40 * 4, "out_channels 3.637978807091713e-12 is not a whole number"),
    ([3], 4, "in_channels [3] is a list, not a whole number"),
])
def test_bad_shapes_are_clear_errors_and_write_nothing(k_in, k_out, message, tmp_path):
    from cnnfilterdb.ingest import IngestError

    from .helpers import store_snapshot

    db = tmp_path / "db"
    _ingest(_shaped_h5(tmp_path / "first.h5", [("first", 9, 3, 3)], seed=1), db)
    before = store_snapshot(db)
    src = _shaped_h5(tmp_path / "bad.h5", [("a", 8, 2, 4), ("b", 9, 3, 3), ("b", 12, k_in, k_out)])
    with pytest.raises(IngestError) as e:
        _ingest(src, db)
    text = str(e.value)
    assert text.startswith(f"{src}: /meta row 2: model 'b', layer at conv_depth 1 (filter_ids 17:28): "), text
    assert message in text, text
    assert "\n" not in text
    assert store_snapshot(db) == before


def test_one_shape_column_alone_is_an_error(tmp_path):
    from cnnfilterdb.ingest import IngestError

    from .helpers import store_snapshot

    db = tmp_path / "db"
    _ingest(_shaped_h5(tmp_path / "first.h5", [("first", 9, 3, 3)], seed=1), db)
    before = store_snapshot(db)
    for column in ("in_channels", "out_channels"):
        src = _shaped_h5(tmp_path / "half.h5", [("a", 12, 3, 4)], columns=(column,))
        other = "out_channels" if column == "in_channels" else "in_channels"
        with pytest.raises(IngestError, match=f"/meta has an {column} column but no {other} column"):
            _ingest(src, db)
    assert store_snapshot(db) == before


def test_layers_too_large_for_orthogonality_are_reported(tmp_path, monkeypatch):
    """A shape beyond ORTHOGONALITY_MAX_OUT output channels (its Gram matrix would not fit in
    memory): the shape is stored, the orthogonality left null and the layer listed in the result."""
    monkeypatch.setattr(h5mod, "ORTHOGONALITY_MAX_OUT", 5)
    src = _shaped_h5(tmp_path / "wide.h5", [("a", 12, 3, 4), ("a", 12, 2, 6)])
    result = _ingest(src, tmp_path / "db")
    rows = _layer_rows(tmp_path / "db")
    assert [(r["in_channels"], r["out_channels"], r["orthogonality"] is None) for r in rows] == \
        [(3, 4, False), (2, 6, True)]
    skipped = result["files"][0]["orthogonality_skipped"]
    assert skipped["count"] == 1 and skipped["first"] == [
        {"model": "a", "filter_ids": "12:23", "in_channels": 2, "out_channels": 6}]
    assert "more than 5 output channels" in skipped["reason"]
    assert "orthogonality_skipped" not in _ingest(_shaped_h5(tmp_path / "ok.h5", [("b", 4, 2, 2)]),
                                                  tmp_path / "db")["files"][0]


def test_sample_shapes_are_deterministic_and_plausible(tmp_path):
    from cnnfilterdb.ingest.sample import layer_shape

    assert layer_shape(12) == (4, 3) and layer_shape(64) == (8, 8) and layer_shape(4608) == (72, 64)
    assert layer_shape(13) is None and layer_shape(1) is None and layer_shape(2 * 97) is None  # prime; too skewed
    a = write_sample_h5(tmp_path / "a.h5", n_models=3, n_filters=5000, seed=9)
    b = write_sample_h5(tmp_path / "b.h5", n_models=3, n_filters=5000, seed=9, shapes=False)
    meta_a, meta_b = pd.read_hdf(a, "meta"), pd.read_hdf(b, "meta")
    pd.testing.assert_frame_equal(meta_a.drop(columns=["in_channels", "out_channels"]), meta_b)
    assert np.array_equal(_file_filters(a), _file_filters(b))  # the shapes draw nothing from the streams
    pd.testing.assert_frame_equal(meta_a, pd.read_hdf(write_sample_h5(tmp_path / "c.h5", n_models=3, n_filters=5000,
                                                                      seed=9), "meta"))


def test_an_infinite_count_is_a_clear_error(tmp_path):
    """A model column that must be an integer holding Inf: the error names it (int(inf) overflows)."""
    from cnnfilterdb.ingest import IngestError

    src = tmp_path / "inf.h5"
    _write_meta(src, [{"model_id": 0, "conv_depth": 0, "conv_depth_norm": 0.0, "model": "a", "filter_ids": "0:3",
                       "total_filters": np.inf}])
    with h5py.File(src, "a") as f:
        f.create_dataset("filters", data=np.ones((4, 3, 3), np.float32))
    with pytest.raises(IngestError, match="model 'a': column 'total_filters' value inf is not a int"):
        _ingest(src, tmp_path / "db")
