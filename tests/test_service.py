"""The HTTP service against a fixture store: every endpoint's values checked against the store."""
from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cnnfilterdb.service.main import create_app
from cnnfilterdb.service.settings import Settings

from .helpers import cli_main


@pytest.fixture(scope="module")
def store(v1_store):
    return v1_store


@pytest.fixture(scope="module")
def client(v1_client):
    return v1_client


def _dicts(con, q, params=()):
    cur = con.execute(q, list(params))
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def test_health_and_stats(client, con):
    assert client.get("/health").json() == {"status": "ok", "basis_version": 1}
    s = client.get("/v1/stats").json()
    want = con.execute("SELECT (SELECT count(*) FROM models), (SELECT count(*) FROM layers), (SELECT count(*) FROM filters)").fetchone()
    assert (s["models"], s["layers"], s["filters"]) == want
    evr = con.execute("SELECT explained_variance_ratio FROM basis").fetchone()[0]
    assert s["basis"]["explained_variance_ratio"] == pytest.approx(evr, rel=0, abs=0)
    assert s["limits"]["sql_timeout_s"] == 5.0 and s["limits"]["sql_default_rows"] == 1000


def test_fields(client, con):
    fields = {f["name"]: f for f in client.get("/v1/fields").json()["fields"]}
    assert set(fields) >= {"task", "visual_category", "training_dataset", "pretraining_dataset", "name", "model",
                           "model_id", "producer", "conv_depth", "depth_bin", "layer_id"}
    want = {r["task"]: r for r in _dicts(con, """SELECT task, count(DISTINCT model_id) AS models, count(*) AS layers,
                                                 sum(n_filters) AS filters FROM layers_with_models GROUP BY task""")}
    got = {v["value"]: v for v in fields["task"]["values"]}
    assert set(got) == set(want)
    for task, v in got.items():
        assert (v["models"], v["layers"], v["filters"]) == (want[task]["models"], want[task]["layers"], want[task]["filters"])
    bins = [v["value"] for v in fields["depth_bin"]["values"]]
    assert bins[0] == "[0.0, 0.1]" and bins == sorted(bins, key=lambda b: float(b[1:4]))  # natural order
    assert fields["layer_id"]["n_distinct"] == con.execute("SELECT count(*) FROM layers").fetchone()[0]


def test_models_filter_and_paging(client, con):
    want = [r[0] for r in con.execute("SELECT model_id FROM models WHERE task IN ('Segmentation', 'GAN') ORDER BY model_id").fetchall()]
    assert len(want) >= 3
    seen, url = [], "/v1/models?task=Segmentation&task=GAN&limit=2"
    while url:
        page = client.get(url).json()
        assert page["total"] == len(want) and len(page["items"]) <= 2
        seen += [m["model_id"] for m in page["items"]]
        url = page["next"]
    assert seen == want
    all_models = client.get("/v1/models?limit=1000").json()
    assert all_models["total"] == 12 and all_models["next"] is None
    capped = client.get("/v1/models?limit=100000").json()
    assert capped["limit"] == 1000 and len(capped["items"]) == 12


def test_models_filter_value_no_model_has_suggests_the_nearest(client, con):
    """A label value no model holds is a 404 empty_selection naming the nearest values (as the
    analyses' where): ?task=gan was a silent empty page, the store holding GAN."""
    version = con.execute("SELECT max(version) FROM _versions").fetchone()[0]
    for query, words in [("task=gan", f"task: no model in the store (store version {version}) has task 'gan'; "
                                      "did you mean 'GAN'?"),
                         ("task=GAN&task=Clasification", "did you mean 'Classification'?"),
                         ("visual_category=Natural&limit=2", "did you mean 'natural'?"),
                         ("task=GAN&training_dataset=zzzz", f"training_dataset: no model in the store (store version "
                                                            f"{version}) has training_dataset 'zzzz'"),
                         ("accessible=Yes", "accessible: no model in the store"),
                         ("paper=zzzz", "list the values of paper with SELECT DISTINCT paper FROM models")]:
        r = client.get(f"/v1/models?{query}")
        assert r.status_code == 404, (query, r.text)
        assert r.json()["error"]["code"] == "empty_selection" and words in r.json()["error"]["message"], r.text
    # values the models hold that select no model together: an empty page, as before
    task, category = con.execute("SELECT t.task, c.visual_category FROM (SELECT DISTINCT task FROM models) t, "
                                 "(SELECT DISTINCT visual_category FROM models) c WHERE NOT EXISTS (SELECT 1 FROM models m "
                                 "WHERE m.task = t.task AND m.visual_category = c.visual_category) LIMIT 1").fetchone()
    page = client.get("/v1/models", params={"task": task, "visual_category": category}).json()
    assert (page["total"], page["items"], page["next"]) == (0, [], None)


