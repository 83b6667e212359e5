"""The streaming export (cnnfilterdb/export.py) against DuckDB's own reading of the same selection.

The store is sample_v1 ingested into small shards (20,000 rows) of small row groups (1,000 rows),
and the export's output row groups are shrunk to 7,000 rows: selections then cut across row
groups and shards, take some row groups whole and filter others, and the encoders regroup
pieces into output row groups, as they do at scale with the real sizes.
"""
from __future__ import annotations

import io
import json
import shutil
import threading
import time

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

import cnnfilterdb.export as export
import cnnfilterdb.scan as scan
from cnnfilterdb.export import COLUMNS, FORMATS, NPY_DTYPE, export_chunks, write_export
from cnnfilterdb.layout import StoreDamaged

from .helpers import ingest_in_shards, open_catalog, serving

METADATA = {"cnnfilterdb.selection": '{"task": "GAN"}', "cnnfilterdb.store_version": "7"}


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, sample_v1):
    db = tmp_path_factory.mktemp("export") / "db"
    ingest_in_shards([sample_v1], db, shard_rows=20_000, row_group_rows=1_000)
    return db


@pytest.fixture(autouse=True)
def small_output_row_groups(monkeypatch):
    monkeypatch.setattr(export, "OUTPUT_ROWS", 7_000)


class Store:
    """What a caller of the export takes from the catalog: shard paths, the largest layer id, the
    layers of a selection and their filter count; and the reference rows, read by DuckDB."""

    def __init__(self, db):
        self.db = db
        with open_catalog(db) as con:
            self.paths = [db / p for (p,) in con.execute("SELECT path FROM _shards ORDER BY filter_id_first").fetchall()]
            self.max_layer_id = con.execute("SELECT max(layer_id) FROM _layers").fetchone()[0]
            self.layers = con.execute("SELECT layer_id, model_id, filter_id_first, filter_id_last, n_filters "
                                      "FROM layers ORDER BY layer_id").fetchall()
            self.shard_firsts = [f for (f,) in con.execute("SELECT filter_id_first FROM _shards ORDER BY 1").fetchall()]

    def n_rows(self, layer_ids) -> int:
        chosen = set(int(i) for i in layer_ids)
        return sum(n for layer_id, _, _, _, n in self.layers if layer_id in chosen)

    def reference(self, layer_ids) -> pa.Table:
        with open_catalog(self.db) as con:
            return con.execute(f"SELECT {', '.join(COLUMNS)} FROM filters WHERE list_contains(?, layer_id) "
                               "ORDER BY filter_id", [[int(i) for i in layer_ids]]).to_arrow_table()

    def export(self, layer_ids, fmt, n_rows=None, **kw) -> bytes:
        n = self.n_rows(layer_ids) if n_rows is None else n_rows
        return b"".join(export_chunks(self.paths, np.asarray(layer_ids, dtype=np.int64), self.max_layer_id, n, fmt, **kw))


@pytest.fixture(scope="module")
def store(small_store) -> Store:
    return Store(small_store)


def selections(store: Store) -> dict[str, list[int]]:
    every = [layer_id for layer_id, *_ in store.layers]
    one_model = [layer_id for layer_id, model_id, *_ in store.layers if model_id == 3]
    # Every third layer, plus the layers that straddle a shard boundary: filtered row groups,
    # layers cut by row groups and by shards.
    straddling = [layer_id for layer_id, _, first, last, _ in store.layers
                  if any(first < b <= last for b in store.shard_firsts)]
    scattered = sorted(set(every[::3]) | set(straddling))
    return {"all": every, "one model": one_model, "scattered": scattered, "none": []}


