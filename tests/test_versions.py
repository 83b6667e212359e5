"""Store versions and curation (issue 11, points 1 and 2): a result asked `as_of` a version is,
bit for bit, the one that version gave when it was current, whatever was ingested, relabelled,
removed or compacted since; label/remove/compact are all-or-nothing commits."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnfilterdb.analysis import Analysis
from cnnfilterdb.ingest.curate import compact, remove_models
from cnnfilterdb.ingest.labels import label_models
from cnnfilterdb.ingest.sample import write_sample_h5
from cnnfilterdb.layout import StoreError
from cnnfilterdb.properties import PropertyError

from .helpers import REPO, cli_main, open_catalog, run_cli, store_snapshot

# Requests whose answers must repeat: the layer-histogram path and the scan path (another basis,
# other bins), every analysis endpoint and a figure's bytes.
POSTS = [
    ("/v1/divergence", {"group_by": "task"}),
    ("/v1/divergence", {"group_by": "visual_category", "where": {"conv_depth": {"gte": 1}}}),
    ("/v1/divergence", {"group_by": "task", "basis": "selection", "bins": 33, "metric": "js"}),
    ("/v1/histograms", {"group_by": "depth_bin", "bins": 20}),
    ("/v1/pca", {"where": {"task": "Classification"}}),
    ("/v1/kde", {"group_by": "task", "bins": 64}),
    ("/v1/density2d", {"components": [0, 2], "bins": 16}),
]
GETS = ["/v1/models/0/similar?k=4", "/v1/quality/degenerate?limit=5"]


def _client(db: Path):
    from fastapi.testclient import TestClient

    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    return TestClient(create_app(Settings(db=db)), raise_server_exceptions=False)


def _answers(client, as_of: int | None) -> list:
    """Every request's JSON (timings left out) and one figure's bytes, at a version."""
    out = []
    for path, body in POSTS:
        r = client.post(path, json={**body, **({"as_of": as_of} if as_of else {})})
        assert r.status_code == 200, r.text
        out.append({k: v for k, v in r.json().items() if k != "elapsed_ms"})
    for path in GETS:
        r = client.get(path + (f"&as_of={as_of}" if as_of else ""))
        assert r.status_code == 200, r.text
        out.append(r.json())
    r = client.get("/v1/plots/kl_combined.png" + (f"?as_of={as_of}" if as_of else ""))
    assert r.status_code == 200
    out.append(r.content)
    return out


def _npz_model(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, conv1=rng.normal(size=(32, 3, 3, 3)).astype(np.float32),
             conv2=rng.normal(size=(32, 32, 3, 3)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, sample_v1) -> Path:
    db = tmp_path_factory.mktemp("versions") / "db"
    assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    return db


@pytest.fixture
def store(tmp_path, pristine) -> Path:
    """sample_v1 ingested: a copy of its own for each test."""
    db = tmp_path / "db"
    shutil.copytree(pristine, db)
    return db


def test_as_of_repeats_a_result_bit_for_bit(store, tmp_path):
    client = _client(store)
    then = _answers(client, None)
    assert all(a["store_version"] == 1 for a in then[:-1])

    # Two more ingests, a relabelling of a model of the first version, a removal.
    other = write_sample_h5(tmp_path / "other.h5", n_models=6, n_filters=40_000, seed=8)
    assert cli_main(["ingest", "--allow-missing", str(other), "--db", str(store)]) == 0
    assert cli_main(["ingest", "--allow-missing", str(_npz_model(tmp_path / "net.npz", 1)), "--db", str(store), "--task", "GAN"]) == 0
    with open_catalog(store) as con:
        first, second = [m for (m,) in con.execute("SELECT model FROM models ORDER BY model_id LIMIT 2").fetchall()]
    assert cli_main(["label", first, "--task", "Face Detection", "--visual-category", "text", "--db", str(store)]) == 0
    assert cli_main(["remove", second, "--db", str(store)]) == 0

    now = _answers(client, None)
    assert all(a["store_version"] == 5 for a in now[:-1])
    assert now[0]["matrix"] != then[0]["matrix"]  # the store did change

    again = _answers(client, 1)
    assert again == then  # identical, every number and every byte of the figure
    # A fresh service (nothing cached) and the CLI agree.
    assert _answers(_client(store), 1) == then
    code, out, err = run_cli("drift", "--group-by", "task", "--as-of", "1", "--json", "--db", str(store))
    assert code == 0, err
    cli = json.loads(out)
    assert cli["matrix"] == then[0]["matrix"] and cli["store_version"] == 1

    # The metadata as of version 1 is the old one: the relabelled model is still in its group.
    with open_catalog(store) as con:
        old_task = con.execute("SELECT task FROM models_at(1) WHERE model = ?", [first]).fetchone()[0]
        new_task = con.execute("SELECT task FROM models WHERE model = ?", [first]).fetchone()[0]
        assert new_task == "Face Detection" and old_task != new_task
        assert con.execute("SELECT count(*) FROM models WHERE model = ?", [second]).fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM models_at(4) WHERE model = ?", [second]).fetchone()[0] == 1


def test_versions_listed_over_http_and_cli(store, tmp_path):
    assert cli_main(["ingest", "--allow-missing", str(_npz_model(tmp_path / "a.npz", 2)), "--db", str(store)]) == 0
    assert cli_main(["label", "a", "--task", "Classification", "--db", str(store)]) == 0
    assert cli_main(["remove", "a", "--db", str(store)]) == 0
    code, _, err = run_cli("remove", "a", "--db", str(store))
    assert code == 1 and "'a' (removed in store version 4)" in err
    with open_catalog(store) as con:  # the filters of a version, removed models' included
        assert con.execute("SELECT count(*) FROM filters_at(3) WHERE layer_id IN (SELECT layer_id FROM layers_at(3) "
                           "WHERE model_id = 12)").fetchone()[0] == 32 * 3 + 32 * 32
        assert con.execute("SELECT count(*) FROM filters WHERE model_id = 12").fetchone()[0] == 0
    r = _client(store).get("/v1/versions")
    assert r.status_code == 200
    body = r.json()
    assert body["current"] == 4
    v = body["versions"]
    assert [x["version"] for x in v] == [1, 2, 3, 4]
    assert [x["action"] for x in v] == ["ingest", "ingest", "label", "remove"]
    assert [(x["models_added"], x["models_changed"], x["models_removed"]) for x in v] == \
        [(12, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    assert [x["n_models"] for x in v] == [12, 13, 13, 12]
    # A relabelling keeps the basis (it depends on the filters only); an ingest and a removal refit it.
    assert [x["basis_version"] for x in v] == [1, 2, 2, 3]
    assert v[2]["summary"] == "relabelled 1 model (a); set task"  # the fields it set
    assert v[1]["n_filters"] == v[0]["n_filters"] + 32 * 3 + 32 * 32
    assert v[3]["n_filters"] == v[0]["n_filters"]
    with open_catalog(store) as con:
        assert con.execute("SELECT version FROM basis").fetchone()[0] == 3
    code, out, _ = run_cli("log", "--db", str(store))
    assert code == 0
    lines = out.splitlines()
    with open_catalog(store) as con:
        sid = con.execute("SELECT store_id FROM _store").fetchone()[0]
    assert lines[0] == f"store {sid}" and body["store_id"] == sid and len(sid) == 36
    assert lines[1].startswith("version 4 ") and "remove: removed 1 model (a)" in lines[1]
    assert "12 models" in lines[2] and "basis 3" in lines[2]
    code, out, _ = run_cli("log", "--json", "--db", str(store))
    assert [x["version"] for x in json.loads(out)] == [1, 2, 3, 4]


def test_removal_refits_the_basis_over_what_remains(store):
    with open_catalog(store) as con:
        gone = [m for (m,) in con.execute("SELECT model FROM models WHERE model_id IN (1, 5)").fetchall()]
        before = Analysis(con, store)
        remaining = before.selection_basis(before.select({"model_id": [i for i in range(12) if i not in (1, 5)]}))
    result = remove_models(store, gone)
    assert result["version"] == 2 and result["removed"] == gone and result["models"] == 10
    with open_catalog(store) as con:
        a = Analysis(con, store)
        b = a.global_basis()
        # The new global basis is the PCA of the remaining layers' pooled moments, exactly.
        assert np.array_equal(b.components, remaining.components) and b.n_filters == remaining.n_filters
        assert sorted(a.select(None).labels) == ["all"]
        assert con.execute("SELECT count(*) FROM models").fetchone()[0] == 10
        assert con.execute("SELECT count(*) FROM filters WHERE model_id IN (1, 5)").fetchone()[0] == 0
        n_layers = con.execute("SELECT sum(n_filters) FROM layers").fetchone()[0]
        assert con.execute("SELECT count(*) FROM filters").fetchone()[0] == n_layers == b.n_filters
        # The stored per-layer histograms of the new basis are those a scan computes.
        fast = a.group_histograms(None, "task")
        slow = Analysis(con, store, use_stored=False).group_histograms(None, "task")
        assert fast.method == "layer_histograms" and slow.method == "scan"
        assert np.array_equal(fast.counts, slow.counts)


def test_label_checks_every_model_first(store, tmp_path):
    before = store_snapshot(store)
    with open_catalog(store) as con:
        m0 = con.execute("SELECT model FROM models WHERE model_id = 0").fetchone()[0]
    # One unknown name: nothing changes, the error suggests the name in another case.
    with pytest.raises(StoreError, match=r"no such model in the store: .*did you mean '" + m0 + "'"):
        label_models(store, [(m0, {"task": "GAN"}), (m0.upper(), {"task": "GAN"})])
    assert store_snapshot(store) == before
    with pytest.raises(PropertyError, match="'model' is a built-in field, not a property"):
        label_models(store, [(m0, {"model": "x"})])
    code, _, err = run_cli("label", m0, "--db", str(store))
    assert code == 1 and "nothing to label" in err
    assert store_snapshot(store) == before

    # A task with 'Segmentation' is normalized as at ingest, the raw label kept.
    r = label_models(store, [(m0, {"task": "Semantic Segmentation"})])
    assert r == {"db": str(store.resolve()), "version": 2, "changed": [m0], "unchanged": [], "properties_added": {},
                 "skipped_columns": [], "skipped_models": [], "dry_run": False}
    with open_catalog(store) as con:
        assert con.execute("SELECT task, task_raw FROM models WHERE model_id = 0").fetchone() == \
            ("Segmentation", "Semantic Segmentation")
    # The same values again: no new version.
    assert label_models(store, [(m0, {"task": "Semantic Segmentation"})])["version"] is None

    # A manifest: several models, several fields; an empty cell leaves a field as it is.
    with open_catalog(store) as con:
        m1, cat1 = con.execute("SELECT model, visual_category FROM models WHERE model_id = 1").fetchone()
    manifest = tmp_path / "labels.csv"
    manifest.write_text(f"model,task,visual_category\n{m0},GAN,\n{m1},,faces\n")
    assert cli_main(["label", "--manifest", str(manifest), "--db", str(store)]) == 0
    with open_catalog(store) as con:
        assert con.execute("SELECT task, visual_category FROM models WHERE model_id = 1").fetchone()[1] == "faces"
        assert con.execute("SELECT task FROM models WHERE model_id = 0").fetchone()[0] == "GAN"
        assert con.execute("SELECT visual_category FROM models_at(2) WHERE model_id = 1").fetchone()[0] == cat1
        assert con.execute("SELECT max(version) FROM _versions").fetchone()[0] == 3


def test_compact_reclaims_space_and_keeps_the_kept_versions(store, tmp_path):
    other = write_sample_h5(tmp_path / "other.h5", n_models=6, n_filters=40_000, seed=8)
    assert cli_main(["ingest", "--allow-missing", str(other), "--db", str(store)]) == 0
    with open_catalog(store) as con:
        gone = [m for (m,) in con.execute("SELECT model FROM models WHERE model_id >= 12").fetchall()]
    remove_models(store, gone)  # version 3: the models of the second ingest removed
    client = _client(store)
    current = _answers(client, None)
    bytes_before = sum(p.stat().st_size for p in (store / "shards").iterdir())

    result = compact(store, keep_versions=1)
    assert result["kept"] == [3, 3] and result["compacted"] == 2
    assert result["shards_rewritten"] + result["shards_dropped"] >= 1
    assert result["bytes_after"] < result["bytes_before"]
    assert sum(p.stat().st_size for p in (store / "shards").iterdir()) < bytes_before  # files deleted
    assert _answers(_client(store), None) == current  # the kept version answers as before
    assert cli_main(["verify", "--db", str(store)]) == 0
    r = client.post("/v1/divergence", json={"group_by": "task", "as_of": 1})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_version"
    assert "compacted" in r.json()["error"]["message"]
    code, _, err = run_cli("drift", "--group-by", "task", "--as-of", "2", "--db", str(store))
    assert code == 1 and "store version 2 was compacted away" in err
    # Versions listed still, marked.
    assert [v["compacted"] for v in client.get("/v1/versions").json()["versions"]] == [True, True, False]
    with pytest.raises(StoreError, match="at least 1"):
        compact(store, keep_versions=0)


def test_unknown_versions_are_404_or_400(v1_client):
    for body in ({"as_of": 99}, {"as_of": 2}):
        r = v1_client.post("/v1/divergence", json={"group_by": "task", **body})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_version"
        assert "this store holds versions 1 to 1" in r.json()["error"]["message"]
    for bad in (0, -1, 2**31, 1.5, True, [1], None):
        r = v1_client.post("/v1/pca", json={"as_of": bad})
        assert r.status_code == (200 if bad is None else 422), (bad, r.text)
        if bad is not None:
            assert r.json()["error"]["message"].startswith("as_of must be an integer from 1 to 2,147,483,647")
    for bad in ("0", "x", "1e3", "99999999999"):
        r = v1_client.get(f"/v1/quality/degenerate?as_of={bad}")
        assert r.status_code == 422, (bad, r.text)
    assert v1_client.get("/v1/plots/divergence.svg?as_of=7").status_code == 404


def test_new_where_fields(v1_client, v1_store):
    with open_catalog(v1_store) as con:
        n = con.execute("SELECT count(*) FROM models").fetchone()[0]
    r = v1_client.post("/v1/divergence", json={"group_by": "sample"}).json()
    assert r["labels"] == [True] and r["n_models"] == [n]
    r = v1_client.post("/v1/divergence", json={"group_by": "task", "where": {"sample": False}})
    assert r.status_code == 404
    r = v1_client.post("/v1/pca", json={"where": {"version_added": 1, "source": {"gte": "SAMPLE"}}})
    assert r.status_code == 200 and r.json()["store_version"] == 1
    for bad in ({"sample": "yes"}, {"sample": 1}, {"task": True}, {"version_added": "x"}):
        r = v1_client.post("/v1/pca", json={"where": bad})
        assert r.status_code == 422 and r.json()["error"]["message"].startswith(f"where.{next(iter(bad))}"), r.text


LABEL_KILL_POINTS = ["staging-created", "staging-wal", "0.5", "0.9"]


def _spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "cnnfilterdb.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


@pytest.fixture(scope="module")
def big_store(tmp_path_factory) -> Path:
    # Large enough that a removal's refit (a scan of every filter) takes a moment to kill.
    src = write_sample_h5(tmp_path_factory.mktemp("bigsrc") / "big.h5", n_models=30, n_filters=2_000_000, seed=13)
    db = tmp_path_factory.mktemp("big") / "db"
    assert cli_main(["ingest", "--allow-missing", str(src), "--db", str(db)]) == 0
    return db


@pytest.mark.parametrize("command", ["label", "remove"])
@pytest.mark.parametrize("point", LABEL_KILL_POINTS)
def test_sigkill_in_label_or_remove_leaves_the_previous_store(command, point, big_store, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(big_store, db)
    before = store_snapshot(db)
    with open_catalog(db) as con:
        models = [m for (m,) in con.execute("SELECT model FROM models ORDER BY model_id LIMIT 3").fetchall()]
    args = (["label", *models, "--task", "GAN"] if command == "label" else ["remove", *models]) + ["--db", str(db)]
    t = time.monotonic()
    p = _spawn(*args)
    assert p.wait() == 0, p.stderr.read()
    duration = time.monotonic() - t
    shutil.rmtree(db)
    shutil.copytree(big_store, db)

    t0 = time.monotonic()
    p = _spawn(*args)
    if point == "staging-created":
        _wait_for(lambda: list(db.glob("catalog.duckdb.*.staging")) or p.poll() is not None)
    elif point == "staging-wal":
        _wait_for(lambda: list(db.glob("catalog.duckdb.*.staging.wal")) or p.poll() is not None)
    else:
        time.sleep(max(0.0, float(point) * duration - (time.monotonic() - t0)))
    finished = p.poll() is not None
    p.send_signal(signal.SIGKILL)
    p.wait()
    after = store_snapshot(db)
    if after["tables"]["_versions"] == before["tables"]["_versions"]:
        assert after == before  # exactly the previous store: every table, every file, the catalog's bytes
        assert cli_main(args) == 0  # the next command cleans up and succeeds
    else:
        assert finished or point[0].isdigit(), f"committed before the event {point}"
        assert len(after["tables"]["_versions"]) == 2  # the whole change, committed
        assert cli_main(["log", "--db", str(db)]) == 0
    assert not list(db.glob("catalog.duckdb.*.staging*"))
    assert cli_main(["verify", "--db", str(db)]) == 0


def _wait_for(pred, timeout=60.0):
    t = time.monotonic()
    while not pred():
        if time.monotonic() - t > timeout:
            raise TimeoutError
        time.sleep(0.002)


def test_compact_with_layers_across_shards(sample_v1, tmp_path):
    """Shards end every shard_rows filters, mid-layer: compaction takes out exactly the removed
    models' rows, whatever shards they lie in, and keeps every other row."""
    import functools

    from cnnfilterdb.ingest import ingest_paths
    from cnnfilterdb.ingest.shards import ShardWriter

    db = tmp_path / "db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ShardWriter, "__init__", functools.partialmethod(ShardWriter.__init__, shard_rows=7_000,
                                                                    row_group_rows=1_000))
        ingest_paths([sample_v1], db)
    with open_catalog(db) as con:
        crossing = con.execute("SELECT count(*) FROM layers l JOIN _shards s ON l.filter_id_first < s.filter_id_first "
                               "AND l.filter_id_last >= s.filter_id_first").fetchone()[0]
        assert crossing >= 3  # layers that run across shards
        # Every third model, but those the requests of _answers name (task Classification, model 0).
        gone = "model_id % 3 = 1 AND task IS DISTINCT FROM 'Classification'"
        models = [m for (m,) in con.execute(f"SELECT model FROM models WHERE {gone}").fetchall()]
        keep_digest = con.execute(f"SELECT count(*), sum(hash(filter_id, w0, w4, w8)) FROM filters "
                                  f"WHERE model_id NOT IN (SELECT model_id FROM models WHERE {gone})").fetchone()
    assert len(models) >= 2
    remove_models(db, models)
    client = _client(db)
    current = _answers(client, None)
    result = compact(db, keep_versions=1)
    assert result["shards_rewritten"] + result["shards_dropped"] >= 2
    assert cli_main(["verify", "--db", str(db)]) == 0
    with open_catalog(db) as con:
        assert con.execute("SELECT count(*), sum(hash(filter_id, w0, w4, w8)) FROM filters").fetchone() == keep_digest
        assert con.execute("SELECT sum(n_rows) FROM _shards").fetchone()[0] == keep_digest[0]
    assert _answers(_client(db), None) == current
    # The scan path too (other bins, the selection's basis): the same as before compaction.
    r = _client(db).post("/v1/divergence", json={"group_by": "task", "bins": 31, "basis": "selection"})
    assert r.status_code == 200


