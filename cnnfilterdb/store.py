"""The store on disk (docs/method.md#store) and its all-or-nothing commit.

Layout of a store directory ``<db>``::

    catalog.duckdb        models, layers, basis, versions, views and macros (the SQL entry point)
    shards/*.parquet      the filters, immutable, sorted by filter_id, named after their ingest
    shards/*-histograms.npy   the per-layer coefficient histograms of each kept basis
    tables/<id>-v<N>/*.parquet  the catalog's tables at version N for any engine (tables.py)
    tables/LATEST         names the current version's tables directory
    .ingest.lock          held (flock) by the one writer (ingest, label, remove, compact) at a time

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
check what is cheap when they open a catalog (each shard's size, the histogram file's sha256) and
turn a missing or unreadable file into ``StoreDamaged`` naming it relative to the store. Each
commit also records an xxh3 per row group (and footer) of every shard (``_row_groups``, layout 6;
checksums.py), which the engine's reads check before decoding: a shard whose bytes changed is
``StoreDamaged`` naming it and the row group, never an answer (DuckDB's own SQL reads of the shards
are not checked: docs/method.md#checksums).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from cnnfilterdb import sql

from .errors import UserError
from .stats.basis import Basis
from .stats.moments import Moments

CATALOG = "catalog.duckdb"
SHARDS = "shards"
LOCK = ".ingest.lock"
STAGING_SUFFIX = ".staging"
WEIGHT_COLUMNS = [f"w{i}" for i in range(9)]
ENV_DB = "CNNFILTERDB_DB"
DEMO_DB = "filterdb-sample"  # where `cnnfilterdb demo` builds its sample store: never with real data
SCHEMA_VERSION = 6  # of sql/schema.sql and the upgrades after it (UPGRADES)
# Layouts this program reads; a transaction upgrades an older one in place (sql/upgrade_<n>.sql),
# so that a store is never rebuilt for a table added to its catalog.
READABLE_SCHEMAS = (4, 5, 6)
UPGRADES = {4: "upgrade_5", 5: "upgrade_6"}
HASH_READ_BYTES = 1 << 20
# The kinds of commit a store version records (_versions.action); compact records none.
ACTIONS = ("ingest", "label", "remove", "refresh")


class StoreError(UserError):
    """A fault of the store (missing, damaged, locked, an unknown version or model): one line
    naming what and where."""


class StoreDamaged(StoreError):
    """A file the catalog references is missing or not as committed."""

    def __init__(self, rel: str, problem: str):
        super().__init__(f"{rel}: {problem}; the store is damaged: run `cnnfilterdb verify` to check every file")
        self.rel, self.problem = rel, problem


# The models of the synthetic sample (`cnnfilterdb demo`): ingest/h5.py marks their source, the
# views derive the column `sample` from it (sql/views.sql).
SAMPLE_MODELS = "sample"


def first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def first_paragraph(e: BaseException, limit: int = 500) -> str:
    """The error's lines up to its first blank one, joined: a DuckDB error with its hint
    ('Did you mean "filters"?', 'Candidate bindings: ...') but not the query it quotes."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    lines = text.split("\n\n", 1)[0].splitlines()
    out = "; ".join(line.strip() for line in lines if line.strip())
    return out if len(out) <= limit else out[:limit] + "..."


def relative_to_store(root: Path, message: str) -> str:
    """``message`` with the store's absolute path taken out: files named relative to the store,
    as clients and users see them."""
    return message.replace(str(root) + os.sep, "")


def store_name(path: Path) -> str:
    """A store file's name as the catalog records it, relative to the store: every file the
    catalog references is in ``shards/``."""
    return f"{SHARDS}/{Path(path).name}"


def sha256_update(digest, path: Path, offset: int = 0) -> int:
    """Feed the bytes of the file from ``offset`` to its end to ``digest`` (a hashlib sha256), read
    in blocks of HASH_READ_BYTES (hashlib releases the GIL); returns the offset of the end."""
    block = bytearray(HASH_READ_BYTES)
    view = memoryview(block)
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while n := f.readinto(block):
            digest.update(view[:n])
            offset += n
    return offset


def file_sha256(path: Path) -> str:
    """The file's sha256 (hex)."""
    digest = hashlib.sha256()
    sha256_update(digest, path)
    return digest.hexdigest()


