"""The analysis engine and its endpoints against the independent, slow reference of the paper's
method (tests/reference.py: scikit-learn PCA, np.histogram(density=True), scipy entropy)."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from cnnfilterdb.analysis import Analysis

from . import reference
from .helpers import cli_main, open_catalog

RTOL = 1e-9


@pytest.fixture(scope="module")
def store(v1_store):
    return v1_store


@pytest.fixture(scope="module")
def client(v1_client):
    return v1_client


@pytest.fixture(scope="module")
def frame(sample_v1) -> pd.DataFrame:
    """One row per layer of the file: its metadata and its filters, read independently of the store."""
    meta = pd.read_hdf(sample_v1, "meta").reset_index().rename(columns={"Visual Category": "visual_category"})
    with h5py.File(sample_v1) as f:
        X = f["filters"][...].reshape(-1, 9).astype(np.float32)
    rows = []
    for r in meta.itertuples():
        a, b = map(int, r.filter_ids.split(":"))
        task = "Segmentation" if "Segmentation" in r.Task else r.Task
        bin_ = next(k for k in range(10) if r.conv_depth_norm <= (k + 1) / 10 or k == 9)
        rows.append({"model_id": r.model_id, "task": task, "visual_category": r.visual_category,
                     "conv_depth": r.conv_depth, "depth_bin": bin_, "X": X[a:b + 1]})
    return pd.DataFrame(rows)


def _groups(frame: pd.DataFrame, key: str) -> tuple[list, list[np.ndarray]]:
    labels = sorted(frame[key].unique(), key=lambda v: (str(type(v)), v))
    return labels, [np.concatenate(list(frame[frame[key] == v]["X"])) for v in labels]


def _all(frame) -> np.ndarray:
    return np.concatenate(list(frame["X"]))


@pytest.mark.parametrize("group_by", ["task", "visual_category", "depth_bin"])
def test_divergence_matches_reference(client, frame, group_by):
    got = client.post("/v1/divergence", json={"group_by": group_by}).json()
    key = group_by
    labels, groups = _groups(frame, key)
    want = reference.divergence(groups, _all(frame))
    assert got["method"] == "layer_histograms"
    assert len(got["labels"]) == len(labels)
    if group_by == "depth_bin":
        assert got["labels"][0] == "[0.0, 0.1]" and got["labels"][-1] == "(0.9, 1.0]"
    else:
        assert got["labels"] == labels
    np.testing.assert_allclose(got["matrix"], want["matrix"], rtol=RTOL, atol=0)
    np.testing.assert_allclose(got["range"], want["range"], rtol=RTOL)
    np.testing.assert_allclose(got["explained_variance_ratio"], want["evr"], rtol=RTOL)
    assert got["n_filters"] == [len(g) for g in groups]
    u = np.array(want["matrix"])[np.triu_indices(len(labels), 1)]
    assert got["drift"]["mean"] == pytest.approx(u.mean(), rel=RTOL)
    assert got["drift"]["median"] == pytest.approx(np.median(u), rel=RTOL)
    assert got["drift"]["max"] == pytest.approx(u.max(), rel=RTOL)


def test_divergence_of_a_selection(client, frame):
    where = {"task": ["Segmentation", "Object Detection", "GAN", "No Such Task"], "conv_depth": {"gte": 2}}
    # A value no model has is a typo until shown otherwise: a 404 naming it.
    r = client.post("/v1/divergence", json={"group_by": "task", "where": where})
    assert r.status_code == 404 and "where.task: 'No Such Task' is not a task of any model" in r.json()["error"]["message"]
    # A value the store holds but this selection does not: listed among empty_groups.
    held = sorted(set(frame.task.dropna()) - set(frame[frame.conv_depth >= 2].task.dropna()))
    where["task"] = where["task"][:3] + held[:1] + ["Segmentation"]
    got = client.post("/v1/divergence", json={"group_by": "task", "where": where}).json()
    sub = frame[frame.task.isin(where["task"]) & (frame.conv_depth >= 2)]
    labels, groups = _groups(sub, "task")
    want = reference.divergence(groups, _all(frame))  # the global basis
    assert got["labels"] == labels
    np.testing.assert_allclose(got["matrix"], want["matrix"], rtol=RTOL, atol=0)
    assert set(got["empty_groups"]) == set(where["task"]) - set(labels)


@pytest.mark.parametrize("params", [
    {"metric": "js"}, {"metric": "hellinger"}, {"metric": "wasserstein"},
    {"weights": "uniform"}, {"bins": 37}, {"basis": "selection", "where": {"task": ["Segmentation", "Classification", "GAN"]}},
    {"basis": "selection", "bins": 20, "metric": "js"},
])
def test_parameters_match_reference(client, frame, params):
    body = {"group_by": "task", **params}
    got = client.post("/v1/divergence", json=body).json()
    sub = frame[frame.task.isin(params["where"]["task"])] if "where" in params else frame
    labels, groups = _groups(sub, "task")
    basis_filters = _all(sub) if params.get("basis") == "selection" else _all(frame)
    want = reference.divergence(groups, basis_filters, params.get("bins", 70), params.get("metric", "kl_sym"),
                                params.get("weights", "explained_variance"))
    assert got["labels"] == labels
    np.testing.assert_allclose(got["matrix"], want["matrix"], rtol=RTOL, atol=1e-15)
    np.testing.assert_allclose(got["range"], want["range"], rtol=RTOL)
    expect_scan = params.get("bins", 70) != 70 or params.get("basis") == "selection"
    assert got["method"] == ("scan" if expect_scan else "layer_histograms")


def test_stored_layer_histograms_equal_a_scan(store):
    """The fast path (per-layer histograms) and the exact scan give identical results."""
    with open_catalog(store) as con:
        # few long runs of consecutive layers per group (task, model_id), many short ones
        # (depth_bin, layer_id), and a selection with holes
        for group_by, where in [("task", None), ("depth_bin", None), ("model_id", None), ("layer_id", None),
                                ("visual_category", {"depth_bin": ["(0.2, 0.3]", "(0.7, 0.8]"]}),
                                ("task", {"conv_depth": {"gte": 3}})]:
            fast = Analysis(con, store).group_histograms(where, group_by)
            slow = Analysis(con, store, use_stored=False).group_histograms(where, group_by)
            assert fast.method == "layer_histograms" and slow.method == "scan"
            np.testing.assert_array_equal(fast.counts, slow.counts)
            assert Analysis(con, store).divergence(group_by, where)["matrix"] == \
                Analysis(con, store, use_stored=False).divergence(group_by, where)["matrix"]  # bit for bit


def test_stored_histograms_equal_numpy(tmp_path, sample_v1, frame, monkeypatch):
    """The segment a refit writes, against numpy on scikit-learn's coefficients: per layer 70 bins
    over the basis range, per unit (model, depth bin) 2048 bins, per model the density figure's
    512 x 512 over [-3.3, 3.3] of (c0, c1) (every unit and model stored here, however small);
    nothing outside the range of the fit."""
    import cnnfilterdb.segments as segments

    monkeypatch.setattr(segments, "FINE_MIN_FILTERS", 0)
    monkeypatch.setattr(segments, "DENSITY_MIN_FILTERS", 0)
    store = tmp_path / "db"
    assert cli_main(["ingest", str(sample_v1), "--db", str(store)]) == 0
    with open_catalog(store) as con:
        (rel,), = con.execute("SELECT path FROM _histograms").fetchall()
        layers = con.execute("SELECT layer_id, model_id, depth_bin, filter_id_first, filter_id_last FROM layers "
                             "ORDER BY layer_id").fetchall()
    seg = np.load(store / rel)
    assert len(seg["unit_models"]) == len({(m, d) for _, m, d, _, _ in layers}) and len(seg["model_ids"]) == 12
    assert seg["layer_ids"].tolist() == [r[0] for r in layers]
    assert seg["layer_counts"].shape == (len(layers), 9, 70) and not seg["outside"].any()
    X = _all(frame)
    assert (seg["layer_counts"].sum(axis=(0, 2)) == len(X)).all()  # every filter, every component
    _, (lo, hi), pca = reference.histograms([X], X, 70)
    C = pca.transform(reference.scale(X))
    for k, (_, _, _, a, b) in enumerate(layers[:40]):
        want = np.array([np.histogram(C[a:b + 1, i], bins=70, range=(lo, hi))[0] for i in range(9)])
        np.testing.assert_array_equal(seg["layer_counts"][k], want)
    for u, (model_id, depth_bin) in enumerate(zip(seg["unit_models"], seg["unit_depth_bins"])):
        rows = np.concatenate([np.arange(a, b + 1) for _, m, d, a, b in layers if (m, d) == (model_id, depth_bin)])
        want = np.array([np.histogram(C[rows, i], bins=2048, range=(lo, hi))[0] for i in range(9)])
        np.testing.assert_array_equal(seg["unit_counts"][u], want)
    for j, model_id in enumerate(seg["model_ids"]):
        rows = np.concatenate([np.arange(a, b + 1) for _, m, _, a, b in layers if m == model_id])
        want, _, _ = np.histogram2d(C[rows, 0], C[rows, 1], bins=512, range=[(-3.3, 3.3), (-3.3, 3.3)])
        np.testing.assert_array_equal(seg["model_density"][j], want)


def test_histograms_endpoint(client, frame):
    got = client.post("/v1/histograms", json={"group_by": "task", "bins": 25}).json()
    labels, groups = _groups(frame, "task")
    want, (lo, hi), _ = reference.histograms(groups, _all(frame), 25)
    assert [g["label"] for g in got["groups"]] == labels
    np.testing.assert_array_equal(np.array([g["counts"] for g in got["groups"]]), want)
    np.testing.assert_allclose(got["edges"], np.linspace(lo, hi, 26), rtol=RTOL)


def test_density2d(client, frame):
    got = client.post("/v1/density2d", json={"components": [0, 2], "bins": 30,
                                             "where": {"depth_bin": ["[0.0, 0.1]", "(0.1, 0.2]"]}}).json()
    sub = frame[frame.depth_bin <= 1]
    S = reference.scale(_all(frame))
    from sklearn.decomposition import PCA

    pca = PCA(9, svd_solver="full").fit(S)
    C = pca.transform(S)
    lo, hi = C.min(), C.max()
    Cs = pca.transform(reference.scale(_all(sub)))
    want, _, _ = np.histogram2d(Cs[:, 0], Cs[:, 2], bins=30, range=[(lo, hi), (lo, hi)])
    np.testing.assert_array_equal(np.array(got["counts"]), want.astype(int))
    assert got["n_filters"] == len(Cs)


def test_pca_of_a_selection(client, frame):
    cats = sorted(set(frame.visual_category.dropna()) & {"natural", "faces", "textures"})
    assert len(cats) >= 2
    got = client.post("/v1/pca", json={"where": {"visual_category": cats}}).json()
    sub = frame[frame.visual_category.isin(cats)]
    from sklearn.decomposition import PCA

    pca = PCA(9, svd_solver="full").fit(reference.scale(_all(sub)))
    assert got["n_filters"] == len(_all(sub))
    np.testing.assert_allclose(np.array(got["components"]).reshape(9, 9), pca.components_, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got["explained_variance_ratio"], pca.explained_variance_ratio_, rtol=RTOL)
    np.testing.assert_allclose(np.array(got["mean"]).ravel(), pca.mean_, rtol=0, atol=1e-12)


def test_an_unknown_value_is_a_404_suggesting_the_nearest(client, frame):
    for where, hint in [({"visual_category": "Natural"}, "did you mean 'natural'?"),
                        ({"task": ["Classification", "clasification"]}, "did you mean 'Classification'?"),
                        ({"depth_bin": "(0.1, 0.2)"}, "did you mean '(0.1, 0.2]'"),
                        ({"task": "zzzz"}, "list the values of task with SELECT DISTINCT task FROM layers_with_models "
                                           "(cnnfilterdb sql, db.sql(), POST /v1/sql) or GET /v1/fields")]:
        for path, body in [("/v1/divergence", {"group_by": "task", "where": where}), ("/v1/pca", {"where": where}),
                           ("/v1/kde", {"where": where})]:
            r = client.post(path, json=body)
            assert r.status_code == 404, (path, where, r.text)
            assert r.json()["error"]["code"] == "empty_selection" and hint in r.json()["error"]["message"], r.text
        q = json.dumps(where)
        for path in ["/v1/quality/degenerate?where=", "/v1/models/0/similar?where=", "/v1/plots/divergence.svg?where="]:
            r = client.get(path + q)
            assert r.status_code == 404 and hint in r.json()["error"]["message"], (path, r.text)


def test_degenerate(client, store):
    got = client.get("/v1/quality/degenerate").json()
    with open_catalog(store) as con:
        want = [r[0] for r in con.execute("""SELECT layer_id FROM layers WHERE sparsity > 0.5 OR variance_entropy_norm < 0.5
                                             OR variance_entropy_norm > 1.0 ORDER BY layer_id""").fetchall()]
    assert [l["layer_id"] for l in got["layers"]] == want and got["total"] == len(want) >= 4
    strict = client.get("/v1/quality/degenerate?sparsity_gt=0.99&entropy_norm_lt=0.01&entropy_norm_gt=100").json()
    assert 1 <= strict["total"] < len(want)
    assert all(l["sparse"] or l["low_entropy"] for l in strict["layers"])


def test_similar_models(client, frame):
    got = client.get("/v1/models/3/similar?k=4").json()
    labels, groups = _groups(frame, "model_id")
    D = reference.divergence(groups, _all(frame))["matrix"]
    i = labels.index(3)
    order = [j for j in np.argsort(D[i], kind="stable") if j != i][:4]
    assert [s["model_id"] for s in got["similar"]] == [labels[j] for j in order]
    np.testing.assert_allclose([s["distance"] for s in got["similar"]], D[i][order], rtol=RTOL)
    assert client.get("/v1/models/9999/similar").status_code == 404


@pytest.mark.parametrize("body, status, words", [
    ({"group_by": "colour"}, 400, "unknown group_by 'colour'; known: ['task', "),
    ({"group_by": "task", "metric": "euclid"}, 400, "'kl_sym'"),
    ({"group_by": "task", "weights": "equal"}, 400, "'uniform'"),
    ({"group_by": "task", "basis": "local"}, 400, "'selection'"),
    ({"group_by": "task", "where": {"colour": "red"}}, 400, "known fields of where"),
    ({"group_by": "task", "where": {"conv_depth": {"between": [1, 2]}}}, 400, "unknown bound 'between'"),
    ({"group_by": "task", "where": {"task": "No Such Task"}}, 404, "is not a task of any model"),
    ({"group_by": "task", "bins": 0}, 422, "bins"),
    ({}, 422, "group_by"),
])
def test_bad_analysis_requests(client, body, status, words):
    r = client.post("/v1/divergence", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]


def test_drift_cli_matches_the_api(store, client, capsys):
    where = {"task": ["Segmentation", "Classification"]}
    assert cli_main(["drift", "--group-by", "visual_category", "--where", json.dumps(where), "--db", str(store), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    api = client.post("/v1/divergence", json={"group_by": "visual_category", "where": where}).json()
    assert cli["labels"] == api["labels"] and cli["matrix"] == api["matrix"]
    assert cli_main(["drift", "--group-by", "depth_bin", "--db", str(store)]) == 0
    out = capsys.readouterr().out
    assert "drift: mean" in out and "[0.0, 0.1]" in out
    # full labels with their model counts, whatever their length (issue 11, point 6)
    assert cli_main(["drift", "--group-by", "model", "--db", str(store)]) == 0
    out = capsys.readouterr().out
    api = client.post("/v1/divergence", json={"group_by": "model"}).json()
    for k, (label, n) in enumerate(zip(api["labels"], api["n_models"])):
        assert f"[{k + 1}] {label} ({n})" in out
    assert cli_main(["drift", "--group-by", "colour", "--db", str(store)]) == 1


def test_scans_across_many_row_groups_and_shards(tmp_path, monkeypatch, sample_v1, store):
    """The same file ingested into small shards (20,000 rows) of small row groups (1,000 rows):
    layers split across row groups and shards, scans remap files as they go; every result must
    equal the one-shard store's, bit for bit."""
    import functools

    from cnnfilterdb.ingest.shards import ShardWriter

    monkeypatch.setattr(ShardWriter, "__init__", functools.partialmethod(ShardWriter.__init__, shard_rows=20_000,
                                                                          row_group_rows=1_000))
    db = tmp_path / "db"
    assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    with open_catalog(db) as small, \
            open_catalog(store) as big:
        assert small.execute("SELECT count(*) FROM _shards").fetchone()[0] == 3
        assert small.execute("SELECT range_min, range_max FROM basis").fetchone() == \
            big.execute("SELECT range_min, range_max FROM basis").fetchone()
        for group_by, where, basis in [("task", None, "global"), ("depth_bin", None, "selection"),
                                       ("model_id", {"conv_depth": {"gte": 2}}, "selection")]:
            a = Analysis(small, db, use_stored=False).group_histograms(where, group_by, 33, basis)
            b = Analysis(big, store, use_stored=False).group_histograms(where, group_by, 33, basis)
            assert (a.lo, a.hi) == (b.lo, b.hi)
            np.testing.assert_array_equal(a.counts, b.counts)
        rel_small = small.execute("SELECT path FROM _histograms").fetchone()[0]
        rel_big = big.execute("SELECT path FROM _histograms").fetchone()[0]
    a, b = np.load(db / rel_small), np.load(store / rel_big)
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name])