def test_verify_finds_shards_and_layers_that_disagree(store):
    with open_catalog(store) as con:
        assert con.execute("SELECT sum(n_rows) FROM _shards").fetchone()[0] == \
            con.execute("SELECT sum(n_filters) FROM _layers").fetchone()[0]
    import duckdb

    with duckdb.connect(str(store / "catalog.duckdb")) as con:  # a catalog damaged by hand
        con.execute("UPDATE _shards SET n_rows = n_rows - 5")
    code, out, _ = run_cli("verify", "--db", str(store))
    assert code == 1 and "the shards hold" in out


def test_label_refuses_what_it_cannot_take(store, tmp_path):
    before = store_snapshot(store)
    with open_catalog(store) as con:
        m0, m1 = [m for (m,) in con.execute("SELECT model FROM models ORDER BY model_id LIMIT 2").fetchall()]
    bad_manifests = {
        "twice.csv": (f"model,task\n{m0},GAN\n{m0},Classification\n", f"labels {m0!r} again (line 2)"),
        "header.csv": (f"model,task,task\n{m0},GAN,Classification\n", "names a column twice: ['task']"),
        "quote.csv": (f'model,task\n{m0},"GAN\n', "cannot read the manifest"),
        "nul.csv": (f"model,task\n{m0},G\0AN\n", "NUL"),
        "cells.csv": (f"model,task\n{m0},GAN,extra\n", "line 2 has 3 cells, the header 2"),
    }
    for name, (text, words) in bad_manifests.items():
        (tmp_path / name).write_text(text)
        code, _, err = run_cli("label", "--manifest", str(tmp_path / name), "--db", str(store))
        assert code == 1 and words in err and "Traceback" not in err, (name, err)
    for args, words in [((m0, "--task", " "), "task is empty"), (("\u00b2", "--task", "GAN"), "no such model"),
                        (("\u0663", "--task", "GAN"), "no such model"), ((m0, m0, "--task", "GAN"), "named twice"),
                        ((m0, "--task", "bad\udcff"), "not valid UTF-8")]:
        code, _, err = run_cli("label", *args, "--db", str(store))
        assert code == 1 and words in err and "Traceback" not in err, (args, err)
    assert store_snapshot(store) == before
    # A spreadsheet's CSV (a byte-order mark, CRLF line ends) is read.
    (tmp_path / "excel.csv").write_bytes(f"\ufeffmodel,task\r\n{m1},GAN\r\n".encode())
    assert cli_main(["label", "--manifest", str(tmp_path / "excel.csv"), "--db", str(store)]) == 0
    with open_catalog(store) as con:
        assert con.execute("SELECT task FROM models WHERE model = ?", [m1]).fetchone()[0] == "GAN"


