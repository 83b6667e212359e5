"""Store paths that cannot be a store (issue 20, finding 8): a FIFO, a device, a socket or a link
for a catalog, an over-long path, a file for a directory: one line (StoreError) from
``cnnfilterdb.open``, ``FilterStore``, a writer and the CLI's --db, before DuckDB opens
anything (a FIFO is never opened: its reader would block for ever). Symbolic links inside a
store (a linked ``tables/`` pointing at another store's, a linked shard) are damage that
``verify`` names and a writer refuses, never followed."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import cnnfilterdb
from cnnfilterdb.layout import StoreError
from cnnfilterdb.store import FilterStore, StoreTransaction

from .helpers import open_catalog, store_snapshot

LONG = "x" * 5_000


def _bad_stores(tmp_path: Path, v1_store: Path) -> dict[str, tuple[Path, str]]:
    """name -> (store path, what its one-line error says)."""
    out = {}
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "catalog.duckdb")
    out["fifo"] = (fifo, r"catalog\.duckdb: a FIFO, not a regular file; not read")
    link = tmp_path / "link"
    link.mkdir()
    (link / "catalog.duckdb").symlink_to(v1_store / "catalog.duckdb")
    out["link"] = (link, r"catalog\.duckdb: a symbolic link, not a regular file; not read")
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "catalog.duckdb").symlink_to("/dev/zero")  # a link to a device: the link is refused
    out["device link"] = (dev, r"catalog\.duckdb: a symbolic link")
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_dir / "catalog.duckdb"))
    s.close()
    out["socket"] = (sock_dir, r"catalog\.duckdb: a socket, not a regular file")
    out["directory catalog"] = (tmp_path / "dircat", r"catalog\.duckdb: a directory, not a regular file")
    (tmp_path / "dircat" / "catalog.duckdb").mkdir(parents=True)
    out["long component"] = (tmp_path / LONG, r"\.\.\..* \(5,0\d\d characters\): File name too long")
    out["long path"] = (tmp_path.joinpath(*["y" * 200] * 30), r"\(6,\d\d\d characters\): File name too long")
    (tmp_path / "file").write_text("not a store")
    out["a file"] = (tmp_path / "file", r"not a store directory \(a regular file; a store is a directory")
    out["char device"] = (Path("/dev/null"), r"/dev/null: not a store directory \(a character device")
    return out


@pytest.fixture
def bad_stores(tmp_path, v1_store):
    return _bad_stores(tmp_path, v1_store)


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and len(text) < 400, text
    return text


def test_open_refuses_what_cannot_be_a_store_in_one_line(bad_stores):
    for name, (path, message) in bad_stores.items():
        for attempt in (cnnfilterdb.open, lambda p: FilterStore(p).connect(), lambda p: FilterStore(p).info()):
            with pytest.raises(StoreError) as e:
                attempt(path)
            assert re.search(message, _one_line(e.value)), (name, str(e.value))


def test_a_writer_refuses_them_before_copying_or_creating_anything(bad_stores):
    for name, (path, _) in bad_stores.items():
        before = sorted(os.listdir(path)) if not name.startswith("long") and path.is_dir() else None
        with pytest.raises(StoreError) as e:
            with StoreTransaction(path):
                pass
        _one_line(e.value)
        if before is not None:
            assert sorted(os.listdir(path)) == before, name  # no lock file, no staging copy, no shards/


def test_a_fifo_catalog_never_blocks_a_reader(tmp_path, sample_v01):
    """Each reader runs in a subprocess with a time limit far above what it needs: a reader that
    opened the FIFO would block there for ever (nothing writes to it)."""
    fifo = tmp_path / "db"
    fifo.mkdir()
    os.mkfifo(fifo / "catalog.duckdb")
    code = ("import cnnfilterdb, sys\n"
            "try:\n    cnnfilterdb.open(sys.argv[1])\n"
            "except cnnfilterdb.StoreError as e:\n    print(e)\n")
    p = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "catalog.duckdb: a FIFO, not a regular file" in p.stdout, p.stderr
    for argv in (["info"], ["sql", "SELECT 1"], ["verify"], ["log"], ["drift", "--group-by", "task"],
                 ["export", "-o", str(tmp_path / "out.npy")], ["label", "m", "--task", "x"], ["remove", "m"],
                 ["compact", "--keep-versions", "1"], ["ingest", str(sample_v01)]):
        p = subprocess.run([sys.executable, "-m", "cnnfilterdb.cli", *argv, "--db", str(fifo)],
                           capture_output=True, text=True, timeout=120)
        said = p.stdout if argv == ["verify"] else p.stderr  # verify lists the damage found on stdout
        assert p.returncode == 1 and said.count("\n") == 1, (argv, p.stdout, p.stderr)
        assert "catalog.duckdb: a FIFO, not a regular file" in said, (argv, said)
    assert sorted(os.listdir(fifo)) == ["catalog.duckdb"]


def test_the_cli_db_is_one_line_for_each(bad_stores, capsys):
    from cnnfilterdb.cli import main

    for name, (path, _) in bad_stores.items():
        for argv in (["info"], ["verify"], ["log"], ["sql", "SELECT 1"]):
            code = main([*argv, "--db", str(path)])
            err = capsys.readouterr().err
            if argv == ["verify"] and name in ("fifo", "link", "device link", "socket", "directory catalog"):
                assert code == 1 and err == "", (name, err)  # verify prints the damage on stdout
                continue
            assert code == 1 and err.startswith("cnnfilterdb: error: ") and err.count("\n") == 1, (name, argv, err)
            assert len(err) < 400, err


def _tables_dir(db: Path) -> str:
    return (db / "tables" / "LATEST").read_text().strip()


def test_verify_names_every_symbolic_link_and_does_not_follow_it(v1_store, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(v1_store, a)
    shutil.copytree(v1_store, b)  # the same files: following the links, every checksum would match
    assert FilterStore(a).verify().problems == []
    with open_catalog(a) as con:
        shards = [p for (p,) in con.execute("SELECT path FROM _shards ORDER BY path").fetchall()]
    link = "a symbolic link; a store's files and directories are its own, links are not followed"

    shutil.rmtree(a / "tables")
    (a / "tables").symlink_to(b / "tables")
    assert FilterStore(a).verify().problems == [f"tables: {link}"]
    (a / "tables").unlink()
    shutil.copytree(b / "tables", a / "tables")

    (a / shards[0]).unlink()
    (a / shards[0]).symlink_to(b / shards[0])
    latest = a / "tables" / "LATEST"
    latest.unlink()
    latest.symlink_to(b / "tables" / "LATEST")
    assert FilterStore(a).verify().problems == [f"tables/LATEST: {link}", f"{shards[0]}: {link}"]

    shutil.rmtree(b / "shards")
    (b / "shards").symlink_to(a / "shards")
    problems = FilterStore(b).verify().problems
    assert problems == [f"shards: {link}"], problems

    shutil.copytree(a, tmp_path / "c", symlinks=True)
    c = tmp_path / "c"
    (c / "catalog.duckdb").unlink()
    (c / "catalog.duckdb").symlink_to(b / "catalog.duckdb")
    assert FilterStore(c).verify().problems == ["catalog.duckdb: a symbolic link, not a regular file; not read"]


def test_a_writer_never_writes_through_a_linked_tables_or_shards(v1_store, tmp_path, capsys):
    """A linked tables/ leads a writer into another store: it would write its tables there and
    delete that store's as garbage. Refused, both stores unchanged."""
    from cnnfilterdb.cli import main

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(v1_store, a)
    shutil.copytree(v1_store, b)
    with open_catalog(b) as con:
        model = con.execute("SELECT model FROM models ORDER BY model_id LIMIT 1").fetchone()[0]
    assert main(["label", model, "--task", "GAN", "--db", str(b)]) == 0  # b's tables differ from a's now
    capsys.readouterr()
    for linked in ("tables", "shards"):
        saved = tmp_path / f"saved-{linked}"
        shutil.move(a / linked, saved)
        (a / linked).symlink_to(b / linked)
        before_b = store_snapshot(b), sorted(p.relative_to(b) for p in b.rglob("*"))
        for argv in (["label", model, "--task", "Detection"], ["compact", "--keep-versions", "1"]):
            assert main([*argv, "--db", str(a)]) == 1
            err = capsys.readouterr().err
            assert err == (f"cnnfilterdb: error: {linked}: a symbolic link; a store's files and directories are its "
                           "own, links are not followed; the store is damaged: run `cnnfilterdb verify` to check "
                           "every file\n"), err
        assert (store_snapshot(b), sorted(p.relative_to(b) for p in b.rglob("*"))) == before_b
        (a / linked).unlink()
        shutil.move(saved, a / linked)
    assert FilterStore(a).verify().problems == [] and FilterStore(b).verify().problems == []
