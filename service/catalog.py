"""The service's view of the store: one sandboxed, read-only DuckDB instance per catalog generation.

Every endpoint but ``/v1/sql`` reads through a cursor of that instance (user SQL runs in confined
worker processes instead, see ``service/usersql/``). The instance is read-only by DuckDB's own
settings, not by inspecting SQL text:

- the catalog is ATTACHed READ_ONLY (writes fail in DuckDB's binder);
- ``enable_external_access = false`` with ``allowed_directories`` = the store's shard directory:
  no other file, no network, no ATTACH/COPY/INSTALL; ``file_search_path`` = the store, against
  which the views' relative shard paths resolve (a store works wherever it is moved);
- extension autoload/autoinstall off, community extensions off;
- ``memory_limit`` and ``threads`` set, then ``lock_configuration = true``: no SET/RESET afterwards.

An ingest commits by renaming a new catalog over the old one; ``LiveCatalog.generation()`` notices
the new inode and opens a new instance, while requests in flight finish on the old one. The main
database is in-memory (not the catalog file itself) because DuckDB caches file databases per path
and would hand back the old instance.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from contextlib import contextmanager
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import duckdb

from cnnfilterdb.analysis import Snapshot
from cnnfilterdb.store import (CATALOG, SHARDS, StoreDamaged, StoreError, check_schema, first_line,
                               relative_to_store, sql_string)

from .errors import ApiError
from .settings import Settings


OLDER_SNAPSHOTS = 8  # snapshots of older store versions (as_of) kept per generation


@dataclass
class Generation:
    inode: int
    mtime_ns: int
    con: duckdb.DuckDBPyConnection
    snapshot: Snapshot  # the current version's basis, shards, per-layer histograms: read once per generation
    older: OrderedDict = field(default_factory=OrderedDict)  # version -> Snapshot, least recently used first
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        cur = self.con.cursor()
        cur.execute("USE catalog")  # cursors start in the in-memory main database
        return cur

    def snapshot_at(self, cur, as_of: int | None) -> Snapshot:
        """The snapshot of store version ``as_of`` (None: the current one); VersionError
        (a 404) if the store does not hold it."""
        if as_of is None or as_of == self.snapshot.version:
            return self.snapshot
        with self.lock:
            if as_of in self.older:
                self.older.move_to_end(as_of)
                return self.older[as_of]
        snapshot = Snapshot.at(cur, self.snapshot.root, as_of)
        with self.lock:
            self.older[as_of] = snapshot
            while len(self.older) > OLDER_SNAPSHOTS:
                self.older.popitem(last=False)
        return snapshot


SPILL_PREFIX = "cnnfilterdb-spill-"


def _remove_orphaned_spill_dirs() -> None:
    """Spill directories of services that no longer run (their pid is in the name)."""
    for d in Path(tempfile.gettempdir()).glob(f"{SPILL_PREFIX}*-*"):
        pid = d.name[len(SPILL_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


class LiveCatalog:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = Path(settings.db).resolve()
        self.path = self.root / CATALOG
        self._lock = threading.Lock()
        self._current: Generation | None = None
        self.analysis_slots = threading.BoundedSemaphore(settings.analysis_concurrency)
        self.analysis_queue = threading.BoundedSemaphore(settings.analysis_queue) if settings.analysis_queue else None
        self.export_slots = threading.BoundedSemaphore(settings.export_concurrency)
        # DuckDB's spill files (a layer's filters sorted for an .npy): in a directory of this
        # service's own, bounded by duckdb_spill_max, removed when the service ends (close(), or
        # at exit); one a killed service left behind is removed by the next one.
        _remove_orphaned_spill_dirs()
        self.spill_dir = Path(tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.spill_dir, True)

    def close(self) -> None:
        """Remove the spill directory (the service's shutdown)."""
        self._cleanup()

    def _open(self, st: os.stat_result) -> Generation:
        s = self.settings
        con = self._sandbox(s.duckdb_memory_limit, s.duckdb_threads)
        cur = con.cursor().execute("USE catalog")
        try:
            gen = Generation(st.st_ino, st.st_mtime_ns, con, Snapshot.at(cur, self.root))
            gen.snapshot.prepare(cur)  # ~10 ms, once per commit, instead of in the first request
        finally:
            cur.close()
        return gen

    def _sandbox(self, memory_limit: str, threads: int) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(":memory:", config={
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
            "allow_community_extensions": False,
            "memory_limit": memory_limit,
            "threads": threads,
            "temp_directory": str(self.spill_dir),
            "max_temp_directory_size": self.settings.duckdb_spill_max,
        })
        try:
            # ATTACH takes no parameters; the path is the service's own setting, quoted as a literal.
            con.execute(f"ATTACH {sql_string(str(self.path))} AS catalog (READ_ONLY)")
            con.execute(f"SET GLOBAL file_search_path = {sql_string(str(self.root))}")  # cursors inherit GLOBAL only
            # Both spellings: DuckDB checks a view's relative shard path before resolving it.
            con.execute("SET allowed_directories = ?", [[str(self.root / SHARDS) + os.sep, SHARDS + os.sep]])
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            check_schema(con.cursor().execute("USE catalog"), Path(CATALOG))  # clients see store-relative names
        except Exception:
            con.close()
            raise
        return con

    def generation(self) -> Generation:
        """The instance of the catalog as committed now (reopened after an ingest's commit)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise ApiError(503, "store_unavailable", "the store has no catalog yet (run `cnnfilterdb ingest`)") from None
        cur = self._current
        if cur is not None and cur.inode == st.st_ino and cur.mtime_ns == st.st_mtime_ns:
            return cur
        with self._lock:
            cur = self._current
            if cur is None or cur.inode != st.st_ino or cur.mtime_ns != st.st_mtime_ns:
                try:
                    self._current = self._open(st)
                except StoreDamaged:
                    raise  # a file the snapshot checks: 503 store_damaged naming it (errors.py)
                except StoreError as e:
                    raise ApiError(503, "store_unavailable", relative_to_store(self.root, str(e))) from None
                except duckdb.Error as e:  # the catalog file itself is damaged
                    raise StoreDamaged(CATALOG, f"unreadable ({relative_to_store(self.root, first_line(e))})") from None
            return self._current

    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self.generation().cursor()
        try:
            yield cur
        finally:
            cur.close()
