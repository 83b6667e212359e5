"""Edges of the HTTP surface and the CLI (issue 9): HEAD on GET routes, error bodies that do not
echo huge input, timezone-aware and deeply nested values, a full disk during an ingest."""
from __future__ import annotations

import datetime as dt
import errno
import json

import duckdb
import pytest
from pydantic import ValidationError

from cnnfilterdb.service.jsonable import MAX_DEPTH, NestingError, jsonable
from cnnfilterdb.service.schemas import SqlRequest

from .helpers import cli_main, store_snapshot

BIG = 900_000  # under the service's 1 MB body limit: the route itself answers (see test_over_the_body_limit)


@pytest.mark.parametrize("path", ["/health", "/v1/stats", "/v1/models", "/v1/models/0", "/v1/no-such-route",
                                  "/v1/models/999999"])
def test_head_answers_like_get_without_a_body(v1_client, path):
    get, head = v1_client.get(path), v1_client.head(path)
    assert head.status_code == get.status_code
    assert head.content == b""
    assert dict(head.headers) == dict(get.headers)
    assert head.headers["content-type"] == "application/json"
    assert int(head.headers["content-length"]) == len(get.content) > 0


def test_head_on_a_post_route_is_refused_as_get_is(v1_client):
    r = v1_client.head("/v1/divergence")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.content == b""


def test_head_is_not_in_the_openapi_schema(v1_client):
    paths = v1_client.get("/openapi.json").json()["paths"]
    assert not any("head" in ops for ops in paths.values())


@pytest.mark.parametrize("body, status, words", [
    ({"group_by": "task", "where": {"task": "x" * BIG}}, 404, "is not a task of any model"),
    ({"group_by": "task", "where": {"y" * BIG: 1}}, 400, "unknown field"),
    ({"group_by": "z" * BIG}, 400, "unknown group_by"),
])
def test_error_bodies_do_not_echo_huge_input(v1_client, body, status, words):
    r = v1_client.post("/v1/divergence", json=body)
    assert r.status_code == status
    assert len(r.content) < 2048
    message = r.json()["error"]["message"]
    assert words in message and "characters)" in message


def test_over_the_body_limit(v1_client):
    r = v1_client.post("/v1/divergence", json={"group_by": "task", "where": {"task": "x" * 5_000_000}})
    assert r.status_code == 413 and len(r.content) < 2048 and r.json()["error"]["code"] == "request_too_large"


def test_echoed_values_are_cut_short():
    from cnnfilterdb.selection import SelectionError, where_sql

    with pytest.raises(SelectionError, match="unknown field") as e:
        where_sql({"y" * BIG: 1})
    assert len(str(e.value)) < 500 and "known fields of where: ['task'" in str(e.value)
    with pytest.raises(SelectionError) as e:
        where_sql({"task": {"gte": ["w" * BIG] * 1000}})
    assert len(str(e.value)) < 500


def test_many_errors_in_one_request_give_a_short_body(v1_client):
    r = v1_client.post("/v1/divergence", json={"group_by": "task", "where": {f"f{i}": 1 for i in range(10_000)}})
    assert r.status_code == 400 and len(r.content) < 2048 and "unknown field" in r.json()["error"]["message"]


def test_unknown_query_parameters_are_cut_short(v1_client):
    r = v1_client.get("/v1/models", params={"q" * 10_000: "1"})
    assert r.status_code == 400 and len(r.content) < 2048 and "unknown query parameter" in r.json()["error"]["message"]


def test_timezone_aware_values_convert():
    with duckdb.connect() as con:
        (v,) = con.execute("SELECT TIMESTAMPTZ '2024-01-02 03:04:05+00'").fetchone()
        (now,) = con.execute("SELECT now()").fetchone()
    (text,) = jsonable([v])  # in the connection's time zone, with its offset
    assert dt.datetime.fromisoformat(text) == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert dt.datetime.fromisoformat(jsonable(now)).tzinfo is not None


def _nested_sql(levels: int) -> str:
    return "SELECT " + "[" * levels + "1" + "]" * levels


def _nested_list(levels: int):
    v = 1
    for _ in range(levels):
        v = [v]
    return v


def test_values_up_to_the_depth_cap_convert():
    with duckdb.connect() as con:
        (v,) = con.execute(_nested_sql(MAX_DEPTH)).fetchone()
    assert jsonable(v) == _nested_list(MAX_DEPTH)
    assert jsonable({"k": _nested_list(MAX_DEPTH - 1)}) == {"k": _nested_list(MAX_DEPTH - 1)}


@pytest.mark.parametrize("levels", [300, 5000])
def test_deeper_values_raise_nesting_error(levels):
    if levels <= 1000:  # DuckDB's expression depth limit
        with duckdb.connect() as con:
            (v,) = con.execute(_nested_sql(levels)).fetchone()
        with pytest.raises(NestingError, match=f"more than {MAX_DEPTH} levels"):
            jsonable([v])
    with pytest.raises(NestingError):
        jsonable(_nested_list(levels))