def test_query_size_limits(client, monkeypatch):
    """Queries that would build more than the limits allow are a 400 naming the numbers, not a
    service out of memory (limits lowered here to the fixture's scale)."""
    import cnnfilterdb.analysis as analysis

    n_layers = client.get("/v1/stats").json()["layers"]
    monkeypatch.setattr(analysis, "MAX_GROUPS", n_layers - 1)
    r = client.post("/v1/divergence", json={"group_by": "layer_id"})
    assert r.status_code == 400 and f"{n_layers} groups" in r.json()["error"]["message"]
    assert client.post("/v1/divergence", json={"group_by": "layer_id", "where": {"conv_depth": 1}}).status_code == 200
    monkeypatch.setattr(analysis, "MAX_RESPONSE_CELLS", 9 * 70 * n_layers - 1)
    r = client.post("/v1/histograms", json={"group_by": "layer_id"})
    assert r.status_code == 400 and "histogram cells" in r.json()["error"]["message"]
    assert client.post("/v1/histograms", json={"group_by": "layer_id", "bins": 60}).status_code == 200
    monkeypatch.setattr(analysis, "MAX_GROUPS", 10**6)
    monkeypatch.setattr(analysis, "MAX_HISTOGRAM_CELLS", 9 * 70 * n_layers - 1)
    r = client.post("/v1/divergence", json={"group_by": "layer_id"})
    assert r.status_code == 400 and "histogram cells" in r.json()["error"]["message"]
    monkeypatch.setattr(analysis, "MAX_HISTOGRAM_CELLS", 10**9)
    pairs = n_layers * (n_layers - 1) // 2
    monkeypatch.setattr(analysis, "MAX_PAIR_CELLS", pairs * 9 * 70 - 1)
    r = client.post("/v1/divergence", json={"group_by": "layer_id", "metric": "wasserstein"})
    assert r.status_code == 400 and f"{pairs:,} pairs" in r.json()["error"]["message"], r.text
    assert client.post("/v1/divergence", json={"group_by": "layer_id", "bins": 60}).status_code == 200