def decode(data: bytes, fmt: str) -> dict[str, np.ndarray]:
    """The columns of an export, read back by the format's own reader."""
    if fmt == "parquet":
        t = pq.read_table(io.BytesIO(data))
    elif fmt == "arrow":
        t = pa.ipc.open_stream(data).read_all()
    elif fmt == "csv":
        header = data.split(b"\n", 1)[0].decode()
        assert header == ",".join(COLUMNS)
        types = {"filter_id": pa.int64(), "model_id": pa.int32(), "layer_id": pa.int32(),
                 **{f"w{i}": pa.float32() for i in range(9)}}
        t = pa_csv.read_csv(io.BytesIO(data), convert_options=pa_csv.ConvertOptions(column_types=types))
    else:
        a = np.load(io.BytesIO(data))
        assert a.dtype == NPY_DTYPE and a.ndim == 1 and a["w"].shape == (len(a), 3, 3)
        w = a["w"].reshape(len(a), 9)  # row-major: w[:, 3 * r + c] is w{3r+c}
        return {"filter_id": a["filter_id"], "model_id": a["model_id"], "layer_id": a["layer_id"],
                **{f"w{i}": w[:, i] for i in range(9)}}
    assert t.column_names == COLUMNS
    return {c: t.column(c).to_numpy() for c in COLUMNS}


def assert_same_rows(got: dict[str, np.ndarray], want: pa.Table) -> None:
    for c in COLUMNS:
        a, b = got[c], want.column(c).to_numpy()
        assert a.dtype == b.dtype, c
        if a.dtype == np.float32:  # bit for bit, -0.0 and all
            a, b = a.view(np.uint32), b.view(np.uint32)
        assert np.array_equal(a, b), c


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_export_equals_duckdb_bit_for_bit(store, fmt):
    assert len(store.paths) == 3
    for name, layer_ids in selections(store).items():
        want = store.reference(layer_ids)
        assert want.num_rows == store.n_rows(layer_ids)
        assert (want.num_rows == 0) == (name == "none")
        assert_same_rows(decode(store.export(layer_ids, fmt, threads=3), fmt), want)


def test_scattered_selection_cuts_row_groups_and_shards(store):
    """The scattered selection does what it is meant to test: some row groups are read whole,
    some filtered; rows come from every shard."""
    layer_ids = selections(store)["scattered"]
    chosen = np.zeros(store.max_layer_id + 2, dtype=bool)
    chosen[layer_ids] = True
    whole = filtered = 0
    for path in store.paths:
        layer = pq.read_table(path, columns=["layer_id"]).column(0).to_numpy()
        assert chosen[layer].any()
        for k in range(0, len(layer), 1_000):
            kept = chosen[layer[k:k + 1_000]]
            whole += kept.all()
            filtered += kept.any() and not kept.all()
    assert whole > 0 and filtered > 0


