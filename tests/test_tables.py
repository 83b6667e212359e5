"""The catalog's tables as Parquet inside the store (issue 13, docs/method.md#parquet-tables): each
commit writes its version's tables, checksummed, relative, immutable; LATEST names the current
ones; compaction rewrites what it keeps; a commit that fails leaves none."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from cnnfilterdb.store import FilterStore
from cnnfilterdb.tables import LATEST, TABLE_QUERIES, TABLES

from .helpers import as_layout_6, cli_main, open_catalog


@pytest.fixture(scope="module")
def four_versions(tmp_path_factory, sample_v1, sample_v01) -> Path:
    """Four versions: two ingests, a relabelling, a removal (built once; each test takes a copy)."""
    db = tmp_path_factory.mktemp("tables") / "db"
    assert cli_main(["ingest", str(sample_v1), "--db", str(db)]) == 0
    assert cli_main(["ingest", str(sample_v01), "--db", str(db)]) == 0
    with open_catalog(db) as con:
        first, second = [m for (m,) in con.execute("SELECT model FROM models ORDER BY model_id LIMIT 2").fetchall()]
    assert cli_main(["label", first, "--task", "Classification", "--db", str(db)]) == 0
    assert cli_main(["remove", second, "--db", str(db)]) == 0
    return db


@pytest.fixture
def store(four_versions, tmp_path) -> Path:
    """A copy of the four versions of its own for each test, to change."""
    db = tmp_path / "db"
    shutil.copytree(four_versions, db)
    return db


def _recorded(db: Path) -> dict[int, dict[str, tuple]]:
    with open_catalog(db) as con:
        rows = con.execute("SELECT version, name, path, n_rows, bytes, sha256 FROM _tables ORDER BY path").fetchall()
    out: dict[int, dict[str, tuple]] = {}
    for version, name, *rest in rows:
        out.setdefault(version, {})[name] = tuple(rest)
    return out


def _plain(rows):
    """Rows with every array as a list, fixed-size (a tuple) or not."""
    if isinstance(rows, (list, tuple)):
        return [_plain(x) for x in rows]
    return rows


def _latest(db: Path) -> str:
    return (db / TABLES / LATEST).read_text().strip()


def test_every_version_has_its_tables_equal_to_the_catalog(store):
    recorded = _recorded(store)
    assert sorted(recorded) == [1, 2, 3, 4]
    with open_catalog(store) as con:
        for version, files in recorded.items():
            assert sorted(files) == sorted(TABLE_QUERIES)
            directory = {str(Path(p).parent) for p, *_ in files.values()}
            assert len(directory) == 1 and directory.pop().startswith(f"{TABLES}/")
            for name, (rel, n_rows, size, sha256) in files.items():
                assert not Path(rel).is_absolute()
                data = (store / rel).read_bytes()
                assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha256)
                # The rows the catalog shows at that version, read back from the file by DuckDB.
                bv = con.execute("SELECT basis_version FROM _versions WHERE version = ?", [version]).fetchone()[0]
                query = TABLE_QUERIES[name].format(v=version, bv="NULL" if bv is None else bv)
                if name == "versions":
                    query = f"SELECT * FROM _versions WHERE version <= {version} ORDER BY version"
                    in_file = con.execute(f"SELECT * EXCLUDE (tables) FROM read_parquet('{store / rel}')").fetchall()
                else:
                    in_file = con.execute(f"SELECT * FROM read_parquet('{store / rel}')").fetchall()
                expected = con.execute(query).fetchall()
                assert len(in_file) == n_rows
                if name == "shards" and version < max(recorded):  # the shards at that commit (ids grow)
                    assert set(in_file) <= set(expected) and sum(r[1] for r in in_file) >= con.execute(
                        f"SELECT sum(n_filters) FROM layers_at({version})").fetchone()[0]
                    continue
                if name == "row_groups" and version < max(recorded):  # the checksums of the shards at that commit
                    assert set(in_file) <= set(expected) and {r[0] for r in in_file} == {
                        r[0] for r in con.execute(f"SELECT path FROM read_parquet('{store / files['shards'][0]}')").fetchall()}
                    continue
                # (Parquet has no fixed-size arrays: DOUBLE[9] reads back as DOUBLE[], a list)
                assert _plain(in_file) == _plain(expected), (version, name)
        # The versions file of the current tables names every version's tables directory.
        current = _latest(store)
        dirs = con.execute(f"SELECT version, tables FROM read_parquet('{store / current}/versions.parquet') "
                           "ORDER BY version").fetchall()
        assert dirs == [(v, str(Path(next(iter(f.values()))[0]).parent)) for v, f in sorted(recorded.items())]
        assert current == dirs[-1][1]
        # The removed model is in no table of the current version; the relabelled one is relabelled.
        models = pq.read_table(store / current / "models.parquet").to_pydict()
        assert len(models["model"]) == con.execute("SELECT count(*) FROM models").fetchone()[0]
        assert models["task"][0] == "Classification"


def test_a_store_copied_elsewhere_reads_the_same(store, tmp_path):
    copy = tmp_path / "elsewhere" / "store"
    shutil.copytree(store, copy)
    assert cli_main(["verify", "--db", str(copy)]) == 0
    con = duckdb.connect()
    a = con.execute(f"SELECT * FROM read_parquet('{store / _latest(store)}/layers.parquet')").fetchall()
    b = con.execute(f"SELECT * FROM read_parquet('{copy / _latest(copy)}/layers.parquet')").fetchall()
    assert a == b


def test_compaction_rewrites_the_kept_tables_and_deletes_the_forgotten(store):
    before = _recorded(store)
    assert cli_main(["compact", "--keep-versions", "2", "--db", str(store)]) == 0
    after = _recorded(store)
    assert sorted(after) == [3, 4]
    for version in after:  # new files (the shards they list changed), the same rows but the shards'
        assert {p for p, *_ in after[version].values()}.isdisjoint(p for p, *_ in before[version].values())
    on_disk = sorted(str(p.relative_to(store)) for p in (store / TABLES).rglob("*.parquet"))
    assert on_disk == sorted(p for files in after.values() for p, *_ in files.values())
    assert _latest(store) == str(Path(after[4]["models"][0]).parent)
    versions = pq.read_table(store / _latest(store) / "versions.parquet").to_pydict()
    assert versions["version"] == [1, 2, 3, 4] and versions["tables"][:2] == [None, None]
    assert FilterStore(store).verify().problems == []


def test_a_failed_commit_leaves_no_tables(store, tmp_path):
    before = sorted(p.relative_to(store) for p in (store / TABLES).rglob("*"))
    latest = _latest(store)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert cli_main(["ingest", "--allow-missing", str(bad), "--task", "GAN", "--db", str(store)]) == 1
    assert sorted(p.relative_to(store) for p in (store / TABLES).rglob("*")) == before
    assert _latest(store) == latest


def test_the_next_writer_removes_what_a_killed_one_left_and_repairs_latest(store):
    """A writer killed after writing its tables (before its commit), or after its commit but before
    LATEST: the next writer deletes the orphans and points LATEST at the current tables."""
    latest = _latest(store)
    orphan = store / TABLES / "20990101T000000-deadbeef-v5"
    orphan.mkdir()
    (orphan / "models.parquet").write_bytes(b"half")
    (store / TABLES / f"{LATEST}.123.tmp").write_text("x")
    (store / TABLES / LATEST).write_text("tables/stale\n")
    with open_catalog(store) as con:
        model = con.execute("SELECT model FROM models ORDER BY model_id DESC LIMIT 1").fetchone()[0]
    assert cli_main(["label", model, "--task", "Classification", "--db", str(store)]) == 0
    assert not orphan.exists() and not (store / TABLES / f"{LATEST}.123.tmp").exists()
    assert _latest(store) != latest and _latest(store).endswith("-v5")
    assert (store / _latest(store) / "models.parquet").is_file()


def test_a_layout_4_store_is_read_and_upgraded_by_its_next_commit(store):
    """A catalog written before the tables (layout 4, no _tables) stays readable; the next commit
    upgrades it in place and writes the tables."""
    catalog = store / "catalog.duckdb"
    as_layout_6(store)
    with duckdb.connect(str(catalog)) as con:
        con.execute("DROP TABLE _tables")
        con.execute("DROP TABLE _row_groups")
        con.execute("UPDATE _store SET schema_version = 4")
    shutil.rmtree(store / TABLES)
    assert cli_main(["verify", "--db", str(store)]) == 0
    assert cli_main(["drift", "--group-by", "task", "--db", str(store)]) == 0
    with open_catalog(store) as con:
        model = con.execute("SELECT model FROM models ORDER BY model_id LIMIT 1").fetchone()[0]
    assert cli_main(["label", model, "--task", "Segmentation", "--db", str(store)]) == 0
    with open_catalog(store) as con:
        assert con.execute("SELECT schema_version FROM _store").fetchone()[0] == 8
        assert con.execute("SELECT DISTINCT version FROM _tables").fetchall() == [(5,)]
    assert (store / _latest(store) / "layers.parquet").is_file()


@pytest.mark.parametrize("latest", ["tables/elsewhere\n", "", None, "twice\ntwice\n"])
def test_verify_checks_latest(store, latest, capsys):
    path = store / TABLES / LATEST
    if latest is None:
        path.unlink()
    else:
        path.write_text(latest)
    assert cli_main(["verify", "--db", str(store)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("tables/LATEST: ") and len(out.splitlines()) == 1


def test_compaction_points_latest_before_it_deletes_tables(store, monkeypatch):
    """The old tables are deleted only once LATEST names the new ones: a reader (or a crash) in
    between never meets a LATEST naming deleted tables."""
    import cnnfilterdb.tables as tables_module

    seen = []
    real = tables_module.point_latest

    def point_latest(root, directory):
        real(root, directory)
        seen.append((directory, sorted(p.name for p in (store / TABLES).iterdir() if p.is_dir())))

    monkeypatch.setattr(tables_module, "point_latest", point_latest)
    assert cli_main(["compact", "--keep-versions", "1", "--db", str(store)]) == 0
    assert any(Path(d).name in dirs and len(dirs) > 1 for d, dirs in seen)  # old ones still there when LATEST moved
    assert FilterStore(store).verify().problems == []


def test_verify_takes_latest_on_a_kept_older_version(store, capsys):
    """A commit killed between its catalog's rename and LATEST's leaves LATEST on the previous
    version's whole tables (tables.py's guarantee): verify says nothing of it; LATEST naming what is
    no kept version's tables is damage."""
    with open_catalog(store) as con:
        dirs = sorted({str(Path(p).parent) for (p,) in con.execute("SELECT path FROM _tables").fetchall()})
    assert len(dirs) >= 2
    current = _latest(store)
    older = next(d for d in dirs if d != current)
    (store / TABLES / LATEST).write_text(older + "\n")
    assert cli_main(["verify", "--db", str(store)]) == 0
    (store / TABLES / LATEST).write_text("tables/stale\n")
    capsys.readouterr()
    assert cli_main(["verify", "--db", str(store)]) == 1
    assert "does not name the current version's tables" in capsys.readouterr().out
    (store / TABLES / LATEST).write_text(current + "\n")