def test_model_detail_matches_store(client, con):
    row = _dicts(con, "SELECT * FROM models WHERE model_id = 4")[0]
    got = client.get("/v1/models/4").json()
    for k, v in row.items():
        if k == "extra":
            assert got[k] == json.loads(v)
        elif isinstance(v, float) and math.isnan(v):
            assert got[k] is None
        else:
            assert got[k] == v, k


def test_model_layers_and_layer(client, con):
    want = _dicts(con, "SELECT * FROM layers WHERE model_id = 2 ORDER BY filter_id_first")
    got = client.get("/v1/models/2/layers").json()["items"]
    assert [l["layer_id"] for l in got] == [l["layer_id"] for l in want]
    for g, w in zip(got, want):
        for k, v in w.items():
            assert g[k] == v, k
    one = client.get(f"/v1/layers/{want[0]['layer_id']}").json()
    assert one["filter_id_first"] == want[0]["filter_id_first"] and one["model"].startswith("sample-")


def test_layer_filters_json_and_npy(client, con):
    lid, first, last = con.execute(
        "SELECT layer_id, filter_id_first, filter_id_last FROM layers ORDER BY n_filters DESC LIMIT 1").fetchone()
    W = np.array([np.asarray(w, dtype=np.float32) for (w,) in
                  con.execute("SELECT w FROM filters WHERE layer_id = ? ORDER BY filter_id", [lid]).fetchall()])
    page = client.get(f"/v1/layers/{lid}/filters?offset=3&limit=5").json()
    assert [f["filter_id"] for f in page["items"]] == list(range(first + 3, first + 8))
    np.testing.assert_array_equal(np.array([f["w"] for f in page["items"]], dtype=np.float32), W[3:8].reshape(5, 3, 3))
    assert page["next"] is not None and page["n_filters"] == last - first + 1
    r = client.get(f"/v1/layers/{lid}/filters?format=npy")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
    arr = np.load(io.BytesIO(r.content))
    assert arr.shape == (last - first + 1, 3, 3) and arr.dtype == np.float32
    assert np.array_equal(arr.reshape(-1, 9).view(np.uint32), W.view(np.uint32))


def test_filter_by_id(client, con):
    fid, mid, lid, w = con.execute("SELECT filter_id, model_id, layer_id, w FROM filters WHERE filter_id = 31337").fetchone()
    got = client.get("/v1/filters/31337").json()
    assert (got["filter_id"], got["model_id"], got["layer_id"]) == (fid, mid, lid)
    assert np.array_equal(np.array(got["w"], dtype=np.float32).ravel(), np.array(w, dtype=np.float32))


@pytest.mark.parametrize("url, status", [
    ("/v1/models/99999", 404), ("/v1/models/99999/layers", 404), ("/v1/layers/99999", 404),
    ("/v1/layers/99999/filters", 404), ("/v1/filters/123456789", 404), ("/v1/nothing", 404),
    ("/v1/models/abc", 422), ("/v1/layers/1.5", 422), ("/v1/models?limit=0", 422),
    ("/v1/models?colour=red", 400), ("/v1/layers/1/filters?format=csv", 400), ("/v1/layers/1/filters?offset=-1", 422),
    ("/v1/models?after=x", 422),
])
def test_bad_requests(client, url, status):
    r = client.get(url)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"} and body["error"]["message"]


def test_sql_roundtrip_and_params(client, con):
    r = client.post("/v1/sql", json={"sql": "SELECT model_id, task FROM models WHERE depth > ? ORDER BY model_id", "params": [10]})
    assert r.status_code == 200
    body = r.json()
    assert body["columns"] == ["model_id", "task"] and body["truncated"] is False and body["elapsed_ms"] >= 0
    assert [tuple(x) for x in body["rows"]] == con.execute(
        "SELECT model_id, task FROM models WHERE depth > 10 ORDER BY model_id").fetchall()