def test_export_and_plot_refuse_outputs_that_are_not_files(store, tmp_path):
    target = tmp_path / "target.csv"
    target.write_text("old")
    (tmp_path / "link.csv").symlink_to(target)
    assert cli_main(["export", "-o", str(tmp_path / "link.csv"), "--where", '{"model_id": 1}', "--db", str(store)]) == 0
    assert (tmp_path / "link.csv").is_symlink() and target.read_text().startswith("filter_id,model_id")
    (tmp_path / "dir.png").mkdir()
    for out, words in [(tmp_path / "dir.png", "not a regular file"), (tmp_path / "no" / "x.png", "no such directory"),
                       (Path("/dev/null"), "not a regular file")]:
        for command in (["export", "-o", str(out), "--format", "npy"], ["plot", "divergence", "-o", str(out)]):
            code, _, err = run_cli(*command, "--db", str(store))
            assert code == 1 and (words in err or "unknown format" in err) and "Traceback" not in err, (command, err)
    assert Path("/dev/null").is_char_device()


def test_a_snapshot_reads_its_shards_after_compact_unlinks_them(store, tmp_path):
    """A request's snapshot (the service's catalog generation) holds its shards open: scans on it
    (a selection's basis scans twice) still read them after `compact` has deleted them."""
    other = write_sample_h5(tmp_path / "other.h5", n_models=6, n_filters=40_000, seed=8)
    assert cli_main(["ingest", "--allow-missing", str(other), "--db", str(store)]) == 0
    with open_catalog(store) as con:
        old = Analysis(con, store)
        old.snapshot.prepare(con)
        before = old.divergence("task", bins=31, basis="selection")
        gone = [m for (m,) in con.execute("SELECT model FROM models WHERE model_id < 12").fetchall()]
        # Other processes, as they would be (the catalog is open read-only here).
        assert run_cli("remove", *gone, "--db", str(store))[0] == 0
        assert run_cli("compact", "--keep-versions", "1", "--db", str(store))[0] == 0
        assert not all(p.exists() for p in old.shard_paths())  # the first ingest's shard is gone
        again = old.divergence("task", bins=31, basis="selection")
        assert again["matrix"] == before["matrix"] and again["store_version"] == 2


