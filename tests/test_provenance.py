"""Provenance everywhere a result leaves the store (issue 23, part 5): the report names the store id,
the version, its commit time and digest, and says when the data are the synthetic sample; exports
and figures name the store id beside the version (schema metadata, HTTP headers, PNG/SVG/PDF
metadata); a `cp -a` copy is the same store; each version records a digest of what it holds, which
`verify` recomputes (docs/versions.md#citing-a-version)."""
from __future__ import annotations

import io
import json
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cnnfilterdb.analysis import Analysis
from cnnfilterdb.catalog import SCHEMA_VERSION, list_versions, store_id
from cnnfilterdb.digest import version_digest
from cnnfilterdb.plots import PlotRequest, Provenance, draw, figure_metadata, render
from cnnfilterdb.report import SYNTHETIC_NOTICE
from cnnfilterdb.store import FilterStore, StoreTransaction

from .helpers import cli_main, open_catalog

HEX64 = re.compile(r"[0-9a-f]{64}\Z")
DC = "{http://purl.org/dc/elements/1.1/}"
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"


def _cp_a(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def _relabel(db: Path, model_id: int, **values) -> int:
    with StoreTransaction(db) as tx:
        assert tx.relabel(model_id, values)
        return tx.commit("label")


def _recorded(db: Path) -> dict[int, str | None]:
    with open_catalog(db) as con:
        return {v["version"]: v["digest"] for v in list_versions(con)}


def _recomputed(db: Path) -> dict[int, str]:
    with open_catalog(db) as con:
        return {v: version_digest(con, v) for v in _recorded(db)}


def _verify(db: Path, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = cli_main(["verify", "--db", str(db)])
    return code, capsys.readouterr().out.splitlines()


def _client(db: Path):
    from fastapi.testclient import TestClient

    from cnnfilterdb.service.main import create_app
    from cnnfilterdb.service.settings import Settings

    return TestClient(create_app(Settings(db=db)), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory, sample_v1) -> Path:
    """sample_v1 ingested (version 1), then model 0 relabelled (version 2). Tests that write copy it."""
    db = tmp_path_factory.mktemp("provenance") / "db"
    assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    assert _relabel(db, 0, task="Relabelled", task_raw="Relabelled") == 2
    return db


@pytest.fixture(scope="module")
def client(store):
    return _client(store)


@pytest.fixture()
def copy(store, tmp_path) -> Path:
    return _cp_a(store, tmp_path / "copy")


# ---- the digest of a version ------------------------------------------------------------------

def test_every_commit_records_the_digest_verify_recomputes(store, capsys):
    recorded = _recorded(store)
    assert list(recorded) == [1, 2] and all(HEX64.match(d) for d in recorded.values())
    assert recorded[1] != recorded[2]  # a relabelling changes what the version holds
    assert _recomputed(store) == recorded
    with open_catalog(store) as con:
        assert con.execute("SELECT schema_version FROM _store").fetchone()[0] == SCHEMA_VERSION == 8
    code, out = _verify(store, capsys)
    assert code == 0 and out[0].startswith("intact: ") and out[0].endswith("the digest of 2 version(s) as committed")


def test_a_label_gives_a_new_digest_and_leaves_the_old_ones(copy, capsys):
    before = _recorded(copy)
    assert _relabel(copy, 1, visual_category="relabelled") == 3
    after = _recorded(copy)
    assert {v: after[v] for v in before} == before  # the older versions' digests, unchanged ...
    assert after[3] not in before.values()
    assert _recomputed(copy) == after  # ... and each still what its version holds
    # The digest is of the content, not of the history: labelled back, version 4 holds what 2 held.
    with open_catalog(copy) as con:
        old = con.execute("SELECT visual_category FROM models_at(2) WHERE model_id = 1").fetchone()[0]
    assert _relabel(copy, 1, visual_category=old) == 4
    assert _recorded(copy)[4] == before[2]
    assert _verify(copy, capsys)[0] == 0


def test_verify_names_the_version_of_a_tampered_row(copy, capsys):
    # Model 0's row of version 1 (version 2 relabelled it): only version 1 sees it.
    with duckdb.connect(str(copy / "catalog.duckdb")) as con:
        assert con.execute("UPDATE _models SET task = 'Classification ' WHERE model_id = 0 AND version_from = 1 "
                           "RETURNING version_to").fetchall() == [(2,)]
    code, out = _verify(copy, capsys)
    assert code == 1 and len(out) == 1
    assert re.fullmatch(r"catalog\.duckdb: version 1: digest differs \(sha256 [0-9a-f]{16}\.\.\., "
                        r"the version recorded [0-9a-f]{16}\.\.\.\)", out[0]), out
    assert out[0].endswith(f"the version recorded {_recorded(copy)[1][:16]}...)")
    # A layer's metric, nudged by one ulp: every version holding it.
    with duckdb.connect(str(copy / "catalog.duckdb")) as con:
        con.execute("UPDATE _layers SET sparsity = nextafter(sparsity, 2) WHERE layer_id = 3")
    code, out = _verify(copy, capsys)
    assert code == 1 and [line.split(": digest")[0] for line in out] == ["catalog.duckdb: version 1",
                                                                         "catalog.duckdb: version 2"]


def test_a_layer_moment_or_a_histogram_segment_record_changed_is_found(copy, capsys):
    with duckdb.connect(str(copy / "catalog.duckdb")) as con:
        con.execute("UPDATE _layer_moments SET n = n + 1 WHERE layer_id = 0")
    assert [line.split(": digest")[0] for line in _verify(copy, capsys)[1]] == ["catalog.duckdb: version 1",
                                                                                "catalog.duckdb: version 2"]


def test_cp_a_keeps_the_id_the_digests_and_the_answers(store, tmp_path, capsys):
    from cnnfilterdb.snapshot import Snapshot

    (tmp_path / "elsewhere").mkdir()
    copied = _cp_a(store, tmp_path / "elsewhere" / "copied")
    again = _cp_a(copied, tmp_path / "again")  # a copy of the copy
    keys = ("labels", "n_filters", "n_models", "matrix", "drift", "store_version")
    for db in (copied, again):
        with open_catalog(store) as a, open_catalog(db) as b:
            assert store_id(a) == store_id(b) and len(store_id(b)) == 36
            assert list_versions(a) == list_versions(b)  # digests and commit times included
            for v in (1, 2):
                want = Analysis(a, store, Snapshot.at(a, store, v)).divergence("task")
                got = Analysis(b, db, Snapshot.at(b, db, v)).divergence("task")
                assert {k: want[k] for k in keys} == {k: got[k] for k in keys}
        assert _recomputed(db) == _recorded(store)
        assert _verify(db, capsys)[0] == 0
        assert {k: v for k, v in FilterStore(db).info().items() if k != "db"} == \
            {k: v for k, v in FilterStore(store).info().items() if k != "db"}


def test_a_digest_survives_compact(copy, capsys):
    """compact rewrites the shards without the filters no kept version holds: their sha256 change,
    what a kept version holds does not, nor its digest."""
    from cnnfilterdb.ingest.curate import compact

    with StoreTransaction(copy) as tx:
        tx.remove(3)
        assert tx.commit("remove") == 3
    before = _recorded(copy)[3]
    with open_catalog(copy) as con:
        shards = con.execute("SELECT path, sha256 FROM _shards ORDER BY ALL").fetchall()
    result = compact(copy, 1)
    assert result["shards_rewritten"] + result["shards_dropped"] >= 1
    with open_catalog(copy) as con:
        assert con.execute("SELECT path, sha256 FROM _shards ORDER BY ALL").fetchall() != shards
    assert _recorded(copy)[3] == before == _recomputed(copy)[3]
    with open_catalog(copy) as con:  # versions 1 and 2 compacted: listed, no longer verified
        assert con.execute("SELECT list(version ORDER BY version) FROM _versions WHERE compacted").fetchone()[0] == [1, 2]
    code, out = _verify(copy, capsys)
    assert code == 0 and out[0].endswith("the digest of 1 version(s) as committed")


def test_a_column_added_later_leaves_the_older_digests(copy, capsys):
    """A model property is a column of _models added by its first label (NULL for the rows before):
    the digests of the versions before it stay what they were."""
    with duckdb.connect(str(copy / "catalog.duckdb")) as con:
        con.execute('ALTER TABLE _models ADD COLUMN "clean_accuracy" DOUBLE')
        con.execute("ALTER TABLE _layers ADD COLUMN later INTEGER")
    assert _recomputed(copy) == _recorded(copy)
    assert _verify(copy, capsys)[0] == 0
    with duckdb.connect(str(copy / "catalog.duckdb")) as con:  # a value where there was none: a change
        con.execute("UPDATE _models SET clean_accuracy = 80.5 WHERE model_id = 2")
    assert [line.split(": digest")[0] for line in _verify(copy, capsys)[1]] == ["catalog.duckdb: version 1",
                                                                                "catalog.duckdb: version 2"]


def test_a_layout_7_store_is_read_then_upgraded_by_its_next_commit(copy, capsys):
    with duckdb.connect(str(copy / "catalog.duckdb")) as con:
        con.execute("ALTER TABLE _versions DROP COLUMN digest")
        con.execute("UPDATE _store SET schema_version = 7")
    code, out = _verify(copy, capsys)
    assert code == 0 and "digest" not in out[0]
    assert cli_main(["log", "--db", str(copy)]) == 0 and "digest" not in capsys.readouterr().out
    assert _relabel(copy, 2, task="Relabelled", task_raw="Relabelled") == 3
    with open_catalog(copy) as con:
        assert con.execute("SELECT schema_version FROM _store").fetchone()[0] == 8
    recorded = _recorded(copy)
    assert recorded[1] is None and recorded[2] is None  # nothing recorded what they held then
    assert recorded[3] == _recomputed(copy)[3]
    code, out = _verify(copy, capsys)
    assert code == 0 and out[0].endswith("the digest of 1 version(s) as committed")


def test_log_versions_and_tables_show_the_digest(store, client, capsys):
    recorded = _recorded(store)
    capsys.readouterr()
    assert cli_main(["log", "--db", str(store)]) == 0
    out = capsys.readouterr().out
    assert all(f", digest {d}" in out for d in recorded.values())
    assert cli_main(["log", "--json", "--db", str(store)]) == 0
    assert {v["version"]: v["digest"] for v in json.loads(capsys.readouterr().out)} == recorded
    body = client.get("/v1/versions").json()
    assert {v["version"]: v["digest"] for v in body["versions"]} == recorded
    latest = (store / "tables" / "LATEST").read_text().strip()
    t = pq.read_table(store / latest / "versions.parquet")
    assert dict(zip(t["version"].to_pylist(), t["digest"].to_pylist())) == recorded


# ---- exports ----------------------------------------------------------------------------------

def test_exports_name_the_store_beside_the_version(store, client, tmp_path, capsys):
    with open_catalog(store) as con:
        sid = store_id(con)
    where = '{"conv_depth": 0}'
    for name, read in (("x.parquet", lambda p: pq.read_schema(p).metadata),
                       ("x.arrows", lambda p: pa.ipc.open_stream(p.read_bytes()).schema.metadata)):
        capsys.readouterr()
        assert cli_main(["export", "--where", where, "--as-of", "1", "-o", str(tmp_path / name), "--db", str(store)]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert (printed["store_id"], printed["store_version"]) == (sid, 1)
        meta = read(tmp_path / name)
        assert (meta[b"store_id"], meta[b"store_version"], meta[b"where"]) == (sid.encode(), b"1", where.encode())
    for fmt, read in (("parquet", lambda b: pq.read_schema(io.BytesIO(b)).metadata),
                      ("arrow", lambda b: pa.ipc.open_stream(b).schema.metadata)):
        r = client.get("/v1/filters", params={"where": where, "format": fmt})
        assert r.status_code == 200 and (r.headers["x-store-id"], r.headers["x-store-version"]) == (sid, "2")
        assert (read(r.content)[b"store_id"], read(r.content)[b"store_version"]) == (sid.encode(), b"2")
    head = client.head("/v1/filters", params={"format": "csv", "as_of": 1})
    assert head.status_code == 200 and (head.headers["x-store-id"], head.headers["x-store-version"]) == (sid, "1")


# ---- figures ----------------------------------------------------------------------------------

def _svg_metadata(svg: bytes) -> tuple[str, list[str]]:
    root = ET.fromstring(svg)
    work = root.find(".//{http://www.w3.org/2000/svg}metadata//{http://creativecommons.org/ns#}Work")
    source = work.find(f"{DC}source").text
    keywords = [li.text for li in work.find(f"{DC}subject").iter(f"{RDF}li")]
    return source, keywords


def test_figures_carry_the_store_id_and_version(store, client):
    with open_catalog(store) as con:
        sid = store_id(con)
    citation = f"CNN Filter DB store {sid}, version 2"
    r = client.get("/v1/plots/divergence.png")
    assert r.status_code == 200 and (r.headers["x-store-id"], r.headers["x-store-version"]) == (sid, "2")
    png = Image.open(io.BytesIO(r.content))
    assert png.text == {"Source": citation, "store_id": sid, "store_version": "2"}
    again = client.get("/v1/plots/divergence.png", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.headers["x-store-id"] == sid
    old = client.get("/v1/plots/divergence.png?as_of=1")
    assert Image.open(io.BytesIO(old.content)).text["store_version"] == "1" == old.headers["x-store-version"]
    assert old.headers["etag"] != r.headers["etag"]
    svg = client.get("/v1/plots/divergence.svg").content
    assert _svg_metadata(svg) == (citation, [f"store_id={sid}", "store_version=2"])
    pdf = client.get("/v1/plots/divergence.pdf").content
    assert f"/Subject ({citation})".encode() in pdf
    assert f"/Keywords (store_id={sid}, store_version=2)".encode() in pdf


def test_the_provenance_is_in_the_metadata_only_and_reproducible(store):
    with open_catalog(store) as con:
        a = Analysis(con, store)
        def fig():
            return draw(a, PlotRequest.of("eigenimages", dpi=30))

        p = Provenance.of(a)
        assert p == Provenance(store_id(con), 2)
        for fmt in ("png", "svg", "pdf"):
            one, two = render(fig(), fmt, 30, p), render(fig(), fmt, 30, p)
            other = render(fig(), fmt, 30, Provenance(p.store_id, 1))
            assert one == two and one != other, fmt
        pixels = [np.asarray(Image.open(io.BytesIO(render(fig(), "png", 30, q)))) for q in (p, None)]
        assert np.array_equal(*pixels)  # the same image: only the text chunks differ
        assert Image.open(io.BytesIO(render(fig(), "png", 30))).text == {}
    assert figure_metadata("pdf", None) == {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}


def test_cli_plot_writes_the_services_bytes_with_the_provenance(store, client, tmp_path, capsys):
    out = tmp_path / "q.png"
    assert cli_main(["plot", "quality", "--db", str(store), "-o", str(out), "--as-of", "1"]) == 0
    assert out.read_bytes() == client.get("/v1/plots/quality.png?as_of=1").content
    assert Image.open(out).text["store_version"] == "1"


# ---- the report -------------------------------------------------------------------------------

def _report(db: Path, out: Path, *args: str) -> str:
    assert cli_main(["report", "--db", str(db), "-o", str(out), "--dpi", "20", *args]) == 0
    return (out / "index.html").read_text()


def test_the_report_names_the_store_version_time_and_the_sample(store, tmp_path, capsys):
    with open_catalog(store) as con:
        sid, versions = store_id(con), list_versions(con)
    for as_of, v in ((None, versions[1]), ("1", versions[0])):
        out = tmp_path / f"r{as_of}"
        html = _report(store, out, *(["--as-of", as_of] if as_of else []))
        assert f"<dt>store id</dt><dd><code>{sid}</code></dd>" in html
        assert f"<dt>store version</dt><dd>{v['version']}</dd>" in html
        assert f"<dt>committed</dt><dd>{v['committed_at']:%Y-%m-%d %H:%M:%S} UTC</dd>" in html
        assert f"<dt>digest</dt><dd><code>{v['digest']}</code></dd>" in html
        assert f"store {sid}, version {v['version']}" in html
        notice = html.index(SYNTHETIC_NOTICE)
        assert notice < html.index("<dl class=\"counts\">") and 'class="synthetic" role="note"' in html
        assert "synthetic sample data, not the cnn-filter-db dataset" in html.lower()
        assert Image.open(out / "eigenimages.png").text["store_version"] == str(v["version"])


def test_a_report_of_real_models_has_no_sample_notice(tmp_path, capsys):
    db = tmp_path / "db"
    rng = np.random.default_rng(7)
    for i in range(3):
        np.savez(tmp_path / f"m{i}.npz", conv1=rng.normal(size=(16, 8, 3, 3)).astype(np.float32),
                 conv2=rng.normal(size=(16, 16, 3, 3)).astype(np.float32))
        assert cli_main(["ingest", str(tmp_path / f"m{i}.npz"), "--db", str(db), "--task", "Classification",
                         "--visual-category", "natural", "--training-dataset", "CIFAR-10"]) == 0
    html = _report(db, tmp_path / "r")
    assert SYNTHETIC_NOTICE.lower() not in html.lower() and 'class="synthetic"' not in html
    assert "<dt>store version</dt><dd>3</dd>" in html


def test_a_layers_filters_name_the_store(store, client):
    """GET /v1/layers/{id}/filters (JSON pages and .npy) say the store and version they read, as
    the exports do (a hostile review found them bare)."""
    from cnnfilterdb.catalog import store_id

    with open_catalog(store) as con:
        sid, layer = store_id(con), con.execute("SELECT min(layer_id) FROM layers").fetchone()[0]
        version = str(con.execute("SELECT max(version) FROM versions").fetchone()[0])
    for fmt in ("json", "npy"):
        r = client.get(f"/v1/layers/{layer}/filters", params={"format": fmt})
        assert r.status_code == 200 and (r.headers["X-Store-Id"], r.headers["X-Store-Version"]) == (sid, version), fmt