def test_parquet_and_arrow_schema(store, tmp_path):
    layer_ids = selections(store)["one model"]
    data = store.export(layer_ids, "parquet", metadata=METADATA)
    p = pq.ParquetFile(io.BytesIO(data))
    a = pa.ipc.open_stream(store.export(layer_ids, "arrow", metadata=METADATA)).read_all()
    for schema in [p.schema_arrow, a.schema]:
        assert schema.names == COLUMNS and not any(f.nullable for f in schema)
        assert {k.decode(): v.decode() for k, v in schema.metadata.items() if k.decode() in METADATA} == METADATA
    assert p.metadata.num_rows == store.n_rows(layer_ids)
    assert all(p.metadata.row_group(i).num_rows <= 7_000 for i in range(p.metadata.num_row_groups))
    assert p.metadata.num_row_groups == -(-store.n_rows(layer_ids) // 7_000)  # regrouped: no small pieces
    # DuckDB reads it too (statistics, encodings, sorting columns), in the same order.
    (tmp_path / "x.parquet").write_bytes(data)
    with duckdb.connect() as con:
        got = con.execute("SELECT * FROM read_parquet(?)", [str(tmp_path / "x.parquet")]).to_arrow_table()
    assert_same_rows({c: got.column(c).to_numpy() for c in COLUMNS}, store.reference(layer_ids))
    # No metadata asked: none but what the writers put there themselves.
    plain = pq.ParquetFile(io.BytesIO(store.export(layer_ids, "parquet"))).schema_arrow.metadata or {}
    assert not any(k.startswith(b"cnnfilterdb") for k in plain)


@pytest.mark.parametrize("fmt", ["npy", "parquet", "csv"])
def test_wrong_row_count_is_store_damage(store, fmt):
    layer_ids = selections(store)["scattered"]
    n = store.n_rows(layer_ids)
    with pytest.raises(StoreDamaged, match=f"hold {n:,} filters, the catalog counts {n + 1:,}"):
        store.export(layer_ids, fmt, n_rows=n + 1)
    with pytest.raises(StoreDamaged, match=f"more than the {n - 1:,} filters the catalog counts"):
        store.export(layer_ids, fmt, n_rows=n - 1)


def test_truncated_shard_is_store_damage_naming_it(store, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(store.db, db)
    copy = Store(db)
    layer_ids = selections(copy)["all"]
    victim = copy.paths[1]
    # The footer already read (as by an earlier export in a long-running service), then the file
    # is cut: the rows of the cut row groups are missing, found while streaming.
    assert copy.export(layer_ids, "npy")
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    with pytest.raises(StoreDamaged, match=f"^shards/{victim.name}: unreadable"):
        copy.export(layer_ids, "parquet")
    # A fresh process: the footer is gone, found when the export is asked for, before any byte.
    scan._footer.cache_clear()
    scan._layer_spans.cache_clear()
    with pytest.raises(StoreDamaged, match=f"^shards/{victim.name}: unreadable"):
        export_chunks(copy.paths, np.asarray(layer_ids), copy.max_layer_id, copy.n_rows(layer_ids), "csv")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_early_close_stops_the_threads(store, fmt):
    before = threading.active_count()
    layer_ids = selections(store)["all"]
    chunks = export_chunks(store.paths, np.asarray(layer_ids), store.max_layer_id, store.n_rows(layer_ids), fmt,
                           threads=4)
    next(chunks), next(chunks)
    assert threading.active_count() > before  # reading ahead
    chunks.close()
    assert threading.active_count() == before
    # Never started: nothing to stop.
    export_chunks(store.paths, np.asarray(layer_ids), store.max_layer_id, store.n_rows(layer_ids), fmt).close()
    assert threading.active_count() == before


def test_bad_arguments(store):
    with pytest.raises(ValueError, match="unknown export format 'xlsx'"):
        export_chunks(store.paths, np.array([0]), store.max_layer_id, 1, "xlsx")
    with pytest.raises(ValueError, match="layer ids must be in"):
        export_chunks(store.paths, np.array([store.max_layer_id + 1]), store.max_layer_id, 1, "csv")


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_write_export_is_atomic(store, tmp_path, fmt):
    layer_ids = selections(store)["scattered"]
    n = store.n_rows(layer_ids)
    dest = tmp_path / f"out{FORMATS[fmt][1]}"
    assert write_export(dest, store.paths, layer_ids, store.max_layer_id, n, fmt, METADATA) == n
    assert dest.read_bytes() == store.export(layer_ids, fmt, metadata=METADATA)
    assert [p.name for p in tmp_path.iterdir()] == [dest.name]
    # Failing midway (the catalog's count wrong): the previous file stays, no temporary file is left.
    before = dest.read_bytes()
    for wrong in [n - 1, n + 1]:
        with pytest.raises(StoreDamaged):
            write_export(dest, store.paths, layer_ids, store.max_layer_id, wrong, fmt)
        assert dest.read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == [dest.name]
    fresh = tmp_path / "fresh"
    with pytest.raises(StoreDamaged):
        write_export(fresh, store.paths, layer_ids, store.max_layer_id, n + 1, fmt)
    assert [p.name for p in tmp_path.iterdir()] == [dest.name]


# -- GET /v1/filters and `cnnfilterdb export` -------------------------------------------------------

def _sql_rows(db, where_sql: str, params: list, version: str = "") -> dict[str, np.ndarray]:
    """The same selection by DuckDB: every stored filter of the selected layers, filter_id order."""
    layers = f"layers_with_models_at({version})" if version else "layers_with_models"
    with open_catalog(db) as con:
        got = con.execute(f"SELECT {', '.join(COLUMNS)} FROM _all_filters WHERE layer_id IN "
                          f"(SELECT layer_id FROM {layers} WHERE {where_sql}) ORDER BY filter_id", params).fetchnumpy()
    return {c: np.asarray(got[c]) for c in COLUMNS}


def _same(a: dict, b: dict) -> None:
    for c in COLUMNS:
        x, y = np.asarray(a[c]), np.asarray(b[c])
        assert len(x) == len(y), c
        if c.startswith("w"):
            assert np.array_equal(x.astype(np.float32).view(np.uint32), y.astype(np.float32).view(np.uint32)), c
        else:
            assert np.array_equal(x.astype(np.int64), y.astype(np.int64)), c


@pytest.fixture(scope="module")
def http(small_store):
    from fastapi.testclient import TestClient

    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    return TestClient(create_app(Settings(db=small_store)), raise_server_exceptions=False)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_http_export_equals_the_sql_selection(http, small_store, fmt):
    with open_catalog(small_store) as con:
        task = con.execute("SELECT task FROM models WHERE task IS NOT NULL GROUP BY task ORDER BY count(*) DESC "
                           "LIMIT 1").fetchone()[0]
    r = http.get("/v1/filters", params={"where": json.dumps({"task": task, "conv_depth": {"gte": 1}}), "format": fmt})
    assert r.status_code == 200, r.text
    want = _sql_rows(small_store, "task = ? AND conv_depth >= 1", [task])
    assert int(r.headers["x-rows"]) == len(want["filter_id"]) > 0
    assert r.headers["x-store-version"] == "1"
    assert r.headers["content-disposition"] == f'attachment; filename="filters-v1{FORMATS[fmt][1]}"'
    assert r.headers["content-type"].startswith(FORMATS[fmt][0])
    _same(decode(r.content, fmt), want)
    if fmt == "parquet":
        meta = pq.read_schema(io.BytesIO(r.content)).metadata
        assert meta[b"store_version"] == b"1" and json.loads(meta[b"where"]) == {"task": task, "conv_depth": {"gte": 1}}


def test_http_export_of_everything_and_of_nothing(http, small_store):
    r = http.get("/v1/filters?format=npy")
    _same(decode(r.content, "npy"), _sql_rows(small_store, "true", []))
    r = http.get("/v1/filters", params={"where": '{"conv_depth": {"gt": 100000}}', "format": "parquet"})
    assert r.status_code == 200 and r.headers["x-rows"] == "0" and pq.read_table(io.BytesIO(r.content)).num_rows == 0


def test_cli_export_equals_http(http, small_store, tmp_path):
    from .helpers import cli_main

    where = '{"visual_category": ["natural", "fractals"]}'
    for fmt, name in [("parquet", "x.parquet"), ("npy", "x.npy"), ("csv", "x.csv"), ("arrow", "x.arrows")]:
        assert cli_main(["export", "--where", where, "-o", str(tmp_path / name), "--db", str(small_store)]) == 0
        r = http.get("/v1/filters", params={"where": where, "format": fmt})
        assert (tmp_path / name).read_bytes() == r.content, fmt


def test_export_as_of_an_older_version(small_store, tmp_path):
    from cnnfilterdb.ingest.curate import remove_models

    from .helpers import cli_main

    db = tmp_path / "db"
    shutil.copytree(small_store, db)
    with open_catalog(db) as con:
        gone = con.execute("SELECT model FROM models ORDER BY model_id LIMIT 1").fetchone()[0]
    remove_models(db, [gone])
    for as_of, version in [("1", "1"), (None, "")]:
        out = tmp_path / f"v{as_of}.parquet"
        assert cli_main(["export", "-o", str(out), "--db", str(db)] + (["--as-of", as_of] if as_of else [])) == 0
        _same(decode(out.read_bytes(), "parquet"), _sql_rows(db, "true", [], version or "2"))
    assert pq.read_table(tmp_path / "v1.parquet").num_rows > pq.read_table(tmp_path / "vNone.parquet").num_rows


@pytest.mark.parametrize("query, status, words", [
    ("format=xml", 400, "unknown format"),
    ("where=%7Bnot%20json", 400, "where is not JSON"),
    ('where={"colour": "red"}', 400, "unknown field(s) in where: ['colour']"),
    ('where={"task": "classification"}', 404, "did you mean"),
    ("as_of=99", 404, "no store version 99"),
    ("as_of=0", 422, "as_of"),
    ("limit=10", 400, "unknown query parameter"),
])
def test_http_export_bad_requests(http, query, status, words):
    r = http.get("/v1/filters?" + query)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"] and r.headers["content-type"] == "application/json"


def test_http_export_slots_are_bounded_and_released(small_store):
    from fastapi.testclient import TestClient

    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    app = create_app(Settings(db=small_store, export_concurrency=1))
    client = TestClient(app, raise_server_exceptions=False)
    catalog = app.state.catalog
    with client.stream("GET", "/v1/filters?format=csv") as r:
        assert r.status_code == 200
        next(r.iter_bytes())  # the stream is running: its slot is taken
        busy = client.get("/v1/filters?format=npy")
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "export_busy"
    # Abandoned half-way: the slot is back.
    for _ in range(100):
        if catalog.export_slots.acquire(blocking=False):
            catalog.export_slots.release()
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the export slot was not released")
    assert client.get("/v1/filters?format=npy").status_code == 200


def test_an_export_reads_to_the_end_when_its_shards_are_unlinked(small_store, tmp_path):
    """`compact` deletes the shards it replaced once its catalog is committed: an export (or a
    scan) already running keeps reading the files it opened."""
    db = tmp_path / "db"
    shutil.copytree(small_store, db)
    store = Store(db)
    layer_ids = np.array([l[0] for l in store.layers], dtype=np.int64)
    n = sum(l[4] for l in store.layers)
    whole = b"".join(export_chunks(store.paths, layer_ids, store.max_layer_id, n, "npy"))
    chunks = export_chunks(store.paths, layer_ids, store.max_layer_id, n, "npy")
    first = next(chunks)
    for p in store.paths:
        p.unlink()
    assert first + b"".join(chunks) == whole


def test_abandoned_and_head_exports_give_their_slot_back(small_store):
    """Over real HTTP (uvicorn): a HEAD reads nothing, and a client that leaves mid-download
    frees the export's slot at once (not when Python's garbage collector runs)."""
    import gc
    import socket

    import httpx

    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    with serving(create_app(Settings(db=small_store, export_concurrency=1))) as (base, port):
        gc.disable()  # the slots must come back without the garbage collector's help
        try:
            for _ in range(3):
                r = httpx.head(base + "/v1/filters?format=csv")
                assert r.status_code == 200 and int(r.headers["x-rows"]) > 0 and r.content == b""
            for _ in range(3):  # a download dropped after its first bytes
                with socket.create_connection(("127.0.0.1", port)) as c:
                    c.sendall(b"GET /v1/filters?format=csv HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert c.recv(65536).startswith(b"HTTP/1.1 200")
                deadline = time.monotonic() + 30
                while (r := httpx.get(base + "/v1/filters?format=npy&where=%7B%22layer_id%22%3A%201%7D")).status_code == 429:
                    assert time.monotonic() < deadline, "the abandoned export kept its slot"
                    time.sleep(0.05)
                assert r.status_code == 200
        finally:
            gc.enable()


def test_a_client_that_stops_reading_loses_its_export_slot(small_store):
    """A client that takes no data for export_send_timeout_s is cut off: its slot comes back."""
    import socket

    import httpx

    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    app = create_app(Settings(db=small_store, export_concurrency=1, export_send_timeout_s=1.0))
    with serving(app) as (base, port), socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        stalled.sendall(b"GET /v1/filters?format=csv HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
        time.sleep(0.5)
        assert httpx.get(base + "/v1/filters?format=npy").status_code == 429  # it holds the one slot
        deadline = time.monotonic() + 30
        while (r := httpx.get(base + "/v1/filters?format=npy")).status_code == 429:
            assert time.monotonic() < deadline, "a client that never reads kept its export slot"
            time.sleep(0.2)
        assert r.status_code == 200
