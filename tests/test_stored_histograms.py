"""Commits proportional to what they change, and figures that read no filter (issue 22).

A commit keeps the global basis or refits it by the store's policy (docs/method.md#refit); one
that keeps it projects the layers it adds on it and stores their histograms in a new segment
(segments.py). The stored fine histograms (per model and depth bin) and 2-D histograms (per model)
answer the ridge plots' KDE and the density figure. Every answer equals the exact scan with the
same basis bit for bit, and, for a kept basis, the naive reference (scikit-learn's PCA of the
filters the basis was fitted on, np.histogram of the others' coefficients, values outside dropped).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cnnfilterdb.analysis import Analysis
from cnnfilterdb.ingest.sample import write_sample_h5

from . import reference
from .helpers import as_layout_6, cli_main, open_catalog, run_cli, store_snapshot

SELECTIONS = [  # (group_by, where): whole units (a model's layers of one depth bin) each
    ("task", None), ("depth_bin", None), ("model", None), ("depth_bin", {"task": "Classification"}),
    (None, {"visual_category": ["natural", "medical ct"]}), ("training_dataset", {"depth_bin": ["(0.4, 0.5]", "(0.9, 1.0]"]}),
]
PARTS = [("depth_bin", {"conv_depth": {"gte": 2}}), ("layer_id", None), ("conv_depth", None)]  # parts of units, mostly


def _store_every_unit(mp: pytest.MonkeyPatch) -> None:
    import cnnfilterdb.segments as segments

    mp.setattr(segments, "FINE_MIN_FILTERS", 0)
    mp.setattr(segments, "DENSITY_MIN_FILTERS", 0)


@pytest.fixture(autouse=True)
def store_every_unit(monkeypatch):
    """Every unit's and model's histograms stored, however small (the fixtures' models are): the
    stored paths are what these tests test; test_small_units_and_models_are_scanned the mix."""
    _store_every_unit(monkeypatch)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, sample_v1):
    """sample_v1 ingested once, every unit's and model's histograms stored (as store_every_unit)."""
    db = tmp_path_factory.mktemp("stored") / "db"
    with pytest.MonkeyPatch.context() as mp:
        _store_every_unit(mp)
        assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    return db


@pytest.fixture
def store(tmp_path, pristine):
    """A copy of its own for each test."""
    db = tmp_path / "db"
    shutil.copytree(pristine, db)
    return db


def _filters(con, version: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every filter of a store version (default the current) (n, 9) float32, and its model_id."""
    cond = "" if version is None else f"WHERE model_id IN (SELECT model_id FROM models_at({int(version)}))"
    t = con.execute(f"SELECT model_id, w0, w1, w2, w3, w4, w5, w6, w7, w8 FROM _all_filters {cond} "
                    "ORDER BY filter_id").fetchnumpy()
    return np.stack([t[f"w{i}"] for i in range(9)], axis=1), np.asarray(t["model_id"])


def _same(a: dict, b: dict) -> None:
    """Equal JSON but for how the histograms were computed and the time it took."""
    drop = lambda d: {k: v for k, v in d.items() if k not in ("method", "elapsed_ms")}  # noqa: E731
    assert drop(a) == drop(b)


@pytest.mark.parametrize("group_by, where", SELECTIONS)
def test_fine_histograms_of_whole_units_equal_a_scan(store, group_by, where):
    with open_catalog(store) as con:
        fast, slow = Analysis(con, store), Analysis(con, store, use_stored=False)
        a = fast.group_histograms(where, group_by, 2048)
        b = slow.group_histograms(where, group_by, 2048)
        assert (a.method, b.method) == ("unit_histograms", "scan")
        np.testing.assert_array_equal(a.counts, b.counts)
        kde_fast, kde_slow = fast.kde(group_by, where), slow.kde(group_by, where)
        assert (kde_fast["method"], kde_slow["method"]) == ("unit_histograms", "scan")
        _same(kde_fast, kde_slow)


@pytest.mark.parametrize("group_by, where", PARTS)
def test_parts_of_units_scan(store, group_by, where):
    """A selection or grouping that splits a unit is answered by a scan; one that happens to be made
    of whole units by their histograms: the same counts either way."""
    with open_catalog(store) as con:
        split = con.execute(f"SELECT count(*) FROM (SELECT model_id, depth_bin, count(DISTINCT {group_by}) AS k "
                            f"FROM layers GROUP BY ALL) WHERE k > 1").fetchone()[0] > 0
        a = Analysis(con, store).group_histograms(where, group_by, 2048)
        b = Analysis(con, store, use_stored=False).group_histograms(where, group_by, 2048)
        assert a.method == ("scan" if split or where else "unit_histograms") or (where and a.method == "unit_histograms")
        np.testing.assert_array_equal(a.counts, b.counts)


def test_the_density_figure_reads_the_models_2d_histograms(store):
    figure = {"bins": 512, "range": [-3.3, 3.3]}
    with open_catalog(store) as con:
        fast, slow = Analysis(con, store), Analysis(con, store, use_stored=False)
        for where in [None, {"task": "Classification"}, {"model": ["sample-s3-0003-mobilenetv2", "sample-s3-0007-efficientnet-b0"]}]:
            a, b = fast.density2d(where, **figure), slow.density2d(where, **figure)
            assert (a["method"], b["method"]) == ("unit_histograms", "scan")
            _same(a, b)
        # parts of models, other parameters: a scan
        assert fast.density2d({"depth_bin": "(0.9, 1.0]"}, **figure)["method"] == "scan"
        assert fast.density2d(None, bins=511, range=[-3.3, 3.3])["method"] == "scan"
        assert fast.density2d(None, components=[0, 2], **figure)["method"] == "scan"
        assert fast.density2d(None)["method"] == "scan"  # the basis range
        # counts leave out what is outside the range, and say how many
        c = fast.density2d(None, bins=8, range=[-0.5, 0.5])
        assert c["n_outside"] == c["n_filters"] - np.sum(c["counts"]) > 0


def _extreme_model(path, basis, seed: int):
    """A model file whose filters reach past any range a basis fitted on random filters has: for
    each component, the filters sign(C_i) and -sign(C_i) (its extremes over all peak-scaled
    filters), among random ones."""
    rng = np.random.default_rng(seed)
    signs = np.sign(basis.components)
    W = np.concatenate([signs, -signs, rng.normal(size=(46, 9))]).astype(np.float32)  # 64 filters
    np.savez(path, conv1=W.reshape(8, 8, 3, 3), conv2=rng.normal(size=(8, 8, 3, 3)).astype(np.float32))
    return path


def test_a_kept_basis_projects_the_added_layers(store, tmp_path):
    """Ingests with --refit never: the basis of version 1 stays, the new layers are projected on
    it, their coefficients outside its range are counted; every answer equals the scan with that
    basis and the naive reference fitted on version 1's filters; version 1's answers do not change."""
    figure = {"bins": 512, "range": [-3.3, 3.3]}
    with open_catalog(store) as con:
        a = Analysis(con, store)
        then = {"div": a.divergence("model"), "kde": a.kde("task"), "density": a.density2d(None, **figure)}
        basis_v1 = a.global_basis()
    other = write_sample_h5(tmp_path / "other.h5", n_models=3, n_filters=30_000, seed=11)
    assert cli_main(["ingest", "--allow-missing", str(other), "--db", str(store), "--refit", "never"]) == 0
    extreme = _extreme_model(tmp_path / "extreme.npz", basis_v1, 3)
    assert cli_main(["ingest", "--allow-missing", str(extreme), "--db", str(store), "--refit", "never", "--task", "GAN"]) == 0
    with open_catalog(store) as con:
        assert con.execute("SELECT version, basis_version FROM _versions ORDER BY version").fetchall() == \
            [(1, 1), (2, 1), (3, 1)]
        segs = con.execute("SELECT basis_version, store_version, n_layers FROM _histograms ORDER BY store_version").fetchall()
        n_new = [con.execute("SELECT count(*) FROM layers WHERE model_id IN (SELECT model_id FROM _models "
                             "WHERE version_added = ?)", [v]).fetchone()[0] for v in (2, 3)]
        assert [s[:2] for s in segs] == [(1, 1), (1, 2), (1, 3)] and [s[2] for s in segs[1:]] == n_new
        fast, slow = Analysis(con, store), Analysis(con, store, use_stored=False)
        assert fast.global_basis().n_filters == basis_v1.n_filters
        d_fast, d_slow = fast.divergence("model"), slow.divergence("model")
        assert (d_fast["method"], d_slow["method"]) == ("layer_histograms", "scan")
        _same(d_fast, d_slow)
        for group_by, where in SELECTIONS:
            k_fast, k_slow = fast.kde(group_by, where), slow.kde(group_by, where)
            assert k_fast["method"] == "unit_histograms"
            _same(k_fast, k_slow)
        a, b = fast.density2d(None, **figure), slow.density2d(None, **figure)
        assert a["method"] == "unit_histograms"
        _same(a, b)
        # The naive reference: PCA of version 1's filters, the groups' coefficients binned over its range.
        X1, _ = _filters(con, 1)
        X, model_of = _filters(con)
        ids = dict(con.execute("SELECT model, model_id FROM models").fetchall())
        groups = [X[model_of == ids[m]] for m in d_fast["labels"]]
        want = reference.divergence(groups, X1)
        np.testing.assert_allclose(d_fast["matrix"], want["matrix"], rtol=1e-9, atol=1e-12)
        pca = reference.PCA(n_components=9, svd_solver="full").fit(reference.scale(X1))
        lo, hi = want["range"]
        outside = [int(((C < lo) | (C > hi)).sum()) for C in (pca.transform(reference.scale(g)) for g in groups)]
        assert d_fast["n_outside"] == outside and outside[d_fast["labels"].index("extreme")] > 0
        # Version 1 answers as it did, bit for bit.
        from cnnfilterdb.snapshot import Snapshot

        v1 = Analysis(con, store, snapshot=Snapshot.at(con, store, 1))
        assert {k: v for k, v in v1.divergence("model").items() if k != "elapsed_ms"} == \
            {k: v for k, v in then["div"].items() if k != "elapsed_ms"}
        assert v1.kde("task") == then["kde"] and v1.density2d(None, **figure) == then["density"]


def test_a_removal_keeps_the_basis_and_writes_nothing(store):
    with open_catalog(store) as con:
        gone = con.execute("SELECT model FROM models WHERE model_id = 3").fetchone()[0]
        files = con.execute("SELECT path FROM _histograms").fetchall()
    code, out, err = run_cli("remove", gone, "--refit", "never", "--db", str(store))
    assert code == 0, err
    with open_catalog(store) as con:
        assert con.execute("SELECT path FROM _histograms").fetchall() == files
        assert con.execute("SELECT basis_version FROM _versions ORDER BY version").fetchall() == [(1,), (1,)]
        fast, slow = Analysis(con, store), Analysis(con, store, use_stored=False)
        for group_by, where in SELECTIONS:
            _same(fast.kde(group_by, where), slow.kde(group_by, where))
        _same(fast.divergence("task"), slow.divergence("task"))
        assert 3 not in fast.divergence("model_id")["labels"]


def test_refit_command_and_policy(store, tmp_path, monkeypatch):
    import cnnfilterdb.store as store_module

    # Beyond the small-store size, a commit keeps the basis until 5% of the filters changed.
    monkeypatch.setattr(store_module, "REFIT_SMALL_STORE", 0)
    with open_catalog(store) as con:
        n = con.execute("SELECT sum(n_filters) FROM layers").fetchone()[0]
    small = _npz(tmp_path / "small.npz", 1, out=4)  # 4 * 3 filters: far below 5%
    assert cli_main(["ingest", "--allow-missing", str(small), "--db", str(store), "--task", "GAN"]) == 0
    big = write_sample_h5(tmp_path / "big.h5", n_models=2, n_filters=int(0.06 * n), seed=5)
    assert cli_main(["ingest", "--allow-missing", str(big), "--db", str(store)]) == 0
    with open_catalog(store) as con:
        assert con.execute("SELECT version, basis_version FROM _versions ORDER BY version").fetchall() == \
            [(1, 1), (2, 1), (3, 2)]
        assert con.execute("SELECT store_version FROM _basis WHERE version = 2").fetchone()[0] == 3
    # a refit of a basis fitted on the current filters, its stored histograms complete: nothing to do
    code, out, err = run_cli("refit", "--db", str(store))
    assert code == 0, err
    r = json.loads(out)
    assert (r["version"], r["refitted"], r["basis_version"]) == (None, False, 2) and "nothing to refit" in r["note"]
    code, out, err = run_cli("ingest", "--allow-missing", str(_npz(tmp_path / "more.npz", 2, out=4)), "--db", str(store), "--task", "GAN",
                             "--refit", "never")
    assert code == 0, err
    r = json.loads(out)
    assert (r["version"], r["basis_version"], r["refitted"]) == (4, 2, False)
    code, out, err = run_cli("refit", "--db", str(store))
    assert code == 0, err
    r = json.loads(out)
    assert (r["version"], r["refitted"], r["basis_version"], r["previous_basis_version"]) == (5, True, 3, 2)
    with open_catalog(store) as con:
        total = con.execute("SELECT sum(n_filters) FROM layers").fetchone()[0]
        assert r["n_filters"] == total and con.execute("SELECT action FROM _versions WHERE version = 5").fetchone() == ("refit",)
        assert sum(Analysis(con, store).divergence("model")["n_outside"]) == 0
    code, out, err = run_cli("log", "--db", str(store))
    assert code == 0 and "refit" in out
    code, out, err = run_cli("refit", "--db", str(tmp_path / "nowhere"))
    assert code == 1 and "no store here" in err and not (tmp_path / "nowhere").exists()


def test_commands_say_whether_they_refitted(store, tmp_path):
    code, out, err = run_cli("ingest", "--allow-missing", str(_npz(tmp_path / "a.npz", 1)), "--db", str(store), "--task", "GAN")
    r = json.loads(out)
    assert code == 0 and (r["version"], r["basis_version"], r["refitted"]) == (2, 2, True)  # a small store refits
    code, out, err = run_cli("remove", "a", "--db", str(store), "--refit", "never")
    r = json.loads(out)
    assert code == 0 and (r["version"], r["basis_version"], r["refitted"]) == (3, 2, False)
    code, out, err = run_cli("ingest", "--allow-missing", str(tmp_path / "a.npz"), "--db", str(store), "--refit", "always")
    r = json.loads(out)  # the file is in the store's history, not in this version: added again
    assert code == 0 and r["refitted"] is True
    code, out, err = run_cli("ingest", "--allow-missing", str(tmp_path / "a.npz"), "--db", str(store), "--refit", "always")
    r = json.loads(out)  # already in the store: nothing committed, and the note says how to refit
    assert code == 0 and (r["version"], r["refitted"]) == (None, False) and "cnnfilterdb refit" in err
    # a folder holding a store: the store is listed as ignored, its files are not read as models
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    _npz(zoo / "b.npz", 2)
    import shutil

    shutil.copytree(store, zoo / "copy")
    code, out, err = run_cli("ingest", "--allow-missing", str(zoo), "--db", str(store), "--task", "GAN")
    r = json.loads(out)
    assert code == 0 and r["models_added"] == 1 and r["ignored"] == [f"{zoo / 'copy'} (a store)"]
    # drift's table says what the histograms leave out
    with open_catalog(store) as con:
        basis = Analysis(con, store).global_basis()
    assert cli_main(["ingest", "--allow-missing", str(_extreme_model(tmp_path / "x.npz", basis, 1)), "--db", str(store), "--refit", "never",
                     "--task", "Extreme"]) == 0
    code, out, err = run_cli("drift", "--group-by", "task", "--db", str(store))
    assert code == 0 and "coefficients outside the basis range, left out of the histograms" in out
    code, out, err = run_cli("info", "--db", str(store))
    assert code == 0 and "MiB of stored histograms" in out


def test_a_layout_6_store_reads_and_upgrades(store):
    """A store written before segments: its per-layer file still answers; the fine analyses scan
    until a refit writes a segment; its next commit upgrades the catalog."""
    with open_catalog(store) as con:
        want = Analysis(con, store).divergence("task")
        want_kde = Analysis(con, store).kde("task")
    as_layout_6(store)
    with open_catalog(store) as con:
        a = Analysis(con, store)
        got = a.divergence("task")
        assert got["method"] == "layer_histograms" and got["matrix"] == want["matrix"]
        k = a.kde("task")
        assert k["method"] == "scan"
        _same(k, want_kde)
    before = store_snapshot(store)
    assert cli_main(["verify", "--db", str(store)]) == 0
    assert store_snapshot(store) == before
    with open_catalog(store) as con:
        model = con.execute("SELECT model FROM models WHERE task <> 'GAN' LIMIT 1").fetchone()[0]
    assert cli_main(["label", model, "--task", "GAN", "--db", str(store)]) == 0
    with open_catalog(store) as con:
        assert con.execute("SELECT schema_version FROM _store").fetchone()[0] == 8
        assert Analysis(con, store).divergence("task")["method"] == "layer_histograms"
    assert cli_main(["refit", "--db", str(store)]) == 0
    with open_catalog(store) as con:
        assert Analysis(con, store).kde("task")["method"] == "unit_histograms"


def _npz(path, seed: int, out: int = 8):
    rng = np.random.default_rng(seed)
    np.savez(path, conv1=rng.normal(size=(out, 3, 3, 3)).astype(np.float32))
    return path


def test_small_units_and_models_are_scanned(tmp_path, sample_v1, monkeypatch):
    """Units and models below the size worth storing are left out of the segment (-1) and scanned
    when a selection holds them; the sum of stored and scanned counts equals the scan, bit for bit."""
    import cnnfilterdb.segments as segments

    db = tmp_path / "db"
    monkeypatch.setattr(segments, "FINE_MIN_FILTERS", 1_200)
    monkeypatch.setattr(segments, "DENSITY_MIN_FILTERS", 5_000)  # 6 of the 12 models (4,998 to 5,003 filters)
    assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    with open_catalog(db) as con:
        (rel,), = con.execute("SELECT path FROM _histograms").fetchall()
        per_unit = dict(((m, d), n) for m, d, n in con.execute(
            "SELECT model_id, depth_bin, sum(n_filters) FROM layers GROUP BY ALL").fetchall())
        per_model = dict(con.execute("SELECT model_id, sum(n_filters) FROM layers GROUP BY ALL").fetchall())
    seg = np.load(db / rel)
    stored_units = set(zip(seg["unit_models"].tolist(), seg["unit_depth_bins"].tolist()))
    assert stored_units == {k for k, n in per_unit.items() if n >= 1_200} and 0 < len(stored_units) < len(per_unit)
    assert set(seg["model_ids"].tolist()) == {m for m, n in per_model.items() if n >= 5_000}
    assert 0 < len(seg["model_ids"]) < len(per_model) and (seg["layer_units"] == -1).any()
    with open_catalog(db) as con:
        fast, slow = Analysis(con, db), Analysis(con, db, use_stored=False)
        for group_by, where in SELECTIONS:
            a, b = fast.group_histograms(where, group_by, 2048), slow.group_histograms(where, group_by, 2048)
            assert a.method == "unit_histograms"
            np.testing.assert_array_equal(a.counts, b.counts)
        stored_model, small_model = int(seg["model_ids"][0]), min(set(per_model) - set(seg["model_ids"].tolist()))
        for where, method in [(None, "unit_histograms"), ({"model_id": [stored_model, small_model]}, "unit_histograms"),
                              ({"model_id": small_model}, "scan")]:  # nothing stored to sum: a plain scan
            a, b = fast.density2d(where, bins=512, range=[-3.3, 3.3]), slow.density2d(where, bins=512, range=[-3.3, 3.3])
            assert a["method"] == method
            _same(a, b)


def test_the_policy_counts_removals_after_compact(store, tmp_path, monkeypatch):
    """Filters removed since the fit count as changed even once `compact` forgot the fitted
    version's rows (the fit's layers are those up to its largest layer id)."""
    import cnnfilterdb.store as store_module

    monkeypatch.setattr(store_module, "REFIT_SMALL_STORE", 0)
    with open_catalog(store) as con:
        gone = [m for (m,) in con.execute("SELECT model FROM models WHERE model_id < 7").fetchall()]
    assert cli_main(["remove", *gone, "--db", str(store), "--refit", "never"]) == 0
    assert cli_main(["compact", "--keep-versions", "1", "--db", str(store)]) == 0
    code, out, err = run_cli("ingest", "--allow-missing", str(_npz(tmp_path / "t.npz", 4, out=2)), "--db", str(store), "--task", "GAN")
    assert code == 0, err
    assert json.loads(out)["refitted"] is True  # 7 of 12 models gone since the fit: far past 5%


def test_kde_of_a_group_with_no_value_in_range(tmp_path):
    """A kept basis fitted on filters of one shape, then a model all of whose coefficient c_i fall
    outside its range: its quartiles are null (not a 500), its densities zero."""
    from fastapi.testclient import TestClient

    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    rng = np.random.default_rng(0)
    a = np.zeros((64, 1, 3, 3), np.float32)
    a[:, 0, 0, 0] = 1
    a += rng.normal(size=a.shape).astype(np.float32) * 1e-3
    np.savez(tmp_path / "a.npz", conv=a)
    np.savez(tmp_path / "b.npz", conv=rng.normal(size=(16, 4, 3, 3)).astype(np.float32))
    db = tmp_path / "db"
    assert cli_main(["ingest", "--allow-missing", str(tmp_path / "a.npz"), "--db", str(db), "--task", "A"]) == 0
    assert cli_main(["ingest", "--allow-missing", str(tmp_path / "b.npz"), "--db", str(db), "--task", "B", "--refit", "never"]) == 0
    client = TestClient(create_app(Settings(db=db)), raise_server_exceptions=False)
    r = client.post("/v1/kde", json={"group_by": "task"})
    assert r.status_code == 200, r.text
    b = r.json()["groups"][1]
    assert b["label"] == "B" and b["n_outside"] > 0
    empty = [i for i, q in enumerate(b["quartiles"]) if q == [None, None]]
    assert empty and all(not any(b["density"][i]) for i in empty)
    assert client.get("/v1/plots/ridge.png?group_by=task").status_code == 200


@pytest.mark.parametrize("kind", ["fifo", "link"])
def test_a_segment_that_is_no_regular_file_is_damage(store, kind):
    """A FIFO or a link in a segment's place: one line naming it, never a hang or a read of what a
    link leads to (here /dev/zero, endless)."""
    import os
    import subprocess
    import sys

    with open_catalog(store) as con:
        (rel,), = con.execute("SELECT path FROM _histograms").fetchall()
    (store / rel).unlink()
    os.mkfifo(store / rel) if kind == "fifo" else (store / rel).symlink_to("/dev/zero")
    r = subprocess.run([sys.executable, "-m", "cnnfilterdb.cli", "drift", "--group-by", "task", "--db", str(store)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and rel in r.stderr
    assert ("not a regular file" if kind == "fifo" else "symbolic link") in r.stderr, r.stderr


def test_a_half_written_store_in_an_ingested_folder_is_skipped(tmp_path):
    """A store whose first ingest died before its commit (its lock and shards, no catalog) is not
    read as model files when its folder is ingested."""
    half = tmp_path / "zoo" / "half"
    (half / "shards").mkdir(parents=True)
    (half / ".ingest.lock").touch()
    np.savez(half / "shards" / "x-histograms.npz", layer_ids=np.arange(3))
    _npz(tmp_path / "zoo" / "m.npz", 1)
    code, out, err = run_cli("ingest", "--allow-missing", str(tmp_path / "zoo"), "--db", str(tmp_path / "db"), "--task", "GAN")
    assert code == 0, err
    r = json.loads(out)
    assert r["models_added"] == 1 and r["ignored"] == [f"{half} (a store)"]


@pytest.mark.parametrize("change", ["layer", "unit", "negative", "model"])
def test_a_segment_whose_counts_are_not_its_layers_is_damage(store, change):
    """A segment rewritten with other counts and recorded in the catalog with its new sha256 (what
    no writer of the store does): the counts no longer add up to the catalog's filters, and a reader
    says so instead of answering from them."""
    import hashlib

    import duckdb

    with open_catalog(store) as con:
        (rel,), = con.execute("SELECT path FROM _histograms").fetchall()
    seg = dict(np.load(store / rel))
    if change == "layer":
        seg["layer_counts"][0, 0, 0] += 1
    elif change == "unit":
        seg["unit_counts"][0, 0, 0] += 1
    elif change == "model":  # more (c0, c1) counts than the model has filters
        seg["model_density"][0, 0, 0] += int(seg["model_density"][0].sum()) + 10**6
    else:  # the sum kept, one count below zero
        v = int(seg["layer_counts"][0, 0, 0])
        seg["layer_counts"][0, 0, 0] = -1
        seg["layer_counts"][0, 0, 1] += v + 1
    with open(store / rel, "wb") as f:
        np.savez(f, **seg)
    data = (store / rel).read_bytes()
    with duckdb.connect(str(store / "catalog.duckdb")) as con:
        con.execute("UPDATE _histograms SET bytes = ?, sha256 = ?", [len(data), hashlib.sha256(data).hexdigest()])
    code, out, err = run_cli("drift", "--group-by", "task", "--db", str(store))
    assert code == 1 and rel in err and ("add up" in err or "not its layers'" in err or "negative" in err), err


def test_a_store_of_small_units_and_models_only(tmp_path, sample_v1, monkeypatch):
    """No unit and no model reaches the size worth storing: the segment holds per-layer counts only,
    and the fine and 2-D analyses scan (a store of many small models crashed every analysis)."""
    import cnnfilterdb.segments as segments

    monkeypatch.setattr(segments, "FINE_MIN_FILTERS", 10**9)
    monkeypatch.setattr(segments, "DENSITY_MIN_FILTERS", 10**9)
    db = tmp_path / "db"
    assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    with open_catalog(db) as con:
        (rel,), = con.execute("SELECT path FROM _histograms").fetchall()
        seg = np.load(db / rel)
        assert len(seg["unit_models"]) == 0 and len(seg["model_ids"]) == 0
        fast, slow = Analysis(con, db), Analysis(con, db, use_stored=False)
        d = fast.divergence("task")
        assert d["method"] == "layer_histograms"
        _same(d, slow.divergence("task"))
        k = fast.kde("task")
        assert k["method"] == "scan"
        _same(k, slow.kde("task"))
        assert fast.density2d(None, bins=512, range=[-3.3, 3.3])["method"] == "scan"
    code, out, err = run_cli("drift", "--group-by", "task", "--db", str(db))
    assert code == 0, err
