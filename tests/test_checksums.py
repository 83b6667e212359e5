"""No silent wrong answers from a damaged shard (issue 20): the catalog and the Parquet tables record
an xxh3 per row group (and footer) of every shard at commit, and every read of the engine checks
the row groups it reads before decoding them: a flipped byte anywhere in a shard's data pages is
StoreDamaged naming the shard and the row group (503 over HTTP, one line on the CLI), never an
answer; an intact store answers as before; an older layout gets its checksums at its next commit."""
from __future__ import annotations

import functools
import io
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

import cnnfilterdb
from cnnfilterdb.checksums import FOOTER, Checksums, shard_checksums
from cnnfilterdb.ingest import ingest_paths
from cnnfilterdb.ingest.shards import ShardWriter
from cnnfilterdb.service.main import create_app
from cnnfilterdb.service.settings import Settings
from cnnfilterdb.store import FilterStore, StoreDamaged

from .helpers import cli_main, open_catalog, run_cli

COLUMNS = ["filter_id", "model_id", "layer_id"] + [f"w{i}" for i in range(9)]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, sample_v1) -> Path:
    """A store of two shards of 30,000 filters, in row groups of 4,096 (8 per shard)."""
    db = tmp_path_factory.mktemp("checksums") / "db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ShardWriter, "__init__", functools.partialmethod(ShardWriter.__init__, shard_rows=30_000,
                                                                    row_group_rows=4_096))
        ingest_paths([sample_v1], db)
    return db


@pytest.fixture
def store(pristine, tmp_path) -> Path:
    db = tmp_path / "db"
    shutil.copytree(pristine, db)
    return db


def _shards(db: Path) -> list[str]:
    with open_catalog(db) as con:
        return [p for (p,) in con.execute("SELECT path FROM _shards ORDER BY filter_id_first").fetchall()]


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


