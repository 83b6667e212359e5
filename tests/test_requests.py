"""One contract per analysis (issue 21): each request type of cnnfilterdb/requests.py is the only
place its parameters, defaults and bounds are written. These tests read every front end and show
it agrees: the OpenAPI schema of the service, the signatures of the engine, the Python API, the
Client and Spark, the command line's help; and the `where` grammar the schema documents accepts
exactly what the engine's (the one the SQL is built with) accepts."""
from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cnnfilterdb import requests as rq
from cnnfilterdb.limits import MAX_BINS, MAX_ID, MAX_KDE_BINS, MIN_KDE_BINS
from cnnfilterdb.selection import FILTER_FIELDS, GROUP_FIELDS, SelectionError, field_kind, where_sql

REQUESTS = {name: spec.request for name, spec in rq.ANALYSES.items()}
POSTED = {spec.path: spec.request for spec in rq.ANALYSES.values() if spec.method == "POST"}
QUERIED = {spec.path: spec.request for spec in rq.ANALYSES.values() if spec.method == "GET"}


def _bounds(field) -> dict:
    """The bounds a request type declares for a field (``X | None`` and ``Annotated`` unwrapped)."""
    out, todo = {}, [*field.metadata, field.annotation]
    while todo:
        item = todo.pop()
        if rq.get_origin(item) in (rq.Union, rq.UnionType):
            todo += rq.get_args(item)
        elif rq.get_origin(item) is rq.Annotated:
            todo += list(item.__metadata__)
        for key, name in (("ge", "minimum"), ("le", "maximum")):
            if getattr(item, key, None) is not None:
                out[name] = getattr(item, key)
        for m in getattr(item, "metadata", []):  # a FieldInfo in Annotated
            for key, name in (("ge", "minimum"), ("le", "maximum")):
                if getattr(m, key, None) is not None:
                    out[name] = getattr(m, key)
    return out


def _schema_bounds(prop: dict) -> dict:
    options = prop.get("anyOf", [prop])
    return {k: o[k] for o in options for k in ("minimum", "maximum") if k in o}


@pytest.fixture(scope="module")
def spec(v1_client):
    return v1_client.get("/openapi.json").json()


def test_each_posted_request_is_the_engines_type(spec):
    assert len(POSTED) == 6 and len(QUERIED) == 3
    for path, request_type in POSTED.items():
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert list(schema["properties"]) == list(request_type.model_fields), path
        for name, field in request_type.model_fields.items():
            prop = schema["properties"][name]
            assert prop["description"] == field.description, (path, name)
            if field.is_required():
                assert name in schema["required"], (path, name)
            else:
                assert prop.get("default") == rq.plain(field.default), (path, name)
            if name not in ("components", "range", "where"):
                assert _schema_bounds(prop) == _bounds(field), (path, name)
    assert _bounds(rq.DivergenceRequest.model_fields["bins"]) == {"minimum": 1, "maximum": MAX_BINS}
    assert _bounds(rq.KdeRequest.model_fields["bins"]) == {"minimum": MIN_KDE_BINS, "maximum": MAX_KDE_BINS}
    assert _bounds(rq.DivergenceRequest.model_fields["as_of"]) == {"minimum": 1, "maximum": MAX_ID}


def test_each_queried_request_declares_the_engines_defaults_and_bounds(spec):
    for path, request_type in QUERIED.items():
        params = {p["name"]: p for p in spec["paths"][path]["get"]["parameters"]}
        for name, field in request_type.model_fields.items():
            if name in ("where", "as_of", "model_id"):  # JSON text; the version and the path declare their own
                continue
            p = params[name]
            assert p["description"] == field.description, (path, name)
            assert p["schema"].get("default") == field.default, (path, name)
            assert _schema_bounds(p["schema"]) == _bounds(field), (path, name)
            if name in ("metric", "weights"):
                assert p["schema"]["enum"] == list(rq.get_args(field.annotation)), (path, name)


def _parameters(function) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values() if p.name != "self"]


def test_every_python_front_end_has_the_request_types_signature():
    from cnnfilterdb.analysis import Analysis
    from cnnfilterdb.api import FilterDB
    from cnnfilterdb.client import Client
    from cnnfilterdb.spark.store import SparkStore

    for name, request_type in REQUESTS.items():
        want = [(p.name, p.kind, p.default) for p in rq.parameters(request_type)]
        for cls in (Analysis, FilterDB, Client):
            assert _parameters(getattr(cls, name)) == want, (cls.__name__, name)
    assert _parameters(SparkStore.divergence) == [(p.name, p.kind, p.default) for p in rq.parameters(rq.DivergenceRequest)]


