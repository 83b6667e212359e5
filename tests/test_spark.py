"""The store's exact scans on Apache Spark (issue 13, docs/method.md#spark), on ``local[2]``: the
jobs' integer histograms equal the local engine's bit for bit, their moments and divergence
matrices to 1e-12; a selection with where, an empty selection, an older version, a store of
several shards and ingests; the refresh commits what a local refit writes; the README's Spark
SQL gives the DuckDB shell's rows."""
from __future__ import annotations

import functools
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cnnfilterdb.analysis import Analysis
from cnnfilterdb.catalog import VersionError
from cnnfilterdb.ingest import ingest_paths
from cnnfilterdb.ingest.shards import ShardWriter
from cnnfilterdb.layout import StoreDamaged, StoreError
from cnnfilterdb.scan import LayerGroups, ShardScanner
from cnnfilterdb.selection import EmptySelectionError
from cnnfilterdb.snapshot import Snapshot
from cnnfilterdb.spark import SparkStore, session, store_uri
from cnnfilterdb.spark.session import SparkError
from cnnfilterdb.store import FilterStore

from . import reference
from .helpers import REPO, as_layout_6, cli_main, open_catalog, store_snapshot


@pytest.fixture(scope="module")
def spark(need):
    need("spark")  # PySpark and Java: skipped without them (failed where CI is set)
    s = session("local[2]")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def store(tmp_path_factory, sample_v1, sample_v01) -> Path:
    """Two ingests into small shards (20,000 rows, row groups of 1,000: layers split across row
    groups, shards and Spark's partitions), a relabelling and a removal (the removed model's
    filters stay in the shards): five shards, four versions; in a directory whose name has a space
    and a quote."""
    db = tmp_path_factory.mktemp("spark") / "a store's dir" / "db"  # a space and a quote: URIs and SQL strings
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ShardWriter, "__init__", functools.partialmethod(ShardWriter.__init__, shard_rows=20_000,
                                                                    row_group_rows=1_000))
        ingest_paths([sample_v1], db)
        ingest_paths([sample_v01], db)
    with open_catalog(db) as con:
        first, second = [m for (m,) in con.execute("SELECT model FROM models ORDER BY model_id LIMIT 2").fetchall()]
    assert cli_main(["label", first, "--task", "Classification", "--db", str(db)]) == 0
    assert cli_main(["remove", second, "--db", str(db)]) == 0
    with open_catalog(db) as con:
        assert con.execute("SELECT count(*) FROM _shards").fetchone()[0] == 5
        assert con.execute("SELECT max(version) FROM _versions").fetchone()[0] == 4
    return db


@pytest.fixture(scope="module", params=["arrow", "spark"])
def spark_store(request, spark, store) -> SparkStore:
    """The store read by Spark, its jobs reading the shards with pyarrow (whole row groups) or
    through Spark's Parquet reader: every test of it runs with both."""
    return SparkStore.open(spark, store, read=request.param)


def _local(db: Path, as_of: int | None = None) -> tuple:
    con = open_catalog(db)
    return con, Analysis(con, db, snapshot=Snapshot.at(con, db, as_of), use_stored=False)


def _all_layers(con, version: int) -> LayerGroups:
    """Every layer of the version its own group: the refresh's per-layer histograms."""
    ids = np.array([r[0] for r in con.execute(f"SELECT layer_id FROM layers_at({version}) ORDER BY layer_id").fetchall()])
    max_id = con.execute("SELECT max(layer_id) FROM _layers").fetchone()[0]
    return LayerGroups.of(ids, np.arange(len(ids)), len(ids), max_id)


def test_store_uri():
    assert store_uri("s3a://bucket/store/") == "s3a://bucket/store"
    assert store_uri("hdfs://nn:8020/x") == "hdfs://nn:8020/x"
    assert store_uri("relative/dir").startswith("file:///") and store_uri("relative/dir").endswith("/relative/dir")


