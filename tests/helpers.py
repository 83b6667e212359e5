"""What the tests share beside their fixtures: the CLI run as a user runs it, the store's catalog
opened read-only, a snapshot of everything a reader can see of a store, the app over real HTTP."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import duckdb

from cnnfilterdb.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run the CLI in a subprocess (as a user would), returning (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "cnnfilterdb.cli", *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def open_catalog(db: Path) -> duckdb.DuckDBPyConnection:
    """The store's catalog, read-only, as every program of the project opens it."""
    from cnnfilterdb.store import FilterStore

    return FilterStore(db).connect()


def store_snapshot(db: Path) -> dict | None:
    """Everything a reader can see of a store, plus its files: equal snapshots = unchanged store."""
    cat = db / "catalog.duckdb"
    if not cat.exists():
        return None
    with open_catalog(db) as con:
        # The files readers can reach (an unreferenced leftover is garbage the next ingest removes).
        from cnnfilterdb.catalog import histograms_table

        files = sorted(p for (p,) in con.execute(f"SELECT path FROM _shards UNION ALL SELECT path FROM "
                                                  f"{histograms_table(con)}").fetchall())
        assert all((db / f).is_file() for f in files)
        tables = {}
        for t in ["models", "layers", "basis", "_shards", "_ingests", "_layer_moments", "_versions", "_models",
                  "_basis", histograms_table(con)]:
            tables[t] = con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
        digest = con.execute(
            "SELECT count(*), sum(filter_id), sum(hash(w0, w1, w2, w3, w4, w5, w6, w7, w8, layer_id, model_id)) FROM filters"
        ).fetchone()
    return {"files": files, "tables": tables, "filters": digest,
            "catalog_sha": hashlib.sha256(cat.read_bytes()).hexdigest()}


@contextmanager
def serving(app, http="auto"):
    """The app served by uvicorn (lifespan included) on a free loopback port, in a thread:
    yields (base URL, port); stopped on leaving. ``http``: uvicorn's protocol (the connection
    guard of `cnnfilterdb serve`: service/connections.GuardedH11Protocol)."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="on", http=http))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True, name="test-uvicorn")
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def start_serve(args: list[str], timeout: float = 60.0) -> tuple[subprocess.Popen, str, int]:
    """`cnnfilterdb serve *args` in a process of its own on a free loopback port, answering
    /health: (the process, its base URL, the port); stop it with terminate(). Its stderr is a pipe.

    The port is free when chosen, but it is released for the service to bind, and another process
    (a test in a parallel worker) may take it in between: a service that says so is started again
    on another port; any other failure to start fails the test with its stderr."""
    import socket
    import time

    import httpx

    for attempt in range(5):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        p = subprocess.Popen([sys.executable, "-m", "cnnfilterdb.cli", "serve", *args, "--port", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while p.poll() is None:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    return p, base, port
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                p.terminate()
                p.wait(timeout=30)
                break
            time.sleep(0.2)
        err = p.stderr.read().decode(errors="replace")
        p.stderr.close()
        if "Address already in use" not in err or attempt == 4:
            raise AssertionError(f"cnnfilterdb serve did not start (exit {p.returncode}): {err[-2000:]}")
    raise AssertionError("unreachable")


__all__ = ["REPO", "cli_main", "open_catalog", "run_cli", "serving", "start_serve", "store_snapshot"]


def flip_byte(path: Path, offset: int, mask: int = 0xFF) -> None:
    """XOR the byte at ``offset`` of the file with ``mask`` (in place: a damaged store file;
    flipping again repairs it)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def ingest_in_shards(sources: list[Path], db: Path, shard_rows: int, row_group_rows: int) -> None:
    """Ingest ``sources`` into ``db`` with shards and row groups of these sizes (the writer's
    defaults are far larger than a test's sample), one ingest per source."""
    import functools

    import pytest

    from cnnfilterdb.ingest import ingest_paths
    from cnnfilterdb.ingest.shards import ShardWriter

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ShardWriter, "__init__", functools.partialmethod(ShardWriter.__init__, shard_rows=shard_rows,
                                                                    row_group_rows=row_group_rows))
        for source in sources:
            ingest_paths([source], db)


def as_layout_6(db: Path) -> None:
    """Turn a store's catalog into what layout 6 wrote (before histogram segments): each basis's
    segments joined into one .npy of per-layer prefix sums, recorded in ``_layer_histograms``; no
    ``_histograms``, no ``_basis.store_version``, no ``_versions.digest``. The tests of older layouts start from this."""
    import numpy as np

    with duckdb.connect(str(db / "catalog.duckdb")) as con:
        con.execute("CREATE TABLE _layer_histograms (basis_version INTEGER PRIMARY KEY, bins INTEGER NOT NULL, "
                    "n_layers INTEGER NOT NULL, path VARCHAR NOT NULL, bytes BIGINT NOT NULL, sha256 VARCHAR NOT NULL)")
        for (bv,) in con.execute("SELECT DISTINCT basis_version FROM _histograms ORDER BY 1").fetchall():
            rels = [r for (r,) in con.execute("SELECT path FROM _histograms WHERE basis_version = ? "
                                              "ORDER BY store_version, path", [bv]).fetchall()]
            parts = [np.load(db / r) for r in rels]
            ids = np.concatenate([p["layer_ids"] for p in parts])
            counts = np.concatenate([p["layer_counts"] for p in parts]).reshape(len(ids), -1)
            packed = np.zeros((len(ids) + 1, 1 + counts.shape[1]), dtype="<i8")
            packed[0, 0], packed[1:, 0] = -1, ids
            np.cumsum(counts, axis=0, out=packed[1:, 1:])
            rel = rels[0].replace(".npz", ".npy")
            np.save(db / rel, packed)
            for r in rels:
                (db / r).unlink()
            data = (db / rel).read_bytes()
            con.execute("INSERT INTO _layer_histograms VALUES (?, 70, ?, ?, ?, ?)",
                        [bv, len(ids), rel, len(data), hashlib.sha256(data).hexdigest()])
        con.execute("DROP TABLE _histograms")
        con.execute("ALTER TABLE _basis DROP COLUMN store_version")
        con.execute("ALTER TABLE _basis DROP COLUMN max_layer_id")
        con.execute("ALTER TABLE _versions DROP COLUMN digest")  # layout 8's
        con.execute("UPDATE _store SET schema_version = 6")
