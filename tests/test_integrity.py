"""A store that checks itself (issue 9): the catalog records the size and sha256 of every file it
references, `cnnfilterdb verify` recomputes them, and a missing or damaged file is a 503
`store_damaged` naming it (service) or one line and exit 1 (CLI), never a 500 or a traceback."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from cnnfilterdb.service.main import create_app
from cnnfilterdb.service.settings import Settings

from .helpers import cli_main, flip_byte, run_cli


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, sample_v1) -> Path:
    """sample_v1 ingested, once: each test damages a copy of it."""
    db = tmp_path_factory.mktemp("integrity") / "db"
    assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    return db


@pytest.fixture
def store(tmp_path, pristine) -> Path:
    """A store of its own for each test, to damage."""
    db = tmp_path / "db"
    shutil.copytree(pristine, db)
    return db


def _files(db: Path) -> tuple[str, str, str]:
    """(the shard, the histogram file, the Parquet copy of the layers table), relative to the store."""
    with duckdb.connect(str(db / "catalog.duckdb"), read_only=True) as con:
        (shard,), = con.execute("SELECT path FROM _shards").fetchall()
        (histograms,), = con.execute("SELECT path FROM _histograms").fetchall()
        (layers,), = con.execute("SELECT path FROM _tables WHERE name = 'layers'").fetchall()
    return shard, histograms, layers


def _damage(db: Path, how: str) -> str:
    """Damage one file of the store; returns its path relative to the store."""
    shard, histograms, layers = _files(db)
    if how in ("table flipped", "table missing"):
        flip_byte(db / layers, 10) if how == "table flipped" else (db / layers).unlink()
        return layers
    if how == "shard flipped":
        flip_byte(db / shard, (db / shard).stat().st_size // 2)
    elif how == "histograms flipped":
        flip_byte(db / histograms, (db / histograms).stat().st_size // 2)
    elif how == "shard truncated":
        os.truncate(db / shard, (db / shard).stat().st_size // 2)
    elif how == "shard missing":
        (db / shard).unlink()
    elif how == "catalog flipped":  # a byte of its first block: DuckDB's own block checksum fails
        flip_byte(db / "catalog.duckdb", 100)
        return "catalog.duckdb"
    return histograms if how == "histograms flipped" else shard


def test_the_catalog_records_every_files_sha256(store, capsys):
    with duckdb.connect(str(store / "catalog.duckdb"), read_only=True) as con:
        files = con.execute("SELECT path, bytes, sha256 FROM _shards UNION ALL "
                            "SELECT path, bytes, sha256 FROM _histograms UNION ALL "
                            "SELECT path, bytes, sha256 FROM _tables").fetchall()
    assert len(files) == 2 + 8  # a shard, the histograms, the eight Parquet tables of version 1
    for rel, size, sha256 in files:
        data = (store / rel).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha256)
    assert cli_main(["verify", "--db", str(store)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("intact: 10 file(s)") and len(out.out.splitlines()) == 1 and out.err == ""


@pytest.mark.parametrize("how, problem", [("shard flipped", "checksum differs"), ("histograms flipped", "checksum differs"),
                                          ("shard truncated", "size differs"), ("shard missing", "missing"),
                                          ("catalog flipped", "unreadable"), ("table flipped", "checksum differs"),
                                          ("table missing", "missing")])
def test_verify_names_the_damaged_file(store, capsys, how, problem):
    rel = _damage(store, how)
    assert cli_main(["verify", "--db", str(store)]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == [out.out.strip()] and out.out.startswith(f"{rel}: {problem}")
    assert out.err == ""


def test_verify_without_a_store_is_one_line(tmp_path):
    code, out, err = run_cli("verify", "--db", str(tmp_path / "nothing"))
    assert code == 1 and out == "" and err.startswith("cnnfilterdb: error: ") and len(err.splitlines()) == 1


def _damaged_answer(r, store: Path, rel: str) -> None:
    """A 503 store_damaged, one line naming the file relative to the store (no absolute path)."""
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "store_damaged" and error["message"].startswith(f"{rel}: ")
    assert "cnnfilterdb verify" in error["message"] and "\n" not in error["message"]
    assert str(store) not in error["message"]


SHARD_READERS = [("get", "/v1/filters/5", None), ("get", "/v1/layers/3/filters", None),
                 ("get", "/v1/layers/3/filters?format=npy", None),
                 ("post", "/v1/divergence", {"group_by": "task", "bins": 33}),
                 ("post", "/v1/sql", {"sql": "SELECT sum(w0) FROM filters"})]


@pytest.mark.parametrize("how", ["shard missing", "shard truncated"])
@pytest.mark.parametrize("when", ["before the service opened the catalog", "while it serves"])
def test_a_damaged_shard_is_a_503_naming_it(store, how, when):
    client = TestClient(create_app(Settings(db=store)), raise_server_exceptions=False)
    if when == "while it serves":
        for method, url, body in SHARD_READERS:
            assert client.request(method, url, json=body).status_code == 200
        before = client.post("/v1/divergence", json={"group_by": "task", "bins": 33}).json()
    rel = _damage(store, how)
    for method, url, body in SHARD_READERS:
        r = client.request(method, url, json=body)
        if when == "while it serves" and how == "shard missing" and url == "/v1/divergence":
            # The analysis engine reads the shards its catalog generation holds open (a file
            # `compact` unlinks stays readable to the requests of the catalog that named it): the
            # same answer, from the same bytes. A new catalog generation would be a 503.
            assert r.status_code == 200 and r.json()["matrix"] == before["matrix"]
            continue
        _damaged_answer(r, store, rel)
    r = client.get("/v1/layers/3")
    if when == "while it serves":  # the catalog alone answers it, and the shard's size was checked at open
        assert r.status_code == 200
    else:
        _damaged_answer(r, store, rel)


def test_a_flipped_shard_byte_is_a_503_naming_its_row_group(store):
    """A byte flipped in a shard's data pages (issue 20): every reader of the engine checks the
    row group's checksum first (tests/test_checksums.py has every region and read); the user's own
    SQL reads through DuckDB, which checks none (docs/method.md#checksums)."""
    rel = _damage(store, "shard flipped")
    client = TestClient(create_app(Settings(db=store)), raise_server_exceptions=False)
    for method, url, body in SHARD_READERS:
        if url == "/v1/sql":
            continue
        r = client.request(method, url, json=body)
        _damaged_answer(r, store, rel)
        assert "row group " in r.json()["error"]["message"], r.text
    code, out, err = run_cli("drift", "--group-by", "task", "--bins", "33", "--db", str(store))
    assert code == 1 and err.startswith(f"cnnfilterdb: error: {rel}: row group ") and len(err.splitlines()) == 1


def test_flipped_histograms_are_a_503_naming_the_file(store):
    """The service checks the histogram file's sha256 when it maps a catalog generation, rather
    than answering default-parameter queries with wrong counts."""
    rel = _damage(store, "histograms flipped")
    client = TestClient(create_app(Settings(db=store)), raise_server_exceptions=False)
    _damaged_answer(client.post("/v1/divergence", json={"group_by": "task"}), store, rel)
    _damaged_answer(client.get("/v1/layers/3"), store, rel)


@pytest.mark.parametrize("how, args", [("histograms flipped", []), ("shard truncated", ["--bins", "33"]),
                                       ("shard missing", ["--bins", "33"]), ("shard missing", [])])
def test_drift_on_a_damaged_store_is_one_line(store, how, args):
    rel = _damage(store, how)
    code, out, err = run_cli("drift", "--group-by", "task", *args, "--db", str(store))
    assert code == 1 and out == "", err
    assert err.splitlines() == [err.strip()] and err.startswith(f"cnnfilterdb: error: {rel}: ")


def test_user_sql_naming_a_shard_the_store_does_not_have_is_the_users_error(store):
    client = TestClient(create_app(Settings(db=store)), raise_server_exceptions=False)
    r = client.post("/v1/sql", json={"sql": "SELECT * FROM read_parquet('shards/no-such-shard.parquet')"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "sql_error", r.text


@pytest.mark.parametrize("keep", [4096, 1 / 3])
@pytest.mark.parametrize("command", [["info"], ["sql", "SELECT count(*) FROM layers"], ["drift", "--group-by", "task"],
                                     ["verify"]])
def test_a_truncated_catalog_is_one_line_on_the_cli(store, command, keep):
    cat = store / "catalog.duckdb"
    with open(cat, "r+b") as f:
        f.truncate(keep if keep > 1 else int(cat.stat().st_size * keep))
    code, out, err = run_cli(*command, "--db", str(store))
    said = (out + err).strip()
    if code == 0:  # what this command reads of the catalog survived the cut (`verify` reads it all)
        assert command[0] != "verify" and keep < 1 and "Traceback" not in said
        return
    assert code == 1 and "Traceback" not in said and len(said.splitlines()) == 1, said
    assert "catalog.duckdb" in said and str(store) not in said


def test_the_histograms_checked_are_the_histograms_used(store):
    """The service reads the histogram file into memory when it opens a catalog generation: bytes
    flipped or a file truncated afterwards change no answer and crash nothing (a mapping would
    give wrong counts, or SIGBUS)."""
    client = TestClient(create_app(Settings(db=store)), raise_server_exceptions=False)
    before = client.post("/v1/divergence", json={"group_by": "task"}).json()["matrix"]
    _, histograms, _ = _files(store)
    flip_byte(store / histograms, (store / histograms).stat().st_size - 100)
    assert client.post("/v1/divergence", json={"group_by": "task"}).json()["matrix"] == before
    os.truncate(store / histograms, 1000)
    assert client.post("/v1/divergence", json={"group_by": "task"}).json()["matrix"] == before
    assert client.get("/v1/models/0/similar").status_code == 200


def test_layer_ids_outside_the_store_stop_a_scan(store):
    """The compiled kernels index by layer id unchecked: a row group whose ids fall outside the
    store's range (a damaged shard) is refused before it reaches them."""
    from cnnfilterdb.catalog import load_basis
    from cnnfilterdb.layout import StoreDamaged
    from cnnfilterdb.scan import LayerGroups, scan_range
    from cnnfilterdb.store import FilterStore

    with FilterStore(store).connect() as con:
        basis = load_basis(con)
    shard, _, _ = _files(store)
    too_few = LayerGroups.of([0], [0], 1, 0)  # as if the store had one layer: the shard's ids exceed it
    with pytest.raises(StoreDamaged, match=r"layer ids outside the store's \[0, 1\]"):
        scan_range([store / shard], too_few, basis)


def test_the_services_spill_files_stay_in_its_own_bounded_directory(store):
    app = create_app(Settings(db=store, duckdb_spill_max="1GB"))
    catalog = app.state.catalog
    with catalog.cursor() as cur:
        temp, cap = cur.execute("SELECT current_setting('temp_directory'), current_setting('max_temp_directory_size')").fetchone()
    assert Path(temp) == catalog.spill_dir and catalog.spill_dir.is_dir() and not str(catalog.spill_dir).startswith(str(store))
    assert cap == "953.6 MiB"  # DuckDB's way of saying 1GB
    spill = catalog.spill_dir
    del app, catalog, cur
    import gc

    gc.collect()
    assert not spill.exists()  # removed with the service


def test_a_lone_surrogate_in_where_is_a_400(store):
    client = TestClient(create_app(Settings(db=store)), raise_server_exceptions=False)
    for path, body in [("/v1/pca", b'{"where": {"model": "\\udfff"}}'),
                       ("/v1/divergence", b'{"group_by": "task", "where": {"task": ["a", "\\ud800"]}}')]:
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"], r.text


def test_non_finite_thresholds_are_refused(store):
    client = TestClient(create_app(Settings(db=store)), raise_server_exceptions=False)
    for q in ["entropy_norm_lt=nan", "entropy_norm_gt=inf", "entropy_norm_lt=1e999"]:
        assert client.get(f"/v1/quality/degenerate?{q}").status_code == 422, q


def test_a_spill_directory_left_by_a_killed_service_is_removed_by_the_next(store, tmp_path):
    import subprocess
    import tempfile

    from cnnfilterdb.service.catalog import SPILL_PREFIX

    dead = subprocess.Popen(["true"])  # a pid that no longer runs
    dead.wait()
    orphan = Path(tempfile.gettempdir()) / f"{SPILL_PREFIX}{dead.pid}-test"
    orphan.mkdir()
    (orphan / "duckdb_temp_storage.tmp").write_bytes(b"x")
    app = create_app(Settings(db=store))
    assert not orphan.exists() and app.state.catalog.spill_dir.is_dir()
    app.state.catalog.close()
    assert not app.state.catalog.spill_dir.exists()


def test_filter_ids_that_contradict_the_catalog_are_a_503_not_a_wrong_page(store):
    """A shard rewritten with some of layer 4's filter ids moved into layer 3's range (and the
    catalog's record of it updated, so that only the contents disagree): the layer's JSON page and
    its .npy do not answer with rows of another layer."""
    import pyarrow.parquet as pq

    from cnnfilterdb.checksums import shard_checksums
    from cnnfilterdb.ingest.shards import PARQUET_OPTIONS
    from cnnfilterdb.layout import file_sha256

    shard, _, _ = _files(store)
    with duckdb.connect(str(store / "catalog.duckdb"), read_only=True) as con:
        first4 = con.execute("SELECT filter_id_first FROM layers WHERE layer_id = 4").fetchone()[0]
    table = pq.read_table(store / shard)
    ids = table.column("filter_id").to_numpy().copy()
    ids[(ids >= first4) & (ids < first4 + 5)] -= 5  # now duplicates of layer 3's last five ids
    table = table.set_column(table.schema.get_field_index("filter_id"), "filter_id", pa.array(ids, table.schema.field("filter_id").type))
    with pq.ParquetWriter(store / shard, table.schema, **PARQUET_OPTIONS) as writer:
        writer.write_table(table, row_group_size=128 * 1024)
    with duckdb.connect(str(store / "catalog.duckdb")) as con:
        con.execute("UPDATE _shards SET bytes = ?, sha256 = ? WHERE path = ?",
                    [(store / shard).stat().st_size, file_sha256(store / shard), shard])
        # and its row groups' checksums: only the contents disagree with the catalog's layers
        con.execute("DELETE FROM _row_groups WHERE path = ?", [shard])
        con.executemany("INSERT INTO _row_groups VALUES (?, ?, ?, ?, ?)",
                        [(shard, *r) for r in shard_checksums(store / shard)])
    client = TestClient(create_app(Settings(db=store)), raise_server_exceptions=False)
    r = client.get("/v1/layers/3/filters?limit=100000")
    assert r.status_code == 503 and r.json()["error"]["code"] == "store_damaged", r.text[:300]
    with pytest.raises(ValueError):  # the stream is cut: never an .npy whose rows contradict its header
        np.load(io.BytesIO(client.get("/v1/layers/3/filters?format=npy").content))