def _region(path: Path, row_group: int, column: str, where: str) -> int:
    """The offset of a byte of ``column``'s chunk in ``row_group``: in the middle of its last data
    page's values ("values"), or in its first page's header ("header")."""
    md = pq.ParquetFile(path).metadata
    chunk = md.row_group(row_group).column(COLUMNS.index(column))
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page and chunk.dictionary_page_offset else chunk.data_page_offset
    end = start + chunk.total_compressed_size
    return start + 3 if where == "header" else end - max(4, (end - chunk.data_page_offset) // 3)


def _filters_of_row_group(path: Path, row_group: int) -> tuple[int, int]:
    """(a layer holding filters of the row group, one filter id in it)."""
    t = pq.ParquetFile(path).read_row_group(row_group, columns=["filter_id", "layer_id"])
    i = t.num_rows // 2
    return int(t.column("layer_id")[i].as_py()), int(t.column("filter_id")[i].as_py())


def _reads(db: Path, layer_id: int, filter_id: int):
    """Every read path of the engine, each a callable; a damaged row group must make each raise
    StoreDamaged (or answer 503 over HTTP)."""
    client = TestClient(create_app(Settings(db=db)), raise_server_exceptions=False)
    db_api = cnnfilterdb.open(db)
    yield "divergence (exact scan)", lambda: db_api.divergence("task", bins=33)
    yield "histograms (exact scan)", lambda: db_api.histograms({"layer_id": layer_id}, bins=31)
    yield "db.filters()", lambda: db_api.filters({"layer_id": layer_id})
    yield "db.iter_filters()", lambda: list(db_api.iter_filters(None, batch=5000))
    for fmt in ("parquet", "arrow", "npy", "csv"):
        yield f"export {fmt}", functools.partial(_export, db, fmt)
    yield "GET /v1/layers/filters", lambda: _http(client.get(f"/v1/layers/{layer_id}/filters?limit=100000"))
    yield "GET /v1/layers/filters npy", lambda: _http(client.get(f"/v1/layers/{layer_id}/filters?format=npy"))
    yield "GET /v1/filters/{id}", lambda: _http(client.get(f"/v1/filters/{filter_id}"))
    yield "POST /v1/divergence", lambda: _http(client.post("/v1/divergence", json={"group_by": "task", "bins": 33}))
    yield "GET /v1/filters export", lambda: _http(client.get("/v1/filters?format=npy"), stream=True)


def _export(db: Path, fmt: str):
    from cnnfilterdb.export import write_export

    with cnnfilterdb.open(db)._analysis(None) as a:
        plan = a.export_plan(None)
    plan.pop("store_version")
    out = db.parent / f"out.{fmt}"
    write_export(out, **plan, fmt=fmt)
    return out.read_bytes()


def _http(r, stream: bool = False):
    """A response as the read's outcome: StoreDamaged for a 503 store_damaged (one line); a body
    for a 200. An export whose damage is met while streaming is cut: its body does not load."""
    if r.status_code == 503:
        error = r.json()["error"]
        assert error["code"] == "store_damaged" and "\n" not in error["message"], error
        rel, problem = error["message"].split(": ", 1)
        raise StoreDamaged(rel, problem.split("; the store is damaged")[0])
    assert r.status_code == 200, r.text[:300]
    if stream:
        try:
            return np.load(io.BytesIO(r.content))
        except ValueError as e:  # the response had started: the stream is cut, never completed
            raise CutStream(str(e)) from None
    return r.content


class CutStream(Exception):
    """An HTTP export cut off part-way (the damage met after its status was sent)."""


def _answers(db: Path, layer_id: int, filter_id: int) -> dict:
    out = {}
    for name, read in _reads(db, layer_id, filter_id):
        value = read()
        if hasattr(value, "to_dict"):
            value = value.to_dict()
            value.pop("elapsed_ms", None)  # the one field that measures, not answers
        out[name] = value
    return out


def test_every_row_group_and_footer_is_recorded(store):
    with open_catalog(store) as con:
        rows = con.execute("SELECT path, row_group, byte_offset, byte_length, xxh3 FROM _row_groups").fetchall()
        tables = con.execute("SELECT path FROM _tables WHERE name = 'row_groups'").fetchall()
    for rel in _shards(store):
        md = pq.ParquetFile(store / rel).metadata
        mine = sorted(r[1:] for r in rows if r[0] == rel)
        assert [r[0] for r in mine] == [FOOTER, *range(md.num_row_groups)] and md.num_row_groups == 8
        assert mine == sorted(shard_checksums(store / rel))
        # the spans cover the file between the magic numbers without overlap: every page of every chunk
        spans = sorted((o, n) for _, o, n, _ in mine)
        assert spans[0][0] == 4 and all(a[0] + a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert spans[-1][0] + spans[-1][1] == (store / rel).stat().st_size  # the footer ends with the magic
    (table,) = tables
    assert sorted(pq.read_table(store / table[0]).to_pylist(), key=lambda r: (r["path"], r["row_group"])) == [
        dict(zip(["path", "row_group", "byte_offset", "byte_length", "xxh3"], r)) for r in sorted(rows)]


# (shard index, row group, column, where in the chunk): each column's pages in several row groups
# of both shards, page headers, and a dictionary-encoded id column.
REGIONS = [(0, 0, "w0", "values"), (0, 3, "w4", "values"), (0, 7, "w8", "values"), (1, 1, "filter_id", "values"),
           (1, 5, "layer_id", "values"), (0, 2, "model_id", "values"), (1, 6, "w5", "header"),
           (0, 4, "layer_id", "header"), (1, 0, "w2", "values"), (0, 6, "w7", "values")]


@pytest.mark.parametrize("shard, row_group, column, where", REGIONS)
def test_a_flipped_byte_is_named_by_every_read_never_answered(store, shard, row_group, column, where):
    rel = _shards(store)[shard]
    layer_id, filter_id = _filters_of_row_group(store / rel, row_group)
    _flip(store / rel, _region(store / rel, row_group, column, where))
    for name, read in _reads(store, layer_id, filter_id):
        with pytest.raises((StoreDamaged, CutStream)) as e:
            read()
        if e.type is CutStream:  # the streamed export of every filter: started before it met the row group
            assert name == "GET /v1/filters export"
            continue
        assert e.value.rel == rel and e.value.problem.startswith(f"row group {row_group}: checksum differs"), (name, str(e.value))
    code, out, err = run_cli("drift", "--group-by", "task", "--bins", "33", "--db", str(store))
    assert code == 1 and out == "" and err.splitlines() == [err.strip()]
    assert err.startswith(f"cnnfilterdb: error: {rel}: row group {row_group}: checksum differs")
    for fmt in ("parquet", "csv"):
        code, out, err = run_cli("export", "-o", str(store.parent / f"x.{fmt}"), "--db", str(store))
        assert code == 1 and err.startswith(f"cnnfilterdb: error: {rel}: row group {row_group}: ") and len(err.splitlines()) == 1
        assert not (store.parent / f"x.{fmt}").exists()
    assert cli_main(["verify", "--db", str(store)]) == 1  # and the whole-file sha256 agrees


@pytest.mark.parametrize("where", ["a string the footer still parses with", "its thrift structure"])
def test_a_flipped_footer_is_named(store, where):
    rel = _shards(store)[1]
    data = (store / rel).read_bytes()
    footer_len = int.from_bytes(data[-8:-4], "little")
    if where == "its thrift structure":
        # the start of its thrift: unparsable, or parsed into other values: either is named
        offset, problem = len(data) - 8 - footer_len + 1, ("unreadable", "footer: checksum differs")
    else:  # a letter of the writer's name (created_by): the file parses, with the footer's checksum wrong
        offset, problem = data.rindex(b"parquet-cpp-arrow") + 3, ("footer: checksum differs",)
    _flip(store / rel, offset)
    with open_catalog(store) as con:
        first = con.execute("SELECT filter_id_first FROM _shards WHERE path = ?", [rel]).fetchone()[0]
        layer_id = con.execute("SELECT layer_id FROM _layers WHERE ? BETWEEN filter_id_first AND filter_id_last",
                               [first + 10]).fetchone()[0]
    for call in (lambda: cnnfilterdb.open(store).divergence("task", bins=33),
                 lambda: cnnfilterdb.open(store).filters({"layer_id": layer_id})):
        with pytest.raises(StoreDamaged) as e:
            call()
        assert e.value.rel == rel and e.value.problem.startswith(problem), str(e.value)
    client = TestClient(create_app(Settings(db=store)), raise_server_exceptions=False)
    for url in (f"/v1/layers/{layer_id}/filters", f"/v1/filters/{first + 10}", "/v1/filters?format=csv"):
        with pytest.raises(StoreDamaged) as e:
            _http(client.get(url))
        assert e.value.rel == rel and e.value.problem.startswith(problem), (url, str(e.value))
    code, out, err = run_cli("export", "-o", str(store.parent / "x.npy"), "--db", str(store))
    assert code == 1 and err.startswith(tuple(f"cnnfilterdb: error: {rel}: {p}" for p in problem))
    assert len(err.splitlines()) == 1


def test_an_intact_store_answers_as_before(store, pristine):
    """The same answers with the checksums checked as without (the catalog's rows taken out)."""
    layer_id, filter_id = _filters_of_row_group(store / _shards(store)[0], 3)
    checked = _answers(store, layer_id, filter_id)
    with duckdb.connect(str(pristine / "catalog.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM _row_groups").fetchone()[0] == 2 * 9
    unchecked_db = store.parent / "unchecked"
    shutil.copytree(store, unchecked_db)
    with duckdb.connect(str(unchecked_db / "catalog.duckdb")) as con:  # as a layout-5 store: no checksums
        con.execute("DROP TABLE _row_groups")
        con.execute("UPDATE _store SET schema_version = 5")
    unchecked = _answers(unchecked_db, layer_id, filter_id)
    assert checked.keys() == unchecked.keys()
    for name in checked:
        a, b = checked[name], unchecked[name]
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b), name
        elif isinstance(a, list):  # iter_filters' batches
            assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b), name
        elif name.startswith("POST"):
            assert json.loads(a)["matrix"] == json.loads(b)["matrix"], name
        elif name.startswith("export parquet"):
            assert pq.read_table(io.BytesIO(a)).equals(pq.read_table(io.BytesIO(b))), name
        else:
            assert a == b, name


def test_a_layout_5_store_is_read_unchecked_and_checked_after_its_next_commit(store, capsys):
    with duckdb.connect(str(store / "catalog.duckdb")) as con:
        con.execute("DROP TABLE _row_groups")
        con.execute("UPDATE _store SET schema_version = 5")
    assert cli_main(["verify", "--db", str(store)]) == 0
    assert cli_main(["drift", "--group-by", "task", "--bins", "33", "--db", str(store)]) == 0
    with open_catalog(store) as con:
        assert Checksums.load(con) is None
        model = con.execute("SELECT model FROM models ORDER BY model_id LIMIT 1").fetchone()[0]
    assert cli_main(["label", model, "--task", "Segmentation", "--db", str(store)]) == 0
    with open_catalog(store) as con:
        assert con.execute("SELECT schema_version FROM _store").fetchone()[0] == 6
        checks = Checksums.load(con)
    assert sorted(checks.shards) == _shards(store)
    assert cli_main(["verify", "--db", str(store)]) == 0
    capsys.readouterr()
    rel = _shards(store)[0]
    layer_id, filter_id = _filters_of_row_group(store / rel, 2)
    _flip(store / rel, _region(store / rel, 2, "w3", "values"))
    with pytest.raises(StoreDamaged, match=f"^{rel}: row group 2: checksum differs"):
        cnnfilterdb.open(store).filters({"layer_id": layer_id})


def test_an_upgrade_never_certifies_a_shard_already_damaged(store, capsys):
    """A layout-5 store whose shard was damaged before its first commit of layout 6: the commit
    checks each shard's sha256 before recording its row groups, and refuses."""
    with duckdb.connect(str(store / "catalog.duckdb")) as con:
        con.execute("DROP TABLE _row_groups")
        con.execute("UPDATE _store SET schema_version = 5")
    rel = _shards(store)[1]
    _flip(store / rel, _region(store / rel, 4, "w1", "values"))
    with open_catalog(store) as con:
        model = con.execute("SELECT model FROM models ORDER BY model_id LIMIT 1").fetchone()[0]
    code, out, err = run_cli("label", model, "--task", "Segmentation", "--db", str(store))
    assert code == 1 and err.startswith(f"cnnfilterdb: error: {rel}: checksum differs (sha256") and len(err.splitlines()) == 1
    with open_catalog(store) as con:
        assert con.execute("SELECT schema_version FROM _store").fetchone()[0] == 5  # unchanged


def test_compact_records_the_rewritten_shards_and_forgets_the_dropped(store):
    with open_catalog(store) as con:
        model = con.execute("SELECT model FROM models ORDER BY model_id LIMIT 1").fetchone()[0]
    assert cli_main(["remove", model, "--db", str(store)]) == 0
    assert cli_main(["compact", "--keep-versions", "1", "--db", str(store)]) == 0
    with open_catalog(store) as con:
        recorded = {p for (p,) in con.execute("SELECT DISTINCT path FROM _row_groups").fetchall()}
        assert recorded == set(_shards(store))
        for rel in recorded:
            rows = con.execute("SELECT row_group, byte_offset, byte_length, xxh3 FROM _row_groups WHERE path = ? "
                               "ORDER BY row_group", [rel]).fetchall()
            assert rows == sorted(shard_checksums(store / rel))
    assert FilterStore(store).verify().problems == []
    assert cli_main(["drift", "--group-by", "task", "--bins", "33", "--db", str(store)]) == 0


def test_a_spark_task_names_the_damaged_row_group(store, tmp_path, capsys):
    from cnnfilterdb.spark import SparkStore, session

    rel = _shards(store)[1]
    spark = session("local[2]")
    try:
        intact = {read: SparkStore.open(spark, store, read=read).divergence("task", bins=33) for read in ("arrow", "spark")}
        local = cnnfilterdb.open(store).divergence("task", bins=33)
        for read in ("arrow", "spark"):
            assert intact[read]["matrix"] == local.to_dict()["matrix"]
        for row_group, column in [(5, "w6"), (2, "layer_id")]:
            db = tmp_path / f"db{row_group}"
            shutil.copytree(store, db)
            _flip(db / rel, _region(db / rel, row_group, column, "values"))
            for read in ("arrow", "spark"):
                with pytest.raises(StoreDamaged, match=f"^{rel}: row group {row_group}: checksum differs") as e:
                    SparkStore.open(spark, db, read=read).divergence("task", bins=33)
                assert "\n" not in str(e.value)
            if row_group == 5:  # a refresh's jobs too (one line, the store unchanged)
                before = (db / "catalog.duckdb").read_bytes()
                capsys.readouterr()
                assert cli_main(["spark", "refresh", "--master", "local[2]", "--db", str(db)]) == 1
                err = capsys.readouterr().err
                assert f"cnnfilterdb: error: {rel}: row group {row_group}: checksum differs" in err, err[-500:]
                assert (db / "catalog.duckdb").read_bytes() == before
    finally:
        spark.stop()