def test_one_parameter_order_group_by_then_where_then_keywords():
    for name, request_type in REQUESTS.items():
        params = rq.parameters(request_type)
        positional = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        # the analysis's subject (a model, or a correlation's two variables), then group_by, then where
        assert positional == [n for n in ("model_id", "x", "y", "group_by", "where") if n in request_type.model_fields], name
        assert params[-1].name == "as_of"


def test_the_docstrings_parameters_are_the_request_types():
    from cnnfilterdb.api import FilterDB

    for name, request_type in REQUESTS.items():
        doc = getattr(FilterDB, name).__doc__
        for field_name, field in request_type.model_fields.items():
            assert f"\n{field_name}" in doc and field.description in doc, (name, field_name)


def test_the_command_lines_help_is_the_request_types(capsys):
    from cnnfilterdb.cli import build_parser

    parser = build_parser()
    for command in (["drift", "--help"], ["spark", "divergence", "--help"]):
        with pytest.raises(SystemExit):
            parser.parse_args(command)
        text = " ".join(capsys.readouterr().out.split())
        for name in ("metric", "bins", "weights", "basis"):
            field = rq.DivergenceRequest.model_fields[name]
            assert f"--{name}" in text and f"(default {field.default})" in text, (command, name)
        assert "one of kl_sym, js, hellinger, wasserstein" in text
    args = parser.parse_args(["drift", "--group-by", "task"])
    assert rq.from_arguments(rq.DivergenceRequest, args, where=None) == rq.DivergenceRequest(group_by="task")


def test_a_bad_value_is_said_the_same_by_every_front_end(v1_client, v1_store, capsys):
    import cnnfilterdb
    from cnnfilterdb.cli import main as cli_main

    local = cnnfilterdb.open(v1_store)
    with pytest.raises(SelectionError) as e:
        local.divergence("tsk")
    said = str(e.value)
    assert said.startswith("unknown group_by 'tsk' (did you mean 'task'?); known: ['task', ")
    r = v1_client.post("/v1/divergence", json={"group_by": "tsk"})
    assert r.status_code == 400 and r.json()["error"]["message"] == said
    assert cli_main(["drift", "--group-by", "tsk", "--db", str(v1_store)]) == 1
    assert capsys.readouterr().err == f"cnnfilterdb: error: {said}\n"
    with pytest.raises(SelectionError, match="bins must be an integer from 1 to 10,000, got 0"):
        local.histograms(bins=0)
    r = v1_client.post("/v1/histograms", json={"bins": 0})
    assert r.status_code == 422 and r.json()["error"]["message"] == "bins must be an integer from 1 to 10,000, got 0"


def test_a_request_is_frozen_and_takes_numpy_values():
    req = rq.build(rq.Density2dRequest, components=np.array([1, 0]), bins=np.int16(8), range=(np.float32(-2), 2))
    assert req.components == [1, 0] and req.bins == 8 and type(req.bins) is int and req.range == [-2.0, 2.0]
    with pytest.raises(ValidationError):
        req.bins = 9
    assert json.loads(json.dumps(req.body())) == {"as_of": None, "where": None, "components": [1, 0], "bins": 8,
                                                  "basis": "global", "range": [-2.0, 2.0]}


# ---- the where grammar: the schema (requests.Where) and the engine's (selection.where_sql) ----
_values = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                    st.text(max_size=5), st.just(1.0), st.just(3))
_bounds_objects = st.dictionaries(st.sampled_from(["gte", "gt", "lte", "lt", "ge", "between"]), _values, max_size=3)
_conditions = st.one_of(_values, st.lists(_values, max_size=3), _bounds_objects)
_wheres = st.dictionaries(st.sampled_from(FILTER_FIELDS + ["colour"]), _conditions, max_size=3)


def _schema_accepts(where) -> bool:
    try:
        rq.Where.model_validate(where)
        return True
    except ValidationError:
        return False


def _engine_accepts(where) -> bool:
    try:
        where_sql(where)
        return True
    except SelectionError:
        return False


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(_wheres)
def test_the_documented_where_accepts_what_the_engine_accepts(where):
    assert _schema_accepts(where) == _engine_accepts(where), where


