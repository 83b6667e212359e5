"""The store's all-or-nothing commit (docs/method.md#versions) and read access to a store directory.

``StoreTransaction`` makes one change of the store (an ingest, label, remove, refit, compact, Spark's
refresh) and commits it as the store's next version; ``FilterStore`` opens the committed catalog
read-only, and says what it holds (``info``) and whether every file is as committed (``verify``).
Where each file lies and how a file is checked: layout.py; what the catalog records: catalog.py.

Every commit is a numbered store version (sql/schema.sql: ``_versions``); nothing a version sees
is changed in place afterwards, so a question asked ``as_of`` a version reads what it read then.

How a commit stays atomic while readers keep reading:

- The catalog file is never modified in place. An ingest copies it to a staging file, writes
  into the copy, checkpoints and closes it, fsyncs, then ``os.replace``-s it over
  ``catalog.duckdb``. The rename is the commit point: before it, every reader (the service, a
  DuckDB shell, any process) sees the previous catalog; after it, new connections see the new one.
  A reader that holds the old file open keeps reading it (POSIX keeps the inode alive).
- Shards are only ever added, and the catalog names the ones it uses. Shards of an ingest that
  died before its commit are referenced by no catalog; the next ingest deletes them.
- A DuckDB file opened read-write is locked against every other process; since only the staging
  copy is ever opened read-write, read-only readers never conflict with an ingest.

Integrity: the catalog records the size and sha256 of every file it references, computed when
the file was written. ``FilterStore.verify`` recomputes them all (``cnnfilterdb verify``); readers
check what is cheap when they open a catalog (each shard's size, the histogram segments' sha256) and
turn a missing or unreadable file into ``StoreDamaged`` naming it relative to the store. Each
commit also records an xxh3 per row group (and footer) of every shard (``_row_groups``, layout 6;
checksums.py), which the engine's reads check before decoding: a shard whose bytes changed is
``StoreDamaged`` naming it and the row group, never an answer (DuckDB's own SQL reads of the shards
are not checked: docs/method.md#checksums).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb

from cnnfilterdb import sql
from cnnfilterdb.sql import sql_string

from .atomic import fsync_path
from .catalog import (
    SAMPLE_MODELS,
    basis_version_at,
    check_schema,
    current_tables_dir,
    current_version,
    histograms_table,
    load_basis,
    referenced_files,
    store_id,
    upgrade_schema,
)
from .errors import first_line, shown_path
from .layout import (
    CATALOG,
    DEMO_DB,
    LOCK,
    SHARDS,
    STAGING_SUFFIX,
    SYMLINK_PROBLEM,
    WEIGHT_COLUMNS,
    StoreDamaged,
    StoreError,
    check_no_symlinks,
    check_store_path,
    file_problem,
    relative_to_store,
    store_name,
    symlinks_in,
)
from .properties import ident
from .stats.moments import Moments

REFIT_POLICIES = ("auto", "always", "never")
# The refit policy (``StoreTransaction.refit_due``): while a store is small a commit refits (about a
# second of scans at 1e7 filters); beyond, only once this share of its filters changed since the fit.
REFIT_SMALL_STORE = 10_000_000
REFIT_CHANGED_SHARE = 0.05


@dataclass
class Verification:
    """What ``FilterStore.verify`` found."""
    files: int           # referenced by the catalog, all checked
    bytes: int           # their committed sizes, summed
    problems: list[str]  # one line per damaged or missing file: "<path relative to the store>: <what is wrong>"
    versions: int = 0    # kept store versions whose digest was recomputed (digest.py; layout 8 on)


class FilterStore:
    """Read access to a store directory."""

    def __init__(self, root: str | os.PathLike):
        try:
            self.root = Path(root).resolve()
        except (OSError, RuntimeError) as e:  # a loop of links (RuntimeError before Python 3.13)
            raise StoreError(f"{shown_path(root)}: {getattr(e, 'strerror', None) or first_line(e)}") from None
        self.catalog_path = self.root / CATALOG

    def exists(self) -> bool:
        return self.catalog_path.is_file()

    def connect(self, config: dict | None = None) -> duckdb.DuckDBPyConnection:
        """A read-only connection to the catalog."""
        check_store_path(self.root)  # a FIFO, a device, a link, an over-long path: one line, nothing opened
        if not self.exists():
            hint = f" (the sample of `cnnfilterdb demo` is in ./{DEMO_DB}: --db {DEMO_DB}, open({DEMO_DB!r}))" \
                if (Path(DEMO_DB) / CATALOG).is_file() and self.root != Path(DEMO_DB).resolve() else ""
            raise StoreError(f"{self.root}: no store here (no {CATALOG}); create one with `cnnfilterdb ingest`{hint}")
        # The views name their shards relative to the store: resolve them here, wherever it is.
        try:
            con = duckdb.connect(str(self.catalog_path), read_only=True,
                                 config={"file_search_path": str(self.root), **(config or {})})
        except duckdb.Error as e:
            raise StoreDamaged(CATALOG, f"unreadable ({relative_to_store(self.root, first_line(e))})") from None
        try:
            check_schema(con, self.catalog_path)
        except StoreError:
            con.close()
            raise
        return con

    def info(self) -> dict:
        """Counts, basis and sizes of the store."""
        with self.connect() as con:
            one = lambda q: con.execute(q).fetchone()[0]  # noqa: E731
            shard_bytes = one("SELECT coalesce(sum(bytes), 0) FROM _shards")
            histogram_bytes = one(f"SELECT coalesce(sum(bytes), 0) FROM {histograms_table(con)}")
            n_filters = one("SELECT coalesce(sum(n_filters), 0) FROM layers")
            basis = load_basis(con)
            return {
                "db": str(self.root),
                "store_id": store_id(con),
                "version": current_version(con),
                "models": one("SELECT count(*) FROM models"),
                "sample_models": one(f"SELECT count(*) FROM models WHERE {SAMPLE_MODELS}"),
                "layers": one("SELECT count(*) FROM layers"),
                "filters": int(n_filters),
                "shards": one("SELECT count(*) FROM _shards"),
                "ingests": one("SELECT count(*) FROM _ingests"),
                "bytes": {
                    "catalog": self.catalog_path.stat().st_size,
                    "shards": int(shard_bytes),
                    "histograms": int(histogram_bytes),
                    "raw_float32": int(n_filters) * 36,
                },
                "basis": None if basis is None else {
                    "version": basis.version,
                    "n_filters": basis.n_filters,
                    "explained_variance_ratio": [round(float(x), 6) for x in basis.explained_variance_ratio],
                    "range": [basis.range_min, basis.range_max],
                },
            }

    def verify(self) -> Verification:
        """A scrub: every table of the catalog read (DuckDB checks its blocks' checksums), the digest
        of every kept version that records one recomputed from the catalog (digest.py: a row changed
        since its commit is "catalog.duckdb: version N: digest differs"), then the size and sha256
        of every file the catalog references recomputed from all its bytes."""
        from .catalog import schema_version
        from .digest import version_digest

        try:
            with self.connect() as con:
                files = con.execute(f"SELECT path, bytes, sha256 FROM ({referenced_files(con)}) ORDER BY path").fetchall()
                rows, layer_rows = con.execute("SELECT (SELECT coalesce(sum(n_rows), 0) FROM _shards), "
                                               "(SELECT coalesce(sum(n_filters), 0) FROM _layers)").fetchone()
                tables = con.execute("SELECT table_name FROM duckdb_tables() "
                                     "WHERE database_name = current_database()").fetchall()
                current_tables = current_tables_dir(con)
                # a kept version's tables: what LATEST may name after a kill between the catalog's
                # rename and its own (tables.py: a whole older version, until the next writer)
                kept_tables = {str(Path(p).parent) for (p,) in con.execute("SELECT path FROM _tables").fetchall()} \
                    if current_tables is not None else set()
                for (table,) in tables:
                    for _ in con.execute(f'SELECT * FROM "{table}"').to_arrow_reader():
                        pass
                recorded = con.execute("SELECT version, digest FROM _versions WHERE NOT compacted AND digest IS NOT NULL "
                                       "ORDER BY version").fetchall() if schema_version(con) >= 8 else []
                digests = [(v, d, version_digest(con, v)) for v, d in recorded]
        except StoreDamaged as e:
            return Verification(0, 0, [f"{e.rel}: {e.problem}"])
        except duckdb.Error as e:
            return Verification(0, 0, [f"{CATALOG}: unreadable ({relative_to_store(self.root, first_line(e))})"])
        from .tables import LATEST, TABLES, latest_problem

        # A link anywhere in the layout is damage, and what it leads to is not read (not hashed).
        links = list(symlinks_in(self.root, [SHARDS, TABLES, f"{TABLES}/{LATEST}", *(rel for rel, _, _ in files)]))
        problems = [f"{link}: {SYMLINK_PROBLEM}" for link in links]
        problems += [f"{rel}: {problem}" for rel, size, sha256 in files
                     if not any(rel == link or rel.startswith(link + "/") for link in links)
                     and (problem := file_problem(self.root, rel, size, sha256)) is not None]
        problems += [f"{CATALOG}: version {v}: digest differs (sha256 {got[:16]}..., the version recorded {d[:16]}...)"
                     for v, d, got in digests if got != d]
        if rows != layer_rows:  # every stored filter belongs to a layer the catalog keeps, and back
            problems.append(f"{CATALOG}: the shards hold {rows:,} filters, its layers {layer_rows:,}")
        if current_tables is not None and not {TABLES, f"{TABLES}/{LATEST}"} & set(links) \
                and (problem := latest_problem(self.root, current_tables, kept_tables)) is not None:
            problems.append(problem)
        return Verification(len(files), sum(size for _, size, _ in files), problems, len(digests))


class StoreTransaction:
    """One all-or-nothing change of the store, committed as its next version:
    ``with StoreTransaction(root) as tx: ...; tx.commit("ingest")``.

    Inside the block, the views (``models``, ``layers``, ...) of the staging catalog show the
    version being built (``tx.version``), so a writer sees what it added. Leaving the block
    without ``commit()`` (an error, Ctrl-C) discards everything written. A SIGKILL leaves only
    unreferenced staging files, removed by the next transaction.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.catalog_path = self.root / CATALOG
        self.ingest_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        self.staging_path = self.root / f"{CATALOG}.{self.ingest_id}{STAGING_SUFFIX}"
        self.con: duckdb.DuckDBPyConnection | None = None
        self.version = 0  # the version this transaction commits (set on entering)
        self._lock_fd: int | None = None
        self._created_root = False
        self._new_files: list[Path] = []  # store files this transaction wrote: removed unless it commits
        self._new_dirs: list[Path] = []   # and the table directories it made
        self._committed = False
        self.refitted = False               # whether the commit refitted the global basis
        self.basis_version: int | None = None  # the committed version's global basis

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> StoreTransaction:
        from .tables import LATEST, TABLES

        check_store_path(self.root)  # a FIFO or a link for a catalog: one line, nothing opened or copied
        # A linked shards/ or tables/ would have this writer write into, and collect the garbage of,
        # another directory (another store's tables).
        check_no_symlinks(self.root, [SHARDS, TABLES, f"{TABLES}/{LATEST}"])
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root}: exists and is not a directory")
        if not self.root.exists():
            self.root.mkdir(parents=True)
            self._created_root = True
        (self.root / SHARDS).mkdir(exist_ok=True)
        self._lock_fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StoreError(f"{self.root}: another writer (ingest, label, remove, refit, compact) is running on this "
                             f"store (lock {LOCK} is held)") from None
        try:
            self._remove_garbage()
            if self.catalog_path.exists():
                shutil.copyfile(self.catalog_path, self.staging_path)
                self.con = duckdb.connect(str(self.staging_path), config={"file_search_path": str(self.root)})
                upgrade_schema(self.con, check_schema(self.con, self.catalog_path))
            else:
                self.con = duckdb.connect(str(self.staging_path), config={"file_search_path": str(self.root)})
                self.con.execute(sql.read("schema"))
                upgrade_schema(self.con, check_schema(self.con, self.catalog_path))
            # Macros are (re)applied so that a store picks up their current definitions.
            self.con.execute(sql.read("macros"))
            self.base_version = current_version(self.con)
            self.version = self.base_version + 1
            self._write_views(basis_version_at(self.con, self.base_version))
        except BaseException:
            self._abort()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:
            self._abort()
        self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _abort(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None
        for p in [self.staging_path, Path(str(self.staging_path) + ".wal"), *self._new_files]:
            p.unlink(missing_ok=True)
        for d in self._new_dirs:
            shutil.rmtree(d, ignore_errors=True)
        if self._created_root:
            # The store did not exist before: leave nothing behind.
            shutil.rmtree(self.root, ignore_errors=True)

    def _remove_garbage(self) -> None:
        """Delete what dead writers left: staging catalogs and store files no catalog references
        (shards, histogram segments, table directories); point tables/LATEST at the current tables."""
        from .tables import LATEST, TABLES, latest_problem, point_latest

        for p in self.root.glob(f"{CATALOG}.*{STAGING_SUFFIX}*"):
            p.unlink(missing_ok=True)
        referenced: set[str] = set()
        current_tables = None
        if self.catalog_path.exists():
            with duckdb.connect(str(self.catalog_path), read_only=True) as con:
                check_schema(con, self.catalog_path)
                referenced = {p for (p, _, _) in con.execute(referenced_files(con)).fetchall()}
                current_tables = current_tables_dir(con)
        # First, before deleting any tables: repairs a LATEST left behind by a writer killed after its
        # commit, and moves compact's to its new tables; written only when it names other ones.
        if current_tables is not None and latest_problem(self.root, current_tables) is not None:
            point_latest(self.root, current_tables)
        for p in (self.root / SHARDS).iterdir():
            if store_name(p) not in referenced:
                p.unlink(missing_ok=True)
        tables = self.root / TABLES
        if tables.is_dir():
            for d in tables.iterdir():
                if d.is_dir():
                    for p in d.iterdir():
                        if f"{TABLES}/{d.name}/{p.name}" not in referenced:
                            p.unlink(missing_ok=True)
                    if not any(d.iterdir()):
                        d.rmdir()
                elif d.name != LATEST:  # a LATEST.<pid>.tmp of a writer killed while replacing it
                    d.unlink(missing_ok=True)

    # -- what an ingest asks for ---------------------------------------------------------------
    def next_model_id(self) -> int:
        """Ids are never reused, not even those of removed models: older versions still name them,
        and those `compact` forgot are above the floor it recorded (_store)."""
        return int(self.con.execute("SELECT greatest(coalesce(max(model_id) + 1, 0), "
                                    "(SELECT min_next_model_id FROM _store)) FROM _models").fetchone()[0])

    def next_layer_id(self) -> int:
        return int(self.con.execute("SELECT greatest(coalesce(max(layer_id) + 1, 0), "
                                    "(SELECT min_next_layer_id FROM _store)) FROM _layers").fetchone()[0])

    def next_filter_id(self) -> int:
        return int(self.con.execute("SELECT greatest(coalesce(max(filter_id_last) + 1, 0), "
                                    "(SELECT min_next_filter_id FROM _store)) FROM _shards").fetchone()[0])

    def keep_id_floors(self) -> None:
        """Record the next ids as floors, before rows that hold the largest ones are deleted."""
        self.con.execute("UPDATE _store SET min_next_model_id = ?, min_next_layer_id = ?, min_next_filter_id = ?",
                         [self.next_model_id(), self.next_layer_id(), self.next_filter_id()])

    def new_shard_path(self) -> Path:
        """A new shard's path, unique in the store (several writers may serve one transaction)."""
        path = self.root / SHARDS / f"{self.ingest_id}-{len(self._new_files):05d}.parquet"
        self._new_files.append(path)
        return path

    def add_shard(self, path: Path, n_rows: int, filter_id_first: int, filter_id_last: int, sha256: str) -> None:
        """Register a written shard (the writer has fsynced it: it must outlive a power cut once
        committed) with its sha256, which the writer computed."""
        self.con.execute(
            "INSERT INTO _shards VALUES (?, ?, ?, ?, ?, ?)",
            [store_name(path), n_rows, filter_id_first, filter_id_last, path.stat().st_size, sha256],
        )

    def insert_layer_moments(self, layer_ids: list[int], moments: list[Moments]) -> None:
        """Record each layer's moments of its peak-scaled filters (count, mean (9,), scatter (9, 9)),
        which the basis of any set of layers is pooled from (refit.py, analysis.py)."""
        if not layer_ids:
            return
        import pyarrow as pa

        table = pa.table({
            "layer_id": pa.array(layer_ids, pa.int32()),
            "n": pa.array([m.n for m in moments], pa.int64()),
            "mean": pa.array([m.mean.tolist() for m in moments], pa.list_(pa.float64())),
            "scatter": pa.array([m.scatter.ravel().tolist() for m in moments], pa.list_(pa.float64())),
        })
        self.con.register("_new_moments", table)
        self.con.execute("INSERT INTO _layer_moments SELECT layer_id, n, mean, scatter FROM _new_moments")
        self.con.unregister("_new_moments")

    def record_ingest(self, source: str, kind: str, sha256: str | None, n_models: int, n_filters: int) -> None:
        """Record that this transaction ingested ``source`` (its kind, sha256, models and filters)."""
        self.con.execute(
            "INSERT INTO _ingests VALUES (?, ?, ?, ?, ?, now()::TIMESTAMP, ?, ?)",
            [self.ingest_id, self.version, source, kind, sha256, n_models, n_filters],
        )

    # -- curation -----------------------------------------------------------------------------
    def relabel(self, model_id: int, values: dict) -> bool:
        """Give the current model ``model_id`` new metadata ``values`` (models columns, properties
        among them: ``properties.py``) from this version on; its previous row stays, closed, for
        the versions before. False if nothing differs."""
        cols = list(values)
        quoted = [ident(c) for c in cols]  # a property may be named like an SQL keyword
        current = self.con.execute(f"SELECT {', '.join(quoted)}, version_from FROM _models "
                                   "WHERE model_id = ? AND version_to IS NULL", [model_id]).fetchone()
        if current is None:
            raise StoreError(f"model_id {model_id} is not in the store")
        if all(type(a) is type(b) and a == b for a, b in zip(current[:-1], (values[c] for c in cols))):
            return False
        assignments = ", ".join(f"? AS {c}" for c in quoted)
        if current[-1] == self.version:  # already a row of this version: change it
            self.con.execute(f"UPDATE _models SET {', '.join(f'{c} = ?' for c in quoted)} "
                             "WHERE model_id = ? AND version_to IS NULL", [*values.values(), model_id])
            return True
        self.con.execute(f"INSERT INTO _models SELECT * REPLACE ({assignments}, ? AS version_from) FROM _models "
                         "WHERE model_id = ? AND version_to IS NULL", [*values.values(), self.version, model_id])
        self.con.execute("UPDATE _models SET version_to = ? WHERE model_id = ? AND version_to IS NULL "
                         "AND version_from < ?", [self.version, model_id, self.version])
        return True

    def remove(self, model_id: int) -> None:
        """Take the model out of this version on (older versions keep it, and its shards stay
        until `cnnfilterdb compact`)."""
        self.con.execute("DELETE FROM _models WHERE model_id = ? AND version_from = ?", [model_id, self.version])
        self.con.execute("UPDATE _models SET version_to = ? WHERE model_id = ? AND version_to IS NULL",
                         [self.version, model_id])

    # -- commit ---------------------------------------------------------------------------------
    def commit(self, action: str | None = "ingest", progress=None, scanner=None, summary: str | None = None,
               refit: str = "auto") -> int:
        """Record this version (what it added, relabelled, removed), keep or refit the global basis
        (``refit``, below), write the stored histograms of the layers the basis lacks (refit.py),
        then atomically replace the catalog. Returns the version committed.

        ``refit``: "auto" refits by the store's policy (``refit_due``), "always" refits, "never"
        keeps the basis (projecting added layers on it; a store without one still gets one).
        ``action`` None: a change of no version's content (compact): no version is recorded, and
        the files the new catalog no longer references are deleted once it is in place.
        ``scanner``: refit with it (refit.py) (a refresh on Spark, cnnfilterdb.spark); default: on
        this machine. ``summary``: the version's summary in words (default: the models it added,
        relabelled and removed)."""
        check_refit(refit)
        self.record_checksums()
        if action is None:
            self.version = self.base_version
            self._write_views(basis_version_at(self.con, self.version))
            # The shards the kept versions' tables list may have changed: all are rewritten.
            self._write_tables([v for (v,) in self.con.execute(
                "SELECT version FROM _versions WHERE NOT compacted ORDER BY version").fetchall()])
            self._replace_catalog()
            self._remove_garbage()
            return self.version
        v, b = self.version, self.base_version
        names = lambda sql, args: [m for (m,) in self.con.execute(sql, args).fetchall()]  # noqa: E731
        added = names("SELECT model FROM models_at(?) WHERE model_id NOT IN (SELECT model_id FROM models_at(?)) "
                      "ORDER BY model_id", [v, b])
        removed = names("SELECT model FROM models_at(?) WHERE model_id NOT IN (SELECT model_id FROM models_at(?)) "
                        "ORDER BY model_id", [b, v])
        changed = names("SELECT model FROM _models WHERE version_from = ? AND version_to IS NULL AND model_id IN "
                        "(SELECT model_id FROM models_at(?)) ORDER BY model_id", [v, b])
        basis_version = basis_version_at(self.con, b)
        if scanner is not None or refit == "always" or basis_version is None \
                or (refit == "auto" and (added or removed) and self.refit_due(basis_version)):
            basis_version, self.refitted = self._refit(progress, scanner), True
        elif added:
            self._project(basis_version)
        self.basis_version = basis_version
        n_models, n_filters = self.con.execute(
            "SELECT count(*), coalesce(sum(n_filters), 0) FROM models_at(?)", [v]).fetchone()
        from .digest import version_digest  # what version v holds, for a citation to be checked (digest.py)

        self.con.execute("INSERT INTO _versions (version, committed_at, action, summary, models_added, models_changed, "
                         "models_removed, n_models, n_filters, basis_version, compacted, digest) "
                         "VALUES (?, now()::TIMESTAMP, ?, ?, ?, ?, ?, ?, ?, ?, false, ?)",
                         [v, action, summary or change_summary(added, changed, removed), len(added), len(changed), len(removed),
                          n_models, n_filters, basis_version, version_digest(self.con, v, basis_version)])
        self._write_views(basis_version)
        self._write_tables([v])
        self._replace_catalog()
        from .tables import point_latest

        point_latest(self.root, self._tables_dir(v))
        return v

    def refit_due(self, basis_version: int) -> bool:
        """The store's refit policy (docs/method.md#refit), for a commit that adds or removes
        models: refit while this version holds at most REFIT_SMALL_STORE filters (a refit there costs
        about a second), or once the filters it holds that the basis was not fitted on, and those
        the basis was fitted on that it no longer holds, pass REFIT_CHANGED_SHARE of the basis's.
        Otherwise the basis is kept: a commit then reads only the filters it adds."""
        n = self.con.execute("SELECT coalesce(sum(n_filters), 0) FROM layers_at(?)", [self.version]).fetchone()[0]
        if n <= REFIT_SMALL_STORE:
            return True
        changed = self.changed_since_fit(basis_version)
        return changed is None or changed[0] > REFIT_CHANGED_SHARE * changed[1]

    def changed_since_fit(self, basis_version: int) -> tuple[int, int] | None:
        """(the filters this version holds that basis ``basis_version`` was not fitted on plus those
        it was fitted on that this version no longer holds, the filters it was fitted on); None if
        the store does not know the layers of the fit (a basis of layout 6 or before).

        A layer of this version was fitted on exactly when its id is at most the largest layer id of
        the fit (``_basis.max_layer_id``: ids are never reused, removed models never return), so the
        count holds after `compact` forgot the fitted version's rows."""
        row = self.con.execute("SELECT max_layer_id, n_filters FROM _basis WHERE version = ?", [basis_version]).fetchone()
        if row is None or row[0] is None:
            return None
        fitted_max, fitted_n = row
        new, kept = self.con.execute(
            "SELECT coalesce(sum(n_filters) FILTER (WHERE layer_id > ?), 0), "
            "       coalesce(sum(n_filters) FILTER (WHERE layer_id <= ?), 0) FROM layers_at(?)",
            [fitted_max, fitted_max, self.version]).fetchone()
        return int(new) + int(fitted_n) - int(kept), int(fitted_n)

    def _tables_dir(self, version: int) -> str:
        from .tables import directory_name

        return directory_name(self.ingest_id, version)

    def _write_tables(self, versions: list[int]) -> None:
        """Write the Parquet tables of ``versions`` (tables.py) and record their files in the
        catalog, in place of any recorded before for those versions."""
        from .tables import write_tables

        if not versions:
            return
        existing = self.con.execute("SELECT version, any_value(path) FROM _tables WHERE version IN "
                                    "(SELECT version FROM _versions WHERE NOT compacted) GROUP BY version").fetchall()
        dirs = {v: str(Path(p).parent) for v, p in existing} | {v: self._tables_dir(v) for v in versions}
        self.con.execute(f"DELETE FROM _tables WHERE version IN ({', '.join(map(str, map(int, versions)))}) "
                         "OR version NOT IN (SELECT version FROM _versions WHERE NOT compacted)")
        for v in versions:
            self._new_dirs.append(self.root / self._tables_dir(v))
            for f in write_tables(self.con, self.root, v, self._tables_dir(v), dict(sorted(dirs.items()))):
                self._new_files.append(self.root / f.path)
                self.con.execute("INSERT INTO _tables VALUES (?, ?, ?, ?, ?, ?)",
                                 [f.version, f.name, f.path, f.n_rows, f.bytes, f.sha256])

    def _replace_catalog(self) -> None:
        """The commit point: the staging catalog, checkpointed and fsynced, renamed over the catalog."""
        self.con.execute("CHECKPOINT")
        self.con.close()
        self.con = None
        fsync_path(self.staging_path)
        os.replace(self.staging_path, self.catalog_path)
        fsync_path(self.root)
        self._committed = True

    def record_checksums(self) -> None:
        """Record in ``_row_groups`` the row group checksums of every shard that has none yet (those
        this transaction wrote; all of a store of layout 5 at its first commit, each checked against
        its sha256 first), and forget those of shards no longer listed (cnnfilterdb/checksums.py)."""
        from .checksums import shard_checksums

        self.con.execute("DELETE FROM _row_groups WHERE path NOT IN (SELECT path FROM _shards)")
        missing = self.con.execute("SELECT path, sha256 FROM _shards WHERE path NOT IN "
                                   "(SELECT path FROM _row_groups) ORDER BY filter_id_first").fetchall()
        written = {store_name(p) for p in self._new_files}
        for rel, sha256 in missing:
            rows = shard_checksums(self.root / rel, None if rel in written else sha256)
            self.con.executemany("INSERT INTO _row_groups VALUES (?, ?, ?, ?, ?)", [(rel, *r) for r in rows])

    def checksums(self):
        """The row group checksums of the shards (``record_checksums`` first): checksums.Checksums."""
        from .checksums import Checksums

        self.record_checksums()
        return Checksums.load(self.con)

    def shard_rel_paths(self) -> list[str]:
        """The shards of every kept version, relative to the store, in filter_id order."""
        return [p for (p,) in self.con.execute("SELECT path FROM _shards ORDER BY filter_id_first").fetchall()]

    def _write_views(self, basis_version: int | None) -> None:
        """The views of sql/views.sql at this transaction's version."""
        rels = self.shard_rel_paths()
        if rels:
            # Relative to the store, so that a copied or moved store works unchanged; readers
            # resolve them with file_search_path (FilterStore.connect, the service) or from the
            # store's directory (the DuckDB shell).
            files = ", ".join(sql_string(r) for r in rels)
            source = f"read_parquet([{files}])"
        else:
            weights = ", ".join(f"NULL::FLOAT AS {w}" for w in WEIGHT_COLUMNS)
            source = f"(SELECT NULL::BIGINT AS filter_id, NULL::INTEGER AS model_id, NULL::INTEGER AS layer_id, {weights} WHERE false)"
        # The filters of models not in this version (removed ones; their shards are kept for older
        # versions): a literal list, so that a scan of the view costs no join.
        gone = [m for (m,) in self.con.execute(
            "SELECT DISTINCT model_id FROM _models EXCEPT SELECT model_id FROM models_at(?) ORDER BY 1",
            [self.version]).fetchall()]
        condition = f"model_id NOT IN ({', '.join(map(str, gone))})" if gone else "true"
        text = sql.read("views")
        for key, value in {"version": str(int(self.version)), "filters_condition": condition,
                           "basis_version": "NULL" if basis_version is None else str(int(basis_version)),
                           "filters_source": source}.items():
            text = text.replace("{" + key + "}", value)
        self.con.execute(text)

    def _segment_path(self) -> Path:
        path = self.root / SHARDS / f"{self.ingest_id}-histograms.npz"
        self._new_files.append(path)  # removed with the shards if the transaction does not commit
        return path

    def _record_segment(self, basis_version: int, w) -> None:
        from .segments import DENSITY_BINS, FINE_BINS

        self.con.execute("INSERT INTO _histograms VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [store_name(w.path), basis_version, self.version, w.n_layers, w.bins, FINE_BINS,
                          DENSITY_BINS if w.density else None, w.bytes, w.sha256])

    def _scanner(self, scanner=None):
        from .scan import ShardScanner  # loaded on a scan only: the kernels (numba) take a while to import

        return scanner or ShardScanner([self.root / p for p in self.shard_rel_paths()], checksums=self.checksums())

    def _refit(self, progress=None, scanner=None) -> int | None:
        """Refit the global basis of this version and the stored histograms of all its layers
        (refit.py), and record both in the catalog; returns the new basis version (None: fewer
        than 2 filters). Older bases stay for the versions that use them."""
        from .refit import refit

        r = refit(self.con, self.version, self._scanner(scanner), self._segment_path(), progress)
        if r is None:
            return None
        b, written = r
        version = int(self.con.execute("SELECT coalesce(max(version), 0) + 1 FROM _basis").fetchone()[0])
        self.con.execute(
            "INSERT INTO _basis VALUES (?, now()::TIMESTAMP, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [version, b.n_filters, b.mean.tolist(), b.components.tolist(), b.explained_variance.tolist(),
             b.explained_variance_ratio.tolist(), b.range_min, b.range_max, self.version, self.next_layer_id() - 1],
        )
        self._record_segment(version, written)
        return version

    def _project(self, basis_version: int) -> None:
        """Keep the basis: the stored histograms of the layers this version adds, their filters
        projected on it (refit.project), scanning only the shards this transaction wrote."""
        from .refit import project
        from .scan import ShardScanner

        written_here = set(self._new_files)
        new = [self.root / p for p in self.shard_rel_paths() if self.root / p in written_here]
        scanner = ShardScanner(new, checksums=self.checksums())
        written = project(self.con, self.version, load_basis(self.con, self.base_version), scanner, self._segment_path())
        if written is not None:
            self._record_segment(basis_version, written)


def check_refit(refit) -> str:
    """``refit`` if it is a refit policy (REFIT_POLICIES), else a StoreError saying which are."""
    if not isinstance(refit, str) or refit not in REFIT_POLICIES:
        raise StoreError(f"refit must be one of {', '.join(REFIT_POLICIES)}, got {refit!r}")
    return refit


def change_summary(added: list[str], changed: list[str], removed: list[str], show: int = 3) -> str:
    """A version's changes in words: "added 2 models (a, b); relabelled 1 (c)"."""
    def part(verb: str, names: list[str]) -> str:
        shown = ", ".join(names[:show]) + (f", ... {len(names) - show} more" if len(names) > show else "")
        return f"{verb} {len(names)} model{'s' if len(names) != 1 else ''} ({shown})"
    parts = [part(verb, names) for verb, names in (("added", added), ("relabelled", changed), ("removed", removed))
             if names]
    return "; ".join(parts) or "no change"
