"""A store's committed catalog, for reading: one read-only DuckDB instance per catalog generation.

A commit (ingest, label, remove, refit, compact) renames a new catalog file over the old one; nothing is
written in place. ``CatalogReader.generation()`` notices the new file (its inode and mtime) and
opens a new instance for the next request, while requests in flight finish on the old one, which
closes when the last of them lets go of it. The service (``service/catalog.py``, confined) and the
Python API (``api.py``) read through it.

The catalog is ATTACHed READ_ONLY to an in-memory database rather than opened as a file: DuckDB
keeps one instance per file path and process, which would hand back the old catalog after a commit
and refuse a writer of the same process (an ingest, ``label``) another configuration. Writes fail
in DuckDB's binder. With ``confine=True`` the instance also reaches no file but the store's shards
(``enable_external_access = false``, ``allowed_directories``), loads no extension, and its settings
are locked. It runs only SQL the engine composes (user SQL runs in the service's worker
processes), so two limits of DuckDB's allow-list are a second line, not the first: an allowed
directory is writable too, and the relative entry ``shards/`` (DuckDB checks a view's relative
path before resolving it) also matches a ``shards/`` folder of the working directory.

Each generation keeps the snapshot of its current version (basis, shards, per-layer histograms,
read once) and the snapshots of up to ``OLDER_SNAPSHOTS`` older versions (``as_of``), the least
recently used dropped first.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import duckdb

from cnnfilterdb.sql import sql_string

from .catalog import check_schema
from .errors import first_line, shown_path
from .layout import CATALOG, SHARDS, StoreDamaged, StoreError, check_store_path, relative_to_store
from .snapshot import Snapshot
from .store import FilterStore

OLDER_SNAPSHOTS = 8  # snapshots of older store versions (as_of) kept per generation
ATTACHED = "catalog"  # the name the catalog is attached under


def attach(root: Path, config: dict | None = None, confine: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB instance with the catalog of the store at ``root`` attached read-only.

    Parameters
    ----------
    root : Path
        The store directory (resolved).
    config : dict, optional
        DuckDB settings of the instance (memory_limit, threads, temp_directory, ...).
    confine : bool
        Read no file but the store's shards, load no extension, lock the settings (the service).

    Returns
    -------
    duckdb.DuckDBPyConnection
        Its cursors start in the in-memory main database: ``Generation.cursor`` moves them to
        the catalog. StoreDamaged if the catalog cannot be read or is of another layout.
    """
    if confine:
        config = {"autoload_known_extensions": False, "autoinstall_known_extensions": False,
                  "allow_community_extensions": False, **(config or {})}
    con = duckdb.connect(":memory:", config=config or {})
    try:
        # ATTACH takes no parameters; the path is the store's own, quoted as a literal.
        con.execute(f"ATTACH {sql_string(str(root / CATALOG))} AS {ATTACHED} (READ_ONLY)")
        # The views name their shards relative to the store (cursors inherit GLOBAL settings only).
        con.execute(f"SET GLOBAL file_search_path = {sql_string(str(root))}")
        if confine:
            # Both spellings: DuckDB checks a view's relative shard path before resolving it.
            con.execute("SET allowed_directories = ?", [[str(root / SHARDS) + os.sep, SHARDS + os.sep]])
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
        check_schema(con.cursor().execute(f"USE {ATTACHED}"), Path(CATALOG))  # store-relative names
    except duckdb.Error as e:
        con.close()
        raise StoreDamaged(CATALOG, f"unreadable ({relative_to_store(root, first_line(e))})") from None
    except BaseException:
        con.close()
        raise
    return con


class Generation:
    """One catalog file as committed: its instance, the snapshot of its current version and those
    of the older versions read (``as_of``)."""

    def __init__(self, root: Path, con: duckdb.DuckDBPyConnection, st: os.stat_result):
        self.key = (st.st_ino, st.st_mtime_ns)
        self.con = con
        cur = self.cursor()
        try:
            self.snapshot = Snapshot.at(cur, root)
            self.snapshot.prepare(cur)  # ~10 ms, once per commit, instead of in the first request
        finally:
            cur.close()
        self.older: OrderedDict[int, Snapshot] = OrderedDict()  # least recently used first
        self.lock = threading.Lock()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor on the catalog (the caller closes it)."""
        return self.con.cursor().execute(f"USE {ATTACHED}")  # cursors start in the main database

    def snapshot_at(self, cur: duckdb.DuckDBPyConnection, as_of: int | None) -> Snapshot:
        """The snapshot of store version ``as_of`` (None: the current one); VersionError if the
        store does not hold it."""
        if as_of is None or as_of == self.snapshot.version:
            return self.snapshot
        with self.lock:
            if as_of in self.older:
                self.older.move_to_end(as_of)
                return self.older[as_of]
        snapshot = Snapshot.at(cur, self.snapshot.root, as_of)
        with self.lock:
            snapshot = self.older.setdefault(as_of, snapshot)
            while len(self.older) > OLDER_SNAPSHOTS:
                self.older.popitem(last=False)
        return snapshot


class CatalogReader:
    """The catalog of the store at ``root`` as committed now, reopened after each commit.

    Parameters
    ----------
    root : str or Path
        The store directory.
    connect : callable, optional
        ``connect(root) -> connection``, the instance of a new generation; default ``attach``.
    """

    def __init__(self, root: str | os.PathLike, connect: Callable[[Path], duckdb.DuckDBPyConnection] | None = None):
        self.root = Path(root).resolve()
        self.path = self.root / CATALOG
        self._connect = connect or attach
        self._lock = threading.Lock()
        self._current: Generation | None = None

    def generation(self) -> Generation:
        """The generation of the catalog file in place now. StoreError if there is none (its
        message says how to create a store), StoreDamaged if it cannot be read."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            FilterStore(self.root).connect()  # raises StoreError saying what is missing
            raise
        except OSError:  # not a directory, a path too long, ...: one line
            check_store_path(self.root)
            raise StoreError(f"{shown_path(self.path)}: not a store's catalog") from None
        gen = self._current
        if gen is not None and gen.key == (st.st_ino, st.st_mtime_ns):
            return gen
        with self._lock:
            gen = self._current
            if gen is None or gen.key != (st.st_ino, st.st_mtime_ns):
                # Before DuckDB opens it: a FIFO would block the open forever, a link may lead
                # into another store.
                check_store_path(self.root)
                con = self._connect(self.root)
                try:
                    gen = Generation(self.root, con, st)
                except BaseException:
                    con.close()
                    raise
                # The old generation is left to the requests still using it: it closes when
                # the last of them lets go of it.
                self._current = gen
            return gen

    def close(self) -> None:
        """Let go of the current generation (the next ``generation()`` opens a new one). Calls in
        flight in other threads finish on it, as on a generation a commit replaced: its instance
        closes when the last of them lets go of it."""
        with self._lock:
            self._current = None
