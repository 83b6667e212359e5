"""Hostile SQL against POST /v1/sql: refused or cut with a 4xx and a clear message; the store unchanged;
the service healthy afterwards. The guarantees come from DuckDB's settings (service/catalog.py)."""
from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings

from .conftest import cli_main, store_snapshot


@pytest.fixture(scope="module")
def store(tmp_path_factory, sample_v01):
    db = tmp_path_factory.mktemp("hostile") / "db"
    assert cli_main(["ingest", str(sample_v01), "--db", str(db)]) == 0
    return db


@pytest.fixture(scope="module")
def client(store):
    settings = Settings(db=store, sql_timeout_s=1.0, sql_memory_limit="256MB")
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def snapshot(store):
    return store_snapshot(store)


def hostile(tmp: str, shards: str) -> list[tuple[str, str]]:
    """(statement, expected error code) pairs."""
    return [
        ("SELECT * FROM read_csv('/etc/passwd')", "sql_forbidden"),
        ("SELECT * FROM read_csv_auto('/etc/passwd')", "sql_forbidden"),
        ("SELECT * FROM read_text('/etc/passwd')", "sql_forbidden"),
        ("SELECT * FROM read_blob('/etc/hostname')", "sql_forbidden"),
        ("SELECT * FROM read_json('/etc/passwd')", "sql_forbidden"),
        ("SELECT * FROM read_json_auto('/etc/passwd')", "sql_forbidden"),
        ("SELECT * FROM read_ndjson('/etc/passwd')", "sql_forbidden"),
        ("SELECT * FROM read_ndjson_auto('/etc/passwd')", "sql_forbidden"),
        ("SELECT * FROM read_json_objects('/etc/passwd')", "sql_forbidden"),
        ("SELECT * FROM read_ndjson_objects('/etc/passwd')", "sql_forbidden"),
        ("SELECT * FROM read_csv(['/etc/passwd', '/etc/hostname'])", "sql_forbidden"),
        ("SELECT * FROM read_parquet('/**/*.parquet')", "sql_forbidden"),
        ("SELECT * FROM parquet_schema('/etc/passwd')", "sql_forbidden"),
        ("SELECT * FROM parquet_file_metadata('/etc/passwd')", "sql_forbidden"),
        ("SELECT * FROM parquet_kv_metadata('/etc/passwd')", "sql_forbidden"),
        (f"SELECT * FROM read_parquet('{tmp}/elsewhere.parquet')", "sql_forbidden"),
        ("SELECT * FROM parquet_metadata('/etc/passwd')", "sql_forbidden"),
        ("SELECT * FROM glob('/etc/*')", "sql_forbidden"),
        ("SELECT * FROM sniff_csv('/etc/passwd')", "sql_forbidden"),
        ("SELECT * FROM '/etc/passwd'", "sql_error"),  # replacement scans are off: no such table
        (f"SELECT * FROM read_csv('{shards}../../../../etc/passwd')", "sql_forbidden"),
        ("SELECT * FROM read_parquet('https://example.com/data.parquet')", None),
        (f"COPY models TO '{tmp}/models.csv'", "sql_read_only"),
        (f"COPY (SELECT 1) TO '{tmp}/one.csv'", "sql_read_only"),
        (f"EXPORT DATABASE '{tmp}/export'", "sql_read_only"),
        (f"ATTACH '{tmp}/evil.duckdb' AS evil", "sql_read_only"),
        ("DETACH catalog", "sql_read_only"),
        ("INSTALL httpfs", "sql_read_only"),
        ("LOAD httpfs", "sql_read_only"),
        ("SET threads = 1", "sql_read_only"),
        ("SET memory_limit = '100GB'", "sql_read_only"),
        ("RESET lock_configuration", "sql_read_only"),
        ("PRAGMA threads = 1", "sql_read_only"),
        ("SET VARIABLE x = 1", "sql_read_only"),
        ("CREATE TABLE stolen AS SELECT * FROM models", "sql_read_only"),
        ("INSERT INTO models (model_id, model, n_filters, n_layers, source) VALUES (999, 'x', 0, 0, 'x')", "sql_read_only"),
        ("UPDATE basis SET version = 0", "sql_read_only"),
        ("DELETE FROM layers", "sql_read_only"),
        ("DROP TABLE models", "sql_read_only"),
        ("CREATE MACRO evil(x) AS x", "sql_read_only"),
        ("CHECKPOINT", "sql_read_only"),
        ("CALL pragma_version()", "sql_read_only"),
        ("PREPARE p AS SELECT 1", "sql_read_only"),
        ("USE memory", "sql_read_only"),
        ("SELECT 1; DROP TABLE models", "sql_one_statement"),
        ("SELECT 1; SELECT 2", "sql_one_statement"),
        ("SELEC 1", "sql_error"),
        ("SELECT * FROM no_such_table", "sql_error"),
    ]


def test_hostile_statements(client, store, snapshot, tmp_path):
    cases = hostile(str(tmp_path), str(store / "shards") + "/")
    assert len(cases) >= 25
    wrong = []
    for sql, code in cases:
        r = client.post("/v1/sql", json={"sql": sql})
        err = r.json().get("error") or {}
        if not (400 <= r.status_code < 500 and err.get("message") and (code is None or err.get("code") == code)):
            wrong.append((sql, r.status_code, r.text[:200]))
    assert not wrong, wrong
    assert list(tmp_path.iterdir()) == []  # nothing was written anywhere
    assert store_snapshot(store) == snapshot
    assert client.get("/health").status_code == 200


def test_huge_result_is_cut(client):
    r = client.post("/v1/sql", json={"sql": "SELECT i, i * 2 FROM range(1000000000000) t(i)"})
    body = r.json()
    assert r.status_code == 200 and body["truncated"] is True and len(body["rows"]) == 1000


def test_max_rows_over_the_ceiling_is_capped(client):
    r = client.post("/v1/sql", json={"sql": "SELECT * FROM range(200000)", "max_rows": 10**9})
    body = r.json()
    assert r.status_code == 200 and body["max_rows"] == 100_000 and len(body["rows"]) == 100_000 and body["truncated"]


def test_slow_query_is_interrupted_in_time(client, store, snapshot):
    t = time.monotonic()
    r = client.post("/v1/sql", json={"sql": "SELECT count(*) FROM range(100000000) a, range(100000000) b WHERE a.range + b.range = 7"})
    elapsed = time.monotonic() - t
    assert r.status_code == 400 and r.json()["error"]["code"] == "sql_timeout"
    assert "1 s" in r.json()["error"]["message"]
    assert elapsed < 1.0 + 1.0
    assert client.get("/health").status_code == 200
    assert client.post("/v1/sql", json={"sql": "SELECT count(*) FROM models"}).json()["rows"] == [[9]]
    assert store_snapshot(store) == snapshot


def test_query_that_exhausts_memory(client, store, snapshot):
    r = client.post("/v1/sql", json={"sql": "SELECT list(i) FROM range(500000000) t(i)"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "sql_out_of_memory", r.text
    assert "256MB" in r.json()["error"]["message"]
    assert client.get("/health").status_code == 200
    assert client.get("/v1/layers/0/filters").status_code == 200
    assert store_snapshot(store) == snapshot


def test_the_shards_stay_readable_through_the_filters_view(client):
    r = client.post("/v1/sql", json={"sql": "SELECT count(*), count(DISTINCT layer_id) FROM filters"})
    assert r.status_code == 200 and r.json()["rows"][0][0] == 30_000
