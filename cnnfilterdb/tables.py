"""The catalog's tables as Parquet files inside the store, for any engine (docs/method.md#parquet-tables).

The catalog (``catalog.duckdb``) is DuckDB's file; Spark SQL, Polars or any Parquet reader sees
the store through these files instead. Each commit writes, for the store version ``v`` it
commits, one directory ``tables/<ingest id>-v<v>/`` holding the rows the catalog shows at ``v``:

    models.parquet              models_at(v): one row per model, every metadata column
    layers.parquet              layers_at(v): one row per layer, with its quality metrics
    layers_with_models.parquet  layers_with_models_at(v): each layer with its model's metadata
    basis.parquet               the version's global basis (one row; none below 2 filters)
    versions.parquet            every store version up to v, with ``tables``: the directory of
                                each kept version's tables (null: compacted away)
    shards.parquet              the filter shards: path relative to the store, n_rows, filter ids,
                                bytes, sha256, row_groups (how many row_groups.parquet checks; every
                                kept version's; a version's filters are those of its layers)
    layer_moments.parquet       the moments of v's layers' peak-scaled filters: n, mean (9),
                                scatter (81, row-major 9 x 9): the basis of any selection pools them
    row_groups.parquet          the checksum of each row group of every listed shard: path,
                                row_group (-1: the footer), byte_offset, byte_length, xxh3
                                (cnnfilterdb/checksums.py; Spark's tasks check them)

and ``tables/LATEST`` holds one line, the current version's directory relative to the store.

Guarantees:
- a directory's files are written, fsynced and recorded in the catalog (``_tables``: size and
  sha256, checked by ``cnnfilterdb verify``) before the commit renames the catalog into place,
  and never change afterwards; a transaction that does not commit leaves none behind (the next
  writer deletes what a killed one left);
- ``LATEST`` is replaced (write, fsync, rename) just after the catalog: a reader that follows it
  sees one committed version's tables, all of them, never a mix of two versions. A crash between
  the two renames leaves it on the previous version until the next writer repairs it;
- every path is relative to the store, so a store copied anywhere (a bucket, HDFS) reads the same;
- ``compact`` rewrites the tables of every version it keeps (the shards they list change) under
  new directory names, and deletes those of the versions it forgets.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnnfilterdb.sql import sql_string

from .atomic import fsync_path
from .catalog import basis_version_at
from .layout import file_sha256

TABLES = "tables"
LATEST = "LATEST"

# What each file holds at store version {v} with global basis {bv}, in a stable row order.
TABLE_QUERIES: dict[str, str] = {
    "models": "SELECT * FROM models_at({v}) ORDER BY model_id",
    "layers": "SELECT * FROM layers_at({v}) ORDER BY layer_id",
    "layers_with_models": "SELECT * FROM layers_with_models_at({v}) ORDER BY layer_id",
    "basis": "SELECT * FROM _basis WHERE version IS NOT DISTINCT FROM {bv}",
    "versions": "SELECT v.*, d.tables FROM _versions v LEFT JOIN _table_dirs d USING (version) "
                "WHERE v.version <= {v} ORDER BY v.version",
    "shards": "SELECT s.*, (SELECT count(*) FROM _row_groups r WHERE r.path = s.path AND r.row_group >= 0) AS row_groups "
              "FROM _shards s ORDER BY filter_id_first",
    "layer_moments": "SELECT m.* FROM _layer_moments m SEMI JOIN layers_at({v}) USING (layer_id) ORDER BY layer_id",
    "row_groups": "SELECT * FROM _row_groups ORDER BY path, row_group",
}


@dataclass
class TableFile:
    """One written table file, as ``_tables`` records it."""
    version: int
    name: str
    path: str    # relative to the store
    n_rows: int
    bytes: int
    sha256: str


def directory_name(ingest_id: str, version: int) -> str:
    """The directory (relative to the store) of version ``version``'s tables written by the
    transaction ``ingest_id``: unique, since a transaction's id is."""
    return f"{TABLES}/{ingest_id}-v{int(version)}"


def write_tables(con, root: Path, version: int, directory: str, dirs: dict[int, str]) -> list[TableFile]:
    """Write store version ``version``'s tables into ``root / directory``, fsynced.

    Parameters
    ----------
    con : the staging catalog of a transaction (read only here).
    root : the store directory.
    version : a store version the catalog holds (committed, or the one being committed).
    directory : where to write, relative to ``root`` (``directory_name``); must not exist.
    dirs : the directory of every kept version's tables, this one's included (versions.parquet).

    Returns
    -------
    The files written, in TABLE_QUERIES order.
    """
    import pyarrow as pa

    out = Path(root) / directory
    out.mkdir(parents=True)
    bv = basis_version_at(con, version)
    con.register("_table_dirs", pa.table({"version": pa.array(list(dirs), pa.int32()),
                                          "tables": pa.array(list(dirs.values()), pa.string())}))
    try:
        files = []
        for name, query in TABLE_QUERIES.items():
            rel = f"{directory}/{name}.parquet"
            q = query.format(v=int(version), bv="NULL" if bv is None else int(bv))
            (n_rows,) = con.execute(f"COPY ({q}) TO {sql_string(str(Path(root) / rel))} "
                                    "(FORMAT parquet, COMPRESSION zstd)").fetchone()
            fsync_path(Path(root) / rel)
            files.append(TableFile(int(version), name, rel, int(n_rows), (Path(root) / rel).stat().st_size,
                                   file_sha256(Path(root) / rel)))
    finally:
        con.unregister("_table_dirs")
    fsync_path(out)
    return files


def point_latest(root: Path, directory: str) -> None:
    """Make ``tables/LATEST`` name ``directory`` (write a new file, fsync, rename over the old)."""
    latest = Path(root) / TABLES / LATEST
    tmp = latest.with_name(f"{LATEST}.{os.getpid()}.tmp")
    tmp.write_text(directory + "\n", encoding="utf-8")
    fsync_path(tmp)
    os.replace(tmp, latest)
    fsync_path(latest.parent)


def latest_problem(root: Path, directory: str, older: set[str] = frozenset()) -> str | None:
    """What is wrong with tables/LATEST against the current tables ``directory``; None if nothing,
    or if it names one of ``older`` (a kept version's tables: a reader following it sees that whole
    version; a commit killed between its catalog's rename and LATEST's leaves it so, and the next
    writer points it at the current one)."""
    path = Path(root) / TABLES / LATEST
    try:
        if path.is_symlink() or not path.is_file():
            return f"{TABLES}/{LATEST}: missing or not a file"
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return f"{TABLES}/{LATEST}: unreadable ({e.strerror})"
    if text != directory + "\n" and text.removesuffix("\n") not in older:
        return f"{TABLES}/{LATEST}: does not name the current version's tables ({directory})"
    return None