def test_the_where_model_has_one_field_per_filter_field_of_its_kind():
    assert list(rq.Where.model_fields) == FILTER_FIELDS
    for name in FILTER_FIELDS:
        assert rq.Where.model_fields[name].annotation == rq.CONDITIONS[field_kind(name)], name


def test_db_sql_errors_are_the_projects(v1_store):
    import cnnfilterdb

    db = cnnfilterdb.open(v1_store)
    for query, words in (("SELEC 1", "Parser Error: syntax error at or near \"SELEC\""),
                         ("SELECT * FROM no_such_table", "Catalog Error: Table with name no_such_table does not exist"),
                         ("DROP TABLE _shards", "read-only")):
        with pytest.raises(cnnfilterdb.SqlError) as e:
            db.sql(query)
        assert isinstance(e.value, cnnfilterdb.UserError) and words in str(e.value) and "\n" not in str(e.value), query
    assert int(db.sql("SELECT count(*) AS n FROM models").n.iloc[0]) == 12


NEW_ANALYSIS = '''
import json, sys
from typing import ClassVar

from pydantic import Field

from cnnfilterdb import requests as rq
from cnnfilterdb.analysis import Analysis
from cnnfilterdb.limits import MAX_BINS


class CountRequest(rq.AnalysisRequest):
    """Filters per group: an analysis this test adds."""
    positional: ClassVar = ("group_by", "where")
    group_by: rq.GroupField | None = Field(None, description="the field to count by")
    where: rq.Selection = Field(None, description=rq.WHERE_TEXT)
    scale: rq.Integer(1, MAX_BINS) = Field(1, description="a factor on every count")
    share: rq.Real(0.0, 1.0) | None = Field(None, description="a number that may be absent")
    components: rq.Components = Field([0, 1], description="a pair")


def count(self, req):
    """The filters of each group, times scale."""
    sel = self.select(req.selection, req.group_by)
    return {"store_version": self.version, "labels": sel.labels, "n": (sel.n_filters * req.scale).tolist(),
            "share": req.share, "components": list(req.components)}


Analysis.count = Analysis.counts = rq.takes(CountRequest)(count)
rq.ANALYSES["count"] = rq.AnalysisSpec(CountRequest, "POST", "/v1/count", "Result", None, "Filters per group")
rq.ANALYSES["counts"] = rq.AnalysisSpec(CountRequest, "GET", "/v1/counts", "Result", None, "Filters per group")

import cnnfilterdb  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from cnnfilterdb.service.main import create_app  # noqa: E402
from cnnfilterdb.service.settings import Settings  # noqa: E402
from tests.helpers import serving  # noqa: E402

store = sys.argv[1]
out = {"local": cnnfilterdb.open(store).count("task", scale=2, share=0.5, components=(2, 3)).to_dict()}
app = create_app(Settings(db=store))
with TestClient(app) as http:
    out["post"] = http.post("/v1/count", json={"group_by": "task", "scale": 2, "share": 0.5, "components": [2, 3]}).json()
    out["get"] = http.get("/v1/counts", params={"group_by": "task", "scale": 2, "share": 0.5, "components": [2, 3]}).json()
    out["get_bad"] = http.get("/v1/counts", params={"share": 1.5}).json()
    out["bad"] = http.post("/v1/count", json={"group_by": "task", "scale": 0}).json()
    out["openapi"] = http.get("/openapi.json").json()["paths"]["/v1/counts"]["get"]["parameters"]
with serving(create_app(Settings(db=store))) as (url, _):
    with cnnfilterdb.Client(url) as c:
        out["client"] = c.count("task", scale=2, share=0.5, components=(2, 3)).to_dict()
        out["client_get"] = c.counts("task", scale=2, share=0.5, components=(2, 3)).to_dict()
        out["client_defaults"] = c.counts().to_dict()
print(json.dumps(out))
'''


def test_a_new_analysis_is_served_by_every_front_end(v1_store):
    """Adding an analysis is writing its request type, its engine function and its entry in
    requests.ANALYSES: the Python API, the Client and the service (POST or GET, with its OpenAPI
    parameters) serve it with no line of their own."""
    import subprocess
    import sys

    from tests.helpers import REPO

    p = subprocess.run([sys.executable, "-c", NEW_ANALYSIS, str(v1_store)], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.splitlines()[-1])
    want = out["local"]
    assert want["labels"] and all(n % 2 == 0 for n in want["n"])
    for front in ("post", "get", "client", "client_get"):
        assert out[front] == want, front
    assert out["bad"] == {"error": {"code": "invalid_request", "message": "scale must be an integer from 1 to 10,000, got 0"}}
    assert out["get_bad"] == {"error": {"code": "invalid_request", "message": "share must be a finite number from 0 to 1, got 1.5"}}
    assert out["client_defaults"]["share"] is None and out["client_defaults"]["components"] == [0, 1]
    scale = next(p for p in out["openapi"] if p["name"] == "scale")
    assert scale["schema"]["minimum"] == 1 and scale["schema"]["maximum"] == MAX_BINS and scale["description"] == "a factor on every count"


