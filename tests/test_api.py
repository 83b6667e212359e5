"""The Python API: ``cnnfilterdb.open`` against the HTTP endpoints and DuckDB, and
``cnnfilterdb.Client`` over real HTTP against the local API; figures, errors, docstring examples."""
from __future__ import annotations

import doctest
import io
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

import cnnfilterdb
import cnnfilterdb.api
import cnnfilterdb.client
from cnnfilterdb.catalog import VersionError
from cnnfilterdb.layout import StoreError
from cnnfilterdb.plots import Provenance, render
from cnnfilterdb.results import LAYER_COLUMNS, MODEL_COLUMNS
from cnnfilterdb.selection import EmptySelectionError, SelectionError

from .helpers import cli_main, serving

PNG = b"\x89PNG\r\n\x1a\n"
WEIGHTS = ", ".join(f"w{i}" for i in range(9))


@pytest.fixture(scope="module")
def db(v1_store):
    with cnnfilterdb.open(v1_store) as d:
        yield d


@pytest.fixture(scope="module")
def server(v1_store):
    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    with serving(create_app(Settings(db=v1_store))) as (url, _):
        yield url


@pytest.fixture(scope="module")
def remote(server):
    with cnnfilterdb.Client(server) as c:
        yield c


def py(v):
    """A DataFrame cell or engine value as the JSON of the endpoint has it: NaN and NA as None,
    numpy scalars as Python ones."""
    if isinstance(v, dict):
        return {k: py(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [py(x) for x in v]
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return py(v.item())
    return v


def rows(df: pd.DataFrame) -> list[dict]:
    return [{k: py(v) for k, v in r.items()} for r in df.to_dict("records")]


def flat(items: list[dict]) -> list[dict]:
    """GET /v1/models' items as db.models() has them: the properties (a nested object in the JSON)
    as columns after the built-in ones."""
    return [{**{k: v for k, v in m.items() if k != "properties"}, **m["properties"]} for m in items]


def post(client, path, body):
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def get(client, path, params=None):
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def without_timing(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "elapsed_ms"}


def as_json(d: dict) -> dict:
    """The engine's dict as the service sends it (NaN as null, tuples as lists)."""
    return json.loads(json.dumps(py(d)))


# -- the listings ----------------------------------------------------------------------------------

def test_models_are_the_pages_of_v1_models(db, v1_client):
    items, url = [], "/v1/models?limit=5"
    while url:
        page = get(v1_client, url)
        items += page["items"]
        url = page["next"]
    df = db.models()
    assert list(df.columns) == MODEL_COLUMNS
    assert df.model_id.tolist() == sorted(df.model_id.tolist())
    assert rows(df) == flat(items)
    gan = db.models({"task": "GAN"})
    assert rows(gan) == flat(get(v1_client, "/v1/models?task=GAN&limit=1000")["items"])
    assert len(gan) > 0 and set(gan.task) == {"GAN"}
    # numpy values select as Python ones
    one = db.models({"model_id": np.int32(df.model_id.iloc[3])})
    assert rows(one) == flat([items[3]])


def test_models_where_a_layer_field_keeps_the_models_with_such_layers(db, con):
    q = "SELECT DISTINCT model_id FROM layers WHERE conv_depth >= 6 ORDER BY 1"
    want = [m for (m,) in con.execute(q).fetchall()]
    assert 0 < len(want) < len(db.models())
    assert db.models({"conv_depth": {"gte": 6}}).model_id.tolist() == want
    got = db.models({"conv_depth": {"gte": 6}, "task": ["GAN", "Segmentation"]})
    want2 = [m for (m,) in con.execute("SELECT DISTINCT model_id FROM layers_with_models WHERE conv_depth >= 6 AND "
                                       "task IN ('GAN', 'Segmentation') ORDER BY 1").fetchall()]
    assert got.model_id.tolist() == want2


def test_layers_are_the_layers_of_v1_models(db, v1_client):
    df = db.layers()
    assert list(df.columns) == LAYER_COLUMNS
    items = []
    for model_id in db.models().model_id:
        items += get(v1_client, f"/v1/models/{model_id}/layers")["items"]
    assert rows(df) == sorted(items, key=lambda r: r["layer_id"])
    sel = db.layers({"task": "GAN", "conv_depth": {"lt": 3}})
    assert len(sel) > 0
    assert rows(sel) == [r for r in sorted(items, key=lambda r: r["layer_id"])
                         if r["model_id"] in set(db.models({"task": "GAN"}).model_id) and r["conv_depth"] < 3]


# -- filters ---------------------------------------------------------------------------------------

def _duckdb_filters(con, cond: str = "true") -> np.ndarray:
    res = con.execute(f"SELECT {WEIGHTS} FROM filters WHERE layer_id IN (SELECT layer_id FROM layers_with_models "
                      f"WHERE {cond}) ORDER BY filter_id").fetchnumpy()
    return np.stack([res[f"w{i}"] for i in range(9)], axis=1).astype(np.float32).reshape(-1, 3, 3)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("where, cond", [
    (None, "true"),
    ({"task": "GAN"}, "task = 'GAN'"),
    ({"conv_depth": {"gte": 2, "lt": 5}, "visual_category": ["natural", "sketches"]},
     "conv_depth >= 2 AND conv_depth < 5 AND visual_category IN ('natural', 'sketches')"),
])
def test_filters_are_duckdbs_rows_in_filter_id_order(db, con, where, cond):
    W = db.filters(where)
    assert W.dtype == np.float32 and W.ndim == 3 and W.shape[1:] == (3, 3) and W.flags.c_contiguous
    assert len(W) > 0
    assert same_bits(W, _duckdb_filters(con, cond))


def test_iter_filters_batches_concatenate_to_filters(db, con):
    batches = db.iter_filters({"task": ["GAN", "Classification"]}, batch=7777)
    want = db.filters({"task": ["GAN", "Classification"]})
    assert batches.n_rows == len(want) and batches.store_version == 1 and len(batches) == -(-len(want) // 7777)
    parts = list(batches)
    assert all(len(p) == 7777 for p in parts[:-1]) and 0 < len(parts[-1]) <= 7777
    assert all(p.dtype == np.float32 and p.shape[1:] == (3, 3) for p in parts)
    assert same_bits(np.concatenate(parts), want)
    # stopped early: nothing left open, and the next one reads the same
    with db.iter_filters(batch=100) as b:
        first = next(b)
    assert same_bits(first, db.filters()[:100])
    # an empty selection is an empty array, not an error (the export's rule)
    empty = db.filters({"model_id": {"gt": 10**6}})
    assert empty.shape == (0, 3, 3) and empty.dtype == np.float32


# -- the statistics against their endpoints ---------------------------------------------------------

DIVERGENCES = [
    {"group_by": "task"},
    {"group_by": "depth_bin", "metric": "js", "bins": 40},
    {"group_by": "visual_category", "where": {"task": ["GAN", "Segmentation"]}, "basis": "selection",
     "weights": "uniform", "metric": "hellinger"},
    {"group_by": "model_id", "where": {"conv_depth": {"lte": 2}}, "metric": "wasserstein"},
    {"group_by": "task", "where": {"task": "GAN"}},  # one group: a 1 x 1 matrix, no drift
]


@pytest.mark.parametrize("req", DIVERGENCES, ids=lambda r: r["group_by"])
def test_divergence_is_the_endpoints(db, v1_client, req):
    want = post(v1_client, "/v1/divergence", req)
    d = db.divergence(**req)
    assert without_timing(as_json(d.to_dict())) == without_timing(want)
    n = len(want["labels"])
    assert isinstance(d.matrix, pd.DataFrame) and d.matrix.shape == (n, n)
    assert list(d.matrix.index) == list(d.matrix.columns) == d.labels == want["labels"]
    assert d.matrix.index.name == req["group_by"]
    assert np.array_equal(d.matrix.to_numpy(), np.array(want["matrix"]))
    assert d.drift == want["drift"] and d.store_version == want["store_version"] == 1
    for k in ("n_filters", "n_models", "n_layers"):
        assert getattr(d, k).tolist() == want[k] and getattr(d, k).dtype == np.int64
        assert d.groups[k].tolist() == want[k]
    assert d.explained_variance_ratio.tolist() == want["explained_variance_ratio"]
    assert list(d.range) == want["range"] and d.bins == want["bins"] and d.basis == want["basis"]
    assert d.metric == want["metric"] and d.method == want["method"] and d.empty_groups == want["empty_groups"]


def test_pca_is_the_endpoints(db, v1_client):
    for where in (None, {"task": "GAN"}):
        want = post(v1_client, "/v1/pca", {"where": where})
        p = db.pca(where)
        assert as_json(p.to_dict()) == want
        assert p.mean.shape == (3, 3) and p.components.shape == (9, 3, 3) and p.covariance.shape == (9, 9)
        assert np.array_equal(p.components, np.array(want["components"]))
        assert np.array_equal(p.explained_variance_ratio, np.array(want["explained_variance_ratio"]))
        assert p.n_filters == want["n_filters"]


def test_histograms_are_the_endpoints(db, v1_client):
    req = {"group_by": "visual_category", "where": {"conv_depth": {"gte": 1}}, "bins": 33}
    want = post(v1_client, "/v1/histograms", req)
    h = db.histograms(**req)
    assert as_json(h.to_dict()) == want
    assert h.counts.dtype == np.int64 and h.counts.shape == (len(want["groups"]), 9, 33)
    assert h.counts.tolist() == [g["counts"] for g in want["groups"]]
    assert h.labels == [g["label"] for g in want["groups"]] and h.edges.tolist() == want["edges"]
    assert (h.counts.sum(axis=2) == h.n_filters[:, None]).all()  # the basis range holds every coefficient
    ungrouped = db.histograms()
    assert ungrouped.labels == ["all"] and ungrouped.counts.shape == (1, 9, 70)


def test_kde_is_the_endpoints(db, v1_client):
    req = {"group_by": "task", "bins": 256}
    want = post(v1_client, "/v1/kde", req)
    k = db.kde(**req)
    assert as_json(k.to_dict()) == want
    g = len(want["groups"])
    assert k.density.shape == (g, 9, 256) and k.bandwidth.shape == (g, 9) and k.quartiles.shape == (g, 9, 2)
    assert k.density.tolist() == [x["density"] for x in want["groups"]] and k.grid.tolist() == want["grid"]


def test_density2d_is_the_endpoints(db, v1_client):
    req = {"components": [2, 5], "bins": 40, "range": [-2.0, 2.5], "where": {"task": "Segmentation"}}
    want = post(v1_client, "/v1/density2d", req)
    h = db.density2d(**req)
    assert as_json(h.to_dict()) == want
    assert h.counts.shape == (40, 40) and h.counts.tolist() == want["counts"]
    assert h.components == (2, 5) and h.range == (-2.0, 2.5)


def test_degenerate_is_the_endpoints(db, v1_client):
    params = {"sparsity_gt": 0.3, "entropy_norm_lt": 0.6, "limit": 7, "offset": 1}
    want = get(v1_client, "/v1/quality/degenerate", params)
    g = db.degenerate(**params)
    assert rows(g.layers) == want["layers"] and len(g.layers) > 0
    assert (g.total, g.limit, g.offset, g.thresholds) == (want["total"], 7, 1, want["thresholds"])
    assert list(g.layers.columns) == LAYER_COLUMNS + ["sparse", "low_entropy", "random_like"]
    where = {"task": "GAN"}
    want = get(v1_client, "/v1/quality/degenerate", {"where": json.dumps(where)})
    assert rows(db.degenerate(where=where).layers) == want["layers"]


def test_similar_is_the_endpoints(db, v1_client):
    where = json.dumps({"task": ["GAN", "Segmentation"]})
    want = get(v1_client, "/v1/models/3/similar", {"k": 4, "metric": "js", "where": where})
    s = db.similar(3, k=4, metric="js", where={"task": ["GAN", "Segmentation"]})
    assert as_json(s.to_dict()) == want
    assert rows(s.similar) == want["similar"] and len(s.similar) == 4
    assert s.similar.distance.is_monotonic_increasing and 3 not in s.similar.model_id.tolist()


def test_sql_and_versions_are_the_endpoints(db, v1_client):
    q = ("SELECT task, count(*) AS n, sum(n_filters) AS filters, avg(depth) AS depth FROM models "
         "WHERE model_id >= ? GROUP BY task ORDER BY task")
    want = post(v1_client, "/v1/sql", {"sql": q, "params": [2]})
    got = db.sql(q, [2])
    assert list(got.columns) == want["columns"]
    assert [[py(v) for v in r] for r in got.itertuples(index=False)] == want["rows"]
    assert len(db.sql("SELECT * FROM filters", max_rows=10)) == 10
    v = db.versions()
    want = get(v1_client, "/v1/versions")
    assert v.attrs == {"store_id": want["store_id"], "current": want["current"]}
    got = rows(v.assign(committed_at=v.committed_at.map(lambda t: t.isoformat())))
    assert got == want["versions"]


# -- the client: the same methods over HTTP give the same results ----------------------------------

def assert_same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
        assert a.attrs == b.attrs
    elif isinstance(a, np.ndarray):
        assert same_bits(a, b)
    else:
        assert as_json(without_timing(a.to_dict())) == without_timing(b.to_dict())
        assert a.where == b.where
        for name, value in vars(a).items():
            if name.startswith("_") or name == "elapsed_ms":
                continue
            other = getattr(b, name)
            if isinstance(value, pd.DataFrame):
                pd.testing.assert_frame_equal(value, other)
            elif isinstance(value, dict) and any(isinstance(v, pd.DataFrame) for v in value.values()):  # facets
                assert list(value) == list(other), name
                for k in value:
                    pd.testing.assert_frame_equal(value[k], other[k])
            elif isinstance(value, np.ndarray):
                assert value.dtype == other.dtype and np.array_equal(value, other, equal_nan=True), name
            else:
                assert py(value) == py(other), name


CALLS = [
    ("models", (), {}), ("models", ({"task": ["GAN", "Classification"], "conv_depth": {"gte": 3}},), {}),
    ("layers", (), {}), ("layers", ({"visual_category": "natural"},), {"as_of": 1}),
    ("filters", ({"task": "GAN"},), {}), ("filters", (), {"as_of": 1}),
    ("divergence", ("task",), {}), ("divergence", ("depth_bin",), {"metric": "js", "bins": 50, "basis": "selection"}),
    ("divergence", ("task",), {"where": {"task": "GAN"}, "as_of": 1}),
    ("pca", ({"conv_depth": 0},), {}), ("histograms", (), {"group_by": "task", "bins": 20}),
    ("kde", (), {"group_by": "depth_bin", "bins": 128}), ("density2d", (), {"components": (0, 3), "bins": 16}),
    ("degenerate", (), {}), ("degenerate", (), {"entropy_norm_gt": None, "sparsity_gt": 0.2, "limit": 3}),
    ("similar", (0,), {"k": 3}), ("sql", ("SELECT model, task, n_filters FROM models ORDER BY model_id",), {}),
    ("versions", (), {}),
    # the follow-up studies (SPEC 14)
    ("divergence", ("task",), {"within": "depth_decile"}), ("model_metrics", (), {"by": "depth_decile"}),
    ("model_metrics", ({"task": "GAN"},), {"layers": "first"}),
    ("correlation", ("sparsity", "variance_entropy"), {"group_by": "task"}),
    ("correlation", ("n_filters", "variance_entropy_norm"), {"method": "kendall", "layers": "first"}),
]


@pytest.mark.parametrize("name, args, kwargs", CALLS, ids=[c[0] for c in CALLS])
def test_the_client_gives_the_local_results(db, remote, name, args, kwargs):
    local, over_http = getattr(db, name)(*args, **kwargs), getattr(remote, name)(*args, **kwargs)
    if name == "sql":  # DuckDB's .df() locally, typed JSON rows over HTTP: the same values
        assert rows(local) == rows(over_http)
        return
    assert_same(local, over_http)
    if name == "correlation":
        pd.testing.assert_frame_equal(local.points, over_http.points)
        assert local.to_result() == over_http.to_result()


def test_the_client_streams_filters_in_batches(db, remote):
    batches = remote.iter_filters({"conv_depth": {"lte": 1}}, batch=1000)
    want = db.filters({"conv_depth": {"lte": 1}})
    assert batches.n_rows == len(want) and batches.store_version == 1
    parts = list(batches)
    assert [len(p) for p in parts[:-1]] == [1000] * (len(parts) - 1)
    assert same_bits(np.concatenate(parts), want)
    with remote.iter_filters(batch=10) as b:  # closed early: the connection is given back
        assert same_bits(next(b), db.filters()[:10])
    assert remote.filters({"model_id": {"gt": 10**6}}).shape == (0, 3, 3)


def test_the_client_sql_says_when_rows_were_left_out(remote):
    with pytest.warns(UserWarning, match="max_rows"):  # past the service's sql_max_rows (100,000)
        df = remote.sql("SELECT range AS i FROM range(100001)")
    assert df.attrs["truncated"] and len(df) == 100_000 and df.i.iloc[-1] == 99_999
    df = remote.sql("SELECT range AS i FROM range(10)", max_rows=5)
    assert df.attrs["truncated"] and df.i.tolist() == [0, 1, 2, 3, 4]


# -- figures ---------------------------------------------------------------------------------------

def png_of(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    assert data.startswith(PNG)
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    return data


@pytest.mark.parametrize("figure, make", [
    ("divergence.png?group_by=task", lambda db: db.divergence("task").plot()),
    ("divergence.png?group_by=depth_bin&metric=js&where=" + json.dumps({"task": "GAN"}),
     lambda db: db.divergence("depth_bin", {"task": "GAN"}, metric="js").plot()),
    ("ridge.png?group_by=visual_category", lambda db: db.kde(group_by="visual_category").plot()),
    ("eigenimages.png?where=" + json.dumps({"task": "GAN"}), lambda db: db.pca({"task": "GAN"}).plot()),
    ("covariance.png", lambda db: db.pca().plot("covariance")),
    ("density2d.png", lambda db: db.density2d(bins=512, range=(-3.3, 3.3)).plot()),
], ids=["divergence", "divergence-where", "ridge", "eigenimages", "covariance", "density2d"])
def test_plot_is_the_services_figure(db, v1_client, figure, make):
    fig = make(db)
    assert isinstance(fig, Figure)
    r = v1_client.get(f"/v1/plots/{figure}")
    assert r.status_code == 200, r.text
    provenance = Provenance(r.headers["x-store-id"], int(r.headers["x-store-version"]))  # in the file's metadata
    assert render(fig, "png", provenance=provenance) == r.content  # the same figure, byte for byte (as the service renders it)
    png_of(make(db))  # and as a notebook saves it


def test_plots_of_client_results(remote):
    for fig in (remote.divergence("visual_category").plot(figsize=(6, 6)), remote.pca().plot("explained_variance"),
                remote.kde(group_by="task", bins=128).plot(), remote.density2d().plot(subtitle="")):
        assert isinstance(fig, Figure)
        png_of(fig)
    with pytest.raises(ValueError, match="unknown kind 'ridge'"):
        remote.pca().plot("ridge")


# -- errors ----------------------------------------------------------------------------------------

BAD = [
    ("divergence", ("tsk",), {}, "/v1/divergence", {"group_by": "tsk"}, SelectionError, "unknown group_by 'tsk'"),
    ("divergence", ("task",), {"where": {"tsk": "GAN"}}, "/v1/divergence",
     {"group_by": "task", "where": {"tsk": "GAN"}}, SelectionError, "unknown field"),
    ("divergence", ("task",), {"metric": "kl"}, "/v1/divergence", {"group_by": "task", "metric": "kl"},
     SelectionError, "'kl'"),
    ("pca", ({"task": "Clasification"},), {}, "/v1/pca", {"where": {"task": "Clasification"}},
     EmptySelectionError, "did you mean 'Classification'?"),
    ("histograms", (), {"as_of": 99}, "/v1/histograms", {"as_of": 99}, VersionError, "no store version 99"),
]


@pytest.mark.parametrize("name, args, kwargs, path, body, exc, text", BAD, ids=[b[-1][:20] for b in BAD])
def test_bad_input_raises_the_engines_errors(db, remote, v1_client, name, args, kwargs, path, body, exc, text):
    with pytest.raises(exc) as local:
        getattr(db, name)(*args, **kwargs)
    assert text in str(local.value)
    server = v1_client.post(path, json=body).json()["error"]["message"]
    with pytest.raises(cnnfilterdb.ServiceError) as over_http:
        getattr(remote, name)(*args, **kwargs)
    assert isinstance(over_http.value, exc)  # `except SelectionError` catches both
    assert text in server and text in str(over_http.value)
    # the service's message, or the engine's when the client's own check of where stopped it first
    assert over_http.value.message in (server, str(local.value))
    assert over_http.value.status in (400, 404, 422)


def test_more_bad_input(db, remote, v1_client):
    with pytest.raises(SelectionError, match=r"unknown field\(s\) in where: \['colour'\]"):
        db.models({"colour": "red"})
    with pytest.raises(SelectionError, match="unknown field"):
        remote.layers({"colour": "red"})  # the engine's check of where, before any request
    with pytest.raises(VersionError, match="no store version 7"):
        db.models(as_of=7)
    with pytest.raises(VersionError, match="no store version 7"):
        remote.models(as_of=7)
    with pytest.raises(VersionError, match="no store version 7"):
        db.filters(as_of=7)
    with pytest.raises(cnnfilterdb.client.UnknownVersion, match="no store version 7"):
        remote.filters(as_of=7)
    with pytest.raises(TypeError, match="as_of must be a store version"):
        db.pca(as_of="1")
    with pytest.raises(LookupError, match="no model 999"):
        db.similar(999)
    with pytest.raises(LookupError, match="no model 999"):
        remote.similar(999)
    with pytest.raises(SelectionError, match="limit must be"):
        db.degenerate(limit=0)
    with pytest.raises(cnnfilterdb.ServiceError, match="limit"):
        remote.degenerate(limit=0)
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        db.iter_filters(batch=0)
    server = v1_client.post("/v1/sql", json={"sql": "DROP TABLE _shards"}).json()["error"]["message"]
    with pytest.raises(cnnfilterdb.ServiceError) as e:
        remote.sql("DROP TABLE _shards")
    assert e.value.message == server and e.value.status == 403 and e.value.code == "sql_read_only"


def test_open_finds_the_default_store_and_says_when_there_is_none(v1_store, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNFILTERDB_DB", str(v1_store))
    with cnnfilterdb.open() as d:
        assert d.root == v1_store.resolve() and len(d.models()) == 12
    with pytest.raises(StoreError, match="no store here"):
        cnnfilterdb.open(tmp_path / "nothing")


def test_a_commit_is_seen_and_as_of_reads_the_version_before(v1_store, tmp_path):
    """A commit of this very process (DuckDB refuses a second configuration of a file a process
    has open: the API attaches the catalog as the service does) is seen by the next call."""
    store = tmp_path / "db"
    shutil.copytree(v1_store, store)
    with cnnfilterdb.open(store) as d:
        before = d.divergence("task")
        first = d.models().iloc[0]
        new_task = "Classification" if first.task != "Classification" else "GAN"
        assert cli_main(["label", first.model, "--task", new_task, "--db", str(store)]) == 0
        assert d.versions().version.tolist() == [1, 2]
        assert d.models().task.iloc[0] == new_task and d.models(as_of=1).task.iloc[0] == first.task
        after, again = d.divergence("task"), d.divergence("task", as_of=1)
        assert after.store_version == 2 and not after.matrix.equals(before.matrix)
        assert again.store_version == 1 and again.matrix.equals(before.matrix)


# -- the package and the docstrings ----------------------------------------------------------------

def test_import_cnnfilterdb_is_cheap_and_exports_the_api():
    code = ("import sys, cnnfilterdb; heavy = [m for m in ('pandas', 'duckdb', 'cnnfilterdb.analysis', 'matplotlib') "
            "if m in sys.modules]; print(heavy); print(cnnfilterdb.open.__module__, cnnfilterdb.Client.__module__, "
            "cnnfilterdb.DivergenceResult.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "cnnfilterdb.api cnnfilterdb.client cnnfilterdb.results"
    assert {"open", "Client", "ServiceError", "FilterDB"} <= set(dir(cnnfilterdb))
    with pytest.raises(AttributeError):
        cnnfilterdb.nothing_here  # noqa: B018


def _doctest(module, **globs) -> doctest.TestResults:
    return doctest.testmod(module, extraglobs=globs, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)


def test_the_docstring_examples_run(v1_store, server):
    api = _doctest(cnnfilterdb.api, path=str(v1_store))
    assert api.failed == 0 and api.attempted > 30
    client = _doctest(cnnfilterdb.client, path=str(v1_store), url=server)
    assert client.failed == 0 and client.attempted >= 8


# -- the engine checks every input at the boundary: the local API, the CLI and the client alike ----

BAD_WHERE = [
    ({"model_id": "abc"}, "where.model_id: expected an integer, got 'abc'"),
    ({"task": 5}, "where.task: expected a string, got 5"),
    ({"conv_depth": {"gte": "x"}}, "where.conv_depth.gte: expected an integer, got 'x'"),
    ({"sha256": {"gt": 5}}, "where.sha256.gt: expected a string, got 5"),
    ({"sample": "yes"}, "where.sample: expected true or false"),
    ({"sample": 1}, "where.sample: expected true or false"),
    ({1: "a", "x": "b"}, "where: field names must be strings, got 1"),
    ({"model_id": True}, "where.model_id: expected an integer, got True"),
    ({"model_id": 2.5}, "where.model_id: expected an integer, got 2.5"),
    ({"model_id": 2**31}, "where.model_id: expected an integer within 32 bits"),
    ({"conv_depth_norm": float("nan")}, "where.conv_depth_norm: expected a finite number, got nan"),
    ({"conv_depth_norm": {"lt": True}}, "where.conv_depth_norm.lt: expected a finite number, got True"),
    ({"task": ["GAN", 3]}, "where.task: expected a string, got 3"),
    ({"layer_id": [1, "2"]}, "where.layer_id: expected an integer, got '2'"),
    ({"sample": {"gte": True}}, "where.sample: true, false, null or a list of them (no bounds)"),
    ({"sample": [True, "no"]}, "where.sample: expected true or false"),
    ({"conv_depth": {"gte": None}}, "where.conv_depth.gte: expected an integer, got None"),
    ({"conv_depth": {"above": 1, 2: 3}}, "unknown bound 'above' in where.conv_depth; valid: gte, gt, lte, lt"),
]


@pytest.mark.parametrize("where, text", BAD_WHERE, ids=[t[:40] for _, t in BAD_WHERE])
def test_where_values_are_checked_against_their_fields_type(db, remote, v1_client, where, text):
    for call in (lambda api: api.layers(where), lambda api: api.models(where), lambda api: api.pca(where),
                 lambda api: api.divergence("task", where=where), lambda api: api.degenerate(where=where),
                 lambda api: api.filters(where)):
        with pytest.raises(SelectionError) as local:
            call(db)
        assert text in str(local.value)
        with pytest.raises(cnnfilterdb.client.InvalidRequest) as over_http:  # checked before sending
            call(remote)
        assert isinstance(over_http.value, SelectionError) and text in str(over_http.value)
    # The service's Where rejects the same (but for what JSON cannot say, and pydantic's lax mode
    # taking a numeric string as a number: the engine does not coerce).
    if all(isinstance(k, str) for k in where) and "nan" not in text and "got '2'" not in text:
        r = v1_client.post("/v1/pca", json={"where": where})
        assert r.status_code in (400, 422), r.text


def test_where_values_of_the_right_type_still_select(db, remote):
    for where in ({"conv_depth_norm": 0}, {"conv_depth_norm": {"gte": 0, "lt": 1.5}}, {"sample": [True, False, None]},
                  {"conv_depth": {"gte": 1}, "task": ["GAN", None]}, {"model_id": [np.int32(0), 1]},
                  {"task": {"gte": "A"}}, {"sample": np.bool_(True)}):
        local = db.layers(where)
        assert rows(remote.layers(where)) == rows(local)


BAD_PARAMS = [
    ("histograms", (), {"bins": True}, "bins must be an integer from 1 to 10,000, got True (a bool)"),
    ("histograms", (), {"bins": 70.5}, "bins must be an integer"),
    ("histograms", (), {"bins": 10_001}, "bins must be an integer from 1 to 10,000, got 10,001"),
    ("divergence", ("task",), {"bins": True}, "bins must be an integer"),
    ("divergence", ("task",), {"bins": "70"}, "bins must be an integer"),
    ("kde", (), {"bins": 8}, "bins must be an integer from 16 to 8,192, got 8"),
    ("kde", (), {"bins": 10_000}, "bins must be an integer from 16 to 8,192"),
    ("kde", (), {"bins": False}, "bins must be an integer"),
    ("density2d", (), {"bins": 1001}, "bins must be an integer from 1 to 1,000"),
    ("density2d", (), {"components": (True, 1)}, "components[0] must be an integer"),
    ("density2d", (), {"components": (0, 9)}, "components[1] must be an integer from 0 to 8, got 9"),
    ("density2d", (), {"components": (0, 1.5)}, "components[1] must be an integer"),
    ("density2d", (), {"components": 5}, "components must be a pair"),
    ("density2d", (), {"components": (0, 1, 2)}, "components must be a pair"),
    ("density2d", (), {"components": "01"}, "components must be a pair"),
    ("density2d", (), {"range": ("a", 1)}, "range[0] must be a finite number"),
    ("density2d", (), {"range": (0, float("inf"))}, "range[1] must be a finite number"),
    ("density2d", (), {"range": (True, 1)}, "range[0] must be a finite number"),
    ("density2d", (), {"range": (0,)}, "range must be a pair"),
    ("density2d", (), {"range": (-1e7, 1)}, "range[0] must be a finite number from -1e+06 to 1e+06"),
    ("similar", ("3",), {}, "model_id must be an integer"),
    ("similar", (3.5,), {}, "model_id must be an integer"),
    ("similar", (True,), {}, "model_id must be an integer from 0 to 2,147,483,647, got True (a bool)"),
    ("similar", (None,), {}, "model_id must be an integer"),
    ("similar", (-1,), {}, "model_id must be an integer from 0"),
    ("similar", (0,), {"k": 0}, "k must be an integer from 1 to 1,000, got 0"),
    ("similar", (0,), {"k": 1001}, "k must be an integer from 1 to 1,000"),
    ("similar", (0,), {"k": True}, "k must be an integer"),
    ("similar", (0,), {"k": 2.5}, "k must be an integer"),
    ("degenerate", (), {"sparsity_gt": True}, "sparsity_gt must be a finite number from 0 to 1, got True"),
    ("degenerate", (), {"sparsity_gt": 2}, "sparsity_gt must be a finite number from 0 to 1, got 2.0"),
    ("degenerate", (), {"entropy_norm_lt": float("nan")}, "entropy_norm_lt must be a finite number, got nan"),
    ("degenerate", (), {"entropy_norm_gt": "1"}, "entropy_norm_gt must be a finite number, got '1'"),
    ("degenerate", (), {"entropy_norm_gt": float("inf")}, "entropy_norm_gt must be a finite number"),
    ("degenerate", (), {"limit": 10_001}, "limit must be an integer from 1 to 10,000"),
    ("degenerate", (), {"limit": True}, "limit must be an integer"),
    ("degenerate", (), {"offset": -1}, "offset must be an integer from 0"),
]


@pytest.mark.parametrize("name, args, kwargs, text", BAD_PARAMS, ids=[f"{b[0]}-{b[3][:30]}" for b in BAD_PARAMS])
def test_analysis_parameters_are_checked_as_the_service_checks_them(db, remote, name, args, kwargs, text):
    with pytest.raises(SelectionError) as local:
        getattr(db, name)(*args, **kwargs)
    assert text in str(local.value)
    with pytest.raises(cnnfilterdb.client.InvalidRequest) as over_http:  # the same check, before sending
        getattr(remote, name)(*args, **kwargs)
    assert isinstance(over_http.value, SelectionError) and text in str(over_http.value)


def test_the_service_declares_the_engines_bounds(v1_client):
    from cnnfilterdb.limits import MAX_DEGENERATE_LIMIT, MAX_SIMILAR_K

    assert v1_client.get(f"/v1/models/0/similar?k={MAX_SIMILAR_K + 1}").status_code == 422
    assert v1_client.get(f"/v1/models/0/similar?k={MAX_SIMILAR_K}").status_code == 200
    assert v1_client.get(f"/v1/quality/degenerate?limit={MAX_DEGENERATE_LIMIT + 1}").status_code == 422
    for kind, body in (("kde", {"bins": 8}), ("density2d", {"components": [0, 9]}), ("histograms", {"bins": True})):
        assert v1_client.post(f"/v1/{kind}", json=body).status_code == 422


def test_numpy_integers_are_integers(db, remote):
    for api in (db, remote):
        assert api.histograms(bins=np.int64(30)).counts.shape[-1] == 30
        assert api.kde(bins=np.int32(32)).grid.shape == (32,)
        assert api.density2d(components=np.array([1, 0]), bins=np.int16(8), range=(np.float32(-2), 2)).counts.shape \
            == (8, 8)
        assert len(api.similar(np.int64(0), k=np.int64(2)).similar) == 2
    assert db.similar(0, k=2).to_dict() == remote.similar(0, k=2).to_dict()


# -- the client: no service, a timeout, an answer that is not the service's, Retry-After -----------

def _mock_client(handler, **kwargs):
    import httpx

    return cnnfilterdb.Client("http://filterdb.test", transport=httpx.MockTransport(handler), **kwargs)


def test_the_client_says_when_there_is_no_service():
    import socket

    # A port nothing listens on: bound here but never listening (connections to it are refused),
    # and held, so that no other process (a test in a parallel worker) can listen on it meanwhile.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with cnnfilterdb.Client(f"http://127.0.0.1:{port}") as c:
            for call in (c.versions, c.pca, lambda: c.models({"task": "GAN"}), c.filters):
                with pytest.raises(cnnfilterdb.client.ServiceUnavailable) as e:
                    call()
                assert isinstance(e.value, cnnfilterdb.ServiceError)
                assert f"http://127.0.0.1:{port}" in str(e.value) and "cnnfilterdb serve --db" in str(e.value)


def test_the_client_says_when_the_service_does_not_answer_in_time():
    import httpx

    def handler(request):
        raise httpx.ReadTimeout("timed out", request=request)

    with _mock_client(handler) as c, pytest.raises(cnnfilterdb.client.ServiceUnavailable) as e:
        c.pca()
    assert "no answer from http://filterdb.test/v1/pca" in str(e.value) and "cnnfilterdb serve" in str(e.value)


@pytest.mark.parametrize("content, ctype", [
    (b"<html><body>Welcome to nginx</body></html>", "text/html"),
    (b"{}", "application/json"),
    (b"[1, 2]", "application/json"),
    (b'{"columns": ["a"]}', "application/json"),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "application/octet-stream"),
], ids=["html", "empty-object", "list", "missing-keys", "binary"])
def test_the_client_says_when_an_answer_is_not_the_services(content, ctype):
    import httpx

    def handler(request):
        return httpx.Response(200, content=content, headers={"Content-Type": ctype})

    with _mock_client(handler) as c:
        for path, call in (("/v1/versions", c.versions), ("/v1/pca", c.pca), ("/v1/kde", c.kde),
                           ("/v1/divergence", lambda: c.divergence("task")), ("/v1/sql", lambda: c.sql("SELECT 1")),
                           ("/v1/sql", c.models), ("/v1/models/0/similar", lambda: c.similar(0)),
                           ("/v1/quality/degenerate", c.degenerate), ("/v1/filters", c.filters)):
            with pytest.raises(cnnfilterdb.ServiceError) as e:
                call()
            assert type(e.value) is cnnfilterdb.ServiceError, e.value
            assert f"unexpected response from http://filterdb.test{path}" in str(e.value)


def test_retry_after_is_a_finite_number_of_seconds(monkeypatch):
    import httpx

    from cnnfilterdb.client import MAX_RETRY_WAIT_S, retry_wait

    for header, wait in ((None, 1.0), ("2.5", 2.5), ("0", 0.0), ("nan", 1.0), ("inf", 1.0), ("-5", 1.0),
                         ("Wed, 21 Oct 2015 07:28:00 GMT", 1.0), ("1e9", MAX_RETRY_WAIT_S), ("", 1.0)):
        assert retry_wait(header) == wait, header
    assert MAX_RETRY_WAIT_S <= 60
    waits = []
    monkeypatch.setattr(cnnfilterdb.client.time, "sleep", waits.append)
    headers = iter(["nan", "-1", "1e400"])

    def handler(request):
        return httpx.Response(429, json={"error": {"code": "analysis_busy", "message": "busy"}},
                              headers={"Retry-After": next(headers)})

    with _mock_client(handler, retries=2) as c, pytest.raises(cnnfilterdb.client.ServiceBusy, match="busy"):
        c.pca()
    assert waits == [1.0, 1.0]


def test_a_typo_in_a_listing_says_did_you_mean_everywhere(db, remote, v1_client):
    """GET /v1/models?task=gan is a 404 suggesting 'GAN'; db.models, db.layers and the Client's
    say the same, not an empty DataFrame."""
    from cnnfilterdb.selection import EmptySelectionError

    for api in (db, remote):
        for call in (api.models, api.layers, api.filters):
            with pytest.raises(EmptySelectionError, match="did you mean 'GAN'"):
                call({"task": "gan"})
        assert len(api.models({"task": "GAN", "conv_depth": {"gt": 10**6}})) == 0  # known values, nothing together
    assert v1_client.get("/v1/models", params={"task": "gan"}).status_code == 404
