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
from cnnfilterdb.layout import StoreDamaged
from cnnfilterdb.service.main import create_app
from cnnfilterdb.service.settings import Settings
from cnnfilterdb.store import FilterStore

from .helpers import as_layout_6, cli_main, flip_byte, ingest_in_shards, open_catalog, run_cli

COLUMNS = ["filter_id", "model_id", "layer_id"] + [f"w{i}" for i in range(9)]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, sample_v1) -> Path:
    """A store of two shards of 30,000 filters, in row groups of 4,096 (8 per shard)."""
    db = tmp_path_factory.mktemp("checksums") / "db"
    ingest_in_shards([sample_v1], db, shard_rows=30_000, row_group_rows=4_096)
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
    flip_byte(path, offset, 0x10)


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
    yield "histograms (exact scan)", lambda: db_api.histograms(where={"layer_id": layer_id}, bins=31)
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
    as_layout_6(unchecked_db)
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
    as_layout_6(store)
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
        assert con.execute("SELECT schema_version FROM _store").fetchone()[0] == 8
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
    as_layout_6(store)
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


@pytest.mark.requires("spark")
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


# -- hostile review of the checksums (issue 20, point 3) ------------------------------------------

def _model_of_shard(db: Path, shard: int) -> tuple[str, str]:
    """(a model whose filters lie in the shard with others', the shard): removed, then compacted,
    the shard is rewritten (not dropped)."""
    rel = _shards(db)[shard]
    with open_catalog(db) as con:
        first, last = con.execute("SELECT filter_id_first, filter_id_last FROM _shards WHERE path = ?", [rel]).fetchone()
        model = con.execute("SELECT m.model FROM models m JOIN layers l USING (model_id) WHERE l.filter_id_first "
                            "BETWEEN ? AND ? ORDER BY l.filter_id_first LIMIT 1", [first, last]).fetchone()[0]
    return model, rel


def _store_state(db: Path) -> tuple[bytes, list[str]]:
    return (db / "catalog.duckdb").read_bytes(), sorted(p.name for p in (db / "shards").iterdir())


@pytest.mark.parametrize("layout", [6, 5])
def test_compact_never_launders_a_damaged_shard(store, layout):
    """A shard damaged after `remove`: `compact` reads it to rewrite it, checks it as every read
    does (layout 6: each row group's checksum; layout 5: the whole file's sha256 against the
    catalog) and refuses in one line, the store unchanged; never a rewritten shard that certifies
    the damaged bytes (the review's `verify` said intact after compact, exports were wrong)."""
    model, rel = _model_of_shard(store, 0)
    assert cli_main(["remove", model, "--db", str(store)]) == 0
    if layout == 5:
        as_layout_6(store)
        with duckdb.connect(str(store / "catalog.duckdb")) as con:
            con.execute("DROP TABLE _row_groups")
            con.execute("UPDATE _store SET schema_version = 5")
    _flip(store / rel, _region(store / rel, 1, "w4", "values"))
    before = _store_state(store)
    code, out, err = run_cli("compact", "--keep-versions", "1", "--db", str(store))
    problem = "row group 1: checksum differs" if layout == 6 else "checksum differs (sha256"
    assert code == 1 and err.startswith(f"cnnfilterdb: error: {rel}: {problem}") and len(err.splitlines()) == 1, err
    assert _store_state(store) == before
    assert cli_main(["verify", "--db", str(store)]) == 1


def test_compact_of_an_intact_store_still_rewrites(store):
    model, rel = _model_of_shard(store, 0)
    assert cli_main(["remove", model, "--db", str(store)]) == 0
    want = cnnfilterdb.open(store).filters()
    assert cli_main(["compact", "--keep-versions", "1", "--db", str(store)]) == 0
    assert rel not in _shards(store)  # rewritten
    assert FilterStore(store).verify().problems == []
    assert np.array_equal(cnnfilterdb.open(store).filters(), want)


def test_no_reader_of_shard_bytes_outside_the_checked_ones():
    """Every read of a shard's bytes goes through the checked readers (scan.ShardReader,
    checksums.verify_row_groups / shard_checksums, Spark's _checked_units): no other module opens
    a Parquet file of the store with pyarrow."""
    import re

    root = Path(cnnfilterdb.__file__).parent
    allowed = {"scan.py", "spark/jobs.py"}  # ShardReader; _row_groups after _checked_units
    found = []
    for path in sorted([*root.rglob("*.py"), *(root.parent / "ingest").rglob("*.py"), *(root.parent / "service").rglob("*.py")]):
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        for line in path.read_text().splitlines():
            if re.search(r"ParquetFile\(|read_table\(|iter_batches\(|pq\.read_(?!metadata)|read_parquet\(", line) \
                    and not line.lstrip().startswith("#") and rel not in allowed and "read_parquet([{files}])" not in line:
                found.append(f"{rel}: {line.strip()}")
    assert found == []