# ---- the figures and the export: their parameters are the request types' (issue 21) -----------
PLOT_PATH = "/v1/plots/{figure}.{fmt}"


def test_the_figures_query_parameters_are_the_request_types(spec):
    """GET /v1/plots declares each parameter from the request type of the analysis each figure
    draws (or the figure's own, plots.FigureOptions, with the bounds of limits.py): no bound of its
    own. A parameter several figures take declares the widest bounds among them, and its
    description says each figure's range and default."""
    from cnnfilterdb import plots
    from cnnfilterdb.limits import MAX_DENSITY2D_BINS, MAX_DPI, MAX_INCHES, MIN_DPI, MIN_INCHES

    params = {p["name"]: p for p in spec["paths"][PLOT_PATH]["get"]["parameters"]}
    bins = [_bounds(t.model_fields["bins"]) for t in (rq.DivergenceRequest, rq.KdeRequest, rq.Density2dRequest)]
    assert bins == [{"minimum": 1, "maximum": MAX_BINS}, {"minimum": MIN_KDE_BINS, "maximum": MAX_KDE_BINS},
                    {"minimum": 1, "maximum": MAX_DENSITY2D_BINS}]
    assert _schema_bounds(params["bins"]["schema"]) == {"minimum": min(b["minimum"] for b in bins),
                                                        "maximum": max(b["maximum"] for b in bins)}
    for name, lo, hi in (("dpi", MIN_DPI, MAX_DPI), ("width", MIN_INCHES, MAX_INCHES), ("height", MIN_INCHES, MAX_INCHES)):
        assert _schema_bounds(params[name]["schema"]) == _bounds(plots.FigureOptions.model_fields[name]) \
            == {"minimum": lo, "maximum": hi}, name
    assert _schema_bounds(params["sparsity_gt"]["schema"]) == _bounds(rq.DegenerateRequest.model_fields["sparsity_gt"])
    assert _schema_bounds(params["layer_id"]["schema"]) == {"minimum": 0, "maximum": MAX_ID}
    for name, request_type in (("metric", rq.DivergenceRequest), ("weights", rq.DivergenceRequest),
                               ("basis", rq.KdeRequest)):
        enum = [o for o in params[name]["schema"].get("anyOf", [params[name]["schema"]]) if "enum" in o][0]["enum"]
        assert enum == list(rq.get_args(request_type.model_fields[name].annotation)), name
    # a field: a built-in one (listed as examples) or a model property (a name of its pattern)
    colour = [o for o in params["color_by"]["schema"].get("anyOf", [params["color_by"]["schema"]]) if "pattern" in o][0]
    assert colour["examples"] == GROUP_FIELDS and colour["pattern"] == "[a-z][a-z0-9_]{0,62}$"
    # each figure's own range and default, as its request type and the notebook have them
    text = " ".join(params["bins"]["description"].split())
    assert f"ridge: {rq.KdeRequest.model_fields['bins'].description} (from 16 to 8,192, default 2,048)" in text
    assert "density2d: " in text and "(from 1 to 1,000, default 512)" in text
    assert f"(from 1 to 10,000, default {rq.DivergenceRequest.model_fields['bins'].default})" in text
    # every parameter of every figure is a field of its analysis's request type, or the figure's own
    for figure, names in plots.PARAMETERS.items():
        for name in names + plots.SIZE:
            request_type = plots.ANALYSIS_OF.get(figure)
            assert name in plots.FigureOptions.model_fields or name in request_type.model_fields, (figure, name)
            assert name in params, name
    assert set(plots.OPTIONS) == set(params) - {"figure", "fmt", "as_of"}


