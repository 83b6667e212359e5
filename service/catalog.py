"""The service's view of the store: one confined, read-only DuckDB instance per catalog generation.

Every endpoint but ``/v1/sql`` reads through a cursor of that instance (user SQL runs in confined
worker processes instead, see ``service/usersql/``). The generations, their snapshots and the cache
of older versions' snapshots are the engine's ``cnnfilterdb.reader`` (shared with the Python API);
this module adds the service's confinement and limits. The instance is read-only by DuckDB's own
settings, not by inspecting SQL text:

- the catalog is ATTACHed READ_ONLY (writes fail in DuckDB's binder);
- ``enable_external_access = false`` with ``allowed_directories`` = the store's shard directory:
  no other file, no network, no ATTACH/COPY/INSTALL; ``file_search_path`` = the store, against
  which the views' relative shard paths resolve (a store works wherever it is moved);
- extension autoload/autoinstall off, community extensions off;
- ``memory_limit``, ``threads`` and a bounded spill directory set, then ``lock_configuration =
  true``: no SET/RESET afterwards.

An ingest commits by renaming a new catalog over the old one; ``LiveCatalog.generation()`` notices
the new inode and opens a new instance, while requests in flight finish on the old one.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from cnnfilterdb.errors import first_line
from cnnfilterdb.layout import CATALOG, StoreDamaged, StoreError, relative_to_store
from cnnfilterdb.reader import CatalogReader, Generation, attach

from .errors import ApiError
from .settings import Settings

__all__ = ["Generation", "LiveCatalog"]


SPILL_PREFIX = "cnnfilterdb-spill-"


def _remove_orphaned_spill_dirs() -> None:
    """Spill directories of services that no longer run (their pid is in the name)."""
    for d in Path(tempfile.gettempdir()).glob(f"{SPILL_PREFIX}*-*"):
        pid = d.name[len(SPILL_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


class LiveCatalog:
    """The store as committed now, for the service's requests, with its concurrency limits."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = Path(settings.db).resolve()
        self.path = self.root / CATALOG
        self.analysis_slots = threading.BoundedSemaphore(settings.analysis_concurrency)
        self.analysis_queue = threading.BoundedSemaphore(settings.analysis_queue) if settings.analysis_queue else None
        self.export_slots = threading.BoundedSemaphore(settings.export_concurrency)
        self.exports_sending: set = set()  # the exports streaming now (routers/export.ClosingStream)
        self.layer_filter_slots = threading.BoundedSemaphore(settings.layer_filters_concurrency)
        self.layer_filters_sending: set = set()  # the same, of GET /v1/layers/{id}/filters (routers/layers.py)
        # DuckDB's spill files (a layer's filters sorted for an .npy): in a directory of this
        # service's own, bounded by duckdb_spill_max, removed when the service ends (close(), or
        # at exit); one a killed service left behind is removed by the next one.
        _remove_orphaned_spill_dirs()
        self.spill_dir = Path(tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.spill_dir, True)
        self._reader = CatalogReader(self.root, self._sandbox)

    def close(self) -> None:
        """Remove the spill directory (the service's shutdown)."""
        self._cleanup()

    def _sandbox(self, root: Path) -> duckdb.DuckDBPyConnection:
        s = self.settings
        return attach(root, confine=True, config={
            "memory_limit": s.duckdb_memory_limit,
            "threads": s.duckdb_threads,
            "temp_directory": str(self.spill_dir),
            "max_temp_directory_size": s.duckdb_spill_max,
        })

    def generation(self) -> Generation:
        """The instance of the catalog as committed now (reopened after an ingest's commit)."""
        if not self.path.exists():
            raise ApiError(503, "store_unavailable", "the store has no catalog yet (run `cnnfilterdb ingest`)")
        try:
            return self._reader.generation()
        except StoreDamaged:
            raise  # a file the snapshot checks: 503 store_damaged naming it (errors.py)
        except StoreError as e:
            raise ApiError(503, "store_unavailable", relative_to_store(self.root, str(e))) from None
        except FileNotFoundError:  # removed between the check and the open
            raise ApiError(503, "store_unavailable", "the store has no catalog yet (run `cnnfilterdb ingest`)") from None
        except duckdb.Error as e:  # the catalog file itself is damaged
            raise StoreDamaged(CATALOG, f"unreadable ({relative_to_store(self.root, first_line(e))})") from None

    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self.generation().cursor()
        try:
            yield cur
        finally:
            cur.close()