def test_outputs_are_refused_inside_the_store_and_odd_paths_handled(store, tmp_path):
    before = store_snapshot(store)
    shard = next((store / "shards").glob("*.parquet"))
    for out in [shard, store / "catalog.duckdb", store / "shards" / "mine.parquet", store / "x.csv"]:
        for command in (["export", "-o", str(out), "--format", "csv"], ["plot", "divergence", "-o", str(out) + ".png"]):
            code, _, err = run_cli(*command, "--db", str(store))
            assert code == 1 and "inside the store" in err, (command, err)
    code, _, err = run_cli("report", "-o", str(store / "report"), "--db", str(store))
    assert code == 1 and "inside the store" in err
    assert store_snapshot(store) == before
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for out, words in [(tmp_path / "a", "loop of symbolic links"), (str(tmp_path / "new.csv") + "/", "trailing /")]:
        code, _, err = run_cli("export", "-o", str(out), "--format", "csv", "--db", str(store))
        assert code == 1 and words in err, err
    assert (tmp_path / "a").is_symlink()
    long_name = tmp_path / ("\N{GRINNING FACE}" * 62 + ".csv")  # 252 bytes: a valid name
    private = tmp_path / "private.csv"
    private.write_text("old")
    private.chmod(0o600)
    for out in (long_name, private):
        assert cli_main(["export", "-o", str(out), "--where", '{"model_id": 2}', "--db", str(store)]) == 0
    assert (private.stat().st_mode & 0o777) == 0o600 and private.read_text().startswith("filter_id")


