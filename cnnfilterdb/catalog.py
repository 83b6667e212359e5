"""What a store's catalog records, read from a connection to it (docs/method.md#versions).

The catalog (``catalog.duckdb``, sql/schema.sql) holds the models, layers, shards, bases and the
numbered store versions. The functions here read it on any connection the caller holds (a
read-only one, a reader's snapshot cursor, a writer's staging copy): its layout version
(``check_schema``), the store versions (``current_version``, ``list_versions``, ``check_version``),
the global basis of a version (``basis_version_at``, ``load_basis``) and the files it references
(``referenced_files``). Only ``upgrade_schema`` writes, and only into a writer's staging copy.

Guarantees:
- a catalog of a layout this program does not read (READABLE_SCHEMAS) is a one-line StoreError
  saying what to do, never a wrong reading; an older readable one is upgraded in place by the next
  writer (sql/upgrade_<n>.sql), never rebuilt;
- a store version is read as committed: nothing a version sees changes afterwards, so the basis
  and versions read ``as_of`` it are those it had; a version the store does not hold (never was,
  or compacted away) is a VersionError naming the ones it holds.
"""
from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np

from cnnfilterdb import sql

from .layout import CATALOG, StoreError
from .stats.basis import Basis

SCHEMA_VERSION = 8  # of sql/schema.sql and the upgrades after it (UPGRADES)
# Layouts this program reads; a transaction upgrades an older one in place (sql/upgrade_<n>.sql),
# so that a store is never rebuilt for a table added to its catalog.
READABLE_SCHEMAS = (4, 5, 6, 7, 8)
UPGRADES = {4: "upgrade_5", 5: "upgrade_6", 6: "upgrade_7", 7: "upgrade_8"}
# The kinds of commit a store version records (_versions.action); compact records none.
ACTIONS = ("ingest", "label", "remove", "refresh", "refit")
# The models of the synthetic sample (`cnnfilterdb demo`): ingest/h5.py marks their source, the
# views derive the column `sample` from it (sql/views.sql).
SAMPLE_MODELS = "sample"


class VersionError(StoreError):
    """A store version that is not in the store (never was, or compacted away)."""


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


def referenced_files(con: duckdb.DuckDBPyConnection) -> str:
    """A query of every store file the catalog references: path (relative to the store), bytes, sha256."""
    files = f"SELECT path, bytes, sha256 FROM _shards UNION ALL SELECT path, bytes, sha256 FROM {histograms_table(con)}"
    return files + (" UNION ALL SELECT path, bytes, sha256 FROM _tables" if has_tables(con) else "")


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT max(schema_version) FROM _store").fetchone()[0])


def histograms_table(con: duckdb.DuckDBPyConnection) -> str:
    """The table of the stored histogram files: ``_histograms`` (layout 7), ``_layer_histograms`` before."""
    return "_histograms" if schema_version(con) >= 7 else "_layer_histograms"


def histogram_segments(con: duckdb.DuckDBPyConnection, basis_version: int, store_version: int) -> list[tuple]:
    """The stored histogram files store version ``store_version`` uses for its basis ``basis_version``,
    in the order of their layers: (path, bytes, sha256, bins) each."""
    if schema_version(con) >= 7:
        return con.execute("SELECT path, bytes, sha256, bins FROM _histograms WHERE basis_version = ? "
                           "AND store_version <= ? ORDER BY store_version, path", [basis_version, store_version]).fetchall()
    return con.execute("SELECT path, bytes, sha256, bins FROM _layer_histograms WHERE basis_version = ?",
                       [basis_version]).fetchall()


def has_tables(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the catalog records Parquet tables (layout 5 and later: ``_tables``)."""
    return bool(con.execute("SELECT max(schema_version) >= 5 FROM _store").fetchone()[0])


def current_tables_dir(con: duckdb.DuckDBPyConnection) -> str | None:
    """The current version's Parquet tables directory, relative to the store (None: none written yet)."""
    if not has_tables(con):
        return None
    row = con.execute("SELECT any_value(path) FROM _tables WHERE version = (SELECT max(version) FROM _versions)").fetchone()
    return None if row[0] is None else str(Path(row[0]).parent)


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