def _nested_json(levels: int) -> str:
    return "[" * levels + '"a"' + "]" * levels


@pytest.mark.parametrize("levels", [300, 5000])
@pytest.mark.parametrize("path, body", [
    ("/v1/divergence", '{"group_by": "task", "where": {"task": %s}}'),
    ("/v1/divergence", '{"group_by": "task", "where": %s}'),
    ("/v1/pca", '{"where": {"conv_depth": {"gte": %s}}}'),
    ("/v1/pca", '{"where": {"task": %s}}'),
])
def test_deeply_nested_requests_are_client_errors(v1_client, levels, path, body):
    r = v1_client.post(path, content=body % _nested_json(levels), headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text[:300]
    assert set(r.json()["error"]) == {"code", "message"} and len(r.content) < 2048


@pytest.mark.parametrize("levels", [300, 5000])
def test_sql_request_params_nested_deep(levels):
    body = f'{{"sql": "SELECT len(?)", "params": [{_nested_json(levels)}]}}'
    if levels < 1000:  # FastAPI parses with json.loads (a deeper body is a 400, as above), then validates
        assert SqlRequest.model_validate(json.loads(body)).params == [json.loads(_nested_json(levels))]
    with pytest.raises(ValidationError, match="recursion limit"):  # pydantic's own parser: a 422
        SqlRequest.model_validate_json(body)


def test_ingest_disk_full_is_one_line_and_changes_nothing(tmp_path, sample_v1, sample_v01, capsys, monkeypatch):
    from cnnfilterdb.ingest.shards import ShardWriter

    db = tmp_path / "db"
    assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    before = store_snapshot(db)
    capsys.readouterr()

    def disk_full(self, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ShardWriter, "_append", disk_full)
    assert cli_main(["ingest", str(sample_v01), "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert err == f"cnnfilterdb: error: No space left on device ({db})\n"
    assert store_snapshot(db) == before


@pytest.mark.parametrize("where, status, message", [
    ({"conv_depth": {"gte": "x"}}, 422, "where.conv_depth.gte: expected an integer, got 'x'"),
    ({"conv_depth": {"foo": 1}}, 400, "unknown bound 'foo' in where.conv_depth; valid: gte, gt, lte, lt"),
    ({"conv_depth": {"ge": 2}}, 400, "unknown bound 'ge' in where.conv_depth; valid: gte, gt, lte, lt"),
    ({"task": [1, {"a": 1}]}, 422, "where.task: expected a string, got 1"),
])
def test_a_where_value_of_no_valid_form_is_said_plainly(v1_client, where, status, message):
    r = v1_client.post("/v1/pca", json={"where": where})
    assert r.status_code == status and r.json()["error"]["message"].startswith(message), r.text


def test_analyses_beyond_the_concurrency_limit_wait_then_get_a_429(v1_store):
    from fastapi.testclient import TestClient

    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    client = TestClient(create_app(Settings(db=v1_store, analysis_concurrency=1, analysis_wait_s=0.2)),
                        raise_server_exceptions=False)
    slots = client.app.state.catalog.analysis_slots
    assert slots.acquire(timeout=1)  # as if one analysis were running
    try:
        r = client.post("/v1/divergence", json={"group_by": "task"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "analysis_busy" and r.headers["retry-after"] == "1"
        assert client.get("/v1/models/0").status_code == 200  # the other endpoints are not held up
    finally:
        slots.release()
    assert client.post("/v1/divergence", json={"group_by": "task"}).status_code == 200


def test_every_endpoint_refuses_unknown_query_parameters_and_body_fields(v1_client):
    """A typo is a 400 naming it and the known ones, on every endpoint of the API (issue 11:
    `{"groupby": "task"}` used to return an ungrouped answer). The endpoints and what each
    declares are read from the OpenAPI document."""
    spec = v1_client.get("/openapi.json").json()
    paths = {"{model_id}": "1", "{layer_id}": "1", "{filter_id}": "1", "{figure}": "covariance", "{fmt}": "png"}
    bodies = {"/v1/divergence": {"group_by": "task"}, "/v1/sql": {"sql": "SELECT 1"}}
    checked = 0
    for template, operations in spec["paths"].items():
        path = template
        for k, v in paths.items():
            path = path.replace(k, v)
        for method, op in operations.items():
            known = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
            body = bodies.get(template, {}) if method == "post" else None
            r = v1_client.request(method.upper(), path + "?groupbyy=1", json=body)
            assert r.status_code == 400, (template, r.status_code, r.text[:200])
            message = r.json()["error"]["message"]
            assert "groupbyy" in message and all(k in message for k in known), (template, message)
            if method == "post" and "multipart/form-data" in op["requestBody"]["content"]:  # POST /v1/check
                schema = op["requestBody"]["content"]["multipart/form-data"]["schema"]
                if "$ref" in schema:
                    schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
                fields = list(schema["properties"])
                r = v1_client.post(path, files={"file": ("m.onnx", b"not read")}, data={"groupbyy": "1"})
                message = r.json()["error"]["message"]
                assert r.status_code == 400 and "unknown form field 'groupbyy'" in message, (template, message)
                assert all(f in message for f in fields), (template, message)
            elif method == "post":
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                fields = list(spec["components"]["schemas"][ref]["properties"])
                r = v1_client.post(path, json={**body, "groupbyy": 1})
                message = r.json()["error"]["message"]
                assert r.status_code == 400 and "unknown field 'groupbyy' in the request; known: " in message
                assert all(f in message for f in fields), (template, message)
            checked += 1
    assert checked >= 17  # every operation of the API, POSTs included
    # the dashboard's pages are not the API: a query string there is the browser's business
    assert v1_client.get("/?utm=1").status_code == 200


def test_a_null_bound_and_a_repeated_parameter_are_refused(v1_client):
    r = v1_client.post("/v1/pca", json={"where": {"task": {"gte": None}}})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("where.task")
    r = v1_client.get("/v1/filters", params=[("where", "{}"), ("as_of", "1"), ("as_of", "1")])
    assert r.status_code == 400 and r.json()["error"]["code"] == "repeated_parameter" and "'as_of'" in r.text
    assert v1_client.get("/v1/models", params=[("task", "GAN"), ("task", "Classification")]).status_code == 200


def test_a_key_given_twice_in_a_body_is_refused(v1_client):
    for path, body, key in [("/v1/divergence", '{"group_by": "task", "group_by": "model"}', "group_by"),
                            ("/v1/pca", '{"where": {"conv_depth": {"gte": null, "gte": 1}}}', "gte"),
                            ("/v1/sql", '{"sql": "SELECT 1", "sql": "SELECT 2"}', "sql")]:
        r = v1_client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == {
            "code": "invalid_request", "message": f"the request body names '{key}' twice in one object"}
    r = v1_client.post("/v1/pca", content='{"where":', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("the body is not JSON (")


def test_a_body_key_named_as_a_location_is_an_unknown_field(v1_client):
    """A body key "query" (or "body") is a key like any other: POST /v1/sql {"query": ...} was a 500
    (the error's location lost every "query", not only FastAPI's leading one)."""
    for body in ({"query": "SELECT 1"}, {"sql": "SELECT 1", "body": 1}):
        r = v1_client.post("/v1/sql", json=body)
        assert r.status_code == 400, r.text
        key = next(k for k in body if k != "sql")
        assert f"unknown field '{key}' in the request; known: sql" in r.json()["error"]["message"]


@pytest.mark.parametrize("path, body", [("/v1/divergence", b'{"group_by":"task"}'), ("/v1/pca", b"{}"),
                                        ("/v1/sql", b'{"sql":"SELECT 1"}')])
def test_a_json_body_without_its_content_type_is_said_plainly(v1_client, path, body):
    """A JSON body sent as text/plain (or curl -d's form type) is a 415, one sent with no content
    type a 422, each saying what to send: not pydantic's 'body: Field required'."""
    for media, status in [("text/plain", 415), ("application/x-www-form-urlencoded", 415), (None, 422)]:
        r = v1_client.post(path, content=body, headers={"content-type": media} if media else {})
        assert r.status_code == status, (media, r.text)
        assert r.json()["error"] == {"code": "invalid_request", "message": "the body must be a JSON object sent with "
                                     f"Content-Type: application/json (got {media or 'no content type'})"}
    r = v1_client.post(path, content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("name", ["../settings.py", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "swagger-ui-bundle.js%00.css",
                                  "SWAGGER-UI.CSS", "x" * 5000, "swagger-ui-bundle.js.map", "oauth2-redirect.html"])
def test_docs_assets_are_a_fixed_list(v1_client, name):
    """/docs/assets/{name} serves three files of the fastapi-offline package; any other name is a
    404 naming it (cut), never a file of the package or the file system."""
    for method in ("GET", "HEAD"):
        r = v1_client.request(method, f"/docs/assets/{name}")
        assert r.status_code == 404, (method, name, r.status_code)
        if method == "GET":
            assert r.json()["error"]["code"] == "not_found" and len(r.text) < 400


def test_docs_assets_served(v1_client):
    from cnnfilterdb.service.routers.docs import ASSET_NAMES

    for name, media in ASSET_NAMES.items():
        r = v1_client.get(f"/docs/assets/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(media) and len(r.content) > 10_000
        assert b"cdn.redoc.ly" not in r.content  # nothing the page would fetch from outside
        h = v1_client.head(f"/docs/assets/{name}")
        assert h.status_code == 200 and h.content == b""