def test_similar_among_a_selection_with_task_and_category(client, frame, store):
    """where chooses the candidate models; each neighbour names its task and visual category."""
    from urllib.parse import quote

    where = {"task": ["GAN", "Segmentation"]}
    got = client.get(f"/v1/models/3/similar?k=3&where={quote(json.dumps(where))}").json()
    labels, groups = _groups(frame, "model_id")
    D = reference.divergence(groups, _all(frame))["matrix"]
    i = labels.index(3)
    with open_catalog(store) as con:
        meta = {m: (t, v) for m, t, v in con.execute("SELECT model_id, task, visual_category FROM models").fetchall()}
    candidates = [j for j in np.argsort(D[i], kind="stable") if j != i and meta[labels[j]][0] in where["task"]][:3]
    assert [s["model_id"] for s in got["similar"]] == [labels[j] for j in candidates]
    np.testing.assert_allclose([s["distance"] for s in got["similar"]], D[i][candidates], rtol=RTOL)
    assert all((s["task"], s["visual_category"]) == meta[s["model_id"]] for s in got["similar"])
    assert client.get(f"/v1/models/3/similar?where={quote(json.dumps({'model_id': 3}))}").status_code == 404
    r = client.get(f"/v1/models/3/similar?where={quote(json.dumps({'taskk': 'GAN'}))}")
    assert r.status_code == 400 and "taskk" in r.json()["error"]["message"]


def test_degenerate_takes_a_where(client, store):
    from urllib.parse import quote

    everything = client.get("/v1/quality/degenerate").json()["layers"]
    with open_catalog(store) as con:
        task = dict(con.execute("SELECT layer_id, task FROM layers_with_models").fetchall())
    some = task[everything[0]["layer_id"]]
    got = client.get(f"/v1/quality/degenerate?where={quote(json.dumps({'task': some}))}").json()
    assert [l["layer_id"] for l in got["layers"]] == [l["layer_id"] for l in everything if task[l["layer_id"]] == some]
    assert got["total"] == len(got["layers"]) >= 1