def file_problem(root: Path, rel: str, size: int, sha256: str | None = None) -> str | None:
    """What is wrong with the store file ``rel`` against what the catalog recorded: its size, and
    its checksum when ``sha256`` is given (that reads the whole file); None if nothing is."""
    path = Path(root) / rel
    try:
        actual = path.stat().st_size
        if actual != size:
            return f"size differs ({actual:,} bytes, the catalog recorded {size:,})"
        if sha256 is not None and (digest := file_sha256(path)) != sha256:
            return f"checksum differs (sha256 {digest[:16]}..., the catalog recorded {sha256[:16]}...)"
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror or first_line(e)})"
    return None


_STORE_FILE = re.compile(r"[^\s'\"]*\b" + SHARDS + r"/([^\s'\"/]+)")  # a path to a store file in a message


def unreadable(path: Path, e: BaseException) -> StoreDamaged:
    """StoreDamaged for the store file at ``path`` that a reader failed on: "missing", or the
    reader's message with every store file in it named relative to the store (no absolute path)."""
    rel = store_name(path)
    if not Path(path).exists():
        return StoreDamaged(rel, "missing")
    return StoreDamaged(rel, f"unreadable ({_STORE_FILE.sub(lambda m: f'{SHARDS}/{m.group(1)}', first_line(e))})")


def damage_in(root: Path, e: duckdb.Error) -> StoreDamaged | None:
    """The StoreDamaged that a DuckDB error stands for when it is one of reading a shard (through
    the filters view: a missing file, a truncated or corrupt one); None for any other error."""
    if not isinstance(e, (duckdb.IOException, duckdb.InvalidInputException, duckdb.PermissionException)):
        return None
    m = _STORE_FILE.search(first_line(e))
    return None if m is None else unreadable(Path(root) / SHARDS / m.group(1), e)