def test_plot_help_shows_each_figures_defaults(capsys):
    from cnnfilterdb import plots
    from cnnfilterdb.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["plot", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in plots.OPTIONS:
        assert f"--{name.replace('_', '-')}" in text, name
    for words in (f"default {rq.DivergenceRequest.model_fields['bins'].default}", "from 16 to 8,192, default 2,048",
                  "from 1 to 1,000, default 512", "default -3.3,3.3", "default 0,1", "default task,visual_category,depth_bin",
                  "one of kl_sym, js, hellinger, wasserstein (default kl_sym)", "dots per inch (from 10 to 600, default 100)",
                  "(from 0 to 1, default 0.5)", "the width in inches, the figure's own if not given (from 0.5 to 100)"):
        assert words in text, words
    with pytest.raises(SystemExit):
        build_parser().parse_args(["report", "--help"])
    assert "dots per inch (from 10 to 600, default 100)" in " ".join(capsys.readouterr().out.split())


def test_a_figures_parameter_is_checked_by_its_request_type(v1_client, v1_store, tmp_path, capsys):
    """A typo of group_by suggests the nearest field, in the analysis endpoint's words, for the
    service and the command line alike; a value out of a figure's range is the figure's 400 with the
    request type's message; a parameter a figure does not take is a 400."""
    from cnnfilterdb.cli import main as cli_main

    said = v1_client.post("/v1/divergence", json={"group_by": "tsk"}).json()["error"]["message"]
    assert "did you mean 'task'?" in said
    for figure in ("divergence", "kl_combined", "ridge"):
        r = v1_client.get(f"/v1/plots/{figure}.png", params={"group_by": "task,tsk" if figure == "kl_combined" else "tsk"})
        assert r.status_code == 400 and r.json()["error"]["message"] == said, figure
    assert cli_main(["plot", "divergence", "--group-by", "tsk", "--db", str(v1_store), "-o", str(tmp_path / "d.png")]) == 1
    assert capsys.readouterr().err == f"cnnfilterdb: error: {said}\n"
    r = v1_client.get("/v1/plots/quality.png", params={"color_by": "tsk"})
    assert r.status_code == 400 and "unknown color_by 'tsk' (did you mean 'task'?)" in r.json()["error"]["message"]

    kde = v1_client.post("/v1/kde", json={"bins": 8}).json()["error"]["message"]
    r = v1_client.get("/v1/plots/ridge.png", params={"bins": 8})
    assert r.status_code == 400 and r.json()["error"] == {"code": "invalid_request", "message": kde}
    assert kde == f"bins must be an integer from {MIN_KDE_BINS} to {MAX_KDE_BINS:,}, got 8"
    r = v1_client.get("/v1/plots/density2d.png", params={"components": "0,9"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "components[1] must be an integer from 0 to 8, got 9"
    r = v1_client.get("/v1/plots/quality.png", params={"sparsity_gt": 0.25, "limit": 3})
    assert r.status_code == 400 and "unknown query parameter" in r.json()["error"]["message"]
    r = v1_client.get("/v1/plots/ridge.png", params={"sparsity_gt": 0.25})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("ridge takes no sparsity_gt")


def test_a_figures_defaults_are_its_analysis_requests():
    from cnnfilterdb import plots

    req = plots.PlotRequest.of("kl_combined", bins=64)
    assert [r.group_by for r in req.requests] == list(plots.DEFAULT_GROUP_BY["kl_combined"])
    assert all(r == rq.DivergenceRequest(group_by=r.group_by, bins=64) for r in req.requests)
    assert plots.PlotRequest.of("ridge").requests == (rq.KdeRequest(group_by="task", bins=2048),)
    assert plots.PlotRequest.of("density2d").requests == (rq.Density2dRequest(bins=512, range=[-3.3, 3.3]),)
    assert plots.PlotRequest.of("eigenimages", where={"task": "GAN"}).requests == (rq.PcaRequest(where={"task": "GAN"}),)
    quality = plots.PlotRequest.of("quality", entropy_norm_gt=2.0).requests[0]
    assert quality.thresholds == {**rq.DEGENERATE_THRESHOLDS, "entropy_norm_gt": 2.0}
    assert plots.PlotRequest.of("layer_filters", layer_id=3).requests == ()
    # what the ETag digests: every parameter, the defaults filled in, the same spelled out or not
    assert plots.PlotRequest.of("divergence").resolved() == plots.PlotRequest.of(
        "divergence", group_by="task", metric="kl_sym", bins=rq.DivergenceRequest.model_fields["bins"].default,
        dpi=plots.FigureOptions.model_fields["dpi"].default).resolved()


def test_the_export_format_is_the_export_requests(spec, v1_client, v1_store, tmp_path, capsys):
    from cnnfilterdb import export
    from cnnfilterdb.cli import build_parser
    from cnnfilterdb.cli import main as cli_main
    from cnnfilterdb.selection import UnknownName

    field = rq.ExportRequest.model_fields["format"]
    assert list(rq.get_args(field.annotation)) == list(rq.EXPORT_FORMATS) == list(export.FORMATS)
    params = {p["name"]: p for p in spec["paths"]["/v1/filters"]["get"]["parameters"]}
    assert params["format"]["schema"]["enum"] == list(rq.EXPORT_FORMATS)
    assert params["format"]["schema"]["default"] == field.default
    assert params["format"]["description"] == field.description
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--format {" + ",".join(rq.EXPORT_FORMATS) + "}" in text and " ".join(field.description.split()) in text
    # a bad format: the request type's words over HTTP and on the command line
    said = v1_client.get("/v1/filters", params={"format": "parket"}).json()["error"]["message"]
    assert said.startswith("unknown format 'parket' (did you mean 'parquet'?)")
    out = tmp_path / "f.parquet"
    assert cli_main(["export", "-o", str(out), "--format", "parket", "--db", str(v1_store)]) == 1
    assert capsys.readouterr().err == f"cnnfilterdb: error: {said}\n" and not out.exists()
    with pytest.raises(UnknownName, match="did you mean 'parquet'"):
        rq.build(rq.ExportRequest, format="parket")


def test_iter_filters_checks_the_export_request(v1_store):
    import cnnfilterdb
    from cnnfilterdb.selection import UnknownName

    db = cnnfilterdb.open(v1_store)
    with pytest.raises(UnknownName, match="'tsk'"):
        db.iter_filters({"tsk": "GAN"})
    with pytest.raises(SelectionError, match="as_of must be an integer from 1"):
        db.iter_filters(as_of=0)
    with pytest.raises(TypeError, match="as_of must be a store version"):
        db.iter_filters(as_of="1")


def test_an_integer_is_what_json_schema_counts_as_one(v1_client, v1_store):
    """70.0 is an integer to JSON Schema (the OpenAPI document's "type": "integer"), so to every
    front end; 70.5, true and "70" are not."""
    import cnnfilterdb

    db = cnnfilterdb.open(v1_store)
    assert db.histograms(bins=30.0).counts.shape[-1] == 30
    assert v1_client.post("/v1/histograms", json={"bins": 30.0}).json()["bins"] == 30
    r = v1_client.post("/v1/pca", json={"where": {"conv_depth": 1.0, "model_id": {"gte": 0.0}}, "as_of": 1.0})
    assert r.status_code == 200 and r.json()["n_filters"] == db.pca({"conv_depth": 1, "model_id": {"gte": 0}}).n_filters
    for bad in (30.5, True, "30"):
        with pytest.raises(SelectionError, match="bins must be an integer"):
            db.histograms(bins=bad)
        assert v1_client.post("/v1/histograms", json={"bins": bad}).status_code == 422


def test_v1_stats_shows_every_limit(v1_client):
    """One registry of limits: the service's settings and the engine's bounds, all in /v1/stats."""
    from cnnfilterdb.limits import ENGINE_LIMITS
    from cnnfilterdb.service.settings import LIMITS, Settings

    limits = v1_client.get("/v1/stats").json()["limits"]
    for name, (value, _) in ENGINE_LIMITS.items():
        assert limits[name] == value, name
    defaults = Settings(db="x").model_dump()
    for name in LIMITS:
        assert name in limits and (limits[name] == defaults[name] or name == "sql_worker_memory_cap"), name
    assert limits["max_bins"] == _bounds(rq.DivergenceRequest.model_fields["bins"])["maximum"]


def test_new_users_mistakes_say_what_to_do(v1_client, v1_store, capsys):
    import cnnfilterdb
    from cnnfilterdb.cli import main as cli_main

    with pytest.raises(SelectionError, match=r"""where must be an object .*e\.g\. \{"task": "GAN"\}; got 'GAN'"""):
        cnnfilterdb.open(v1_store).divergence("task", "GAN")
    with pytest.raises(ValueError, match="url: the service's address with its scheme, e.g. http://127.0.0.1:8000"):
        cnnfilterdb.Client("127.0.0.1:8000")
    r = v1_client.get("/v1/models", params={"tsk": "GAN"})
    assert r.status_code == 400 and "unknown query parameter(s) 'tsk' (did you mean 'task'?)" in r.json()["error"]["message"]
    assert cli_main(["drift", "--group-by", "task", "--where", "task=GAN", "--db", str(v1_store)]) == 1
    assert """--where is not JSON (Expecting value at character 0); e.g. {"task": "GAN"}""" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["int", "str", "bool", "a[0]", "Bounds[int]", "body", "query", "loc"])
def test_an_unknown_body_key_of_any_name_is_a_400(v1_client, key):
    r = v1_client.post("/v1/divergence", json={"group_by": "task", key: 1})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(f"unknown field {key!r} in the request"), r.text
    with pytest.raises(SelectionError, match="unknown field"):
        rq.build(rq.PcaRequest, **{key: 1})


def test_hostile_where_texts_and_values_are_one_line_errors(v1_client, v1_store, capsys):
    import cnnfilterdb
    from cnnfilterdb.cli import main as cli_main

    deep = "[" * 600 + "]" * 600
    r = v1_client.post("/v1/divergence", json={"group_by": "task", "where": json.loads(deep)})
    assert r.status_code == 422 and "nested too deeply" in r.json()["error"]["message"], r.text
    with pytest.raises(SelectionError, match="nested too deeply"):
        cnnfilterdb.open(v1_store).pca({"task": json.loads(deep)})
    for where, status, words in ((deep, 422, "nested too deeply"), ("[" * 5000 + "]" * 5000, 422, "nested too deeply"),
                                 ('{"model_id": ' + "9" * 4301 + "}", 400, "not JSON that can be read"),
                                 ('{"task": "GAN", "task": "Classification"}', 400, "names 'task' twice")):
        for path in ("/v1/filters", "/v1/quality/degenerate", "/v1/models/0/similar", "/v1/plots/divergence.png"):
            r = v1_client.get(path, params={"where": where})
            assert r.status_code == status and words in r.json()["error"]["message"], (path, r.text[:200])
        assert cli_main(["drift", "--group-by", "task", "--where", where, "--db", str(v1_store)]) == 1
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err[:300]


def test_a_built_request_is_checked_again_and_must_be_its_analysiss(v1_store):
    import cnnfilterdb

    db = cnnfilterdb.open(v1_store)
    req = rq.build(rq.Density2dRequest, bins=8)
    req.components[1] = 42  # a list inside a frozen model can still be changed
    with pytest.raises(SelectionError, match=r"components\[1\] must be an integer from 0 to 8, got 42"):
        db.density2d(req)
    with pytest.raises(TypeError, match="divergence takes a DivergenceRequest, not a PcaRequest"):
        db.divergence(rq.PcaRequest())
    assert db.pca(as_of=1.0).store_version == 1
    with pytest.raises(SelectionError, match="bins must be an integer from 1 to 10,000, got an integer of 16,610 bits"):
        db.histograms(bins=10**5000)


COLLIDING = '''
import sys
from cnnfilterdb import requests as rq
from cnnfilterdb.analysis import Analysis

Analysis.{name} = rq.takes(rq.PcaRequest)(lambda self, req: {{}})
rq.ANALYSES["{name}"] = rq.AnalysisSpec(rq.PcaRequest, "{method}", "{path}", "Result", None, "x")
try:
    import cnnfilterdb.api, cnnfilterdb.client
    cnnfilterdb.api.open(sys.argv[1])
    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings
    create_app(Settings(db=sys.argv[1]))
except RuntimeError as e:
    print(e)
'''


@pytest.mark.parametrize("name, method, path, words", [
    ("models", "GET", "/v1/x", "the analysis 'models' of requests.ANALYSES would hide FilterDB.models"),
    ("sql", "GET", "/v1/x", "would hide FilterDB.sql"),
    ("layer", "GET", "/v1/layers/{model_id}", "GET /v1/layers/{model_id} (layer) is answered by /v1/layers/{layer_id}"),
    ("sqlx", "POST", "/v1/sql", "is answered by /v1/sql (sqlx)"),
    ("home", "GET", "/", "is answered by / (home)"),
    ("root", "GET", "/v1/x", "the analyses ['root'] of requests.ANALYSES are hidden by attributes of FilterDB"),
    ("__eq__", "GET", "/v1/x", "an analysis's name is a Python name that does not start with '_', not '__eq__'"),
])
def test_a_new_analysis_cannot_hide_what_is_there(v1_store, name, method, path, words):
    import subprocess
    import sys

    from tests.helpers import REPO

    p = subprocess.run([sys.executable, "-c", COLLIDING.format(name=name, method=method, path=path), str(v1_store)], capture_output=True,
                       text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0 and words in p.stdout, (p.stdout, p.stderr[-2000:])


def test_every_python_error_is_a_user_error(v1_store, v1_client):
    """A caller catches cnnfilterdb.UserError (or its kinds) locally and over HTTP alike."""
    import pandas as pd

    import cnnfilterdb
    from cnnfilterdb.client import SqlRefused
    from tests.helpers import serving

    db = cnnfilterdb.open(v1_store)
    with pytest.raises(cnnfilterdb.UserError) as e:
        db.similar(99_999)
    assert isinstance(e.value, LookupError) and str(e.value) == "no model 99999"
    for bad in (-1, 1.5, True, 2**64, 1e308):
        with pytest.raises(SelectionError, match=r"max_rows must be an integer from 0 to 2\*\*62"):
            db.sql("SELECT 1", max_rows=bad)
    with pytest.raises(SelectionError) as e:
        db.pca({"task": pd.Series(["a", "b"])})
    assert "\n" not in str(e.value)
    with serving(v1_client.app) as (url, _), cnnfilterdb.Client(url) as c:
        with pytest.raises(cnnfilterdb.SqlError) as e:
            c.sql("SELEC 1")
        assert isinstance(e.value, SqlRefused) and isinstance(e.value, cnnfilterdb.UserError)
        with pytest.raises(cnnfilterdb.UserError):
            c.similar(99_999)


def test_an_integral_float_in_a_where_text_is_its_integer(v1_client):
    a = v1_client.get("/v1/plots/eigenimages.svg", params={"where": '{"conv_depth": 2}'})
    b = v1_client.get("/v1/plots/eigenimages.svg", params={"where": '{"conv_depth": 2.0}'})
    assert a.status_code == b.status_code == 200 and a.headers["etag"] == b.headers["etag"] and a.content == b.content
    assert rq.check_where({"conv_depth": 2.0, "conv_depth_norm": 1}) == {"conv_depth": 2, "conv_depth_norm": 1.0}



def test_the_recheck_s_cases(v1_store, v1_client):
    """The hostile re-check: a value with __index__ in a listing's where, a duplicate key said once,
    URLs of every shape, errors of one kind locally and over HTTP."""
    import cnnfilterdb
    from cnnfilterdb.client import BadUrl

    class Idx:
        def __index__(self):
            return 1

    db = cnnfilterdb.open(v1_store)
    assert len(db.layers({"conv_depth": Idx()})) == len(db.layers({"conv_depth": 1})) > 0
    assert len(db.layers({"model_id": [np.array(1), Idx()], "conv_depth": {"gte": Idx()}})) > 0
    with pytest.raises(SelectionError) as e:
        rq.parse_where('{"task": {"gte": "a", "gte": "b"}}')
    assert str(e.value) == "where names 'gte' twice in one object"
    r = v1_client.get("/v1/models/0/similar", params={"k": "9" * 5000})
    assert r.status_code == 422 and "Unable to parse" not in r.text and "k must be an integer" in r.text
    for url in ("HTTP://127.0.0.1:1", " http://127.0.0.1:1/"):
        assert cnnfilterdb.Client(url).url == "http://127.0.0.1:1"
    for url in ("127.0.0.1:8000", "http://", "http://[::1", "http://\ud800", "ftp://x", None):
        with pytest.raises(BadUrl) as e:
            cnnfilterdb.Client(url)
        assert isinstance(e.value, cnnfilterdb.UserError) and isinstance(e.value, ValueError)
    with pytest.raises(cnnfilterdb.SqlError, match="not valid Unicode"):
        db.sql("SELECT '\ud800'")
    from cnnfilterdb.client import NotFound
    assert issubclass(NotFound, cnnfilterdb.NotFound)


def test_the_command_line_takes_numbers_as_json_does(v1_store, capsys):
    from cnnfilterdb.cli import main as cli_main

    assert cli_main(["drift", "--group-by", "task", "--bins", "30.0", "--json", "--db", str(v1_store)]) == 0
    assert json.loads(capsys.readouterr().out)["bins"] == 30
    assert cli_main(["drift", "--group-by", "task", "--bins", "30.5", "--db", str(v1_store)]) == 1
    assert capsys.readouterr().err == "cnnfilterdb: error: bins must be an integer from 1 to 10,000, got 30.5\n"