def test_ids_are_never_reused_after_compact(store, tmp_path):
    with open_catalog(store) as con:
        models = [m for (m,) in con.execute("SELECT model FROM models").fetchall()]
        top = con.execute("SELECT max(model_id), (SELECT max(layer_id) FROM layers), "
                          "(SELECT max(filter_id_last) FROM layers) FROM models").fetchone()
    remove_models(store, models)
    compact(store, keep_versions=1)
    assert cli_main(["ingest", "--allow-missing", str(_npz_model(tmp_path / "new.npz", 5)), "--db", str(store)]) == 0
    with open_catalog(store) as con:
        got = con.execute("SELECT min(model_id), (SELECT min(layer_id) FROM layers), "
                          "(SELECT min(filter_id_first) FROM layers) FROM models").fetchone()
    assert got == (top[0] + 1, top[1] + 1, top[2] + 1)


def test_label_names_models_unambiguously(store, tmp_path):
    assert cli_main(["ingest", "--allow-missing", str(_npz_model(tmp_path / "n.npz", 3)), "--model", "1", "--db", str(store)]) == 0
    before = store_snapshot(store)
    for args, words in [(("1",), "is both the name of model_id 12 and a model_id"),
                        (("9" * 5000,), "no such model"),
                        (("0", "sample-s3-0000-resnet-18"), "named twice")]:
        code, _, err = run_cli("label", *args, "--task", "GAN", "--db", str(store))
        assert code == 1 and words in err and "Traceback" not in err, (args[0][:20], err)
    assert store_snapshot(store) == before


def test_cli_where_is_checked_as_over_http(store):
    for where, words in [('{"conv_depth_norm": {"lt": NaN}}', "where.conv_depth_norm"),
                         ('{"sample": "yes"}', "where.sample: expected true or false (a bool), got 'yes'"),
                         ('{"conv_depth": {"ge": 2}}', "unknown bound 'ge' in where.conv_depth; valid: gte, gt, lte, lt"),
                         ('{"colour": 1}', "unknown field(s) in where: ['colour']")]:
        code, _, err = run_cli("drift", "--group-by", "task", "--where", where, "--db", str(store))
        assert code == 1 and words in err, err