def shown_path(path: str | os.PathLike, limit: int = 120) -> str:
    """A path as an error message shows it: whole up to ``limit`` characters, else its start and
    end around how long it is (a 5,000-character path is not a message)."""
    text = str(path)
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2]}...{text[-limit // 4:]} ({len(text):,} characters)"


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
               (stat.S_ISREG, "a regular file"))


def file_kind(mode: int) -> str:
    """What a file of ``mode`` (st_mode) is, in words: "a FIFO", "a directory", ..."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "of an unknown kind")


def check_store_path(root: str | os.PathLike) -> None:
    """One-line StoreError, before anything opens a file of the store, for a path that cannot be
    one: too long for the system, not a directory, unreadable; StoreDamaged for a catalog that is
    not a regular file of the store's own (a FIFO would block its reader forever, a device or a
    socket is no catalog, a symbolic link may point into another store). Only ``lstat`` is called:
    nothing is opened. A missing catalog passes (the caller says how to create a store)."""
    try:
        st = os.stat(root)  # the store directory itself may be reached through a link
    except FileNotFoundError:
        return
    except OSError as e:
        raise StoreError(f"{shown_path(root)}: {e.strerror or first_line(e)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{shown_path(root)}: not a store directory ({file_kind(st.st_mode)}; a store is a "
                         f"directory holding {CATALOG})")
    try:
        st = os.lstat(Path(root) / CATALOG)
    except FileNotFoundError:
        return
    except OSError as e:
        raise StoreError(f"{shown_path(Path(root) / CATALOG)}: {e.strerror or first_line(e)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise StoreDamaged(CATALOG, f"{file_kind(st.st_mode)}, not a regular file; not read")


SYMLINK_PROBLEM = "a symbolic link; a store's files and directories are its own, links are not followed"


def symlinks_in(root: Path, rels) -> Iterator[str]:
    """The paths (relative to the store) that are symbolic links among the store files ``rels``
    and the directories they lie in (what lies under a link is not looked into). A store's files
    are its own: a link (a ``tables/`` pointing at another store's) is damage, never followed.
    Missing paths pass (the size and checksum checks say they are missing). Only ``lstat`` is called."""
    seen: set[str] = set()   # checked: not links
    links: set[str] = set()
    for rel in rels:
        parts = Path(rel).parts
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in links:
                break
            if sub in seen:
                continue
            try:
                is_link = stat.S_ISLNK(os.lstat(Path(root) / sub).st_mode)
            except OSError:
                break
            if is_link:
                links.add(sub)
                yield sub
                break
            seen.add(sub)


def check_no_symlinks(root: Path, rels) -> None:
    """StoreDamaged naming the first symbolic link among the store files ``rels`` (``symlinks_in``)."""
    if (link := next(symlinks_in(root, rels), None)) is not None:
        raise StoreDamaged(link, SYMLINK_PROBLEM)


def check_schema(con, where: Path) -> int:
    """The catalog's layout version; StoreError for one this program does not read (READABLE_SCHEMAS)."""
    try:
        version = con.execute("SELECT max(schema_version) FROM _store").fetchone()[0]
    except duckdb.Error:
        version = None
    if version not in READABLE_SCHEMAS:
        raise StoreError(f"{where}: catalog layout version {version}, this program reads versions "
                         f"{', '.join(map(str, READABLE_SCHEMAS))}; rebuild the store by ingesting its sources into a new one")
    return version


def upgrade_schema(con, version: int) -> None:
    """Bring a catalog of a readable layout ``version`` to SCHEMA_VERSION (a writer's staging copy)."""
    while version != SCHEMA_VERSION:
        con.execute(sql.read(UPGRADES[version]))
        version = check_schema(con, Path(CATALOG))


def default_db() -> Path:
    return Path(os.environ.get(ENV_DB, "./filterdb"))


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sql_string(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


@dataclass
class Verification:
    """What ``FilterStore.verify`` found."""
    files: int           # referenced by the catalog, all checked
    bytes: int           # their committed sizes, summed
    problems: list[str]  # one line per damaged or missing file: "<path relative to the store>: <what is wrong>"


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
            hint = f" (the sample of `cnnfilterdb demo` is in ./{DEMO_DB}: --db {DEMO_DB})" \
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
        """A scrub: every table of the catalog read (DuckDB checks its blocks' checksums), then the
        size and sha256 of every file the catalog references recomputed from all its bytes."""
        try:
            with self.connect() as con:
                files = con.execute(f"SELECT path, bytes, sha256 FROM ({referenced_files(con)}) ORDER BY path").fetchall()
                rows, layer_rows = con.execute("SELECT (SELECT coalesce(sum(n_rows), 0) FROM _shards), "
                                               "(SELECT coalesce(sum(n_filters), 0) FROM _layers)").fetchone()
                tables = con.execute("SELECT table_name FROM duckdb_tables() "
                                     "WHERE database_name = current_database()").fetchall()
                current_tables = current_tables_dir(con)
                for (table,) in tables:
                    for _ in con.execute(f'SELECT * FROM "{table}"').to_arrow_reader():
                        pass
        except StoreDamaged as e:
            return Verification(0, 0, [f"{e.rel}: {e.problem}"])
        except duckdb.Error as e:
            return Verification(0, 0, [f"{CATALOG}: unreadable ({relative_to_store(self.root, first_line(e))})"])
        from .tables import LATEST, TABLES

        # A link anywhere in the layout is damage, and what it leads to is not read (not hashed).
        links = list(symlinks_in(self.root, [SHARDS, TABLES, f"{TABLES}/{LATEST}", *(rel for rel, _, _ in files)]))
        problems = [f"{link}: {SYMLINK_PROBLEM}" for link in links]
        problems += [f"{rel}: {problem}" for rel, size, sha256 in files
                     if not any(rel == link or rel.startswith(link + "/") for link in links)
                     and (problem := file_problem(self.root, rel, size, sha256)) is not None]
        if rows != layer_rows:  # every stored filter belongs to a layer the catalog keeps, and back
            problems.append(f"{CATALOG}: the shards hold {rows:,} filters, its layers {layer_rows:,}")
        if current_tables is not None and not {TABLES, f"{TABLES}/{LATEST}"} & set(links) \
                and (problem := latest_problem(self.root, current_tables)) is not None:
            problems.append(problem)
        return Verification(len(files), sum(size for _, size, _ in files), problems)


def referenced_files(con: duckdb.DuckDBPyConnection) -> str:
    """A query of every store file the catalog references: path (relative to the store), bytes, sha256."""
    files = "SELECT path, bytes, sha256 FROM _shards UNION ALL SELECT path, bytes, sha256 FROM _layer_histograms"
    return files + (" UNION ALL SELECT path, bytes, sha256 FROM _tables" if has_tables(con) else "")


def has_tables(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the catalog records Parquet tables (layout 5 and later: ``_tables``)."""
    return bool(con.execute("SELECT max(schema_version) >= 5 FROM _store").fetchone()[0])


def current_tables_dir(con: duckdb.DuckDBPyConnection) -> str | None:
    """The current version's Parquet tables directory, relative to the store (None: none written yet)."""
    if not has_tables(con):
        return None
    row = con.execute("SELECT any_value(path) FROM _tables WHERE version = (SELECT max(version) FROM _versions)").fetchone()
    return None if row[0] is None else str(Path(row[0]).parent)


def latest_problem(root: Path, directory: str) -> str | None:
    """What is wrong with tables/LATEST against the current tables ``directory``; None if nothing."""
    from .tables import LATEST, TABLES

    path = Path(root) / TABLES / LATEST
    try:
        if path.is_symlink() or not path.is_file():
            return f"{TABLES}/{LATEST}: missing or not a file"
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return f"{TABLES}/{LATEST}: unreadable ({e.strerror})"
    if text != directory + "\n":
        return f"{TABLES}/{LATEST}: does not name the current version's tables ({directory})"
    return None


def store_id(con: duckdb.DuckDBPyConnection) -> str:
    """The store's id (a UUID given when it was created)."""
    return con.execute("SELECT store_id FROM _store").fetchone()[0]


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    """The catalog's store version (0: nothing committed yet)."""
    return int(con.execute("SELECT coalesce(max(version), 0) FROM _versions").fetchone()[0])


def basis_version_at(con: duckdb.DuckDBPyConnection, version: int) -> int | None:
    """The global basis of a store version (None: it held fewer than 2 filters)."""
    row = con.execute("SELECT basis_version FROM _versions WHERE version = ?", [version]).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def list_versions(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Every store version, oldest first: version, committed_at, action, summary, models_added,
    models_changed, models_removed, n_models, n_filters, basis_version, compacted."""
    cur = con.execute("SELECT * FROM _versions ORDER BY version")
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


class VersionError(StoreError):
    """A store version that is not in the store (never was, or compacted away)."""


def check_version(con: duckdb.DuckDBPyConnection, version: int) -> int:
    """``version`` if the store holds it, else VersionError saying which ones it holds."""
    row = con.execute("SELECT compacted FROM _versions WHERE version = ?", [version]).fetchone()
    lo, hi = con.execute("SELECT min(version) FILTER (WHERE NOT compacted), max(version) FROM _versions").fetchone()
    kept = "none" if hi is None else f"{lo} to {hi}"
    if row is None:
        raise VersionError(f"no store version {version}; this store holds versions {kept} (GET /v1/versions, "
                           "`cnnfilterdb log`)")
    if row[0]:
        raise VersionError(f"store version {version} was compacted away (`cnnfilterdb compact`); this store holds "
                           f"versions {kept}")
    return version


def load_basis(con: duckdb.DuckDBPyConnection, version: int | None = None) -> Basis | None:
    """The global basis of store version ``version`` (default the current one).

    Returns
    -------
    Basis with mean (9,), components (9, 9), explained_variance (9,), explained_variance_ratio
    (9,), range_min, range_max and its version; None if the version has none (< 2 filters).
    """
    bv = basis_version_at(con, current_version(con) if version is None else version)
    row = None if bv is None else con.execute(
        "SELECT n_filters, mean, components, explained_variance, explained_variance_ratio, "
        "range_min, range_max, version FROM _basis WHERE version = ?", [bv]
    ).fetchone()
    if row is None:
        return None
    n, mean, comps, ev, evr, lo, hi, version = row
    return Basis(int(n), np.array(mean), np.array(comps), np.array(ev), np.array(evr), lo, hi, int(version))


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
            raise StoreError(f"{self.root}: another writer (ingest, label, remove, compact) is running on this "
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
        (shards, histogram files, table directories); point tables/LATEST at the current tables."""
        from .tables import LATEST, TABLES, point_latest

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
        """Give the current model ``model_id`` new metadata ``values`` (models columns) from this
        version on; its previous row stays, closed, for the versions before. False if nothing
        differs."""
        cols = list(values)
        current = self.con.execute(f"SELECT {', '.join(cols)}, version_from FROM _models "
                                   "WHERE model_id = ? AND version_to IS NULL", [model_id]).fetchone()
        if current is None:
            raise StoreError(f"model_id {model_id} is not in the store")
        if list(current[:-1]) == [values[c] for c in cols]:
            return False
        assignments = ", ".join(f"? AS {c}" for c in cols)
        if current[-1] == self.version:  # already a row of this version: change it
            self.con.execute(f"UPDATE _models SET {', '.join(f'{c} = ?' for c in cols)} "
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
    def commit(self, action: str | None = "ingest", progress=None, scanner=None, summary: str | None = None) -> int:
        """Record this version (what it added, relabelled, removed), refit the global basis and the
        per-layer histograms if the filters changed (refit.py), then atomically replace the
        catalog. Returns the version committed.

        ``action`` None: a change of no version's content (compact): no version is recorded, and
        the files the new catalog no longer references are deleted once it is in place.
        ``scanner``: refit with it (refit.py) even if the filters did not change (a refresh on
        Spark, cnnfilterdb.spark); default: on this machine, when they did. ``summary``: the
        version's summary in words (default: the models it added, relabelled and removed)."""
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
        if added or removed or basis_version is None or scanner is not None:
            basis_version = self._refresh_basis(progress, scanner)
        n_models, n_filters = self.con.execute(
            "SELECT count(*), coalesce(sum(n_filters), 0) FROM models_at(?)", [v]).fetchone()
        self.con.execute("INSERT INTO _versions VALUES (?, now()::TIMESTAMP, ?, ?, ?, ?, ?, ?, ?, ?, false)",
                         [v, action, summary or change_summary(added, changed, removed), len(added), len(changed), len(removed),
                          n_models, n_filters, basis_version])
        self._write_views(basis_version)
        self._write_tables([v])
        self._replace_catalog()
        from .tables import point_latest

        point_latest(self.root, self._tables_dir(v))
        return v

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

    def _refresh_basis(self, progress=None, scanner=None) -> int | None:
        """Refit the global basis of this version and its per-layer histograms (refit.py), and
        record both in the catalog; returns the new basis version (None: fewer than 2 filters).
        Older bases stay for the versions that use them."""
        from .refit import refit  # refit.py reads the shards through scan.py, which imports this module
        from .scan import ShardScanner

        path = self.root / SHARDS / f"{self.ingest_id}-histograms.npy"
        self._new_files.append(path)  # removed with the shards if the transaction does not commit
        scanner = scanner or ShardScanner([self.root / p for p in self.shard_rel_paths()], checksums=self.checksums())
        r = refit(self.con, self.version, scanner, path, progress)
        if r is None:
            return None
        b = r.basis
        version = int(self.con.execute("SELECT coalesce(max(version), 0) + 1 FROM _basis").fetchone()[0])
        self.con.execute(
            "INSERT INTO _basis VALUES (?, now()::TIMESTAMP, ?, ?, ?, ?, ?, ?, ?)",
            [version, b.n_filters, b.mean.tolist(), b.components.tolist(), b.explained_variance.tolist(),
             b.explained_variance_ratio.tolist(), b.range_min, b.range_max],
        )
        self.con.execute("INSERT INTO _layer_histograms VALUES (?, ?, ?, ?, ?, ?)",
                         [version, r.bins, len(r.layer_ids), store_name(r.path), r.bytes, r.sha256])
        return version


def change_summary(added: list[str], changed: list[str], removed: list[str], show: int = 3) -> str:
    """A version's changes in words: "added 2 models (a, b); relabelled 1 (c)"."""
    def part(verb: str, names: list[str]) -> str:
        shown = ", ".join(names[:show]) + (f", ... {len(names) - show} more" if len(names) > show else "")
        return f"{verb} {len(names)} model{'s' if len(names) != 1 else ''} ({shown})"
    parts = [part(verb, names) for verb, names in (("added", added), ("relabelled", changed), ("removed", removed))
             if names]
    return "; ".join(parts) or "no change"
