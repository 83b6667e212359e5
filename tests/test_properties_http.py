"""Model properties over HTTP (issue 23, SPEC 13): GET /v1/fields lists them, GET /v1/models
carries them and selects on them (`where`), the analyses and figures group and select by them,
the Client reads the same DataFrames as the local API; and hostile input to each: properties
named like SQL keywords, values of the wrong type, unknown names, injection attempts in keys and
values, NULs and lone surrogates, a property queried as_of a version before it existed, and a
store of 200 properties. No response is a 500 or carries a traceback."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from cnnfilterdb.ingest.labels import label_models
from cnnfilterdb.ingest.sample import write_sample_h5
from cnnfilterdb.properties import ident, properties_at

from .helpers import cli_main, open_catalog, serving

# The properties the module's store gets at version 2 (robust and order with nulls; order and
# select are SQL keywords; select's values are SQL and quotes), and late at version 3.
BACKBONES = ["ResNet", "ViT", "WideResNet"]
SELECTS = ["O'Brien", "x'); DROP TABLE _models; --", 'say "hi"']
TYPES = {"robust": "boolean", "clean_accuracy": "double", "backbone": "text", "order": "integer",
         "select": "text", "from": "boolean"}
PROPERTIES = [*TYPES, "late"]


def property_values(i: int) -> dict:
    """The properties of the store's i-th model (None: no value)."""
    return {"robust": None if i % 3 == 0 else i % 2 == 0, "clean_accuracy": 60.0 + 3.5 * i,
            "backbone": BACKBONES[i % 3], "order": None if i % 4 == 0 else 10 * i,
            "select": SELECTS[i % 3], "from": i < 6}


def build_property_store(db, sample) -> list[str]:
    """A store of ``sample`` (version 1) labelled with the properties above (version 2) and with
    ``late`` on its first four models (version 3); its model names in model_id order."""
    assert cli_main(["ingest", str(sample), "--db", str(db)]) == 0
    con = open_catalog(db)
    try:
        models = [m for (m,) in con.execute("SELECT model FROM models ORDER BY model_id").fetchall()]
    finally:
        con.close()
    rows = [(m, {k: v for k, v in property_values(i).items() if v is not None}) for i, m in enumerate(models)]
    assert label_models(db, rows, types=TYPES)["version"] == 2
    assert label_models(db, [(m, {"late": "yes" if i % 2 else "no"}) for i, m in enumerate(models[:4])])["version"] == 3
    return models


@pytest.fixture(scope="module")
def store(tmp_path_factory, sample_v1):
    db = tmp_path_factory.mktemp("props") / "db"
    build_property_store(db, sample_v1)
    return db


@pytest.fixture(scope="module")
def con(store):
    c = open_catalog(store)
    yield c
    c.close()