def test_per_layer_histograms_and_range_are_the_local_engines(spark_store, store):
    con, local = _local(store)
    with con:
        groups = _all_layers(con, local.version)
        basis = local.global_basis()
        scanner = ShardScanner(local.shard_paths())
        assert spark_store.scanner.range(groups, basis) == scanner.range(groups, basis)
        for bins in (70, 33):
            (a, a_out), (b, b_out) = (s.histograms(groups, basis, basis.range_min, basis.range_max, bins)
                                      for s in (spark_store.scanner, scanner))
            assert a.dtype == np.int64 and a.shape == (groups.n_groups, 9, bins)
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a_out, b_out)
            assert a_out.shape == (groups.n_groups, 9) and not a_out.any()  # the range is the basis's
        half = (basis.range_min, (basis.range_min + basis.range_max) / 2)  # values outside counted apart, alike
        (a, a_out), (b, b_out) = (s.histograms(groups, basis, *half, 70) for s in (spark_store.scanner, scanner))
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a_out, b_out)
        assert a_out.sum() > 0 and (a.sum(axis=2) + a_out == a[:, :1].sum(axis=2) + a_out[:, :1]).all()
        # and the counts are numpy's: np.histogram of the reference's coefficients, layer by layer
        W = con.execute("SELECT layer_id, w0, w1, w2, w3, w4, w5, w6, w7, w8 FROM filters ORDER BY filter_id").fetchnumpy()
    X = np.stack([W[f"w{i}"] for i in range(9)], axis=1).astype(np.float64)
    coeffs = (reference.scale(X) - basis.mean) @ basis.components.T
    ids = np.flatnonzero(groups.group_of_layer >= 0)
    for layer in ids[[0, len(ids) // 2, -1]]:
        rows = W["layer_id"] == layer
        # one Spark job per layer: its nine components' histograms
        a_layer = spark_store.scanner.histograms(LayerGroups.of([layer], [0], 1, int(ids[-1])), basis, basis.range_min,
                                                 basis.range_max, 70)[0][0]
        for i in range(9):
            expect, _ = np.histogram(coeffs[rows, i], 70, range=(basis.range_min, basis.range_max))
            np.testing.assert_array_equal(a_layer[i], expect)
            assert a_layer[i].sum() == rows.sum()


def test_layer_moments_are_the_ingests_to_1e_12(spark_store, store):
    con, local = _local(store)
    with con:
        stored = local.snapshot.layer_moments(con)
        ids = np.array([r[0] for r in con.execute("SELECT layer_id FROM layers ORDER BY layer_id").fetchall()])
    layer_ids, n, mean, scatter = spark_store.scanner.layer_moments(ids)
    np.testing.assert_array_equal(layer_ids, ids)
    pos = np.searchsorted(stored.layer_ids, ids)
    np.testing.assert_array_equal(n, stored.n[pos])
    norm = np.maximum(np.abs(stored.scatter[pos]).max(axis=(1, 2)), 1e-300)[:, None, None]
    assert (np.abs(scatter - stored.scatter[pos]) / norm).max() < 1e-12
    assert np.abs(mean - stored.mean[pos]).max() < 1e-12
    # pooled, they give the store's basis to 1e-12
    from cnnfilterdb.stats.basis import fit_basis
    from cnnfilterdb.stats.moments import pool

    b = fit_basis(pool(n, mean, scatter))
    with open_catalog(store) as con:
        g = Analysis(con, store).global_basis()
    np.testing.assert_allclose(b.explained_variance, g.explained_variance, rtol=1e-12)
    np.testing.assert_allclose(np.abs(b.components @ g.components.T), np.eye(9), atol=1e-10)


CASES = [
    dict(group_by="task"),
    dict(group_by="model", where={"task": ["GAN", "Segmentation"]}, metric="js", bins=33),
    dict(group_by="depth_bin", where={"conv_depth": {"gte": 1}}, basis="selection", weights="uniform"),
    dict(group_by="visual_category", metric="hellinger", bins=120, basis="selection"),
    dict(group_by="layer_id", where={"model_id": 3}, metric="wasserstein"),
]


@pytest.mark.parametrize("case", CASES, ids=[c["group_by"] for c in CASES])
def test_divergence_is_the_local_engines(spark_store, store, case):
    got = spark_store.divergence(**case)
    con, local = _local(store)
    with con:
        expect = local.divergence(**case)
    assert got["method"] == "spark" and expect["method"] == "scan"
    for key in expect:
        if key in ("method", "elapsed_ms", "matrix"):
            continue
        assert got[key] == expect[key], key
    a, b = np.array(got["matrix"]), np.array(expect["matrix"])
    assert a.shape == b.shape and len(a) >= 2
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)


def test_an_older_version(spark, store):
    old = SparkStore.open(spark, store, as_of=2)
    assert old.version == 2
    got = old.divergence("task")
    con, local = _local(store, as_of=2)
    with con:
        expect = local.divergence("task")
    assert got["store_version"] == 2 and got["n_filters"] == expect["n_filters"] and got["labels"] == expect["labels"]
    np.testing.assert_allclose(got["matrix"], expect["matrix"], rtol=1e-12, atol=0)
    with pytest.raises(VersionError, match="no store version 9; this store holds versions 1 to 4"):
        SparkStore.open(spark, store, as_of=9)


def test_an_empty_selection_is_a_clear_error(spark_store, store, capsys):
    with pytest.raises(EmptySelectionError, match="no filters match the selection"):
        spark_store.divergence("task", where={"conv_depth": {"gt": 10_000}})
    with pytest.raises(EmptySelectionError, match="'GANs' is not a task of any model.*did you mean 'GAN'"):
        spark_store.divergence("task", where={"task": "GANs"})
    assert cli_main(["spark", "divergence", "--master", "local[2]", "--db", str(store), "--group-by", "task",
                     "--where", '{"model_id": 99999}']) == 1
    err = capsys.readouterr().err
    assert err.startswith("cnnfilterdb: error: no filters match the selection") and len(err.splitlines()) == 1


def test_cli_divergence_json_is_drifts(store, spark, capsys):
    args = ["--group-by", "visual_category", "--where", '{"task": "GAN"}', "--metric", "js", "--json", "--db", str(store)]
    assert cli_main(["drift", *args]) == 0
    local = json.loads(capsys.readouterr().out)
    assert cli_main(["spark", "divergence", "--master", "local[2]", "--conf", "spark.sql.shuffle.partitions=3", *args]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == set(local) and got["method"] == "spark"
    np.testing.assert_allclose(got["matrix"], local["matrix"], rtol=1e-12, atol=0)
    assert {k: v for k, v in got.items() if k not in ("method", "elapsed_ms", "matrix")} == \
        {k: v for k, v in local.items() if k not in ("method", "elapsed_ms", "matrix")}
    # the store given as a URI (what an s3a:// or hdfs:// path is to Spark)
    assert cli_main(["spark", "divergence", "--master", "local[2]", *args[:-2], "--store", f"file://{store}"]) == 0
    assert json.loads(capsys.readouterr().out)["matrix"] == got["matrix"]


def test_refresh_commits_what_a_local_refit_writes(spark, store, tmp_path, capsys):
    db = tmp_path / "db"
    shutil.copytree(store, db)
    with open_catalog(db) as con:
        before = con.execute("SELECT * EXCLUDE (version, fitted_at, store_version) FROM basis").fetchall()
        (old_file,) = con.execute("SELECT path FROM _histograms WHERE basis_version = "
                                  "(SELECT basis_version FROM _versions WHERE version = 4)").fetchone()
    drift_before = json.loads(_run_json(["drift", "--group-by", "model", "--json", "--db", str(db)], capsys))
    out = json.loads(_run_json(["spark", "refresh", "--master", "local[2]", "--db", str(db)], capsys))
    assert out["version"] == 5 and out["master"].startswith("local")
    with open_catalog(db) as con:
        action, summary, bv = con.execute("SELECT action, summary, basis_version FROM versions WHERE version = 5").fetchone()
        assert action == "refresh" and "refitted on Spark" in summary and bv == out["basis_version"]
        # the same basis, bit for bit (fitted from the same moments), the same range (exact scans)
        assert con.execute("SELECT * EXCLUDE (version, fitted_at, store_version) FROM basis").fetchall() == before
        (new_file,) = con.execute("SELECT path FROM _histograms WHERE basis_version = ?", [bv]).fetchone()
    assert new_file != old_file
    new, old = np.load(db / new_file), np.load(db / old_file)
    # the per-layer and per-unit histograms of the local refit; the per-model 2-D ones are not made on Spark
    assert set(new.files) == set(old.files) - {"layer_models", "model_ids", "model_density"}
    for name in new.files:
        np.testing.assert_array_equal(new[name], old[name])
    assert FilterStore(db).verify().problems == []
    drift_after = json.loads(_run_json(["drift", "--group-by", "model", "--json", "--db", str(db)], capsys))
    assert drift_after["matrix"] == drift_before["matrix"] and drift_after["method"] == "layer_histograms"


def test_a_failed_refresh_leaves_the_store_unchanged(spark, store, tmp_path, capsys):
    db = tmp_path / "db"
    shutil.copytree(store, db)
    before = store_snapshot(db)
    files = sorted(p.relative_to(db) for p in db.rglob("*"))
    assert cli_main(["spark", "refresh", "--master", "local[2]", "--db", str(db), "--store", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cnnfilterdb: error: ") and "nowhere" in err and len(err.splitlines()) == 1
    assert store_snapshot(db) == before and sorted(p.relative_to(db) for p in db.rglob("*")) == files


def test_a_store_without_tables_a_missing_shard_a_bad_master(spark, store, tmp_path, capsys, monkeypatch):
    with pytest.raises(StoreError, match="no tables/LATEST: not a store"):
        SparkStore.open(spark, tmp_path)
    assert cli_main(["spark", "divergence", "--master", "local[2]", "--db", str(tmp_path), "--group-by", "task"]) == 1
    assert "no tables/LATEST" in capsys.readouterr().err
    # a shard gone where Spark reads the store: one line naming it, not a Java stack trace
    db = tmp_path / "db"
    shutil.copytree(store, db)
    with open_catalog(db) as con:
        (shard,) = con.execute("SELECT path FROM _shards ORDER BY filter_id_first LIMIT 1").fetchone()
    (db / shard).unlink()
    with pytest.raises(StoreError, match=f"{re.escape(shard)}: missing; the store is damaged") as e:
        SparkStore.open(spark, db).divergence("task")  # its tasks read with pyarrow
    assert "\n" not in str(e.value)
    # read='spark': its checksum pass (pyarrow, before Spark's reader) finds it first
    with pytest.raises(StoreError, match=f"{re.escape(shard)}: missing; the store is damaged") as e:
        SparkStore.open(spark, db, read="spark").divergence("task")
    assert "\n" not in str(e.value)
    # a forged LATEST, a forged shard path: named, never followed out of the store
    latest = (db / "tables" / "LATEST").read_text()
    (db / "tables" / "LATEST").write_text("../../etc\n")
    with pytest.raises(StoreDamaged, match=r"tables/LATEST: names '../../etc', not a tables directory"):
        SparkStore.open(spark, db)
    (db / "tables" / "LATEST").write_text(latest)
    shards = db / latest.strip() / "shards.parquet"
    t = pq.read_table(shards)
    pq.write_table(t.set_column(0, "path", pa.array(["/etc/passwd"] + t.column("path").to_pylist()[1:])), shards)
    with pytest.raises(StoreDamaged, match="shards.parquet: names '/etc/passwd', not a shard of the store"):
        SparkStore.open(spark, db)
    for master in ["bogus", "local[two]", "local[0]", "spark:/x", ""]:
        assert cli_main(["spark", "refresh", "--master", master, "--db", str(store)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"cnnfilterdb: error: --master {master!r} is not a Spark master URL") and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:  # argparse's usage error
        cli_main(["spark", "refresh", "--master", "local[2]", "--conf", "no-equals-sign", "--db", str(store)])
    assert e.value.code == 2 and "expected KEY=VALUE, got 'no-equals-sign'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "pyspark", None)  # the extra not installed
    assert cli_main(["spark", "refresh", "--master", "local[2]", "--db", str(store)]) == 1
    assert "pip install 'cnnfilterdb[spark]'" in capsys.readouterr().err


def _run_json(argv: list[str], capsys) -> str:
    assert cli_main(argv) == 0
    return capsys.readouterr().out


def _readme_spark() -> tuple[str, list[str]]:
    text = (REPO / "docs/spark.md").read_text()
    block = re.search(r"<!-- spark-sql -->(.*?)<!-- /spark-sql -->", text, re.S).group(1)
    (setup,) = re.findall(r"```python\n(.*?)```", block, re.S)
    return setup, [q.strip() for q in re.findall(r"```sql\n(.*?)```", block, re.S)]


def test_readme_spark_sql_gives_the_duckdb_rows(spark, store):
    """The README's PySpark setup (the tables, nothing of this package) and its three queries give
    the rows the DuckDB shell's queries give on the catalog."""
    setup, queries = _readme_spark()
    assert len(queries) == 3
    exec(setup.replace('store = "filterdb"', f"store = {str(store)!r}"), {})
    by_task, one_layer, sparsest = [spark.sql(q).toArrow().to_pylist() for q in queries]
    with open_catalog(store) as con:
        rows = {r[0]: (r[1], [float(x) for x in r[2]]) for r in con.execute(
            "SELECT f.filter_id, m.model, f.w FROM filters f JOIN models m USING (model_id) "
            "WHERE m.task = 'Classification'").fetchall()}
        assert len(by_task) == 10
        for r in by_task:
            assert rows[r["filter_id"]] == (r["model"], [float(x) for x in r["w"]])
        expect = con.execute("SELECT filter_id, as_3x3(w) FROM filters WHERE layer_id = 5 ORDER BY filter_id").fetchall()
        assert [(r["filter_id"], r["w3x3"]) for r in one_layer] == [(i, [list(row) for row in w]) for i, w in expect]
        cols = "layer_id, model, task, conv_depth, depth_bin, n_filters, sparsity, variance_entropy, " \
               "variance_entropy_norm, variance_entropy_clean"
        expect = con.execute(f"SELECT {cols} FROM layers_with_models ORDER BY sparsity DESC, layer_id LIMIT 10").fetchall()
        assert [tuple(r.values()) for r in sparsest] == expect


def test_arguments_are_checked_before_spark_starts(tmp_path, capsys, monkeypatch, v1_store):
    """Bad arguments are one line at once, before any JVM: no Spark is even importable here. A
    name no field could have is refused by the grammar; a well-formed one the store lacks (it
    could be a model property) by the local store's catalog."""
    monkeypatch.setitem(sys.modules, "pyspark", None)
    for args, message in [(["--group-by", "Tsak"], "unknown group_by 'Tsak' (did you mean 'task'?)"),
                          (["--group-by", "tsak", "--db", str(v1_store)], "unknown group_by 'tsak' (did you mean 'task'?)"),
                          (["--group-by", "task", "--within", "depth_dec", "--db", str(v1_store)],
                           "unknown within 'depth_dec' (did you mean 'depth_decile' or 'depth_bin'?)"),
                          (["--group-by", "task", "--metric", "kl"], "unknown metric 'kl'"),
                          (["--group-by", "task", "--bins", "0"], "bins"),
                          (["--group-by", "task", "--basis", "local"], "unknown basis 'local'"),
                          (["--group-by", "task", "--where", '{"Nope": 1}'], "unknown field(s) in where"),
                          (["--group-by", "task", "--where", '{"nope": 1}', "--db", str(v1_store)],
                           "unknown field(s) in where: ['nope']"),
                          (["--group-by", "task", "--db", "x", "--store", "file:///x"], "--db DIR or --store URI, not both")]:
        assert cli_main(["spark", "divergence", "--master", "local[2]", *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("cnnfilterdb: error: ") and message in err and err.count("\n") == 1, err
    assert cli_main(["spark", "refresh", "--master", "local[2]", "--db", str(tmp_path / "nothing")]) == 1
    assert "no store here" in capsys.readouterr().err and not (tmp_path / "nothing").exists()


def test_a_missing_directory_and_job_errors_in_one_line(spark, tmp_path):
    from cnnfilterdb.spark.session import job_error

    with pytest.raises(StoreError, match=f"{re.escape(str(tmp_path / 'nowhere'))}: no such directory"):
        SparkStore.open(spark, tmp_path / "nowhere")
    wrapped = ("An exception was thrown from the Python worker. Please see the stack trace below.\n"
               "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
               "ModuleNotFoundError: No module named 'cnnfilterdb'\n\n\tat org.apache.spark.api.python.X")
    assert job_error(Exception(wrapped)).startswith("the executors' Python has no cnnfilterdb: set PYSPARK_PYTHON")
    raised = "Job aborted.\nTraceback (most recent call last):\nValueError: bad row group\n\tat org.apache.X\n"
    assert job_error(Exception(raised)) == "ValueError: bad row group"
    assert "hadoop-aws" in job_error(Exception("java.lang.ClassNotFoundException: Class org.apache.hadoop.fs.s3a."
                                               "S3AFileSystem not found"))


def test_each_task_reads_a_contiguous_run_of_layers(spark, store):
    """read='arrow' gives each task consecutive row groups, so that a task's per-layer partial
    spans its own layers (a refresh of 1e7 layers must not hold the store's in every task)."""
    import pyarrow as pa

    st = SparkStore.open(spark, store)

    def task(tables):
        ids = [t.column("layer_id").to_numpy() for t in tables]
        ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
        yield pa.RecordBatch.from_pydict({"lo": [int(ids.min()) if len(ids) else -1], "hi": [int(ids.max()) if len(ids) else -1]})

    spans = sorted((r.lo, r.hi) for r in st.scanner._job(["layer_id"], 0, 10**9, task, "lo long, hi long").collect() if r.lo >= 0)
    assert len(spans) >= 4  # several tasks
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # disjoint but for a layer cut between two


def test_shards_not_as_committed_are_refused_not_answered(spark, store, tmp_path, capsys):
    """A shard rewritten with fewer rows (valid Parquet, as a half-synced copy would be): the scans
    count what they read against the catalog, so neither a divergence nor a refresh answers from it."""
    db = tmp_path / "db"
    shutil.copytree(store, db)
    with open_catalog(db) as con:
        (shard,) = con.execute("SELECT path FROM _shards ORDER BY filter_id_first LIMIT 1").fetchone()
    t = pq.read_table(db / shard)
    pq.write_table(t.slice(0, t.num_rows // 2), db / shard, row_group_size=1_000)
    _record_checksums(db, shard)  # a copy whose checksums were taken after the cut: only the counts disagree
    before = store_snapshot(db)
    for read in ("arrow", "spark"):
        with pytest.raises(StoreDamaged, match="the scan found .* filters of the selection where the catalog holds"):
            SparkStore.open(spark, db, read=read).divergence("task")
    assert cli_main(["spark", "refresh", "--master", "local[2]", "--db", str(db)]) == 1
    assert "the scan found" in capsys.readouterr().err
    assert store_snapshot(db) == before
    assert cli_main(["drift", "--group-by", "task", "--basis", "selection", "--db", str(db)]) == 1  # the local scan too


def _record_checksums(db: Path, shard: str) -> None:
    """Record the row group checksums of ``shard`` as it is now, in the catalog and in the current
    tables' row_groups.parquet."""
    import duckdb

    from cnnfilterdb.checksums import shard_checksums

    rows = [(shard, *r) for r in shard_checksums(db / shard)]
    with duckdb.connect(str(db / "catalog.duckdb")) as con:
        con.execute("DELETE FROM _row_groups WHERE path = ?", [shard])
        con.executemany("INSERT INTO _row_groups VALUES (?, ?, ?, ?, ?)", rows)
    table = db / (db / "tables" / "LATEST").read_text().strip() / "row_groups.parquet"
    t = pq.read_table(table)
    kept = [r for r in t.to_pylist() if r["path"] != shard]
    new = kept + [dict(zip(t.column_names, r)) for r in rows]
    pq.write_table(pa.Table.from_pylist(new, schema=t.schema), table)


def test_glob_characters_and_versions_before_the_tables(spark, store, tmp_path):
    with pytest.raises(SparkError, match="cannot go to Spark, whose Hadoop paths expand them as a pattern"):
        SparkStore.open(spark, tmp_path / "exp[1]")
    import duckdb

    db = tmp_path / "db"
    shutil.copytree(store, db)
    as_layout_6(db)
    with duckdb.connect(str(db / "catalog.duckdb")) as con:  # as written before the tables (layout 4)
        con.execute("DROP TABLE _tables")
        con.execute("DROP TABLE _row_groups")
        con.execute("UPDATE _store SET schema_version = 4")
    shutil.rmtree(db / "tables")
    with open_catalog(db) as con:
        model = con.execute("SELECT model FROM models ORDER BY model_id LIMIT 1").fetchone()[0]
    assert cli_main(["label", model, "--task", "GAN", "--db", str(db)]) == 0
    assert SparkStore.open(spark, db).version == 5
    with pytest.raises(VersionError, match="store version 4 predates the store's Parquet tables"):
        SparkStore.open(spark, db, as_of=4)


def test_symbolic_links_in_the_store_are_refused_not_followed(spark, store, tmp_path, capsys):
    """A store whose tables/ is a link to another store's: Spark followed it (issue 20, finding 8),
    and a refresh would have written into, and collected the garbage of, the other store. Any link
    in the layout (tables/, LATEST, a table file, shards/, a shard) is StoreDamaged naming it."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(store, a)
    shutil.copytree(store, b)  # the same files: following a link would read as if nothing were wrong
    link = re.escape("a symbolic link; a store's files and directories are its own, links are not followed")
    latest = (a / "tables" / "LATEST").read_text().strip()
    with open_catalog(a) as con:
        (shard,) = con.execute("SELECT path FROM _shards ORDER BY filter_id_first LIMIT 1").fetchone()
    b_before = store_snapshot(b), sorted(p.relative_to(b) for p in b.rglob("*"))
    for rel in ["tables", "tables/LATEST", f"{latest}/basis.parquet", latest, "shards", shard]:
        saved = tmp_path / "saved"
        shutil.move(a / rel, saved)
        (a / rel).symlink_to(b / rel)
        for location in (a, f"file://{a}"):
            with pytest.raises(StoreDamaged, match=f"^{re.escape(rel)}: {link}"):
                SparkStore.open(spark, location)
        if rel in ("tables", "shards"):
            assert cli_main(["spark", "refresh", "--master", "local[2]", "--db", str(a)]) == 1
            err = capsys.readouterr().err
            assert err.startswith(f"cnnfilterdb: error: {rel}: a symbolic link") and err.count("\n") == 1, err
        assert (store_snapshot(b), sorted(p.relative_to(b) for p in b.rglob("*"))) == b_before
        (a / rel).unlink()
        shutil.move(saved, a / rel)
    assert SparkStore.open(spark, a).version == 4 and FilterStore(a).verify().problems == []