def test_sql_row_cap(client):
    r = client.post("/v1/sql", json={"sql": "SELECT * FROM range(5000)"}).json()
    assert len(r["rows"]) == 1000 and r["truncated"] is True and r["max_rows"] == 1000
    r = client.post("/v1/sql", json={"sql": "SELECT * FROM range(5000)", "max_rows": 4999}).json()
    assert len(r["rows"]) == 4999 and r["truncated"] is True
    r = client.post("/v1/sql", json={"sql": "SELECT * FROM range(5000)", "max_rows": 5000}).json()
    assert len(r["rows"]) == 5000 and r["truncated"] is False


def test_nan_and_inf_are_null(client):
    r = client.post("/v1/sql", json={"sql": "SELECT 'nan'::DOUBLE AS a, 'inf'::FLOAT AS b, '-inf'::DOUBLE AS c, [1.5, 'nan'::DOUBLE] AS d"})
    assert r.status_code == 200
    assert r.json()["rows"] == [[None, None, None, [1.5, None]]]


def test_sees_a_new_commit_without_restart(tmp_path, sample_v1, sample_v01):
    db = tmp_path / "db"
    assert cli_main(["ingest", str(sample_v01), "--db", str(db)]) == 0
    c = TestClient(create_app(Settings(db=db)))
    before = c.get("/v1/stats").json()
    assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    after = c.get("/v1/stats").json()
    assert after["models"] == before["models"] + 12 and after["basis"]["version"] == before["basis"]["version"] + 1
    assert c.get("/v1/models?limit=1000").json()["total"] == after["models"]


def test_store_missing_is_503(tmp_path):
    c = TestClient(create_app(Settings(db=tmp_path / "none")))
    r = c.get("/v1/stats")
    assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"


def test_concurrent_requests(client, con):
    from concurrent.futures import ThreadPoolExecutor

    want = con.execute("SELECT count(*) FROM filters WHERE layer_id = 3").fetchone()[0]

    def sql(body):
        # More concurrent statements than SQL workers get a 429 with Retry-After: a client waits, as asked.
        while (r := client.post("/v1/sql", json=body)).status_code == 429:
            time.sleep(float(r.headers["retry-after"]) / 10)
        return r

    def one(i):
        if i % 3 == 0:
            return sql({"sql": "SELECT count(*) FROM filters WHERE layer_id = 3"}).json()["rows"][0][0]
        if i % 3 == 1:
            return client.get("/v1/layers/3").json()["n_filters"]
        # More concurrent answers of a layer's filters than layer_filters_concurrency: a 429, waited out too.
        while (r := client.get("/v1/layers/3/filters?limit=100000")).status_code == 429:
            time.sleep(float(r.headers["retry-after"]) / 10)
        return len(r.json()["items"])

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(48))) == {want}


def test_a_moved_store_works_unchanged(store, tmp_path):
    """The catalog names its files relative to the store: a copy elsewhere, with the original gone,
    answers every kind of read (views, scans, per-layer histograms, user SQL, the CLI, the shell)."""
    import shutil
    import subprocess
    import sys

    from .helpers import run_cli

    original, copy = tmp_path / "original" / "db", tmp_path / "moved" / "db"
    shutil.copytree(store, original)
    copy.parent.mkdir()
    shutil.move(original, copy)
    assert not original.exists()
    with TestClient(create_app(Settings(db=copy)), raise_server_exceptions=False) as client:
        for path in ["/v1/filters/31337", "/v1/layers/3/filters", "/v1/layers/3/filters?format=npy", "/v1/stats"]:
            r = client.get(path)
            assert r.status_code == 200, (path, r.text[:300])
        for body in [{"group_by": "task"}, {"group_by": "task", "bins": 33}, {"group_by": "task", "basis": "selection"}]:
            r = client.post("/v1/divergence", json=body)
            assert r.status_code == 200, (body, r.text[:300])
        r = client.post("/v1/sql", json={"sql": "SELECT count(*) FROM filters"})
        assert r.status_code == 200 and r.json()["rows"] == [[60_000]]
    code, out, err = run_cli("sql", "SELECT count(*) AS n FROM filters", "--db", str(copy), "--format", "json")
    assert code == 0 and json.loads(out)["rows"] == [[60_000]], err
    code, out, err = run_cli("drift", "--group-by", "task", "--bins", "20", "--db", str(copy))
    assert code == 0, err
    shell = str(Path(sys.executable).parent / "duckdb")
    p = subprocess.run([shell, "-readonly", "-csv", "-noheader", "catalog.duckdb", "-c", "SELECT count(*) FROM filters"],
                       capture_output=True, text=True, cwd=copy)
    assert p.returncode == 0 and p.stdout.strip() == "60000", p.stderr