@pytest.fixture(scope="module")
def client(store):
    from fastapi.testclient import TestClient

    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    return TestClient(create_app(Settings(db=store)), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def url(store):
    """The service over the store on a free localhost port (for the Client)."""
    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    with serving(create_app(Settings(db=store))) as (base, _):
        yield base


def clean(r, status: int):
    """``r`` has ``status``; an error is the API's JSON error, never a traceback."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert "Traceback" not in r.text and 'File "' not in r.text
    if status >= 400:
        body = r.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
        return body["error"]
    return r


def models_get(client, status=200, **params):
    if "where" in params and not isinstance(params["where"], str):
        params["where"] = json.dumps(params["where"])
    r = client.get("/v1/models", params={"limit": 1000, **params})
    return clean(r, status).json() if status == 200 else clean(r, status)


def sql_ids(con, cond: str, params=()) -> list[int]:
    return [m for (m,) in con.execute(f"SELECT model_id FROM models WHERE {cond} ORDER BY model_id",
                                      list(params)).fetchall()]


# ---- GET /v1/fields --------------------------------------------------------------------------

def test_fields_list_the_properties_after_the_built_in_fields(client, con):
    fields = clean(client.get("/v1/fields"), 200).json()["fields"]
    names = [f["name"] for f in fields]
    props = list(properties_at(con))  # in the order they were added
    assert sorted(props) == sorted(PROPERTIES)
    assert names[-len(props):] == props  # after every built-in field
    builtin = fields[:-len(props)]
    assert builtin and all(f["property"] is False and f["groupable"] is True and f["min"] is None
                           and f["max"] is None for f in builtin)
    by = {f["name"]: f for f in fields}
    want_types = {"robust": "BOOLEAN", "clean_accuracy": "DOUBLE", "backbone": "VARCHAR", "order": "BIGINT",
                  "select": "VARCHAR", "from": "BOOLEAN", "late": "VARCHAR"}
    for name in props:
        f = by[name]
        assert f["property"] is True and f["level"] == "model" and f["type"] == want_types[name], f
        assert set(f) == set(builtin[0]), "every field has the same keys"
    # Boolean and text properties: their values with the counts of the built-in fields, groupable.
    for name in ("robust", "backbone", "select", "from", "late"):
        f = by[name]
        assert f["groupable"] is True and f["min"] is None and f["max"] is None and f["truncated"] is False
        want = con.execute(f"""SELECT "{name}", count(DISTINCT model_id), count(*), sum(n_filters)
                               FROM layers_with_models GROUP BY 1 ORDER BY 1 NULLS LAST""").fetchall()
        assert [(v["value"], v["models"], v["layers"], v["filters"]) for v in f["values"]] == want, name
        assert f["n_distinct"] == sum(v is not None for v, *_ in want)
    assert [v["value"] for v in by["robust"]["values"]] == [False, True, None]
    assert [v["value"] for v in by["select"]["values"]] == sorted(SELECTS)  # stored SQL is just text
    # Numbers: their range, no values, not groupable.
    for name in ("clean_accuracy", "order"):
        f = by[name]
        lo, hi, n = con.execute(f'SELECT min("{name}"), max("{name}"), count(DISTINCT "{name}") '
                                "FROM layers_with_models").fetchone()
        assert (f["min"], f["max"], f["n_distinct"]) == (lo, hi, n)
        assert f["values"] == [] and f["groupable"] is False and f["truncated"] is False
    assert isinstance(by["order"]["min"], int) and isinstance(by["clean_accuracy"]["min"], float)


def test_fields_of_a_store_without_properties_keep_their_keys(v1_client):
    fields = clean(v1_client.get("/v1/fields"), 200).json()["fields"]
    assert fields and all(f["property"] is False and f["groupable"] is True for f in fields)
    assert all({"name", "level", "type", "n_distinct", "values", "truncated", "min", "max"} <= set(f) for f in fields)


# ---- GET /v1/models --------------------------------------------------------------------------

def test_models_carry_their_properties(client, con):
    page = models_get(client)
    names = list(properties_at(con))
    rows = con.execute(f"SELECT model_id, {', '.join(map(ident, names))} FROM models ORDER BY model_id").fetchall()
    assert len(page["items"]) == len(rows) == 12
    for item, row in zip(page["items"], rows):
        assert item["model_id"] == row[0]
        assert list(item["properties"]) == names  # every property, null included, in their order
        assert item["properties"] == dict(zip(names, row[1:]))
        assert item["properties"] == {**property_values(row[0]), "late": None if row[0] >= 4 else
                                      ("yes" if row[0] % 2 else "no")}
        assert list(item["properties"]) == names
        assert not set(item["properties"]) & (set(item) - {"properties"})
        one = clean(client.get(f"/v1/models/{row[0]}"), 200).json()
        assert one == item
    assert type(page["items"][1]["properties"]["robust"]) is bool
    assert type(page["items"][1]["properties"]["order"]) is int
    assert type(page["items"][1]["properties"]["clean_accuracy"]) is float


@pytest.mark.parametrize("where, cond, params", [
    ({"robust": True}, "robust", []),
    ({"robust": [False, None]}, "(NOT robust OR robust IS NULL)", []),
    ({"clean_accuracy": {"gte": 70, "lt": 90}}, "clean_accuracy >= 70 AND clean_accuracy < 90", []),
    ({"order": {"gte": 20}}, '"order" >= 20', []),
    ({"order": [30, 50, None]}, '("order" IN (30, 50) OR "order" IS NULL)', []),
    ({"order": None}, '"order" IS NULL', []),
    ({"select": SELECTS[1]}, '"select" = ?', [SELECTS[1]]),
    ({"select": [SELECTS[0], SELECTS[2]], "from": False}, '"select" IN (?, ?) AND NOT "from"', SELECTS[::2]),
    ({"backbone": "ViT", "clean_accuracy": {"gte": 60}, "conv_depth": {"gte": 3}},
     "backbone = 'ViT' AND model_id IN (SELECT model_id FROM layers WHERE conv_depth >= 3)", []),
])
def test_models_where_on_properties(client, con, where, cond, params):
    want = sql_ids(con, cond, params)
    assert want, "a selection that holds models"
    page = models_get(client, where=where)
    assert [m["model_id"] for m in page["items"]] == want and page["total"] == len(want)
    # AND the label parameters
    task = con.execute(f"SELECT task FROM models WHERE model_id = {want[0]}").fetchone()[0]
    page = models_get(client, where=where, task=task)
    assert [m["model_id"] for m in page["items"]] == sql_ids(con, f"({cond}) AND task = ?", [*params, task])


def test_models_where_pages_keep_the_where(client, con):
    want = sql_ids(con, "clean_accuracy >= 65")
    seen, url = [], "/v1/models?" + "limit=3&where=" + json.dumps({"clean_accuracy": {"gte": 65}})
    while url:
        page = clean(client.get(url), 200).json()
        assert page["total"] == len(want)
        seen += [m["model_id"] for m in page["items"]]
        url = page["next"]
    assert seen == want


def test_models_where_errors(client):
    # an unknown property: a 400 suggesting the nearest, listing the store's properties
    e = models_get(client, 400, where={"robst": True})
    assert "robst" in e["message"] and "did you mean 'robust'" in e["message"] and "clean_accuracy" in e["message"]
    e = models_get(client, 400, where={"ordr": {"gte": 1}})
    assert "did you mean 'order'" in e["message"]
    # values of the wrong type: a 422 naming the field
    for where in ({"robust": "yes"}, {"robust": 1}, {"clean_accuracy": "high"}, {"order": True},
                  {"order": {"gte": "1 OR 1=1"}}, {"select": 1}, {"select": ["a", 2]}, {"robust": {"gte": True}},
                  {"clean_accuracy": {"gte": None}}):
        e = models_get(client, 422, where=where)
        assert next(iter(where)) in e["message"], (where, e)
    # an unknown bound
    assert "unknown bound" in models_get(client, 400, where={"order": {"ge": 1}})["message"]
    # a text value no model holds: a 404 suggesting the nearest, as the label parameters
    e = models_get(client, 404, where={"backbone": "resnet"})
    assert e["code"] == "empty_selection" and "did you mean 'ResNet'" in e["message"]
    # not JSON (a 400), or not an object (a 422, as the analyses')
    for text in ("{", '{"robust": true, "robust": false}', "null x", '{"robust": tru}'):
        models_get(client, 400, where=text)
    models_get(client, 422, where="[1]")
    assert models_get(client, where="")["total"] == 12  # empty: every model


@pytest.mark.parametrize("key", ['x" OR 1=1 --', 'order" OR "1"="1', "order; DROP TABLE _models", "ORDER",
                                 "robust--", "", " robust", "robust\x00", "\ud800", "a" * 5000, "1order",
                                 'select"', "group", "model_id)"])
def test_injection_in_where_keys_is_a_400(client, store, key):
    e = models_get(client, 400, where={key: 1})
    assert len(e["message"]) < 3000
    body = json.dumps({"group_by": "task", "where": {key: 1}})
    clean(client.post("/v1/divergence", content=body, headers={"Content-Type": "application/json"}), 400)
    clean(client.get("/v1/plots/divergence.png", params={"where": json.dumps({key: 1})}), 400)
    assert models_get(client)["total"] == 12  # nothing happened to the store


@pytest.mark.parametrize("value", ["x' OR '1'='1", "'; DROP TABLE _models; --", 'ResNet" OR 1=1 --',
                                   "ResNet\x00", "\x00", "Res\x00Net"])
def test_injection_and_nul_in_where_values_select_nothing(client, value):
    # a text value no model holds (NUL included): a 404 naming it, the store untouched
    e = models_get(client, 404, where={"backbone": value})
    assert e["code"] == "empty_selection"
    e = models_get(client, 404, where={"select": [value]})
    assert e["code"] == "empty_selection"
    clean(client.post("/v1/divergence", json={"group_by": "robust", "where": {"backbone": value}}), 404)
    assert models_get(client)["total"] == 12


def test_stored_sql_text_is_a_value_like_any(client, con):
    page = models_get(client, where={"select": SELECTS[1]})
    assert page["total"] == len(sql_ids(con, '"select" = ?', [SELECTS[1]])) > 0
    assert all(m["properties"]["select"] == SELECTS[1] for m in page["items"])


@pytest.mark.parametrize("where", [{"backbone": "\ud800"}, {"select": ["ok", "\udfff"]}, {"\udc80": 1}])
def test_lone_surrogates_are_a_400(client, where):
    models_get(client, 400, where=where)
    clean(client.post("/v1/divergence", content=json.dumps({"group_by": "task", "where": where}),
                      headers={"Content-Type": "application/json"}), 400)


def test_nul_and_surrogates_in_label_parameters(client):
    e = models_get(client, 404, task="GAN\x00")
    assert e["code"] == "empty_selection"
    r = client.get("/v1/models?task=%ED%A0%80")  # the UTF-8 bytes of a lone surrogate
    assert r.status_code in (400, 404) and "Traceback" not in r.text


# ---- the analyses and figures --------------------------------------------------------------------

def test_group_by_a_number_property_is_a_422_naming_its_type(client):
    for name, typ in (("clean_accuracy", "double"), ("order", "integer")):
        e = clean(client.post("/v1/divergence", json={"group_by": name}), 422)
        assert name in e["message"] and typ in e["message"] and "where" in e["message"]
        e = clean(client.get("/v1/plots/divergence.png", params={"group_by": name}), 422)
        assert typ in e["message"]
        e = clean(client.get("/v1/plots/quality.png", params={"color_by": name}), 422)
        assert typ in e["message"] and "color_by" in e["message"]
    e = clean(client.post("/v1/divergence", json={"group_by": "robustt"}), 400)
    assert "did you mean 'robust'" in e["message"]


def test_keyword_properties_through_the_analyses_and_figures(client, con):
    where = {"order": {"gte": 20}, "from": True}
    d = clean(client.post("/v1/divergence", json={"group_by": "select", "where": where}), 200).json()
    want = con.execute("""SELECT "select", count(DISTINCT model_id), sum(n_filters) FROM layers_with_models
                          WHERE "order" >= 20 AND "from" GROUP BY 1 ORDER BY 1""").fetchall()
    assert d["labels"] == [w[0] for w in want] and d["n_filters"] == [int(w[2]) for w in want]
    assert d["n_models"] == [w[1] for w in want]
    for figure, params in (("divergence", {"group_by": "select", "where": json.dumps(where)}),
                           ("ridge", {"group_by": "from", "where": json.dumps({"order": [10, 20, 30, None]})}),
                           ("quality", {"color_by": "select"}), ("eigenimages", {"where": json.dumps(where)})):
        r = clean(client.get(f"/v1/plots/{figure}.png", params=params), 200)
        assert r.content[:4] == b"\x89PNG", figure


def test_figures_with_properties(client):
    where = json.dumps({"clean_accuracy": {"gte": 70}})
    r = clean(client.get("/v1/plots/divergence.png", params={"group_by": "robust", "where": where}), 200)
    assert r.content[:4] == b"\x89PNG"
    assert clean(client.get("/v1/plots/quality.png", params={"color_by": "backbone"}), 200).content[:4] == b"\x89PNG"
    # booleans read True/False (and the missing ones (none)), as Python prints them
    svg = clean(client.get("/v1/plots/divergence.svg", params={"group_by": "robust", "where": where}), 200).text
    assert "True (" in svg and "False (" in svg and "(none) (" in svg and "true (" not in svg
    svg = clean(client.get("/v1/plots/quality.svg", params={"color_by": "backbone"}), 200).text
    assert all(b in svg for b in BACKBONES)


def test_a_property_queried_as_of_a_version_before_it(client, con):
    """``late`` has values from version 3 on: as_of 2 and 1 it is a column of nulls (the models
    had it, unset), not an error."""
    for as_of in (1, 2):
        d = clean(client.post("/v1/divergence", json={"group_by": "late", "as_of": as_of}), 200).json()
        assert d["labels"] == [None] and d["store_version"] == as_of
        h = clean(client.post("/v1/histograms", json={"where": {"late": None}, "as_of": as_of}), 200).json()
        assert sum(g["n_filters"] for g in h["groups"]) == 60_000
        r = clean(client.get("/v1/plots/divergence.png", params={"group_by": "late", "as_of": as_of}), 200)
        assert r.headers["x-store-version"] == str(as_of)
        # a value it only has later: no model held it then (a 404 naming the version)
        e = clean(client.post("/v1/divergence", json={"group_by": "task", "where": {"late": "yes"}, "as_of": as_of}), 404)
        assert f"store version {as_of}" in e["message"]
    # version 1 had no properties at all: each is null there
    d = clean(client.post("/v1/divergence", json={"group_by": "robust", "where": {"order": None}, "as_of": 1}), 200)
    assert d.json()["labels"] == [None]
    d = clean(client.post("/v1/divergence", json={"group_by": "late", "as_of": 3}), 200).json()
    assert d["labels"] == ["no", "yes", None]


# ---- the Client ---------------------------------------------------------------------------------

def test_client_models_are_the_local_ones(store, url):
    import cnnfilterdb

    db = cnnfilterdb.open(store)
    with cnnfilterdb.Client(url) as c:
        for kwargs in ({}, {"as_of": 1}, {"as_of": 2}, {"where": {"clean_accuracy": {"gte": 80}}},
                       {"where": {"order": {"gte": 20}, "select": SELECTS[:2]}},
                       {"where": {"robust": None}}, {"where": {"late": "yes"}, "as_of": 3}):
            local, remote = db.models(**kwargs), c.models(**kwargs)
            pd.testing.assert_frame_equal(remote, local, check_exact=True)
            assert sorted(local.columns[-7:]) == sorted(PROPERTIES), kwargs
        df = c.models()
        # a boolean and an integer property with nulls: pandas' nullable types, as DuckDB's .df()
        assert str(df["robust"].dtype) == "boolean" and str(df["order"].dtype) == "Int64"
        assert df["clean_accuracy"].dtype == np.float64 and df["from"].dtype == np.bool_
        assert df["robust"].isna().sum() == 4 and df["order"].isna().sum() == 3
        v1 = c.models(as_of=1)
        assert v1["robust"].isna().all() and v1["late"].isna().all()
        # the analyses: the local results
        for kw in ({"group_by": "robust", "where": {"clean_accuracy": {"gte": 80}}},
                   {"group_by": "select", "where": {"order": {"gte": 20}}}):
            a, b = db.divergence(**kw), c.divergence(**kw)
            assert a.labels == b.labels and a.n_filters.tolist() == b.n_filters.tolist()
            np.testing.assert_array_equal(a.matrix.to_numpy(), b.matrix.to_numpy())
        a = db.divergence("robust", where={"clean_accuracy": {"gte": 80}})
        assert a.labels == [False, True, None]
        ka, kb = db.kde("backbone", where={"robust": True}), c.kde("backbone", where={"robust": True})
        assert ka.labels == kb.labels and np.array_equal(ka.density, kb.density)
        # the errors the local API raises
        from cnnfilterdb.selection import SelectionError

        with pytest.raises(SelectionError, match="did you mean 'robust'"):
            c.models({"robst": True})
        with pytest.raises(SelectionError, match="double"):
            c.divergence("clean_accuracy")


# ---- a store of 200 properties --------------------------------------------------------------------

def test_fields_of_200_properties_is_bounded(tmp_path):
    db = tmp_path / "db"
    sample = write_sample_h5(tmp_path / "s.h5", n_models=8, n_filters=8000, seed=5)
    assert cli_main(["ingest", str(sample), "--db", str(db)]) == 0
    con = open_catalog(db)
    models = [m for (m,) in con.execute("SELECT model FROM models ORDER BY model_id").fetchall()]
    con.close()
    kinds = [lambda i, j: i % 2 == 0, lambda i, j: i * j, lambda i, j: i / (j + 1), lambda i, j: f"v{(i + j) % 5}"]
    rows = [(m, {f"p{j:03d}": kinds[j % 4](i, j) for j in range(200)}) for i, m in enumerate(models)]
    label_models(db, rows)
    from fastapi.testclient import TestClient

    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    client = TestClient(create_app(Settings(db=db, field_values_max=3)), raise_server_exceptions=False)
    clean(client.get("/v1/fields"), 200)  # the catalog opened
    t0 = time.perf_counter()
    fields = clean(client.get("/v1/fields"), 200).json()["fields"]
    elapsed = time.perf_counter() - t0
    props = [f for f in fields if f["property"]]
    assert [f["name"] for f in props] == [f"p{j:03d}" for j in range(200)]
    assert elapsed < 5, f"/v1/fields took {elapsed:.1f} s with 200 properties"
    for j, f in enumerate(props):
        if j % 4 == 3:  # text: at most field_values_max values, then truncated
            assert len(f["values"]) == 3 and f["truncated"] is True and f["n_distinct"] == 5
        elif j % 4 == 0:
            assert [v["value"] for v in f["values"]] == [False, True] and f["truncated"] is False
        else:
            assert f["values"] == [] and f["groupable"] is False
            assert math.isclose(f["max"], max(kinds[j % 4](i, j) for i in range(8)))
    page = clean(client.get("/v1/models", params={"where": json.dumps({"p001": {"gte": 3}, "p003": "v4"})}), 200)
    assert all(len(m["properties"]) == 200 for m in page.json()["items"])


def _sql_answer(columns: list[str], rows: list) -> dict:
    return {"columns": columns, "types": ["VARCHAR"] * len(columns), "rows": rows, "truncated": False,
            "truncated_reason": None, "max_rows": 1000, "max_bytes": 1 << 20, "elapsed_ms": 1.0}


@pytest.mark.parametrize("answer", ["bad name", "version not a number", "rows not rows"])
def test_the_clients_where_against_answers_it_cannot_read(answer):
    """A where makes the Client ask the store for its properties (and version) first: answers the
    engine cannot read are a ServiceError naming the URL, and a column name that is no property
    name never reaches the SQL the Client sends."""
    import cnnfilterdb
    from cnnfilterdb.client import ServiceError

    from .test_client_hostile import hostile

    sent = []

    def respond(conn):
        sql = json.loads(conn.body)["sql"]
        sent.append(sql)
        if sql.startswith("DESCRIBE"):
            names = [["robust", "BOOLEAN"], ['a" OR 1=1 --', "VARCHAR"]] if answer == "bad name" else [["robust", "BOOLEAN"]]
            conn.json(_sql_answer(["column_name", "column_type"], names))
        elif "max(version)" in sql:
            conn.json(_sql_answer(["v"], [["three"]] if answer == "version not a number" else [[3]]))
        else:
            conn.json(_sql_answer(["model_id"], "x" * 50 if answer == "rows not rows" else [[1]]))

    with hostile(respond) as (base, requests), cnnfilterdb.Client(base) as c:
        with pytest.raises(ServiceError) as e:
            c.models({"robust": True})
        assert type(e.value) is ServiceError and e.value.code == "unexpected_response", e.value
        assert f"unexpected response from {base}/v1/sql" in str(e.value)
    assert len(requests) == len(sent) == (3 if answer == "rows not rows" else 2)  # the listing's first page
    assert not any("OR 1=1" in q for q in sent)