def test_a_damaged_first_row_group_is_a_503_before_the_export_starts(store):
    rel = _shards(store)[0]
    _flip(store / rel, _region(store / rel, 0, "w3", "values"))
    client = TestClient(create_app(Settings(db=store)), raise_server_exceptions=False)
    for fmt in ("npy", "csv", "parquet", "arrow"):
        r = client.get(f"/v1/filters?format={fmt}")
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_damaged", (fmt, r.status_code)
        assert r.json()["error"]["message"].startswith(f"{rel}: row group 0: checksum differs"), fmt


def test_a_stream_cut_part_way_is_said_so_by_the_client_and_logged_by_the_service(store, caplog):
    """Damage in a later row group: the 200 was sent, the stream is cut; the Client says the service
    cut it after so many rows and bytes (not "cannot reach the service"), the service's log names
    the shard and row group in one line."""
    import logging

    from cnnfilterdb.client import ServiceUnavailable, StreamCut

    from .helpers import serving

    rel = _shards(store)[1]
    _flip(store / rel, _region(store / rel, 5, "w6", "values"))
    caplog.set_level(logging.ERROR, logger="cnnfilterdb.service")
    with serving(create_app(Settings(db=store))) as (url, _), cnnfilterdb.Client(url) as c:
        with pytest.raises(StreamCut) as e:
            c.filters()
        assert not isinstance(e.value, ServiceUnavailable) and e.value.code == "stream_cut"
        message = str(e.value)
        assert message.startswith(f"the service cut the stream of {url}/v1/filters after ") and "cannot reach" not in message
        assert "of the 60,000 filters it declared" in message and "the service's log says why" in message
        assert 0 < e.value.received and e.value.rows is not None and e.value.rows < 60_000
        import time

        deadline = time.monotonic() + 10
        while not any("stream was cut" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if "stream was cut" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert f"{rel}: row group 5: checksum differs" in lines[0]
    # that line is all: no "unhandled error" with tracebacks (a re-check found 234 log lines a cut)
    assert not [r for r in caplog.records if r.exc_info or "unhandled" in r.getMessage()], \
        [r.getMessage() for r in caplog.records]


def _footer_offset(path: Path, what: str) -> int:
    data = path.read_bytes()
    start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    if what == "thrift":
        return start + 1
    if what == "column name":  # the schema's "w5": renamed "w%" by the flip (0x35 ^ 0x10)
        return data.index(b"w5", start) + 1
    if what == "magic":  # the closing PAR1
        return len(data) - 1
    return data.rindex(b"parquet-cpp-arrow") + 3


@pytest.mark.parametrize("what", ["thrift", "column name", "created_by"])
def test_a_footer_damaged_under_a_warm_service_is_a_503_naming_the_shard(store, what):
    """The service has parsed (and checked) every footer; one is damaged afterwards. DuckDB parses
    footers itself on every query: the layer pages and filter lookups hash the footers each time
    before it reads, so every answer is a 503 naming the shard (the review: 500 internal_error
    "Referenced column w5 not found", 503 "a store file could not be read" naming none)."""
    rels = _shards(store)
    layer_a, filter_a = _filters_of_row_group(store / rels[0], 2)
    layer_b, filter_b = _filters_of_row_group(store / rels[1], 3)
    client = TestClient(create_app(Settings(db=store)), raise_server_exceptions=False)
    urls = [f"/v1/layers/{layer_a}/filters?limit=100000", f"/v1/layers/{layer_b}/filters?format=npy",
            f"/v1/filters/{filter_a}", f"/v1/filters/{filter_b}", f"/v1/layers/{layer_b}/filters"]
    intact = {u: client.get(u).content for u in urls}
    assert all(client.get(u).status_code == 200 for u in urls)
    damaged = store / rels[1]
    offset = _footer_offset(damaged, what)
    _flip(damaged, offset)
    for u in urls:  # the shard of the filters read or another: DuckDB opens every footer
        r = client.get(u)
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_damaged", (u, r.status_code, r.text[:200])
        assert r.json()["error"]["message"].startswith(f"{rels[1]}: "), (u, r.text[:200])
    _flip(damaged, offset)  # repaired: the same answers
    assert {u: client.get(u).content for u in urls} == intact


@pytest.mark.parametrize("what", ["column name", "magic"])
def test_duckdb_failing_on_a_shard_after_the_checks_is_a_503_naming_it(store, monkeypatch, what):
    """The footer damaged between the checks and DuckDB's read (a race): DuckDB's error (a column
    "not found", no magic bytes), whatever it is, becomes a 503 store_damaged naming the shard
    (found by the checks run again), never a 500."""
    from cnnfilterdb.service import queries

    rels = _shards(store)
    layer, filter_id = _filters_of_row_group(store / rels[0], 1)
    damaged = store / rels[0]
    offset = _footer_offset(damaged, what)
    for name in ("filter_weights", "filter_row", "filter_weight_batches"):
        original = getattr(queries, name)

        def damaging(*args, _original=original, **kwargs):
            _flip(damaged, offset)
            return _original(*args, **kwargs)

        monkeypatch.setattr(queries, name, damaging)
    client = TestClient(create_app(Settings(db=store)), raise_server_exceptions=False)
    for u in (f"/v1/layers/{layer}/filters", f"/v1/filters/{filter_id}", f"/v1/layers/{layer}/filters?format=npy"):
        r = client.get(u)
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_damaged", (u, r.status_code, r.text[:300])
        assert r.json()["error"]["message"].startswith(f"{rels[0]}: "), (u, r.text[:300])
        _flip(damaged, offset)  # undone for the next


def _zero_span(db: Path, rel: str, row_group: int) -> None:
    """The review's catalog: a row group's span recorded as 0 bytes (and the xxh3 of no bytes)."""
    from cnnfilterdb.checksums import xxh3

    with duckdb.connect(str(db / "catalog.duckdb")) as con:
        con.execute("UPDATE _row_groups SET byte_length = 0, xxh3 = ? WHERE path = ? AND row_group = ?",
                    [xxh3(b""), rel, row_group])


def test_spans_recorded_otherwise_than_the_footer_says_are_damage_of_the_catalog(store):
    rel = _shards(store)[0]
    layer_id, filter_id = _filters_of_row_group(store / rel, 1)
    _zero_span(store, rel, 1)
    _flip(store / rel, _region(store / rel, 1, "w4", "values"))
    client = TestClient(create_app(Settings(db=store)), raise_server_exceptions=False)
    for name, read in [("db.filters()", lambda: cnnfilterdb.open(store).filters({"layer_id": layer_id})),
                       ("divergence", lambda: cnnfilterdb.open(store).divergence("task", bins=33)),
                       ("export", functools.partial(_export, store, "npy")),
                       ("layer page", lambda: _http(client.get(f"/v1/layers/{layer_id}/filters"))),
                       ("filter", lambda: _http(client.get(f"/v1/filters/{filter_id}")))]:
        with pytest.raises(StoreDamaged) as e:
            read()
        assert e.value.rel == "catalog.duckdb", (name, str(e.value))
        assert e.value.problem.startswith(f"the span it records of {rel}'s row group 1 (offset "), name
        assert ", 0 bytes) is not the one its footer gives (offset " in e.value.problem, name


def test_a_spark_task_checks_the_recorded_span_against_the_footer(store):
    """Spark's tasks (the units carry the catalog's spans): a span other than the footer's is
    damage of the catalog, before any byte is hashed (no Spark needed: the task's reader itself)."""
    import pyarrow as pa

    from cnnfilterdb.checksums import Checksums, xxh3
    from cnnfilterdb.spark.jobs import _checked_units

    rel = _shards(store)[0]
    with open_catalog(store) as con:
        checks = Checksums.load(con).shards[rel]
    o, n, h = checks.span(1)

    def units(offset, length, expected):
        return [pa.RecordBatch.from_pydict({"path": [f"file://{store / rel}"], "row_group": [1], "rel": [rel],
                                            "byte_offset": [offset], "byte_length": [length], "xxh3": [expected],
                                            "footer": [checks.footer]})]
    assert [rg for _, _, rg in _checked_units(units(o, n, h))] == [1]
    with pytest.raises(StoreDamaged) as e:
        list(_checked_units(units(o, 0, xxh3(b""))))
    assert e.value.rel == "catalog.duckdb" and e.value.problem.startswith(f"the span it records of {rel}'s row group 1 ")
